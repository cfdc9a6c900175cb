#include "shardps/worker/teacher.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <span>
#include <utility>

#include "shardps/storage/safetensors.h"

namespace shardps::worker {
namespace {

// "l<k>.w" / "l<k>.b": the layer number and kind ('w' or 'b'); false for any other name.
bool ParseLayerName(const std::string& name, uint64_t* layer, char* kind) {
  if (name.size() < 4 || name[0] != 'l' || name[name.size() - 2] != '.') return false;
  const char k = name.back();
  if (k != 'w' && k != 'b') return false;
  const std::string digits = name.substr(1, name.size() - 3);
  if (digits.empty() || digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string::npos) return false;
  if (digits.size() > 1 && digits[0] == '0') return false;  // "l01.w" is not layer 1
  *layer = std::stoull(digits);
  *kind = k;
  return true;
}

std::string ShapeText(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string Plural(int64_t n, const std::string& what) {
  return std::to_string(n) + " " + what + (n == 1 ? "" : what.back() == 's' ? "es" : "s");
}

}  // namespace

Result<std::unique_ptr<Teacher>> Teacher::Create(const ModelSpec& spec, std::vector<std::vector<float>> tables,
                                                 std::string source) {
  auto bad = [&](const std::string& why) { return InvalidArgument("teacher model '" + source + "': " + why); };
  auto model = Model::Create(spec);
  if (!model.ok()) return bad(model.status().message());
  const std::vector<TableSpec> specs = (*model)->Tables(0);
  if (tables.size() != specs.size()) {
    return bad(std::to_string(tables.size()) + " tables given, the model has " + std::to_string(specs.size()));
  }
  for (size_t t = 0; t < specs.size(); ++t) {
    if (tables[t].size() != specs[t].size) {
      return bad("tensor '" + specs[t].name + "' has " + std::to_string(tables[t].size()) + " values, expected " +
                 std::to_string(specs[t].size));
    }
    for (size_t i = 0; i < tables[t].size(); ++i) {
      if (!std::isfinite(tables[t][i])) {
        return bad("tensor '" + specs[t].name + "' value " + std::to_string(i) + " is " + std::to_string(tables[t][i]) +
                   " (not finite): the teacher cannot give soft targets");
      }
    }
  }
  return std::unique_ptr<Teacher>(new Teacher(std::move(*model), std::move(tables), std::move(source)));
}

Result<std::unique_ptr<Teacher>> Teacher::Load(const std::string& path, int64_t input_dim, int num_classes) {
  auto bad = [&](const std::string& why) { return InvalidArgument("teacher model '" + path + "': " + why); };
  auto opened = SafetensorsFile::Open(path);
  if (!opened.ok()) return opened.status().WithContext("teacher model");
  const SafetensorsFile& file = *opened;
  const auto& tensors = file.tensors();

  // Which layers the file holds; anything that is not a layer's weight or bias is refused (it is
  // not a softmax/MLP model file), except the scale of an int8 export.
  uint64_t layers = 0;
  for (const auto& [name, t] : tensors) {
    uint64_t layer = 0;
    char kind = 0;
    if (ParseLayerName(name, &layer, &kind)) {
      layers = std::max(layers, layer + 1);
      continue;
    }
    const std::string suffix = ".scale";
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        tensors.count(name.substr(0, name.size() - suffix.size())) > 0) {
      continue;
    }
    return bad("tensor '" + name + "' is not part of a softmax or MLP model (its tensors are l<k>.w and l<k>.b)");
  }
  if (layers == 0) return bad("missing tensor 'l0.w': the file holds no model layers");

  ModelSpec spec;
  spec.input_dim = input_dim;
  spec.num_classes = num_classes;
  int64_t in = input_dim;  // the width the next layer must take
  for (uint64_t l = 0; l < layers; ++l) {
    const std::string wn = "l" + std::to_string(l) + ".w", bn = "l" + std::to_string(l) + ".b";
    auto w = tensors.find(wn);
    if (w == tensors.end()) return bad("missing tensor '" + wn + "' (the file has layers up to " + std::to_string(layers - 1) + ")");
    auto b = tensors.find(bn);
    if (b == tensors.end()) return bad("missing tensor '" + bn + "'");
    const std::vector<uint64_t>& ws = w->second.shape;
    const std::vector<uint64_t>& bs = b->second.shape;
    if (ws.size() != 2) return bad("tensor '" + wn + "' has shape " + ShapeText(ws) + ", expected 2 dimensions [in, out]");
    if (ws[0] == 0 || ws[1] == 0 || ws[0] > (uint64_t{1} << 31) || ws[1] > (uint64_t{1} << 31)) {
      return bad("tensor '" + wn + "' has shape " + ShapeText(ws) + ": no model has such a layer");
    }
    if (static_cast<int64_t>(ws[0]) != in) {
      if (l == 0) {
        return bad("tensor '" + wn + "' has shape " + ShapeText(ws) + ": the teacher takes " + Plural(static_cast<int64_t>(ws[0]), "input") +
                   ", but the training data (and the student) have " + Plural(input_dim, "feature"));
      }
      return bad("tensor '" + wn + "' has shape " + ShapeText(ws) + ", but layer " + std::to_string(l - 1) + " has " +
                 Plural(in, "output"));
    }
    if (bs.size() != 1 || bs[0] != ws[1]) {
      return bad("tensor '" + bn + "' has shape " + ShapeText(bs) + ", expected [" + std::to_string(ws[1]) + "] (the outputs of '" +
                 wn + "')");
    }
    in = static_cast<int64_t>(ws[1]);
    if (l + 1 < layers) spec.hidden.push_back(in);
  }
  if (in != num_classes) {
    const std::string wn = "l" + std::to_string(layers - 1) + ".w";
    return bad("tensor '" + wn + "' has shape " + ShapeText(tensors.at(wn).shape) + ": the teacher has " + Plural(in, "class") +
               ", but the data (and the student) have " + Plural(num_classes, "class"));
  }
  std::vector<std::vector<float>> tables;
  for (uint64_t l = 0; l < layers; ++l) {
    for (const char* kind : {".w", ".b"}) {
      const std::string name = "l" + std::to_string(l) + kind;
      auto v = file.ReadFloats(name);
      if (!v.ok()) return v.status().WithContext("teacher model");
      tables.push_back(std::move(*v));
    }
  }
  return Create(spec, std::move(tables), path);
}

std::string Teacher::Describe() const {
  const ModelSpec& s = model_->spec();
  std::string d = model_->name() + " " + std::to_string(s.input_dim);
  for (int64_t h : s.hidden) d += "-" + std::to_string(h);
  return d + "-" + std::to_string(s.num_classes);
}

void Teacher::Logits(const float* x, int64_t rows, float* out) const {
  std::vector<std::span<const float>> params(tables_.begin(), tables_.end());
  model_->Logits(params, x, rows, out);
}

}  // namespace shardps::worker
