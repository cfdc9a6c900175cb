#include "shardps/worker/data.h"

#include "shardps/base/random.h"

#include "file_input.h"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string_view>
#include <utility>

namespace shardps::worker {

using input::At;
using input::ForEachLine;
using input::IsSpace;
using input::ParseNumber;
using input::Quoted;
using input::ReadAll;
using input::ReadText;
using input::Trim;

namespace {

// The largest dense feature matrix a reader builds (floats). A text file can announce a width far
// beyond its own size (a libsvm index of 10^12); that is refused with a message, not attempted.
constexpr uint64_t kMaxDenseFloats = uint64_t{1} << 31;  // 8 GiB

// ---------------------------------------------------------------------------------------------
// IDX

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

const char* IdxTypeName(uint8_t t) {
  switch (t) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0B: return "short";
    case 0x0C: return "int";
    case 0x0D: return "float";
    case 0x0E: return "double";
    default: return "not an IDX type";
  }
}

std::string Hex(const uint8_t* b, size_t n) {
  std::string s;
  char buf[4];
  for (size_t i = 0; i < n; ++i) {
    std::snprintf(buf, sizeof(buf), "%02x", b[i]);
    if (i) s += ' ';
    s += buf;
  }
  return s;
}

struct IdxFile {
  std::vector<uint8_t> bytes;  // the whole (decompressed) file
  std::vector<uint64_t> dims;
  size_t data_offset = 0;      // where the data starts: 4 + 4 * ndims
};

// Reads an unsigned-byte IDX file of `want_dims` dimensions and checks that the data present is
// exactly what the header announces. Byte offsets in messages are offsets in the decompressed file.
Result<IdxFile> ReadIdxFile(const std::string& path, size_t want_dims, const char* what) {
  IdxFile f;
  SHARDPS_ASSIGN_OR_RETURN(f.bytes, ReadAll(path));
  const std::vector<uint8_t>& b = f.bytes;
  const size_t have = b.size();

  // Magic: 00 00 <type> <ndims>. Check whatever part of it is present before complaining about length.
  static constexpr uint8_t kMagic[3] = {0x00, 0x00, 0x08};
  const size_t magic_present = std::min<size_t>(have, 3);
  if (!std::equal(b.begin(), b.begin() + magic_present, kMagic)) {
    std::string msg = Quoted(path) + ": not an unsigned-byte IDX " + what + " file: expected bytes 00 00 08 at byte offset 0, found " +
                      Hex(b.data(), magic_present);
    if (magic_present == 3 && b[0] == 0 && b[1] == 0) {
      msg += std::string(" (IDX data type 0x") + Hex(b.data() + 2, 1) + ", " + IdxTypeName(b[2]) + "; only 0x08, unsigned byte, is supported)";
    }
    return InvalidArgument(std::move(msg));
  }
  if (have < 4) {
    return DataLoss(Quoted(path) + ": truncated IDX header: expected at least 4 bytes, the file has " + std::to_string(have));
  }
  const size_t ndims = b[3];
  if (ndims != want_dims) {
    return InvalidArgument(Quoted(path) + ": IDX " + what + " file must have " + std::to_string(want_dims) +
                           (want_dims == 1 ? " dimension" : " dimensions") + ", byte offset 3 says " + std::to_string(ndims));
  }
  f.data_offset = 4 + 4 * ndims;
  if (have < f.data_offset) {
    return DataLoss(Quoted(path) + ": truncated IDX header: expected " + std::to_string(f.data_offset) +
                    " header bytes for " + std::to_string(ndims) + " dimensions, the file has " + std::to_string(have));
  }
  // Overflow-safe product of the announced sizes, compared with the bytes present before anything
  // is sized by it.
  uint64_t total = 1;
  bool overflow = false;
  for (size_t i = 0; i < ndims; ++i) {
    const uint64_t d = BigEndian32(b.data() + 4 + 4 * i);
    f.dims.push_back(d);
    if (d == 0) {
      return InvalidArgument(Quoted(path) + ": IDX dimension " + std::to_string(i) + " (byte offset " + std::to_string(4 + 4 * i) +
                             ") is 0: the file holds no " + what);
    }
    if (!overflow && total > std::numeric_limits<uint64_t>::max() / d) overflow = true;
    if (!overflow) total *= d;
  }
  std::string dims_text;
  for (size_t i = 0; i < ndims; ++i) dims_text += (i ? " x " : "") + std::to_string(f.dims[i]);
  const uint64_t present = have - f.data_offset;
  if (overflow) {
    return DataLoss(Quoted(path) + ": IDX header announces " + dims_text + " bytes of data, more than 2^64; the file has " +
                    std::to_string(present) + " data bytes (" + std::to_string(have) + " in all)");
  }
  if (present < total) {
    return DataLoss(Quoted(path) + ": truncated IDX file: the header announces " + dims_text + " = " + std::to_string(total) +
                    " data bytes (" + std::to_string(f.data_offset) + " + " + std::to_string(total) +
                    " bytes in all), the file has " + std::to_string(present) + " data bytes (" + std::to_string(have) +
                    " in all)");
  }
  if (present > total) {
    return DataLoss(Quoted(path) + ": IDX file is longer than its header says: " + dims_text + " = " + std::to_string(total) +
                    " data bytes expected, " + std::to_string(present) + " present (" + std::to_string(present - total) +
                    " trailing bytes from byte offset " + std::to_string(f.data_offset + total) + ")");
  }
  return f;
}

Status ParseLabel(const std::string& path, int64_t line, std::string_view tok, int num_classes, int32_t* label) {
  int64_t v = 0;
  if (!ParseNumber(tok, &v)) {
    return InvalidArgument(At(path, line) + "label '" + std::string(tok) + "' is not an integer");
  }
  if (v < 0 || v >= num_classes) {
    return InvalidArgument(At(path, line) + "label '" + std::string(tok) + "' is outside [0, " + std::to_string(num_classes) +
                           ") (num_classes " + std::to_string(num_classes) + ")");
  }
  *label = static_cast<int32_t>(v);
  return Status::Ok();
}

Status CheckDenseSize(const std::string& path, int64_t rows, int64_t cols) {
  const uint64_t r = static_cast<uint64_t>(rows), c = static_cast<uint64_t>(cols);
  if (c != 0 && r > kMaxDenseFloats / c) {
    return ResourceExhausted(Quoted(path) + ": a dense " + std::to_string(rows) + " x " + std::to_string(cols) +
                             " feature matrix exceeds the limit of " + std::to_string(kMaxDenseFloats) + " floats");
  }
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------

Result<Dataset> ReadIdx(const std::string& images_path, const std::string& labels_path, int num_classes) {
  if (num_classes < 1 || num_classes > 256) {
    return InvalidArgument("IDX labels are bytes: num_classes must be in [1, 256], got " + std::to_string(num_classes));
  }
  SHARDPS_ASSIGN_OR_RETURN(IdxFile images, ReadIdxFile(images_path, 3, "images"));
  SHARDPS_ASSIGN_OR_RETURN(IdxFile labels, ReadIdxFile(labels_path, 1, "labels"));
  if (images.dims[0] != labels.dims[0]) {
    return InvalidArgument(Quoted(images_path) + " holds " + std::to_string(images.dims[0]) + " images but " +
                           Quoted(labels_path) + " holds " + std::to_string(labels.dims[0]) + " labels");
  }
  // Both sizes are now bounded by bytes actually present in memory.
  Dataset d;
  d.source = images_path;
  d.num_samples = static_cast<int64_t>(images.dims[0]);
  d.num_features = static_cast<int64_t>(images.dims[1] * images.dims[2]);
  d.num_classes = num_classes;
  const uint8_t* lab = labels.bytes.data() + labels.data_offset;
  for (int64_t i = 0; i < d.num_samples; ++i) {
    if (lab[i] >= num_classes) {
      return InvalidArgument(Quoted(labels_path) + ": label " + std::to_string(lab[i]) + " at byte offset " +
                             std::to_string(labels.data_offset + static_cast<size_t>(i)) + " (sample " + std::to_string(i) +
                             ") exceeds num_classes " + std::to_string(num_classes));
    }
  }
  try {
    d.labels.assign(lab, lab + d.num_samples);
    labels.bytes = {};
    const size_t n = static_cast<size_t>(d.num_samples) * static_cast<size_t>(d.num_features);
    d.features.resize(n);
    const uint8_t* px = images.bytes.data() + images.data_offset;
    float* out = d.features.data();
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(px[i]) / 255.0f;
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory for the " + std::to_string(d.num_samples) + " x " +
                             std::to_string(d.num_features) + " features of " + Quoted(images_path));
  }
  return d;
}

Result<Dataset> ReadLibsvm(const std::string& path, int64_t num_features, int num_classes) {
  if (num_classes < 1) return InvalidArgument("num_classes must be at least 1, got " + std::to_string(num_classes));
  if (num_features < 0) return InvalidArgument("num_features must be >= 0 (0 infers it), got " + std::to_string(num_features));
  SHARDPS_ASSIGN_OR_RETURN(std::string text, ReadText(path));

  // First pass: parse and validate into a sparse form, so the dense width is known (and checked)
  // before the dense matrix is allocated.
  std::vector<int32_t> labels;
  std::vector<size_t> row_begin;                       // into idx/val
  std::vector<int64_t> idx;
  std::vector<float> val;
  int64_t max_index = 0;
  Status st = ForEachLine(text, [&](int64_t line_no, std::string_view line) -> Status {
    line = Trim(line);
    if (line.empty() || line.front() == '#') return Status::Ok();
    // Tokens separated by spaces or tabs.
    std::vector<std::string_view> toks;
    size_t p = 0;
    while (p < line.size()) {
      while (p < line.size() && IsSpace(line[p])) ++p;
      size_t q = p;
      while (q < line.size() && !IsSpace(line[q])) ++q;
      if (q > p) toks.push_back(line.substr(p, q - p));
      p = q;
    }
    int32_t label = 0;
    SHARDPS_RETURN_IF_ERROR(ParseLabel(path, line_no, toks[0], num_classes, &label));
    labels.push_back(label);
    row_begin.push_back(idx.size());
    int64_t prev = 0;
    for (size_t t = 1; t < toks.size(); ++t) {
      const std::string_view tok = toks[t];
      if (tok.front() == '#') break;  // SVMlight-style trailing comment
      const std::string tok_s(tok);
      const size_t colon = tok.find(':');
      if (colon == std::string_view::npos) {
        return InvalidArgument(At(path, line_no) + "token '" + tok_s + "' is not <index>:<value>");
      }
      int64_t i = 0;
      if (!ParseNumber(tok.substr(0, colon), &i)) {
        return InvalidArgument(At(path, line_no) + "feature index '" + std::string(tok.substr(0, colon)) + "' in token '" +
                               tok_s + "' is not an integer");
      }
      if (i < 1) {
        return InvalidArgument(At(path, line_no) + "feature index " + std::to_string(i) + " in token '" + tok_s +
                               "': indices are 1-based");
      }
      if (i <= prev) {
        return InvalidArgument(At(path, line_no) + "feature index " + std::to_string(i) + " in token '" + tok_s +
                               "' does not increase (previous index " + std::to_string(prev) + ")");
      }
      if (num_features > 0 && i > num_features) {
        return InvalidArgument(At(path, line_no) + "feature index " + std::to_string(i) + " in token '" + tok_s +
                               "' exceeds num_features " + std::to_string(num_features));
      }
      float v = 0;
      if (!ParseNumber(tok.substr(colon + 1), &v)) {
        return InvalidArgument(At(path, line_no) + "value '" + std::string(tok.substr(colon + 1)) + "' in token '" + tok_s +
                               "' is not a finite number");
      }
      prev = i;
      max_index = std::max(max_index, i);
      idx.push_back(i);
      val.push_back(v);
    }
    return Status::Ok();
  });
  SHARDPS_RETURN_IF_ERROR(st);
  if (labels.empty()) return InvalidArgument(Quoted(path) + " holds no samples");
  Dataset d;
  d.source = path;
  d.num_samples = static_cast<int64_t>(labels.size());
  d.num_features = num_features > 0 ? num_features : max_index;
  d.num_classes = num_classes;
  if (d.num_features < 1) return InvalidArgument(Quoted(path) + " has no features (no index:value pairs and num_features 0)");
  SHARDPS_RETURN_IF_ERROR(CheckDenseSize(path, d.num_samples, d.num_features));
  try {
    d.features.assign(static_cast<size_t>(d.num_samples) * static_cast<size_t>(d.num_features), 0.0f);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory for the " + std::to_string(d.num_samples) + " x " +
                             std::to_string(d.num_features) + " features of " + Quoted(path));
  }
  d.labels = std::move(labels);
  row_begin.push_back(idx.size());
  const size_t width = static_cast<size_t>(d.num_features);
  for (size_t r = 0; r + 1 < row_begin.size(); ++r) {
    float* row = d.features.data() + r * width;
    for (size_t k = row_begin[r]; k < row_begin[r + 1]; ++k) row[idx[k] - 1] = val[k];
  }
  return d;
}

Result<Dataset> ReadCsv(const std::string& path, int num_classes, bool has_header, int label_column) {
  if (num_classes < 1) return InvalidArgument("num_classes must be at least 1, got " + std::to_string(num_classes));
  if (label_column < kNoLabelColumn) {
    return InvalidArgument("csv label column must be a column index, or kNoLabelColumn (-1) for none, got " +
                           std::to_string(label_column));
  }
  const bool labelled = label_column != kNoLabelColumn;
  int64_t rows = 0;
  SHARDPS_ASSIGN_OR_RETURN(std::string text, ReadText(path));
  Dataset d;
  d.source = path;
  d.num_classes = num_classes;
  int64_t columns = -1;
  int64_t first_row_line = 0;
  bool header_pending = has_header;
  std::vector<std::string_view> cells;
  Status st = ForEachLine(text, [&](int64_t line_no, std::string_view line) -> Status {
    if (Trim(line).empty()) return Status::Ok();
    if (header_pending) {  // the first non-blank line
      header_pending = false;
      return Status::Ok();
    }
    cells.clear();
    size_t b = 0;
    for (;;) {
      const size_t e = line.find(',', b);
      cells.push_back(Trim(line.substr(b, e == std::string_view::npos ? std::string_view::npos : e - b)));
      if (e == std::string_view::npos) break;
      b = e + 1;
    }
    const int64_t n = static_cast<int64_t>(cells.size());
    if (columns < 0) {
      if (label_column >= n) {
        return InvalidArgument(At(path, line_no) + "label column " + std::to_string(label_column) + " but the row has only " +
                               std::to_string(n) + (n == 1 ? " column" : " columns"));
      }
      if (labelled && n < 2) return InvalidArgument(At(path, line_no) + "a row needs a label and at least one feature, found 1 column");
      columns = n;
      first_row_line = line_no;
      d.num_features = labelled ? n - 1 : n;
    } else if (n != columns) {
      return InvalidArgument(At(path, line_no) + std::to_string(n) + " columns, but the first row (line " +
                             std::to_string(first_row_line) + ") has " + std::to_string(columns));
    }
    int32_t label = 0;
    for (int64_t c = 0; c < n; ++c) {
      const std::string_view cell = cells[static_cast<size_t>(c)];
      if (c == label_column) {
        SHARDPS_RETURN_IF_ERROR(ParseLabel(path, line_no, cell, num_classes, &label));
        continue;
      }
      float v = 0;
      if (!ParseNumber(cell, &v)) {
        return InvalidArgument(At(path, line_no) + "column " + std::to_string(c) + ": '" + std::string(cell) +
                               "' is not a finite number");
      }
      d.features.push_back(v);
    }
    if (labelled) d.labels.push_back(label);
    ++rows;
    return Status::Ok();
  });
  SHARDPS_RETURN_IF_ERROR(st);
  d.num_samples = rows;
  if (d.num_samples == 0) return InvalidArgument(Quoted(path) + " holds no samples");
  return d;
}

// ---------------------------------------------------------------------------------------------
// Epoch order.
//
// SplitMix64 (Steele, Lea, Flood 2014): state += 0x9E3779B97F4A7C15, output = Mix(state).
// The stream of epoch e starts at state Mix(seed ^ Mix(e)) with Mix the SplitMix64 finaliser
// applied to (x + 0x9E3779B97F4A7C15), so streams of different (seed, epoch) start far apart.
// Fisher-Yates from the top: for i = n-1 down to 1, j = Bounded(i + 1), swap(p[i], p[j]).
// Bounded(b) is Lemire's multiply-shift with rejection: unbiased, and the same on every platform.

namespace {

uint64_t Mix(uint64_t x) { return SplitMix64(x); }

uint64_t Next(uint64_t* state) {
  const uint64_t out = Mix(*state);
  *state += 0x9E3779B97F4A7C15ull;
  return out;
}

// Unbiased integer in [0, bound), bound >= 1.
uint64_t Bounded(uint64_t* state, uint64_t bound) {
  unsigned __int128 m = static_cast<unsigned __int128>(Next(state)) * bound;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < bound) {
    const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
    while (low < threshold) {
      m = static_cast<unsigned __int128>(Next(state)) * bound;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

}  // namespace

std::vector<int64_t> EpochOrder::Permutation(uint64_t epoch) const {
  if (n_ <= 0) return {};
  std::vector<int64_t> p(static_cast<size_t>(n_));
  for (int64_t i = 0; i < n_; ++i) p[static_cast<size_t>(i)] = i;
  uint64_t state = Mix(seed_ ^ Mix(epoch));
  for (int64_t i = n_ - 1; i > 0; --i) {
    const uint64_t j = Bounded(&state, static_cast<uint64_t>(i) + 1);
    std::swap(p[static_cast<size_t>(i)], p[j]);
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// Partitioning.

Result<BatchSlice> SliceOfBatch(int64_t global_batch, int workers, int worker) {
  if (workers < 1) return InvalidArgument("need at least one worker, got " + std::to_string(workers));
  if (worker < 0 || worker >= workers) {
    return InvalidArgument("worker " + std::to_string(worker) + " is outside [0, " + std::to_string(workers) + ")");
  }
  if (global_batch < 1) return InvalidArgument("global batch must be positive, got " + std::to_string(global_batch));
  if (global_batch % workers != 0) {
    return InvalidArgument("global batch " + std::to_string(global_batch) + " is not divisible by " + std::to_string(workers) +
                           (workers == 1 ? " worker" : " workers"));
  }
  const int64_t share = global_batch / workers;
  return BatchSlice{worker * share, (worker + 1) * share};
}

// Invalid arguments (workers < 1, worker out of range, rows < 0) give the empty slice [0, 0).
BatchSlice ShardOfRows(int64_t rows, int workers, int worker) {
  if (workers < 1 || worker < 0 || worker >= workers || rows <= 0) return BatchSlice{0, 0};
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
    const int64_t r = order[i];
    assert(r >= 0 && r < data.num_samples && "GatherRows: row index out of range");
    if (f) std::memcpy(features->data() + i * f, data.row(r), f * sizeof(float));
    (*labels)[i] = data.labels[static_cast<size_t>(r)];
  }
}

}  // namespace shardps::worker
