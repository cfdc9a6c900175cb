// Tests of worker::Teacher (knowledge distillation): reading softmax/MLP models from safetensors
// files (f32 and f16), the architecture read from the shapes, and every refusal naming the file
// and the tensor.
#include "shardps/worker/teacher.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/scratch_dir.h"
#include "shardps/base/half.h"
#include "shardps/storage/file_system.h"
#include "shardps/storage/safetensors.h"

namespace shardps::worker {
namespace {

struct NamedTensor {
  std::string name;
  std::vector<uint64_t> shape;
  std::vector<float> values;
  std::string dtype = "F32";  // or "F16"
};

// A 7-5-3 MLP's tensors (l0.w [7, 5], l0.b [5], l1.w [5, 3], l1.b [3]) with random values.
std::vector<NamedTensor> Mlp(std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<NamedTensor> t = {{"l0.w", {7, 5}, {}}, {"l0.b", {5}, {}}, {"l1.w", {5, 3}, {}}, {"l1.b", {3}, {}}};
  for (auto& x : t) {
    uint64_t n = 1;
    for (uint64_t d : x.shape) n *= d;
    for (uint64_t i = 0; i < n; ++i) x.values.push_back(u(rng));
  }
  return t;
}

void Write(const std::string& path, const std::vector<NamedTensor>& tensors) {
  std::vector<std::vector<uint8_t>> bytes;
  for (const auto& t : tensors) {
    std::vector<uint8_t> b;
    for (float v : t.values) {
      if (t.dtype == "F16") {
        const uint16_t h = FloatToHalf(v);
        b.push_back(static_cast<uint8_t>(h));
        b.push_back(static_cast<uint8_t>(h >> 8));
      } else {
        uint8_t raw[4];
        std::memcpy(raw, &v, 4);
        b.insert(b.end(), raw, raw + 4);
      }
    }
    bytes.push_back(std::move(b));
  }
  std::vector<SafetensorsTensor> st;
  for (size_t i = 0; i < tensors.size(); ++i) st.push_back({tensors[i].name, tensors[i].dtype, tensors[i].shape, bytes[i]});
  PosixFileSystem fs;
  Status s = WriteSafetensors(fs, path, st);
  ASSERT_TRUE(s.ok()) << s.ToString();
}

// Load fails with a message naming the file and `needle` (the tensor, or the offending value).
void ExpectRefused(const std::string& path, int64_t input_dim, int classes, const std::vector<std::string>& needles) {
  auto t = Teacher::Load(path, input_dim, classes);
  ASSERT_FALSE(t.ok()) << path;
  const std::string m = t.status().message();
  EXPECT_NE(m.find(path), std::string::npos) << "the file is not named: " << m;
  for (const auto& n : needles) EXPECT_NE(m.find(n), std::string::npos) << "'" << n << "' not in: " << m;
}

std::vector<float> Inputs(int64_t rows, int64_t dim, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * dim));
  for (float& v : x) v = u(rng);
  return x;
}

// The logits of a Model over the same values, for comparison.
std::vector<float> ModelLogits(const ModelSpec& spec, const std::vector<NamedTensor>& tensors, const std::vector<float>& x,
                               int64_t rows) {
  auto m = Model::Create(spec);
  EXPECT_TRUE(m.ok());
  std::vector<std::span<const float>> params;
  for (const auto& t : tensors) params.emplace_back(t.values);
  std::vector<float> out(static_cast<size_t>(rows * spec.num_classes));
  (*m)->Logits(params, x.data(), rows, out.data());
  return out;
}

TEST(Teacher, LoadsAnMlpAndGivesTheModelsLogits) {
  testing::ScratchDir dir("shardps_teacher");
  const std::string path = dir.string() + "/mlp.safetensors";
  std::mt19937 rng(1);
  const auto tensors = Mlp(rng);
  Write(path, tensors);
  auto t = Teacher::Load(path, 7, 3);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ((*t)->spec().hidden, std::vector<int64_t>{5});
  EXPECT_EQ((*t)->Describe(), "mlp 7-5-3");
  EXPECT_EQ((*t)->source(), path);
  const int64_t rows = 1500;  // over one block of Model::Logits
  const auto x = Inputs(rows, 7, rng);
  std::vector<float> got(static_cast<size_t>(rows * 3));
  (*t)->Logits(x.data(), rows, got.data());
  EXPECT_EQ(got, ModelLogits({.input_dim = 7, .num_classes = 3, .hidden = {5}}, tensors, x, rows));
}

TEST(Teacher, LoadsSoftmaxRegressionAndDeepMlps) {
  testing::ScratchDir dir("shardps_teacher");
  const std::string path = dir.string() + "/m.safetensors";
  Write(path, {{"l0.w", {7, 3}, std::vector<float>(21, 0.5f)}, {"l0.b", {3}, {0, 1, 2}}});
  auto t = Teacher::Load(path, 7, 3);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ((*t)->Describe(), "softmax 7-3");
  Write(path, {{"l0.w", {7, 6}, std::vector<float>(42, 0.1f)}, {"l0.b", {6}, std::vector<float>(6, 0.0f)},
               {"l1.w", {6, 4}, std::vector<float>(24, 0.1f)}, {"l1.b", {4}, std::vector<float>(4, 0.0f)},
               {"l2.w", {4, 3}, std::vector<float>(12, 0.1f)}, {"l2.b", {3}, std::vector<float>(3, 0.0f)}});
  t = Teacher::Load(path, 7, 3);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ((*t)->Describe(), "mlp 7-6-4-3");
}

TEST(Teacher, F16ExportIsWidened) {
  testing::ScratchDir dir("shardps_teacher");
  const std::string path = dir.string() + "/f16.safetensors";
  std::mt19937 rng(2);
  auto tensors = Mlp(rng);
  for (auto& t : tensors) t.dtype = "F16";
  Write(path, tensors);
  auto t = Teacher::Load(path, 7, 3);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  for (auto& t16 : tensors)
    for (float& v : t16.values) v = HalfToFloat(FloatToHalf(v));  // what the file holds, widened
  const auto x = Inputs(10, 7, rng);
  std::vector<float> got(30);
  (*t)->Logits(x.data(), 10, got.data());
  EXPECT_EQ(got, ModelLogits({.input_dim = 7, .num_classes = 3, .hidden = {5}}, tensors, x, 10));
}

TEST(Teacher, RefusesWrongShapesNamingTheTensor) {
  testing::ScratchDir dir("shardps_teacher");
  const std::string path = dir.string() + "/bad.safetensors";
  std::mt19937 rng(3);
  const auto good = Mlp(rng);
  Write(path, good);

  // Layer 1 takes 4 inputs, layer 0 gives 5.
  auto t = good;
  t[2] = {"l1.w", {4, 3}, std::vector<float>(12, 0.0f)};
  Write(path, t);
  ExpectRefused(path, 7, 3, {"'l1.w'", "[4, 3]", "5 outputs"});
  // A bias of the wrong length.
  t = good;
  t[1] = {"l0.b", {6}, std::vector<float>(6, 0.0f)};
  Write(path, t);
  ExpectRefused(path, 7, 3, {"'l0.b'", "[6]", "expected [5]"});
  // A weight stored flat.
  t = good;
  t[0].shape = {35};
  Write(path, t);
  ExpectRefused(path, 7, 3, {"'l0.w'", "[35]", "2 dimensions"});
  // The data has 8 features, the teacher takes 7.
  Write(path, good);
  ExpectRefused(path, 8, 3, {"'l0.w'", "7 inputs", "8 features"});
  // The student has 4 classes, the teacher 3.
  ExpectRefused(path, 7, 4, {"'l1.w'", "3 classes", "4 classes"});
}

TEST(Teacher, RefusesMissingExtraAndNonFiniteTensors) {
  testing::ScratchDir dir("shardps_teacher");
  const std::string path = dir.string() + "/bad.safetensors";
  std::mt19937 rng(4);
  const auto good = Mlp(rng);

  auto t = good;
  t.pop_back();  // no l1.b
  Write(path, t);
  ExpectRefused(path, 7, 3, {"missing tensor 'l1.b'"});
  t = {good[2], good[3]};  // only layer 1
  Write(path, t);
  ExpectRefused(path, 7, 3, {"missing tensor 'l0.w'"});
  t = good;
  t.push_back({"embedding", {2}, {1, 2}});
  Write(path, t);
  ExpectRefused(path, 7, 3, {"'embedding'", "not part of a softmax or MLP model"});
  t = good;
  t[1].values[2] = std::nanf("");
  Write(path, t);
  ExpectRefused(path, 7, 3, {"'l0.b'", "value 2", "not finite"});
  t = good;
  t[2].values[0] = INFINITY;
  Write(path, t);
  ExpectRefused(path, 7, 3, {"'l1.w'", "value 0", "not finite"});
  Write(path, {});
  ExpectRefused(path, 7, 3, {"missing tensor 'l0.w'"});
  ExpectRefused(dir.string() + "/absent.safetensors", 7, 3, {"cannot open"});
}

TEST(Teacher, CreateChecksSizesAndValues) {
  const ModelSpec spec{.input_dim = 2, .num_classes = 2};
  EXPECT_TRUE(Teacher::Create(spec, {{1, 2, 3, 4}, {0, 0}}, "mem").ok());
  auto short_w = Teacher::Create(spec, {{1, 2, 3}, {0, 0}}, "mem");
  ASSERT_FALSE(short_w.ok());
  EXPECT_NE(short_w.status().message().find("'l0.w'"), std::string::npos) << short_w.status().message();
  auto nan_b = Teacher::Create(spec, {{1, 2, 3, 4}, {0, std::nanf("")}}, "mem");
  ASSERT_FALSE(nan_b.ok());
  EXPECT_NE(nan_b.status().message().find("'l0.b'"), std::string::npos) << nan_b.status().message();
  EXPECT_FALSE(Teacher::Create(spec, {{1, 2, 3, 4}}, "mem").ok());
}

}  // namespace
}  // namespace shardps::worker
