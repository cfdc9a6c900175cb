#include "shardps/worker/data.h"

#include <zlib.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>
#include <limits>

namespace shardps::worker {
namespace {

// Reads a whole file, gunzipping it when it starts with the gzip magic (zlib reads plain files
// through the same calls).
Result<std::vector<uint8_t>> ReadAll(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return NotFound("cannot open '" + path + "'");
  gzbuffer(f, 1 << 20);
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 22);
  for (;;) {
    const int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      return DataLoss("'" + path + "': decompression failed after " + std::to_string(out.size()) + " bytes: " + msg);
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  int err = 0;
  const char* msg = gzerror(f, &err);
  std::string tail = (err != Z_OK && err != Z_STREAM_END && msg) ? msg : "";
  gzclose(f);
  if (!tail.empty()) return DataLoss("'" + path + "': " + tail + " after " + std::to_string(out.size()) + " bytes");
  return out;
}

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

struct IdxFile {
  std::vector<uint8_t> bytes;
  std::vector<uint64_t> dims;
  size_t data_offset = 0;
};

Result<IdxFile> ReadIdxFile(const std::string& path, size_t want_dims) {
  IdxFile f;
  SHARDPS_ASSIGN_OR_RETURN(f.bytes, ReadAll(path));
  const auto& b = f.bytes;
  if (b.size() < 4) return DataLoss("'" + path + "': " + std::to_string(b.size()) + " bytes, too short for an IDX header");
  if (b[0] != 0 || b[1] != 0 || b[2] != 0x08) {
    char got[32];
    std::snprintf(got, sizeof(got), "%02x %02x %02x", b[0], b[1], b[2]);
    return DataLoss("'" + path + "': bad IDX magic number at byte offset 0: expected 00 00 08 (unsigned bytes), found " + got);
  }
  const size_t ndims = b[3];
  if (ndims != want_dims) {
    return DataLoss("'" + path + "': IDX file has " + std::to_string(ndims) + " dimensions at byte offset 3, expected " +
                    std::to_string(want_dims));
  }
  f.data_offset = 4 + 4 * ndims;
  if (b.size() < f.data_offset) {
    return DataLoss("'" + path + "': truncated IDX header: " + std::to_string(b.size()) + " bytes, the header needs " +
                    std::to_string(f.data_offset));
  }
  uint64_t total = 1;
  for (size_t i = 0; i < ndims; ++i) {
    const uint64_t d = BigEndian32(b.data() + 4 + 4 * i);
    f.dims.push_back(d);
    // Overflow-safe product, checked against the bytes present before anything is sized by it.
    if (d != 0 && total > std::numeric_limits<uint64_t>::max() / d) {
      return DataLoss("'" + path + "': IDX dimensions overflow at byte offset " + std::to_string(4 + 4 * i));
    }
    total *= d;
  }
  const uint64_t present = b.size() - f.data_offset;
  if (present != total) {
    return DataLoss("'" + path + "': " + std::string(present < total ? "truncated" : "oversized") +
                    " IDX file: the header announces " + std::to_string(total) + " data bytes, " +
                    std::to_string(present) + " present");
  }
  return f;
}

std::string At(const std::string& path, int64_t line) { return path + ":" + std::to_string(line) + ": "; }

template <typename T>
bool ParseNumber(std::string_view s, T* out) {
  if (s.empty()) return false;
  if (s.front() == '+') s.remove_prefix(1);
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

std::vector<std::string_view> Split(std::string_view line, char sep, bool skip_empty) {
  std::vector<std::string_view> out;
  size_t b = 0;
  while (b <= line.size()) {
    size_t e = line.find(sep, b);
    if (e == std::string_view::npos) e = line.size();
    std::string_view tok = line.substr(b, e - b);
    if (!(skip_empty && tok.empty())) out.push_back(tok);
    b = e + 1;
  }
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

Result<std::string> ReadText(const std::string& path) {
  SHARDPS_ASSIGN_OR_RETURN(std::vector<uint8_t> b, ReadAll(path));
  return std::string(b.begin(), b.end());
}

Status CheckLabel(const std::string& path, int64_t line, std::string_view tok, int num_classes, int32_t* label) {
  int64_t v = 0;
  if (!ParseNumber(tok, &v)) return InvalidArgument(At(path, line) + "label '" + std::string(tok) + "' is not an integer");
  if (v < 0 || v >= num_classes) {
    return InvalidArgument(At(path, line) + "label " + std::to_string(v) + " is outside [0, " + std::to_string(num_classes) + ")");
  }
  *label = static_cast<int32_t>(v);
  return Status::Ok();
}

}  // namespace

Result<Dataset> ReadIdx(const std::string& images_path, const std::string& labels_path, int num_classes) {
  if (num_classes < 1 || num_classes > 256) return InvalidArgument("IDX labels are bytes: num_classes must be in [1, 256]");
  SHARDPS_ASSIGN_OR_RETURN(IdxFile images, ReadIdxFile(images_path, 3));
  SHARDPS_ASSIGN_OR_RETURN(IdxFile labels, ReadIdxFile(labels_path, 1));
  if (images.dims[0] != labels.dims[0]) {
    return InvalidArgument("'" + images_path + "' holds " + std::to_string(images.dims[0]) + " images but '" + labels_path +
                           "' holds " + std::to_string(labels.dims[0]) + " labels");
  }
  Dataset d;
  d.source = images_path;
  d.num_samples = static_cast<int64_t>(images.dims[0]);
  d.num_features = static_cast<int64_t>(images.dims[1] * images.dims[2]);
  d.num_classes = num_classes;
  d.labels.resize(static_cast<size_t>(d.num_samples));
  for (int64_t i = 0; i < d.num_samples; ++i) {
    const uint8_t v = labels.bytes[labels.data_offset + i];
    if (v >= num_classes) {
      return InvalidArgument("'" + labels_path + "': label " + std::to_string(v) + " at byte offset " +
                             std::to_string(labels.data_offset + i) + " is outside [0, " + std::to_string(num_classes) + ")");
    }
    d.labels[i] = v;
  }
  d.features.resize(static_cast<size_t>(d.num_samples * d.num_features));
  const uint8_t* px = images.bytes.data() + images.data_offset;
  for (size_t i = 0; i < d.features.size(); ++i) d.features[i] = static_cast<float>(px[i]) / 255.0f;
  return d;
}

Result<Dataset> ReadLibsvm(const std::string& path, int64_t num_features, int num_classes) {
  if (num_classes < 2) return InvalidArgument("num_classes must be at least 2");
  SHARDPS_ASSIGN_OR_RETURN(std::string text, ReadText(path));
  struct Row {
    int32_t label;
    std::vector<std::pair<int64_t, float>> values;
  };
  std::vector<Row> rows;
  int64_t max_index = 0;
  int64_t line_no = 0;
  for (std::string_view line : Split(text, '\n', false)) {
    ++line_no;
    line = Trim(line);
    if (line.empty() || line.front() == '#') continue;
    auto toks = Split(line, ' ', true);
    Row row;
    SHARDPS_RETURN_IF_ERROR(CheckLabel(path, line_no, toks[0], num_classes, &row.label));
    int64_t prev = 0;
    for (size_t t = 1; t < toks.size(); ++t) {
      const std::string_view tok = toks[t];
      const size_t colon = tok.find(':');
      if (colon == std::string_view::npos) {
        return InvalidArgument(At(path, line_no) + "token '" + std::string(tok) + "' is not index:value");
      }
      int64_t idx = 0;
      float val = 0;
      if (!ParseNumber(tok.substr(0, colon), &idx)) {
        return InvalidArgument(At(path, line_no) + "bad feature index '" + std::string(tok.substr(0, colon)) + "' in token '" +
                               std::string(tok) + "'");
      }
      if (idx < 1) return InvalidArgument(At(path, line_no) + "feature index " + std::to_string(idx) + " is not 1-based");
      if (idx <= prev) {
        return InvalidArgument(At(path, line_no) + "feature index " + std::to_string(idx) + " does not increase (after " +
                               std::to_string(prev) + ")");
      }
      if (num_features > 0 && idx > num_features) {
        return InvalidArgument(At(path, line_no) + "feature index " + std::to_string(idx) + " exceeds num_features " +
                               std::to_string(num_features));
      }
      if (!ParseNumber(tok.substr(colon + 1), &val)) {
        return InvalidArgument(At(path, line_no) + "bad value '" + std::string(tok.substr(colon + 1)) + "' in token '" +
                               std::string(tok) + "'");
      }
      prev = idx;
      max_index = std::max(max_index, idx);
      row.values.emplace_back(idx, val);
    }
    rows.push_back(std::move(row));
  }
  if (rows.empty()) return InvalidArgument("'" + path + "' holds no samples");
  Dataset d;
  d.source = path;
  d.num_samples = static_cast<int64_t>(rows.size());
  d.num_features = num_features > 0 ? num_features : max_index;
  if (d.num_features < 1) return InvalidArgument("'" + path + "' has no features");
  d.num_classes = num_classes;
  d.features.assign(static_cast<size_t>(d.num_samples * d.num_features), 0.0f);
  d.labels.resize(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    d.labels[r] = rows[r].label;
    for (auto [idx, v] : rows[r].values) d.features[r * d.num_features + (idx - 1)] = v;
  }
  return d;
}

Result<Dataset> ReadCsv(const std::string& path, int num_classes, bool has_header, int label_column) {
  if (num_classes < 2) return InvalidArgument("num_classes must be at least 2");
  if (label_column < 0) return InvalidArgument("csv label column must not be negative");
  SHARDPS_ASSIGN_OR_RETURN(std::string text, ReadText(path));
  Dataset d;
  d.source = path;
  d.num_classes = num_classes;
  int64_t columns = -1;
  int64_t line_no = 0;
  for (std::string_view line : Split(text, '\n', false)) {
    ++line_no;
    line = Trim(line);
    if (line.empty()) continue;
    if (has_header && line_no == 1) continue;
    auto cells = Split(line, ',', false);
    if (columns < 0) {
      columns = static_cast<int64_t>(cells.size());
      if (label_column >= columns) {
        return InvalidArgument(At(path, line_no) + "label column " + std::to_string(label_column) + " but only " +
                               std::to_string(columns) + " columns");
      }
      if (columns < 2) return InvalidArgument(At(path, line_no) + "a row needs a label and at least one feature");
      d.num_features = columns - 1;
    } else if (static_cast<int64_t>(cells.size()) != columns) {
      return InvalidArgument(At(path, line_no) + std::to_string(cells.size()) + " columns, the first row has " +
                             std::to_string(columns));
    }
    int32_t label = 0;
    for (int64_t c = 0; c < columns; ++c) {
      const std::string_view cell = Trim(cells[c]);
      if (c == label_column) {
        SHARDPS_RETURN_IF_ERROR(CheckLabel(path, line_no, cell, num_classes, &label));
        continue;
      }
      float v = 0;
      if (!ParseNumber(cell, &v)) {
        return InvalidArgument(At(path, line_no) + "column " + std::to_string(c + 1) + ": '" + std::string(cell) +
                               "' is not a number");
      }
      d.features.push_back(v);
    }
    d.labels.push_back(label);
  }
  d.num_samples = static_cast<int64_t>(d.labels.size());
  if (d.num_samples == 0) return InvalidArgument("'" + path + "' holds no samples");
  return d;
}

namespace {
uint64_t SplitMix(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Unbiased integer in [0, bound): Lemire's multiply-shift with rejection.
uint64_t Bounded(uint64_t* state, uint64_t bound) {
  unsigned __int128 m = static_cast<unsigned __int128>(SplitMix(state)) * bound;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < bound) {
    const uint64_t threshold = -bound % bound;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(SplitMix(state)) * bound;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}
}  // namespace

std::vector<int64_t> EpochOrder::Permutation(uint64_t epoch) const {
  std::vector<int64_t> p(static_cast<size_t>(n_));
  for (int64_t i = 0; i < n_; ++i) p[i] = i;
  uint64_t state = seed_ * 0xD1B54A32D192ED03ull ^ (epoch + 1) * 0x9E3779B97F4A7C15ull;
  for (int64_t i = n_ - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(Bounded(&state, static_cast<uint64_t>(i) + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

Result<BatchSlice> SliceOfBatch(int64_t global_batch, int workers, int worker) {
  if (workers < 1) return InvalidArgument("need at least one worker");
  if (worker < 0 || worker >= workers) return InvalidArgument("worker " + std::to_string(worker) + " outside [0, " + std::to_string(workers) + ")");
  if (global_batch < workers || global_batch % workers != 0) {
    return InvalidArgument("global batch " + std::to_string(global_batch) + " is not divisible by " + std::to_string(workers) +
                           " workers");
  }
  const int64_t share = global_batch / workers;
  return BatchSlice{worker * share, (worker + 1) * share};
}

BatchSlice ShardOfRows(int64_t rows, int workers, int worker) {
  const int64_t base = rows / workers, extra = rows % workers;
  const int64_t begin = worker * base + std::min<int64_t>(worker, extra);
  return BatchSlice{begin, begin + base + (worker < extra ? 1 : 0)};
}

void GatherRows(const Dataset& data, std::span<const int64_t> order, std::vector<float>* features,
                std::vector<int32_t>* labels) {
  const size_t f = static_cast<size_t>(data.num_features);
  features->resize(order.size() * f);
  labels->resize(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    std::memcpy(features->data() + i * f, data.row(order[i]), f * sizeof(float));
    (*labels)[i] = data.labels[order[i]];
  }
}

}  // namespace shardps::worker
