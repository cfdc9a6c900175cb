#include "shardps/worker/data.h"

#include "shardps/base/random.h"

#include <zlib.h>

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
namespace {

// The largest dense feature matrix a reader builds (floats). A text file can announce a width far
// beyond its own size (a libsvm index of 10^12); that is refused with a message, not attempted.
constexpr uint64_t kMaxDenseFloats = uint64_t{1} << 31;  // 8 GiB

std::string Quoted(const std::string& path) { return "'" + path + "'"; }

// ---------------------------------------------------------------------------------------------
// Whole-file reading. gzip input (detected by the 0x1f 0x8b magic) is inflated, member after
// member; any other file is passed through unchanged, so one path serves both. A gzip file must be
// gzip to its last byte: a truncated stream and data after the last member (trailing garbage,
// which zlib's gz* calls silently ignore) are refused.

Result<std::vector<uint8_t>> ReadAll(const std::string& path) {
  if (path.empty()) return InvalidArgument("no file name given");
  errno = 0;
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rbe"), &std::fclose);
  if (!f) {
    const int e = errno;
    std::string why = e != 0 ? std::strerror(e) : "out of memory";
    if (e == ENOENT || e == ENOTDIR) return NotFound("cannot open " + Quoted(path) + ": " + why);
    return IoError("cannot open " + Quoted(path) + ": " + why);
  }
  constexpr size_t kIn = size_t{1} << 20;     // read the file in 1 MiB blocks
  constexpr size_t kBlock = size_t{1} << 24;  // and grow the output 16 MiB at a time at least
  std::vector<uint8_t> in, out;
  size_t size = 0;      // bytes of `out` in use
  uint64_t offset = 0;  // file offset of in[0]
  auto read_block = [&](size_t* n) -> Status {
    *n = std::fread(in.data(), 1, in.size(), f.get());
    if (*n == 0 && std::ferror(f.get())) {
      return IoError("reading " + Quoted(path) + " failed after " + std::to_string(offset) + " bytes: " + std::strerror(errno));
    }
    return Status::Ok();
  };
  z_stream zs{};
  bool z_open = false;
  struct ZEnd {
    z_stream* zs;
    bool* open;
    ~ZEnd() {
      if (*open) inflateEnd(zs);
    }
  } z_end{&zs, &z_open};
  try {
    in.resize(kIn);
    size_t n = 0;
    SHARDPS_RETURN_IF_ERROR(read_block(&n));
    const bool gz = n >= 2 && in[0] == 0x1f && in[1] == 0x8b;
    if (!gz) {
      while (n > 0) {
        if (out.size() - size < n) out.resize(std::max(out.size() * 2, size + std::max(n, kBlock)));
        std::memcpy(out.data() + size, in.data(), n);
        size += n;
        offset += n;
        SHARDPS_RETURN_IF_ERROR(read_block(&n));
      }
      out.resize(size);
      return out;
    }
    if (inflateInit2(&zs, 15 + 16) != Z_OK) return ResourceExhausted("zlib cannot start inflating " + Quoted(path));
    z_open = true;
    bool in_member = true;
    while (n > 0) {
      zs.next_in = in.data();
      zs.avail_in = static_cast<uInt>(n);
      while (zs.avail_in > 0) {
        if (!in_member) {
          // After a member only another member may follow.
          const bool magic = zs.next_in[0] == 0x1f && (zs.avail_in < 2 || zs.next_in[1] == 0x8b);
          if (!magic) {
            const uint64_t at = offset + static_cast<uint64_t>(zs.next_in - in.data());
            return DataLoss(Quoted(path) + ": trailing garbage at byte offset " + std::to_string(at) +
                            " after the end of the gzip data (" + std::to_string(size) +
                            " decompressed bytes); the file is damaged or not one gzip file");
          }
          inflateReset(&zs);
          in_member = true;
        }
        if (out.size() - size < kBlock) out.resize(std::max(out.size() * 2, size + kBlock));
        zs.next_out = out.data() + size;
        zs.avail_out = static_cast<uInt>(std::min<size_t>(out.size() - size, UINT32_MAX));
        const int r = inflate(&zs, Z_NO_FLUSH);
        size = static_cast<size_t>(zs.next_out - out.data());
        if (r == Z_STREAM_END) {
          in_member = false;
        } else if (r == Z_BUF_ERROR) {
          if (zs.avail_out != 0) break;  // needs more input
        } else if (r != Z_OK) {
          return DataLoss(Quoted(path) + ": gzip decompression failed after " + std::to_string(size) +
                          " bytes: " + (zs.msg ? zs.msg : "error " + std::to_string(r)));
        }
      }
      offset += n;
      SHARDPS_RETURN_IF_ERROR(read_block(&n));
    }
    if (in_member) {
      return DataLoss(Quoted(path) + ": unexpected end of file after " + std::to_string(size) +
                      " decompressed bytes (truncated or corrupt gzip file)");
    }
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory reading " + Quoted(path) + " (" + std::to_string(size) + " bytes read)");
  }
  out.resize(size);
  return out;
}

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

// ---------------------------------------------------------------------------------------------
// Text parsing helpers (strict: the whole token must be a number).

std::string At(const std::string& path, int64_t line) { return path + ":" + std::to_string(line) + ": "; }

// Integer or float via std::from_chars (locale-independent, no leading spaces, no trailing junk).
// One leading '+' is accepted; floats must be finite.
template <typename T>
bool ParseNumber(std::string_view s, T* out) {
  if (!s.empty() && s.front() == '+') {
    s.remove_prefix(1);
    if (!s.empty() && (s.front() == '+' || s.front() == '-')) return false;
  }
  if (s.empty()) return false;
  T v{};
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return false;
  if constexpr (std::is_floating_point_v<T>) {
    if (!std::isfinite(v)) return false;
  }
  *out = v;
  return true;
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

// Calls fn(line_number, line) for every line of `text` (1-based, "\n" or "\r\n" endings).
template <typename Fn>
Status ForEachLine(std::string_view text, Fn&& fn) {
  if (text.size() >= 3 && static_cast<uint8_t>(text[0]) == 0xEF && static_cast<uint8_t>(text[1]) == 0xBB &&
      static_cast<uint8_t>(text[2]) == 0xBF) {
    text.remove_prefix(3);  // UTF-8 byte order mark
  }
  int64_t line_no = 0;
  size_t b = 0;
  while (b < text.size()) {
    size_t e = text.find('\n', b);
    if (e == std::string_view::npos) e = text.size();
    ++line_no;
    SHARDPS_RETURN_IF_ERROR(fn(line_no, text.substr(b, e - b)));
    b = e + 1;
  }
  return Status::Ok();
}

Result<std::string> ReadText(const std::string& path) {
  SHARDPS_ASSIGN_OR_RETURN(std::vector<uint8_t> b, ReadAll(path));
  return std::string(b.begin(), b.end());
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
  if (label_column < 0) return InvalidArgument("csv label column must not be negative, got " + std::to_string(label_column));
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
      if (n < 2) return InvalidArgument(At(path, line_no) + "a row needs a label and at least one feature, found 1 column");
      columns = n;
      first_row_line = line_no;
      d.num_features = n - 1;
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
    d.labels.push_back(label);
    return Status::Ok();
  });
  SHARDPS_RETURN_IF_ERROR(st);
  d.num_samples = static_cast<int64_t>(d.labels.size());
  if (d.num_samples == 0) return InvalidArgument(Quoted(path) + " holds no samples");
  return d;
}

// ---------------------------------------------------------------------------------------------
// Sparse libsvm and batches.

namespace {

std::string PairAt(const std::string& path, int64_t line, size_t pair, std::string_view tok) {
  return At(path, line) + "pair " + std::to_string(pair) + " ('" + std::string(tok) + "'): ";
}

const char* LabelFormatText(LabelFormat f) {
  switch (f) {
    case LabelFormat::kAuto: return "0/1 or -1/+1";
    case LabelFormat::kZeroOne: return "0/1";
    case LabelFormat::kPlusMinusOne: return "-1/+1";
  }
  return "?";
}

}  // namespace

Result<SparseDataset> ReadLibsvmSparse(const std::string& path, const SparseReadOptions& options) {
  SHARDPS_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, ReadAll(path));
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  SparseDataset d;
  d.source = path;
  // The label convention in force: options.labels, or once a file line has shown it (0 or -1),
  // that one (`convention_line` names the line that fixed it).
  LabelFormat convention = options.labels;
  int64_t convention_line = 0;
  Status st = Status::Ok();
  try {
    // Upper bounds of the sizes ('\n' and ':' counts), so the arrays are allocated once.
    const size_t lines = static_cast<size_t>(std::count(text.begin(), text.end(), '\n')) + 1;
    const size_t colons = static_cast<size_t>(std::count(text.begin(), text.end(), ':'));
    d.row_offsets.reserve(lines + 1);
    d.labels.reserve(lines);
    d.ids.reserve(colons);
    d.values.reserve(colons);
    st = ForEachLine(text, [&](int64_t line_no, std::string_view line) -> Status {
      line = Trim(line);
      if (line.empty() || line.front() == '#') return Status::Ok();
      size_t p = 0;
      auto next_token = [&]() -> std::string_view {
        while (p < line.size() && IsSpace(line[p])) ++p;
        const size_t b = p;
        while (p < line.size() && !IsSpace(line[p])) ++p;
        return line.substr(b, p - b);
      };
      // The label.
      const std::string_view label_tok = next_token();
      double lv = 0;
      if (!ParseNumber(label_tok, &lv) || !(lv == 0 || lv == 1 || lv == -1)) {
        return InvalidArgument(At(path, line_no) + "label '" + std::string(label_tok) + "' is not a binary label (" +
                               LabelFormatText(convention) + ")");
      }
      if (lv != 1) {
        const LabelFormat needs = lv == 0 ? LabelFormat::kZeroOne : LabelFormat::kPlusMinusOne;
        if (convention == LabelFormat::kAuto) {
          convention = needs;
          convention_line = line_no;
        } else if (convention != needs) {
          std::string why = convention_line > 0 ? "line " + std::to_string(convention_line) + " uses " : "the labels are ";
          return InvalidArgument(At(path, line_no) + "label '" + std::string(label_tok) + "' but " + why +
                                 LabelFormatText(convention) + " (a file uses 0/1 or -1/+1, not both)");
        }
      }
      const float label = lv == 1 ? 1.0f : 0.0f;
      // The pairs.
      uint64_t prev = 0;
      size_t pair = 0;
      for (std::string_view tok = next_token(); !tok.empty(); tok = next_token()) {
        if (tok.front() == '#') break;  // trailing comment
        ++pair;
        const size_t colon = tok.find(':');
        if (colon == std::string_view::npos) {
          return InvalidArgument(PairAt(path, line_no, pair, tok) + "not <id>:<value>");
        }
        const std::string_view id_text = tok.substr(0, colon);
        uint64_t id = 0;
        if (!ParseNumber(id_text, &id)) {
          return InvalidArgument(PairAt(path, line_no, pair, tok) + "feature id '" + std::string(id_text) +
                                 "' is not an integer in [1, 2^64 - 1]");
        }
        if (id == 0) return InvalidArgument(PairAt(path, line_no, pair, tok) + "feature id 0: ids are 1-based");
        if (id <= prev) {
          return InvalidArgument(PairAt(path, line_no, pair, tok) + "feature id " + std::to_string(id) +
                                 (id == prev ? " repeats the id of pair " : " is below the id of pair ") +
                                 std::to_string(pair - 1) + " (" + std::to_string(prev) +
                                 "); ids within a line must be strictly increasing");
        }
        if (options.max_feature_id != 0 && id > options.max_feature_id) {
          return InvalidArgument(PairAt(path, line_no, pair, tok) + "feature id " + std::to_string(id) +
                                 " exceeds the largest allowed id " + std::to_string(options.max_feature_id));
        }
        const std::string_view value_text = tok.substr(colon + 1);
        float v = 0;
        if (!ParseNumber(value_text, &v)) {
          return InvalidArgument(PairAt(path, line_no, pair, tok) + "value '" + std::string(value_text) +
                                 "' is not a finite number");
        }
        prev = id;
        d.ids.push_back(id);
        d.values.push_back(v);
      }
      if (prev > d.max_id) d.max_id = prev;
      d.labels.push_back(label);
      d.row_offsets.push_back(d.ids.size());
      return Status::Ok();
    });
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory reading " + Quoted(path) + " (" + std::to_string(d.labels.size()) + " rows, " +
                             std::to_string(d.ids.size()) + " nonzeros read)");
  }
  SHARDPS_RETURN_IF_ERROR(st);
  if (d.labels.empty()) return InvalidArgument(Quoted(path) + " holds no samples");
  return d;
}

Status MakeSparseBatch(const SparseDataset& data, std::span<const int64_t> rows, const SparseBatchOptions& options,
                       SparseBatch* out) {
  const int64_t n = data.num_rows();
  const uint64_t extra = options.bias_key ? 1 : 0;
  uint64_t total = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t r = rows[i];
    if (r < 0 || r >= n) {
      return InvalidArgument("batch entry " + std::to_string(i) + " is row " + std::to_string(r) + ", outside [0, " +
                             std::to_string(n) + ") of " + Quoted(data.source));
    }
    const size_t ru = static_cast<size_t>(r);
    total += data.row_offsets[ru + 1] - data.row_offsets[ru] + extra;
  }
  try {
    out->row_offsets.resize(rows.size() + 1);
    out->labels.resize(rows.size());
    out->slots.resize(total);
    out->values.resize(total);
    out->scratch.resize(total);
    out->keys.clear();
    // Every nonzero as (id, position); sorting the pairs orders the ids and, among equal ids, the
    // positions, so the result depends on nothing but the input.
    uint64_t j = 0;
    out->row_offsets[0] = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      const size_t r = static_cast<size_t>(rows[i]);
      if (options.bias_key) {
        out->scratch[j] = {kSparseBiasKey, j};
        out->values[j] = 1.0f;
        ++j;
      }
      for (uint64_t k = data.row_offsets[r]; k < data.row_offsets[r + 1]; ++k, ++j) {
        out->scratch[j] = {data.ids[k], j};
        out->values[j] = data.values[k];
      }
      out->row_offsets[i + 1] = j;
      out->labels[i] = data.labels[r];
    }
    std::sort(out->scratch.begin(), out->scratch.end());
    for (const auto& [id, pos] : out->scratch) {
      if (out->keys.empty() || out->keys.back() != id) {
        if (out->keys.size() == std::numeric_limits<uint32_t>::max()) {
          return ResourceExhausted("a batch of " + std::to_string(rows.size()) + " rows touches more than 2^32 - 1 distinct keys");
        }
        out->keys.push_back(id);
      }
      out->slots[pos] = static_cast<uint32_t>(out->keys.size() - 1);
    }
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory for a batch of " + std::to_string(rows.size()) + " rows (" +
                             std::to_string(total) + " nonzeros) of " + Quoted(data.source));
  }
  return Status::Ok();
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
