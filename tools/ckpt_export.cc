// shardps ckpt export: one checkpoint version as a single safetensors file.
//   shardps ckpt export DIR[@VERSION|@TAG] --out FILE.safetensors [--dtype f32|f16|int8] [--prune-below X]
//
// The file: 8-byte little-endian header length, a JSON header (padded with spaces to a multiple of
// 8 bytes) naming every tensor's dtype, shape and data_offsets plus "__metadata__" (string values
// only), then the tensors back to back with no holes. Weights only; optimizer state is dropped.
//   f32   the saved float32 weights, bit for bit
//   f16   IEEE binary16, round to nearest even (subnormals kept, overflow to inf, NaN stays NaN)
//   int8  symmetric per tensor: scale = max|w| / 127 (1 if all zero), q = round(w / scale) in
//         [-127, 127]; the scale is stored as the F32 tensor "<name>.scale" of shape [1] and as the
//         metadata value "<name>.scale" (so w ~= q * scale).
// F32 scale tensors come first so every tensor starts at a multiple of its element size.
// Shapes: each table's shape as the manifest records it (TableInfo.shape). A manifest written
// before shapes were recorded has none; for it the former name rule is kept as a legacy fallback:
// "l<k>.w" -> [size / out, out] with out the size of "l<k>.b" (or the width the run's config gives
// layer k); anything else -> [size].
// --prune-below X zeroes every weight with |w| < X before conversion and prints the sparsity of
// what was written (zeros in the output encoding), per tensor and over all tensors.
// The file is written to FILE.tmp and renamed over FILE.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "shardps/base/half.h"
#include "shardps/storage/checkpoint.h"
#include "shardps/storage/safetensors.h"
#include "config.h"

namespace shardps::tools {
namespace {

enum class Dtype { kF32, kF16, kI8 };

struct ExportFlags {
  std::string spec;
  std::string out;
  Dtype dtype = Dtype::kF32;
  std::string dtype_name = "f32";
  std::optional<double> prune_below;
};

int ExportUsage(const std::string& problem) {
  if (!problem.empty()) std::cerr << "shardps ckpt export: " << problem << "\n";
  std::cerr << "usage: shardps ckpt export DIR[@VERSION|@TAG] --out FILE.safetensors [--dtype f32|f16|int8] "
               "[--prune-below X]\n";
  return 2;
}

int ExportFail(const Status& s) {
  std::cerr << "shardps ckpt export: " << s.message() << "\n";
  return 1;
}

// Shortest-enough decimal that reads back as the same float32 (or double).
std::string FloatText(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
  return buf;
}

struct Tensor {
  std::string name;
  std::vector<uint64_t> shape;
  const char* dtype = "F32";
  std::vector<unsigned char> bytes;
  bool is_scale = false;
  uint64_t zeros = 0;     // in the output encoding (weights only)
  uint64_t elements = 0;
};

template <typename T>
void Append(std::vector<unsigned char>* out, const T& v) {
  const auto* p = reinterpret_cast<const unsigned char*>(&v);
  out->insert(out->end(), p, p + sizeof(T));
}

// ---- Legacy fallback for manifests without shapes (see the top of this file).

bool ParseLayer(const std::string& name, char kind, uint64_t* layer) {
  // "l<k>.w" / "l<k>.b"
  if (name.size() < 4 || name[0] != 'l' || name[name.size() - 2] != '.' || name.back() != kind) return false;
  const std::string digits = name.substr(1, name.size() - 3);
  if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) return false;
  *layer = std::stoull(digits);
  return true;
}

// The output width of each layer according to the run's config: hidden..., num_classes.
std::vector<uint64_t> ConfigWidths(const ckpt::Manifest& m) {
  std::vector<uint64_t> widths;
  if (m.config().empty()) return widths;
  auto c = ParseTrainConfig(m.config(), "checkpoint manifest");
  if (!c.ok()) {
    std::cerr << "shardps ckpt export: warning: cannot parse the run's config in the manifest ("
              << c.status().message() << "); shapes come from the table sizes alone\n";
    return widths;
  }
  for (int64_t h : c->hidden()) widths.push_back(h > 0 ? static_cast<uint64_t>(h) : 0);
  widths.push_back(c->data().num_classes() > 0 ? static_cast<uint64_t>(c->data().num_classes()) : 0);
  return widths;
}

// Legacy: the shape of a table in a manifest that records none, told from its name.
std::vector<std::vector<uint64_t>> LegacyShapesFromNames(const ckpt::Manifest& m) {
  const std::vector<uint64_t> widths = ConfigWidths(m);
  auto table_size = [&](const std::string& name) -> std::optional<uint64_t> {
    for (const auto& t : m.tables()) {
      if (t.name() == name) return t.size();
    }
    return std::nullopt;
  };
  std::vector<std::vector<uint64_t>> shapes;
  for (const auto& t : m.tables()) {
    uint64_t layer = 0;
    std::vector<uint64_t> shape{t.size()};
    if (ParseLayer(t.name(), 'b', &layer)) {
      if (layer < widths.size() && widths[layer] != t.size()) {
        std::cerr << "shardps ckpt export: warning: table '" << t.name() << "' has " << t.size()
                  << " elements but the run's config gives layer " << layer << " width " << widths[layer] << "\n";
      }
    } else if (ParseLayer(t.name(), 'w', &layer)) {
      std::optional<uint64_t> out = table_size("l" + std::to_string(layer) + ".b");
      if (!out && layer < widths.size()) out = widths[layer];
      if (out && *out > 0 && t.size() % *out == 0) {
        shape = {t.size() / *out, *out};
      } else {
        std::cerr << "shardps ckpt export: warning: cannot tell the shape of table '" << t.name() << "' ("
                  << t.size() << " elements); writing it flat\n";
      }
    }
    shapes.push_back(std::move(shape));
  }
  return shapes;
}

// Every table's shape as the manifest records it (VerifyCheckpoint checked that it holds the
// table's size); by the legacy name rule for tables of a manifest written before shapes were
// recorded.
std::vector<std::vector<uint64_t>> Shapes(const ckpt::Manifest& m, const std::string& vpath) {
  bool all_recorded = true;
  for (const auto& t : m.tables()) all_recorded &= !t.shape().empty() || t.row_dim() > 0;  // sparse: ids + values
  std::vector<std::vector<uint64_t>> shapes(static_cast<size_t>(m.tables_size()));
  if (!all_recorded) {
    std::cerr << "shardps ckpt export: note: checkpoint " << vpath
              << " records no table shapes (written by an older shardps); shapes follow the table names\n";
    shapes = LegacyShapesFromNames(m);
  }
  for (int t = 0; t < m.tables_size(); ++t) {
    const auto& shape = m.tables(t).shape();
    if (!shape.empty()) shapes[static_cast<size_t>(t)].assign(shape.begin(), shape.end());
  }
  return shapes;
}

Result<ExportFlags> ParseFlags(int argc, char** argv) {
  // argv: ckpt export SPEC [flags...]
  ExportFlags f;
  f.spec = argv[2];
  if (f.spec.empty() || f.spec[0] == '-') return InvalidArgument("expected a checkpoint DIR[@VERSION|@TAG] first");
  bool have_dtype = false;
  for (int i = 3; i < argc; ++i) {
    std::string a = argv[i], v;
    bool has_value = false;
    if (const size_t eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
      v = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    if (a != "--out" && a != "--dtype" && a != "--prune-below") return InvalidArgument("unknown argument '" + a + "'");
    if (!has_value) {
      if (i + 1 >= argc) return InvalidArgument(a + " needs a value");
      v = argv[++i];
    }
    if (a == "--out") {
      if (v.empty()) return InvalidArgument("--out needs a file name");
      f.out = v;
    } else if (a == "--dtype") {
      if (have_dtype) return InvalidArgument("--dtype given twice");
      have_dtype = true;
      if (v == "f32") f.dtype = Dtype::kF32;
      else if (v == "f16") f.dtype = Dtype::kF16;
      else if (v == "int8") f.dtype = Dtype::kI8;
      else return InvalidArgument("bad --dtype '" + v + "' (expected f32, f16 or int8)");
      f.dtype_name = v;
    } else {
      char* end = nullptr;
      errno = 0;
      const double x = v.empty() ? NAN : std::strtod(v.c_str(), &end);
      if (v.empty() || end != v.c_str() + v.size() || errno == ERANGE || !std::isfinite(x) || x < 0) {
        return InvalidArgument("bad --prune-below '" + v + "' (expected a finite number >= 0)");
      }
      f.prune_below = x;
    }
  }
  if (f.out.empty()) return InvalidArgument("--out FILE.safetensors is required");
  return f;
}

// A sparse table's saved rows: their weights, ordered by key, into `w` (row after row); returns the
// keys as the I64 tensor "<name>.ids" (each uint64 key's bits as a two's-complement int64).
Result<Tensor> ReadSparse(CheckpointReader& reader, uint32_t table, std::vector<float>* w) {
  const auto& ti = reader.manifest().tables(static_cast<int>(table));
  const uint32_t d = ti.row_dim(), floats = d * (1 + ti.slots());
  std::vector<std::pair<uint64_t, std::vector<float>>> rows;
  Status s = reader.ReadSparseRows(table, [&](std::span<const uint64_t> keys, std::span<const float> data) {
    for (size_t i = 0; i < keys.size(); ++i) rows.emplace_back(keys[i], std::vector<float>(data.begin() + i * floats, data.begin() + i * floats + d));
    return Status::Ok();
  });
  if (!s.ok()) return s.WithContext("reading sparse table '" + ti.name() + "'");
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  Tensor ids;
  ids.name = ti.name() + ".ids";
  ids.dtype = "I64";
  ids.shape = {rows.size()};
  ids.elements = rows.size();
  w->clear();
  w->reserve(rows.size() * d);
  for (const auto& [key, row] : rows) {
    Append(&ids.bytes, key);
    w->insert(w->end(), row.begin(), row.end());
  }
  return ids;
}

// Converts one table's weights (pruned already) into `t`.
Status Convert(const std::vector<float>& w, Dtype dtype, Tensor* t, float* scale_out) {
  t->elements = w.size();
  switch (dtype) {
    case Dtype::kF32:
      t->dtype = "F32";
      t->bytes.resize(w.size() * 4);
      if (!w.empty()) std::memcpy(t->bytes.data(), w.data(), w.size() * 4);
      for (float x : w) t->zeros += x == 0.0f;
      break;
    case Dtype::kF16:
      t->dtype = "F16";
      t->bytes.reserve(w.size() * 2);
      for (float x : w) {
        const uint16_t h = FloatToHalf(x);
        t->zeros += (h & 0x7fffu) == 0;
        Append(&t->bytes, h);
      }
      break;
    case Dtype::kI8: {
      t->dtype = "I8";
      float max_abs = 0;
      for (float x : w) {
        if (!std::isfinite(x)) return InvalidArgument("table '" + t->name + "' holds a non-finite weight; cannot quantize it to int8");
        max_abs = std::max(max_abs, std::fabs(x));
      }
      float scale = max_abs / 127.0f;
      if (max_abs == 0) scale = 1.0f;
      else if (!(scale > 0)) scale = std::numeric_limits<float>::denorm_min();  // max|w| / 127 underflowed
      *scale_out = scale;
      t->bytes.reserve(w.size());
      for (float x : w) {
        double q = std::nearbyint(static_cast<double>(x) / static_cast<double>(scale));
        q = std::min(127.0, std::max(-127.0, q));
        const auto b = static_cast<int8_t>(q);
        t->zeros += b == 0;
        Append(&t->bytes, b);
      }
      break;
    }
  }
  return Status::Ok();
}

Status Export(FileSystem& fs, const ExportFlags& f) {
  // The output is checked before the (possibly long) read and conversion.
  SHARDPS_RETURN_IF_ERROR(CheckOutputFile(fs, f.out, "--out"));
  SHARDPS_ASSIGN_OR_RETURN(CheckpointVersion v, ResolveCheckpoint(f.spec, [](const std::string& w) {
                             std::cerr << "shardps ckpt export: warning: " << w << "\n";
                           }));
  const std::string vpath = v.path;
  const uint64_t version = v.version;
  CheckpointReader reader(std::move(v));
  const ckpt::Manifest& m = reader.manifest();
  if (m.tables_size() == 0) return DataLoss("checkpoint " + vpath + " lists no tables");
  const std::vector<std::vector<uint64_t>> shapes = Shapes(m, vpath);

  // The weights, then the (pruned) conversion of each table.
  std::vector<Tensor> weights(static_cast<size_t>(m.tables_size()));
  std::vector<Tensor> scales;
  uint64_t pruned = 0;
  std::vector<Tensor> ids;  // sparse tables' ids, I64: first in the data (8-byte aligned)
  for (int t = 0; t < m.tables_size(); ++t) {
    const auto& ti = m.tables(t);
    std::vector<float> w, scratch;
    std::vector<uint64_t> shape = shapes[static_cast<size_t>(t)];
    if (ti.row_dim() > 0) {
      SHARDPS_ASSIGN_OR_RETURN(Tensor id_tensor, ReadSparse(reader, static_cast<uint32_t>(t), &w));
      shape = {id_tensor.elements, ti.row_dim()};
      ids.push_back(std::move(id_tensor));
    } else try {
      w.resize(ti.size());
      scratch.resize(ti.size() * ti.slots());
    } catch (const std::exception&) {
      return ResourceExhausted("table '" + ti.name() + "' (" + std::to_string(ti.size()) + " elements) does not fit in memory");
    }
    if (ti.row_dim() == 0) {
      Status s = reader.Read(static_cast<uint32_t>(t), 0, ti.size(), w, scratch);
      if (!s.ok()) return s.WithContext("reading table '" + ti.name() + "'");
      scratch = {};
    }
    if (f.prune_below) {
      for (float& x : w) {
        if (std::fabs(static_cast<double>(x)) < *f.prune_below) {
          pruned += x != 0.0f;
          x = 0.0f;
        }
      }
    }
    Tensor& out = weights[static_cast<size_t>(t)];
    out.name = ti.name();
    out.shape = shape;
    float scale = 1.0f;
    SHARDPS_RETURN_IF_ERROR(Convert(w, f.dtype, &out, &scale));
    if (f.dtype == Dtype::kI8) {
      Tensor st;
      st.name = ti.name() + ".scale";
      st.shape = {1};
      st.dtype = "F32";
      st.is_scale = true;
      Append(&st.bytes, scale);
      scales.push_back(std::move(st));
    }
  }
  for (const Tensor& s : ids) {
    for (const Tensor& w : weights) {
      if (w.name == s.name) return InvalidArgument("table '" + w.name + "' clashes with the ids of a sparse table");
    }
  }
  for (const Tensor& s : scales) {
    for (const Tensor& w : weights) {
      if (w.name == s.name) return InvalidArgument("table '" + w.name + "' clashes with the int8 scale tensor of the same name");
    }
  }

  // Data order: I64 ids first (8-byte aligned), F32 scales (4-byte aligned), then the weights in
  // manifest order.
  std::vector<const Tensor*> order;
  for (const Tensor& s : ids) order.push_back(&s);
  for (const Tensor& s : scales) order.push_back(&s);
  for (const Tensor& w : weights) order.push_back(&w);

  uint64_t total_zeros = 0, total_elements = 0;
  for (const Tensor& w : weights) {
    total_zeros += w.zeros;
    total_elements += w.elements;
  }
  const double sparsity = total_elements ? static_cast<double>(total_zeros) / static_cast<double>(total_elements) : 0.0;

  std::vector<std::pair<std::string, std::string>> meta = {
      {"format", "pt"},
      {"producer", "shardps ckpt export"},
      {"checkpoint", vpath},
      {"checkpoint_version", std::to_string(version)},
      {"step", std::to_string(m.step())},
      {"epoch", std::to_string(m.epoch())},
      {"seed", std::to_string(m.seed())},
      {"source_dtype", "F32"},
      {"dtype", f.dtype == Dtype::kF32 ? "F32" : f.dtype == Dtype::kF16 ? "F16" : "I8"},
  };
  if (f.dtype == Dtype::kI8) {
    meta.emplace_back("quantization", "symmetric per-tensor int8: w ~= q * scale, scale = max|w| / 127");
    for (const Tensor& s : scales) {
      float scale;
      std::memcpy(&scale, s.bytes.data(), 4);
      meta.emplace_back(s.name, FloatText(scale, 9));
    }
  }
  if (f.prune_below) {
    meta.emplace_back("prune_below", FloatText(*f.prune_below, 17));
    meta.emplace_back("sparsity", FloatText(sparsity, 9));
  }
  meta.emplace_back("config", m.config());

  std::vector<SafetensorsTensor> tensors;
  uint64_t offset = 0;
  for (const Tensor* t : order) {
    tensors.push_back({t->name, t->dtype, t->shape, t->bytes});
    offset += t->bytes.size();
  }
  Status written = WriteSafetensors(fs, f.out, tensors, meta);
  if (!written.ok()) return written.WithContext("--out");

  std::printf("exported %s (version %llu, step %llu): %d tensors as %s, %llu data bytes -> %s\n", vpath.c_str(),
              static_cast<unsigned long long>(version), static_cast<unsigned long long>(m.step()), m.tables_size(),
              f.dtype_name.c_str(), static_cast<unsigned long long>(offset), f.out.c_str());
  if (f.prune_below) {
    std::printf("pruned %llu weights with |w| < %s\n", static_cast<unsigned long long>(pruned),
                FloatText(*f.prune_below, 17).c_str());
    for (const Tensor& w : weights) {
      std::printf("sparsity tensor %s %.6f (%llu/%llu zeros)\n", w.name.c_str(),
                  w.elements ? static_cast<double>(w.zeros) / static_cast<double>(w.elements) : 0.0,
                  static_cast<unsigned long long>(w.zeros), static_cast<unsigned long long>(w.elements));
    }
    std::printf("sparsity all %.6f (%llu/%llu zeros)\n", sparsity, static_cast<unsigned long long>(total_zeros),
                static_cast<unsigned long long>(total_elements));
  }
  std::fflush(stdout);
  return Status::Ok();
}

}  // namespace

// argv: "ckpt" "export" SPEC flags...
int CkptExportMain(int argc, char** argv) {
  if (argc < 3) return ExportUsage("");
  auto f = ParseFlags(argc, argv);
  if (!f.ok()) return ExportUsage(f.status().message());
  try {
    PosixFileSystem fs;
    Status s = Export(fs, *f);
    return s.ok() ? 0 : ExportFail(s);
  } catch (const std::exception& e) {
    return ExportFail(Internal(std::string("unexpected error: ") + e.what()));
  }
}

}  // namespace shardps::tools
