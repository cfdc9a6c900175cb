#include "shardps/storage/safetensors.h"

#include "shardps/base/half.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "shardps/storage/checkpoint.h"
#include "shardps/base/json.h"

namespace shardps {
namespace {

// A strict reader for the JSON subset safetensors headers use: objects, arrays, strings,
// non-negative integers (and, inside "__metadata__", strings only).
class Json {
 public:
  explicit Json(const std::string& s) : s_(s) {}
  struct Value {
    enum Kind { kString, kNumber, kArray, kObject } kind = kString;
    std::string str;
    uint64_t num = 0;
    std::vector<Value> items;
    std::vector<std::string> keys;  // object: keys[i] names values[i]
    std::vector<Value> values;
  };
  Result<Value> Parse() {
    SHARDPS_ASSIGN_OR_RETURN(Value v, ParseValue(0));
    Skip();
    if (i_ != s_.size()) return Error("trailing characters");
    return v;
  }

 private:
  Status Error(const std::string& what) const {
    return DataLoss("safetensors header: " + what + " at byte " + std::to_string(i_) + " of the header");
  }
  void Skip() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  Result<std::string> ParseString() {
    if (i_ >= s_.size() || s_[i_] != '"') return Error("expected a string");
    ++i_;
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      if (s_[i_] == '\\') {
        if (++i_ >= s_.size()) break;
        const char e = s_[i_];
        if (e == 'u') {
          if (i_ + 4 >= s_.size()) return Error("bad \\u escape");
          out += '?';  // names and dtypes are ASCII; other text is kept as a placeholder
          i_ += 4;
        } else {
          out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
        }
        ++i_;
        continue;
      }
      out += s_[i_++];
    }
    if (i_ >= s_.size()) return Error("unterminated string");
    ++i_;
    return out;
  }
  Result<Value> ParseValue(int depth) {
    if (depth > 8) return Error("nesting too deep");
    Skip();
    if (i_ >= s_.size()) return Error("unexpected end");
    Value v;
    const char c = s_[i_];
    if (c == '"') {
      v.kind = Value::kString;
      SHARDPS_ASSIGN_OR_RETURN(v.str, ParseString());
    } else if (c >= '0' && c <= '9') {
      v.kind = Value::kNumber;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
        if (v.num > (UINT64_MAX - 9) / 10) return Error("number too large");
        v.num = v.num * 10 + (s_[i_++] - '0');
      }
    } else if (c == '[') {
      v.kind = Value::kArray;
      ++i_;
      Skip();
      if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
      for (;;) {
        SHARDPS_ASSIGN_OR_RETURN(Value item, ParseValue(depth + 1));
        v.items.push_back(std::move(item));
        Skip();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == ']') { ++i_; break; }
        return Error("expected ',' or ']'");
      }
    } else if (c == '{') {
      v.kind = Value::kObject;
      ++i_;
      Skip();
      if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
      for (;;) {
        Skip();
        SHARDPS_ASSIGN_OR_RETURN(std::string key, ParseString());
        Skip();
        if (i_ >= s_.size() || s_[i_] != ':') return Error("expected ':'");
        ++i_;
        SHARDPS_ASSIGN_OR_RETURN(Value item, ParseValue(depth + 1));
        v.keys.push_back(std::move(key));
        v.values.push_back(std::move(item));
        Skip();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == '}') { ++i_; break; }
        return Error("expected ',' or '}'");
      }
    } else {
      return Error(std::string("unexpected character '") + c + "'");
    }
    return v;
  }
  const std::string& s_;
  size_t i_ = 0;
};

// I64: a sparse table's ids in an export; read as part of a file, not as weights.
size_t DtypeBytes(const std::string& d) { return d == "F32" ? 4 : d == "F16" ? 2 : d == "I8" ? 1 : d == "I64" ? 8 : 0; }

}  // namespace

Status WriteSafetensors(FileSystem& fs, const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                        const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return IoError("'" + path + "' is a directory");
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      header += (i ? "," : "") + JsonQuote(metadata[i].first) + ":" + JsonQuote(metadata[i].second);
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafetensorsTensor& t = tensors[i];
    std::string shape = "[";
    for (size_t d = 0; d < t.shape.size(); ++d) shape += (d ? "," : "") + std::to_string(t.shape[d]);
    shape += "]";
    header += (i || !metadata.empty() ? "," : "") + JsonQuote(t.name) + ":{\"dtype\":\"" + t.dtype +
              "\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + t.bytes.size()) + "]}";
    offset += t.bytes.size();
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  const uint64_t n = header.size();
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  std::vector<std::span<const uint8_t>> parts = {std::span<const uint8_t>(len, 8),
                                                 std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(header.data()), n)};
  for (const SafetensorsTensor& t : tensors) parts.push_back(t.bytes);
  return WriteFileAtomically(fs, path, parts);
}


uint64_t SafetensorsFile::Tensor::elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

Result<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open '" + path + "'");
  uint8_t len_bytes[8];
  if (!in.read(reinterpret_cast<char*>(len_bytes), 8)) return DataLoss("'" + path + "' is shorter than 8 bytes");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  if (header_len > (uint64_t{100} << 20) || 8 + header_len > size) {
    return DataLoss("'" + path + "': header length " + std::to_string(header_len) + " does not fit the file of " +
                    std::to_string(size) + " bytes");
  }
  SafetensorsFile f;
  f.path_ = path;
  std::string header(header_len, '\0');
  in.seekg(8);
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  f.data_.resize(size - 8 - header_len);
  in.read(f.data_.data(), static_cast<std::streamsize>(f.data_.size()));
  if (!in) return IoError("reading '" + path + "' failed");
  Json parser(header);
  auto root = parser.Parse();
  if (!root.ok()) return root.status().WithContext("'" + path + "'");
  if (root->kind != Json::Value::kObject) return DataLoss("'" + path + "': the header is not a JSON object");
  for (size_t f_i = 0; f_i < root->keys.size(); ++f_i) {
    const std::string& name = root->keys[f_i];
    const Json::Value& v = root->values[f_i];
    if (name == "__metadata__") continue;
    Tensor t;
    bool have_offsets = false;
    if (v.kind != Json::Value::kObject) return DataLoss("'" + path + "': tensor '" + name + "' is not an object");
    for (size_t k_i = 0; k_i < v.keys.size(); ++k_i) {
      const std::string& k = v.keys[k_i];
      const Json::Value& x = v.values[k_i];
      if (k == "dtype" && x.kind == Json::Value::kString) t.dtype = x.str;
      if (k == "shape" && x.kind == Json::Value::kArray) {
        for (const auto& d : x.items) {
          if (d.kind != Json::Value::kNumber) return DataLoss("'" + path + "': bad shape of '" + name + "'");
          t.shape.push_back(d.num);
        }
      }
      if (k == "data_offsets" && x.kind == Json::Value::kArray && x.items.size() == 2 &&
          x.items[0].kind == Json::Value::kNumber && x.items[1].kind == Json::Value::kNumber) {
        t.begin = x.items[0].num;
        t.end = x.items[1].num;
        have_offsets = true;
      }
    }
    const size_t eb = DtypeBytes(t.dtype);
    if (eb == 0) return InvalidArgument("'" + path + "': tensor '" + name + "' has unsupported dtype '" + t.dtype + "'");
    if (!have_offsets || t.begin > t.end || t.end > f.data_.size()) {
      return DataLoss("'" + path + "': tensor '" + name + "' has data offsets outside the file");
    }
    uint64_t n = 1;
    for (uint64_t d : t.shape) {
      if (d != 0 && n > UINT64_MAX / d) return DataLoss("'" + path + "': shape of '" + name + "' overflows");
      n *= d;
    }
    if (n > UINT64_MAX / eb || n * eb != t.end - t.begin) {
      return DataLoss("'" + path + "': tensor '" + name + "' holds " + std::to_string(t.end - t.begin) + " bytes, its shape needs " +
                      std::to_string(n * eb));
    }
    f.tensors_.emplace(name, std::move(t));
  }
  return f;
}

Result<std::vector<float>> SafetensorsFile::ReadFloats(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return NotFound("'" + path_ + "' has no tensor '" + name + "'");
  const Tensor& t = it->second;
  if (t.dtype == "I64") return InvalidArgument("'" + path_ + "': tensor '" + name + "' holds ids (I64), not weights");
  const uint64_t n = t.elements();
  std::vector<float> out(n);
  const char* p = data_.data() + t.begin;
  if (t.dtype == "F32") {
    std::memcpy(out.data(), p, n * 4);
  } else if (t.dtype == "F16") {
    for (uint64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out[i] = HalfToFloat(h);
    }
  } else {  // I8
    float scale = 1.0f;
    auto s = tensors_.find(name + ".scale");
    if (s != tensors_.end()) {
      if (s->second.dtype != "F32" || s->second.elements() != 1) return DataLoss("'" + path_ + "': bad '" + name + ".scale'");
      std::memcpy(&scale, data_.data() + s->second.begin, 4);
    }
    for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<float>(static_cast<int8_t>(p[i])) * scale;
  }
  return out;
}

}  // namespace shardps
