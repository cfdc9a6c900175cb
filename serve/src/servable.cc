#include "shardps/serve/servable.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <new>

namespace shardps::serve {
namespace {

// "l<k>.w" / "l<k>.b" -> k, or -1.
int LayerOf(const std::string& name, char kind) {
  if (name.size() < 4 || name[0] != 'l' || name[name.size() - 2] != '.' || name.back() != kind) return -1;
  const std::string digits = name.substr(1, name.size() - 3);
  if (digits.empty() || digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoi(digits);
}

}  // namespace

Result<MappedFloats> MappedFloats::Allocate(size_t n) {
  MappedFloats m;
  if (n == 0) return m;
  void* p = ::mmap(nullptr, n * sizeof(float), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return ResourceExhausted("cannot map " + std::to_string(n * sizeof(float)) + " bytes for weights: " + std::strerror(errno));
  }
  m.data_ = static_cast<float*>(p);
  m.size_ = n;
  return m;
}

MappedFloats& MappedFloats::operator=(MappedFloats&& o) noexcept {
  if (this != &o) {
    this->~MappedFloats();
    data_ = o.data_;
    size_ = o.size_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

MappedFloats::~MappedFloats() {
  if (data_ != nullptr) ::munmap(data_, size_ * sizeof(float));
  data_ = nullptr;
  size_ = 0;
}

Result<worker::ModelSpec> ModelSpecFromManifest(const CheckpointManifest& m, const std::string& where) {
  std::map<int, CheckpointManifest::Table> weights, biases;
  for (const auto& t : m.tables()) {
    if (t.row_dim != 0) return InvalidArgument(where + ": table '" + t.name + "' is sparse; only dense layered models (softmax, mlp) can be served");
    int k = LayerOf(t.name, 'w');
    if (k >= 0) {
      weights[k] = t;
      continue;
    }
    k = LayerOf(t.name, 'b');
    if (k >= 0) {
      biases[k] = t;
      continue;
    }
    return InvalidArgument(where + ": table '" + t.name + "' is not a layer of a softmax or mlp model (l<k>.w, l<k>.b)");
  }
  if (weights.empty()) return InvalidArgument(where + ": the checkpoint holds no layer tables (l0.w, l0.b)");
  worker::ModelSpec spec;
  const int layers = static_cast<int>(weights.size());
  uint64_t in = 0;
  for (int k = 0; k < layers; ++k) {
    auto w = weights.find(k);
    auto b = biases.find(k);
    if (w == weights.end() || b == biases.end()) {
      return InvalidArgument(where + ": layer " + std::to_string(k) + " lacks its " + (w == weights.end() ? "weights" : "bias") +
                             " table (layers must be l0..l" + std::to_string(layers - 1) + ", each with .w and .b)");
    }
    const uint64_t out = b->second.size;
    if (out == 0 || w->second.size % out != 0) {
      return InvalidArgument(where + ": table '" + w->second.name + "' (" + std::to_string(w->second.size) +
                             " floats) is not a whole number of rows of its bias's " + std::to_string(out));
    }
    const uint64_t rows = w->second.size / out;
    const auto& shape = w->second.shape;
    if (!shape.empty() && (shape.size() != 2 || shape[0] != rows || shape[1] != out)) {
      return InvalidArgument(where + ": table '" + w->second.name + "' has a recorded shape that is not [" + std::to_string(rows) +
                             ", " + std::to_string(out) + "]");
    }
    if (k == 0) {
      in = rows;
      spec.input_dim = static_cast<int64_t>(rows);
    } else if (rows != in) {
      return InvalidArgument(where + ": layer " + std::to_string(k) + " takes " + std::to_string(rows) + " inputs but layer " +
                             std::to_string(k - 1) + " gives " + std::to_string(in));
    }
    if (k + 1 < layers) spec.hidden.push_back(static_cast<int64_t>(out));
    else spec.num_classes = static_cast<int>(out);
    in = out;
  }
  if (biases.size() != weights.size()) return InvalidArgument(where + ": bias tables without weight tables");
  return spec;
}

Result<std::shared_ptr<const Servable>> LoadServable(CheckpointVersion v, const std::string& source) {
  const std::string where = "checkpoint " + v.path;
  if (!v.status.ok()) return v.status;
  SHARDPS_ASSIGN_OR_RETURN(worker::ModelSpec spec, ModelSpecFromManifest(v.manifest, where));
  SHARDPS_ASSIGN_OR_RETURN(std::unique_ptr<worker::Model> model, worker::Model::Create(spec));
  auto s = std::make_shared<Servable>();
  s->registry = v.path.substr(0, v.path.find_last_of('/'));
  s->source = source;
  s->version = v.version;
  s->step = v.manifest.step();
  CheckpointReader reader(std::move(v));
  const std::vector<TableSpec> tables = model->Tables(/*seed=*/0);
  try {
    for (const TableSpec& t : tables) {
      uint32_t slots = 0;  // the saved optimizer state per weight: checked by FindTable, not read
      for (const auto& mt : reader.checkpoint().manifest.tables()) {
        if (mt.name == t.name) slots = mt.slots;
      }
      SHARDPS_ASSIGN_OR_RETURN(uint32_t index, reader.FindTable(t.name, t.size, slots));
      SHARDPS_ASSIGN_OR_RETURN(MappedFloats w, MappedFloats::Allocate(t.size));
      SHARDPS_RETURN_IF_ERROR(reader.Read(index, 0, t.size, w.span(), {}));
      s->bytes += t.size * sizeof(float);
      s->params.push_back(std::move(w));
    }
  } catch (const std::bad_alloc&) {
    return ResourceExhausted(where + ": out of memory loading the weights");
  }
  s->model = std::move(model);
  for (const auto& p : s->params) s->views.emplace_back(p.data(), p.size());
  return std::shared_ptr<const Servable>(std::move(s));
}

}  // namespace shardps::serve
