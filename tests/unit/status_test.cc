// Status, Result<T>, StatusCodeName, WithContext and the propagation macros.
#include "shardps/base/status.h"

#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

namespace shardps {
namespace {

const std::vector<StatusCode>& AllCodes() {
  static const std::vector<StatusCode> codes = {
      StatusCode::kOk,          StatusCode::kInvalidArgument,    StatusCode::kNotFound,
      StatusCode::kOutOfRange,  StatusCode::kDeadlineExceeded,   StatusCode::kDataLoss,
      StatusCode::kFailedPrecondition, StatusCode::kUnavailable, StatusCode::kResourceExhausted,
      StatusCode::kInternal,    StatusCode::kIoError,            StatusCode::kCancelled,
  };
  return codes;
}

TEST(StatusTest, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_TRUE(s.message().empty());
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_TRUE(Status::Ok().ok());
  EXPECT_EQ(Status::Ok().code(), StatusCode::kOk);
}

TEST(StatusTest, ErrorCarriesCodeAndMessage) {
  Status s(StatusCode::kDeadlineExceeded, "pull of table 'w' timed out");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(s.message(), "pull of table 'w' timed out");
  EXPECT_EQ(s.ToString(), "DEADLINE_EXCEEDED: pull of table 'w' timed out");
}

TEST(StatusTest, HelperConstructorsSetTheirCode) {
  struct Case {
    Status status;
    StatusCode code;
  };
  const std::vector<Case> cases = {
      {InvalidArgument("a"), StatusCode::kInvalidArgument},
      {NotFound("a"), StatusCode::kNotFound},
      {OutOfRange("a"), StatusCode::kOutOfRange},
      {DeadlineExceeded("a"), StatusCode::kDeadlineExceeded},
      {DataLoss("a"), StatusCode::kDataLoss},
      {FailedPrecondition("a"), StatusCode::kFailedPrecondition},
      {Unavailable("a"), StatusCode::kUnavailable},
      {ResourceExhausted("a"), StatusCode::kResourceExhausted},
      {Internal("a"), StatusCode::kInternal},
      {IoError("a"), StatusCode::kIoError},
      {Cancelled("a"), StatusCode::kCancelled},
  };
  for (const Case& c : cases) {
    EXPECT_FALSE(c.status.ok()) << StatusCodeName(c.code);
    EXPECT_EQ(c.status.code(), c.code);
    EXPECT_EQ(c.status.message(), "a");
  }
}

TEST(StatusTest, StatusCodeNames) {
  EXPECT_EQ(StatusCodeName(StatusCode::kOk), "OK");
  EXPECT_EQ(StatusCodeName(StatusCode::kInvalidArgument), "INVALID_ARGUMENT");
  EXPECT_EQ(StatusCodeName(StatusCode::kNotFound), "NOT_FOUND");
  EXPECT_EQ(StatusCodeName(StatusCode::kOutOfRange), "OUT_OF_RANGE");
  EXPECT_EQ(StatusCodeName(StatusCode::kDeadlineExceeded), "DEADLINE_EXCEEDED");
  EXPECT_EQ(StatusCodeName(StatusCode::kDataLoss), "DATA_LOSS");
  EXPECT_EQ(StatusCodeName(StatusCode::kFailedPrecondition), "FAILED_PRECONDITION");
  EXPECT_EQ(StatusCodeName(StatusCode::kUnavailable), "UNAVAILABLE");
  EXPECT_EQ(StatusCodeName(StatusCode::kResourceExhausted), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(StatusCodeName(StatusCode::kInternal), "INTERNAL");
  EXPECT_EQ(StatusCodeName(StatusCode::kIoError), "IO_ERROR");
  EXPECT_EQ(StatusCodeName(StatusCode::kCancelled), "CANCELLED");
  // A value outside the enum (e.g. an error_code read off the wire) still has a name.
  EXPECT_EQ(StatusCodeName(static_cast<StatusCode>(99)), "UNKNOWN");
  EXPECT_EQ(StatusCodeName(static_cast<StatusCode>(-1)), "UNKNOWN");
}

TEST(StatusTest, StatusCodeNamesAreDistinct) {
  std::set<std::string_view> names;
  for (StatusCode c : AllCodes()) {
    EXPECT_NE(StatusCodeName(c), "UNKNOWN");
    EXPECT_TRUE(names.insert(StatusCodeName(c)).second) << StatusCodeName(c);
  }
  EXPECT_EQ(names.size(), AllCodes().size());
}

TEST(StatusTest, WithContextPrefixesMessageAndKeepsCode) {
  const Status s = NotFound("no table named 'w'");
  const Status c = s.WithContext("while pulling");
  EXPECT_EQ(c.code(), StatusCode::kNotFound);
  EXPECT_EQ(c.message(), "while pulling: no table named 'w'");
  EXPECT_EQ(c.ToString(), "NOT_FOUND: while pulling: no table named 'w'");
  // The original is unchanged (WithContext returns a copy).
  EXPECT_EQ(s.message(), "no table named 'w'");
  // Contexts nest outermost-first.
  const Status cc = c.WithContext("step 3");
  EXPECT_EQ(cc.message(), "step 3: while pulling: no table named 'w'");
  EXPECT_EQ(cc.code(), StatusCode::kNotFound);
}

TEST(StatusTest, WithContextOnOkStaysOk) {
  const Status c = Status::Ok().WithContext("while pulling");
  EXPECT_TRUE(c.ok());
  EXPECT_TRUE(c.message().empty());
  EXPECT_EQ(c.ToString(), "OK");
}

TEST(ResultTest, HoldsValue) {
  Result<int> r(42);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.status().ok());
  EXPECT_EQ(r.value(), 42);
  EXPECT_EQ(*r, 42);
  r.value() = 7;
  EXPECT_EQ(*r, 7);
}

TEST(ResultTest, HoldsStatus) {
  Result<int> r(OutOfRange("key 10 outside [0,5)"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(r.status().message(), "key 10 outside [0,5)");
}

TEST(ResultTest, ArrowAndConstAccess) {
  const Result<std::string> r(std::string("hello"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 5u);
  EXPECT_EQ(*r, "hello");
  Result<std::string> m(std::string("abc"));
  m->append("d");
  EXPECT_EQ(m.value(), "abcd");
}

TEST(ResultTest, MoveOnlyValue) {
  Result<std::unique_ptr<int>> r(std::make_unique<int>(5));
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 5);
}

// ---- propagation macros ----

Result<int> ParsePositive(int x) {
  if (x <= 0) return InvalidArgument("not positive: " + std::to_string(x));
  return x;
}

Status CheckEven(int x) {
  if (x % 2 != 0) return FailedPrecondition("odd: " + std::to_string(x));
  return Status::Ok();
}

// Returns Result<int>: both macros must work in a function returning Result.
Result<int> DoubleIfValid(int x, int* reached_end) {
  SHARDPS_ASSIGN_OR_RETURN(int v, ParsePositive(x));
  SHARDPS_RETURN_IF_ERROR(CheckEven(v));
  *reached_end += 1;
  return 2 * v;
}

// Returns Status: two ASSIGN_OR_RETURN on separate lines in one scope.
Status SumInto(int a, int b, int* out) {
  SHARDPS_ASSIGN_OR_RETURN(int x, ParsePositive(a));
  SHARDPS_ASSIGN_OR_RETURN(int y, ParsePositive(b));
  *out = x + y;
  return Status::Ok();
}

Result<std::unique_ptr<int>> MakeBox(int v) {
  if (v < 0) return InvalidArgument("negative");
  return std::make_unique<int>(v);
}

Result<int> Unbox(int v) {
  SHARDPS_ASSIGN_OR_RETURN(std::unique_ptr<int> box, MakeBox(v));
  return *box + 1;
}

Status AssignToExisting(int a, int* out) {
  int existing = -1;
  SHARDPS_ASSIGN_OR_RETURN(existing, ParsePositive(a));
  *out = existing;
  return Status::Ok();
}

TEST(MacroTest, AssignOrReturnAndReturnIfErrorSuccessPath) {
  int reached = 0;
  Result<int> r = DoubleIfValid(4, &reached);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, 8);
  EXPECT_EQ(reached, 1);
}

TEST(MacroTest, AssignOrReturnPropagatesError) {
  int reached = 0;
  Result<int> r = DoubleIfValid(-3, &reached);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "not positive: -3");
  EXPECT_EQ(reached, 0);
}

TEST(MacroTest, ReturnIfErrorPropagatesError) {
  int reached = 0;
  Result<int> r = DoubleIfValid(3, &reached);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(r.status().message(), "odd: 3");
  EXPECT_EQ(reached, 0);
}

TEST(MacroTest, TwoAssignsInOneFunction) {
  int out = 0;
  ASSERT_TRUE(SumInto(2, 3, &out).ok());
  EXPECT_EQ(out, 5);

  out = 0;
  Status s = SumInto(2, 0, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "not positive: 0");
  EXPECT_EQ(out, 0);

  s = SumInto(-1, 5, &out);
  EXPECT_EQ(s.message(), "not positive: -1");
  EXPECT_EQ(out, 0);
}

TEST(MacroTest, AssignOrReturnMovesMoveOnlyValues) {
  Result<int> r = Unbox(9);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 10);
  Result<int> e = Unbox(-1);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
}

TEST(MacroTest, AssignOrReturnToExistingVariable) {
  int out = 0;
  ASSERT_TRUE(AssignToExisting(11, &out).ok());
  EXPECT_EQ(out, 11);
  EXPECT_EQ(AssignToExisting(0, &out).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(out, 11);
}

TEST(MacroTest, ReturnIfErrorEvaluatesExpressionOnce) {
  int calls = 0;
  auto counted = [&](bool fail) -> Status {
    ++calls;
    return fail ? Unavailable("gone") : Status::Ok();
  };
  auto run = [&](bool fail) -> Status {
    SHARDPS_RETURN_IF_ERROR(counted(fail));
    return Internal("reached the end");
  };
  Status s = run(false);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  s = run(true);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "gone");
}

TEST(MacroTest, AssignOrReturnEvaluatesExpressionOnce) {
  int calls = 0;
  auto counted = [&](int v) -> Result<int> {
    ++calls;
    return ParsePositive(v);
  };
  auto run = [&](int v) -> Result<int> {
    SHARDPS_ASSIGN_OR_RETURN(int x, counted(v));
    return x * 3;
  };
  Result<int> r = run(2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 6);
  EXPECT_EQ(calls, 1);
  r = run(0);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(calls, 2);
}

}  // namespace
}  // namespace shardps
