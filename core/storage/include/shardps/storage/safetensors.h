// Reading safetensors files (https://github.com/huggingface/safetensors format): an 8-byte
// little-endian header length, a JSON header naming each tensor's dtype, shape and byte range,
// then the data. F32, F16 and I8 tensors are read as float32 (I8 multiplied by the F32 tensor
// "<name>.scale" when the file has one, as `shardps ckpt export --dtype int8` writes).
//
//   SHARDPS_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open("model.safetensors"));
//   SHARDPS_ASSIGN_OR_RETURN(std::vector<float> w, f.ReadFloats("l0.w"));
//
// The header is parsed by a small strict JSON reader; every offset and length is checked against
// the file before use.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <utility>
#include <string>
#include <vector>

#include "shardps/storage/file_system.h"
#include "shardps/base/status.h"

namespace shardps {

class SafetensorsFile {
 public:
  struct Tensor {
    std::string dtype;
    std::vector<uint64_t> shape;
    uint64_t begin = 0;  // byte offsets into the data section
    uint64_t end = 0;
    uint64_t elements() const;
  };

  static Result<SafetensorsFile> Open(const std::string& path);
  const std::map<std::string, Tensor>& tensors() const { return tensors_; }
  Result<std::vector<float>> ReadFloats(const std::string& name) const;

 private:
  std::string path_;
  std::string data_;  // the data section
  std::map<std::string, Tensor> tensors_;
};

// One tensor to write: raw little-endian bytes of `dtype` ("F32", "F16", "I8") in `shape`.
struct SafetensorsTensor {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::span<const uint8_t> bytes;
};

// Writes a safetensors file atomically through `fs` (WriteFileAtomically: temporary name, fsync,
// rename, directory fsync; never over a non-regular file): the tensors back to back in the given
// order, and `metadata` (string pairs) as "__metadata__".
Status WriteSafetensors(FileSystem& fs, const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                        const std::vector<std::pair<std::string, std::string>>& metadata = {});

// IEEE half to float (exact); defined with FloatToHalf in the base library (core/base half.cc).
float HalfToFloat(uint16_t h);

}  // namespace shardps
