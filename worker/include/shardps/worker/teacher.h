// The teacher of knowledge distillation: a trained softmax/MLP model read from a safetensors file
// (the final_model.safetensors `shardps train` writes, or `shardps ckpt export` of a checkpoint,
// f32, f16 or int8: the reader widens them to float32), used read-only to compute logits.
//
//   SHARDPS_ASSIGN_OR_RETURN(auto teacher, Teacher::Load("teacher.safetensors", /*input_dim=*/784, /*num_classes=*/10));
//   std::vector<float> logits(rows * 10);
//   teacher->Logits(x, rows, logits.data());
//
// The architecture comes from the tensors: "l0.w" [in, h1], "l0.b" [h1], "l1.w" [h1, h2], ... up to
// the last layer "l<L-1>.w" [h, classes]: one layer is softmax regression, more an MLP with ReLU
// between the layers (the layout of model.h). Load checks everything before any training: every
// layer's weight and bias present with matching shapes, no other tensor (an int8 export's
// "<name>.scale" companions aside), the input width and class count those of the data/student,
// every value finite. Each error names the file and the tensor.
// Thread safety: immutable after Load; Logits may run concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/worker/model.h"

namespace shardps::worker {

class Teacher {
 public:
  // Reads and checks `path`; `input_dim` and `num_classes` are those of the data and the student.
  static Result<std::unique_ptr<Teacher>> Load(const std::string& path, int64_t input_dim, int num_classes);
  // From tables already in memory (the layout of model.h for `spec`); `source` names them in
  // messages. Checks the sizes and that every value is finite.
  static Result<std::unique_ptr<Teacher>> Create(const ModelSpec& spec, std::vector<std::vector<float>> tables,
                                                 std::string source);

  const ModelSpec& spec() const { return model_->spec(); }
  const std::string& source() const { return source_; }
  // "mlp 784-256-10" / "softmax 784-10".
  std::string Describe() const;

  // The logits of `rows` samples (x: rows x input_dim row-major) into out (rows x num_classes),
  // in blocks of Model::Logits: the same rows give the same bits.
  void Logits(const float* x, int64_t rows, float* out) const;

 private:
  Teacher(std::unique_ptr<Model> model, std::vector<std::vector<float>> tables, std::string source)
      : model_(std::move(model)), tables_(std::move(tables)), source_(std::move(source)) {}
  std::unique_ptr<Model> model_;
  std::vector<std::vector<float>> tables_;
  std::string source_;
};

}  // namespace shardps::worker
