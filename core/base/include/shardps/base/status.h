// Status and Result<T>: how errors that come from the outside world (a peer, a file, a flag) travel.
//
//   shardps::Result<int> ParsePort(std::string_view s);
//   auto port = ParsePort(arg);
//   if (!port.ok()) return port.status();   // or SHARDPS_ASSIGN_OR_RETURN(int p, ParsePort(arg));
//
// Assertions are for programmer errors only. Thread safety: values; a const Status may be read
// from any number of threads.
#pragma once

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace shardps {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,   // a bad flag, config value or request shape
  kNotFound = 2,          // unknown table, file, rank
  kOutOfRange = 3,        // key range outside a table
  kDeadlineExceeded = 4,  // a wait ran out of time
  kDataLoss = 5,          // a checksum mismatch, a truncated or malformed frame/file
  kFailedPrecondition = 6,// operation not valid in the current state (stale step, duplicate push)
  kUnavailable = 7,       // a peer or the transport is gone
  kResourceExhausted = 8, // a configured limit was hit (frame size, queue length)
  kInternal = 9,          // a bug surfaced as an error
  kIoError = 10,          // the operating system said no
  kCancelled = 11,        // the operation was abandoned by shutdown
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "DEADLINE_EXCEEDED: pull of table 'w' ..." or "OK".
  std::string ToString() const;

  // Returns a copy whose message is prefixed with `context` ("while X: <message>").
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status OutOfRange(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status DeadlineExceeded(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!std::get<Status>(v_).ok() && "Result constructed from an OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(v_); }

  T& value() & { assert(ok()); return std::get<T>(v_); }
  const T& value() const& { assert(ok()); return std::get<T>(v_); }
  T&& value() && { assert(ok()); return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace shardps

#define SHARDPS_CONCAT_INNER_(a, b) a##b
#define SHARDPS_CONCAT_(a, b) SHARDPS_CONCAT_INNER_(a, b)

#define SHARDPS_RETURN_IF_ERROR(expr)             \
  do {                                            \
    ::shardps::Status shardps_status_ = (expr);   \
    if (!shardps_status_.ok()) return shardps_status_; \
  } while (0)

#define SHARDPS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return tmp.status();                  \
  lhs = std::move(tmp).value()

#define SHARDPS_ASSIGN_OR_RETURN(lhs, expr) \
  SHARDPS_ASSIGN_OR_RETURN_IMPL_(SHARDPS_CONCAT_(shardps_result_, __LINE__), lhs, expr)
