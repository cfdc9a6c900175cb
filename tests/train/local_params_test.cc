// LocalParams (training in one process, no servers): a table pushed range by range, in any order,
// ends bit-identical to one whole push; its version advances only once the step's ranges cover it;
// bad ranges get an error naming the table.
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <vector>

#include "shardps/worker/trainer.h"

namespace shardps::worker {
namespace {

constexpr std::chrono::milliseconds kNow{0};

std::vector<TableSpec> Tables() {
  TableSpec w{.name = "w", .size = 1000};
  w.init.kind = InitKind::kUniform;
  w.init.seed = 3;
  w.optimizer.kind = OptimizerKind::kAdam;
  w.optimizer.learning_rate = 0.01f;
  return {w};
}

std::vector<float> Gradient(int step) {
  std::mt19937 rng(100 + step);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> g(1000);
  for (float& x : g) x = d(rng);
  return g;
}

TEST(LocalParams, RangesInAnyOrderEqualOneWholePush) {
  LocalParams whole(Tables()), ranged(Tables());
  std::vector<float> out_whole(1000), out_ranged(1000);
  // Uneven ranges, high ones first.
  const std::vector<std::pair<uint64_t, uint64_t>> ranges = {{700, 1000}, {0, 1}, {1, 333}, {333, 700}};
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> g = Gradient(step);
    ASSERT_TRUE(whole.PushPull(0, g, out_whole, step, {}).wait(kNow).ok());
    for (size_t i = 0; i < ranges.size(); ++i) {
      const auto [b, e] = ranges[i];
      // Until the last range is in, the step's weights are not there to pull.
      std::vector<float> probe(1000);
      EXPECT_EQ(ranged.Pull(0, probe, step + 1).wait(kNow).code(), StatusCode::kFailedPrecondition) << "range " << i;
      ASSERT_TRUE(ranged
                      .PushPull(0, std::span<const float>(g).subspan(b, e - b),
                                std::span<float>(out_ranged).subspan(b, e - b), step, KeyRange{b, e})
                      .wait(kNow)
                      .ok())
          << "step " << step << " range " << i;
    }
    EXPECT_EQ(out_ranged, out_whole) << "step " << step;
    std::vector<float> pulled(1000);
    ASSERT_TRUE(ranged.Pull(0, pulled, step + 1).wait(kNow).ok());
    EXPECT_EQ(pulled, out_whole) << "step " << step;
  }
}

TEST(LocalParams, BadRangesAreRefusedNamingTheTable) {
  LocalParams p(Tables());
  std::vector<float> g(600, 0.5f), out(600);
  ASSERT_TRUE(p.PushPull(0, std::span<const float>(g).subspan(0, 600), out, 0, KeyRange{0, 600}).wait(kNow).ok());
  // Overlaps what this step already has.
  Status s = p.PushPull(0, std::span<const float>(g).subspan(0, 500), std::span<float>(out).subspan(0, 500), 0,
                        KeyRange{500, 1000})
                 .wait(kNow);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'w'"), std::string::npos) << s.ToString();
  // Past the end, empty, and a buffer of the wrong length.
  EXPECT_EQ(p.PushPull(0, g, out, 0, KeyRange{900, 1500}).wait(kNow).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(p.PushPull(0, {}, {}, 0, KeyRange{10, 10}).wait(kNow).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(p.PushPull(0, std::span<const float>(g).subspan(0, 3), std::span<float>(out).subspan(0, 3), 0,
                       KeyRange{600, 604})
                .wait(kNow)
                .code(),
            StatusCode::kInvalidArgument);
  // A step ahead of the table, and an unknown table.
  EXPECT_EQ(p.PushPull(0, std::span<const float>(g).subspan(0, 400), std::span<float>(out).subspan(0, 400), 1,
                       KeyRange{600, 1000})
                .wait(kNow)
                .code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(p.PushPull(7, g, out, 0, {}).wait(kNow).code(), StatusCode::kNotFound);
  // The rest of the step is still accepted.
  ASSERT_TRUE(p.PushPull(0, std::span<const float>(g).subspan(0, 400), std::span<float>(out).subspan(0, 400), 0,
                         KeyRange{600, 1000})
                  .wait(kNow)
                  .ok());
  std::vector<float> w(1000);
  EXPECT_TRUE(p.Pull(0, w, 1).wait(kNow).ok());
}

TEST(LocalParams, AnUnknownOptimizerIsRefusedNamingIt) {
  std::vector<TableSpec> tables = Tables();
  tables[0].optimizer.kind = "no-such-optimizer";
  LocalParams p(tables);
  std::vector<float> g(1000, 0.5f), out(1000);
  Status s = p.PushPull(0, g, out, 0, {}).wait(kNow);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("no-such-optimizer"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("adam"), std::string::npos) << s.ToString();  // the registered names
}

}  // namespace
}  // namespace shardps::worker
