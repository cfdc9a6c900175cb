#include "shardps/base/codec.h"

#include "shardps/base/half.h"

#include <bit>
#include <cstring>

namespace shardps {

namespace {

static_assert(std::endian::native == std::endian::little, "payloads are little-endian float32");

// The floats' own bytes. Callers take the raw() fast path and never call Encode/Decode; they are
// here so the codec is complete on its own (and for code that wants a copy).
class Identity final : public Codec {
 public:
  std::string_view name() const override { return kIdentityCodec; }
  uint32_t id() const override { return 0; }
  bool raw() const override { return true; }
  Status CheckEncodedSize(uint64_t values, uint64_t bytes) const override {
    if (bytes == values * sizeof(float)) return Status::Ok();
    return InvalidArgument("identity codec: " + std::to_string(values) + " floats take " +
                           std::to_string(values * sizeof(float)) + " bytes, the payload has " + std::to_string(bytes));
  }
  std::vector<uint8_t> Encode(std::span<const float> values, const CodecContext&) const override {
    std::vector<uint8_t> out(values.size_bytes());
    if (!values.empty()) std::memcpy(out.data(), values.data(), values.size_bytes());
    return out;
  }
  Status Decode(std::span<const uint8_t> bytes, std::span<float> out, const CodecContext& ctx) const override {
    if (bytes.size() != out.size_bytes()) {
      return DataLoss("identity codec: table " + std::to_string(ctx.table) + " chunk " + std::to_string(ctx.chunk) +
                      ": " + std::to_string(bytes.size()) + " bytes do not decode into " + std::to_string(out.size()) +
                      " floats");
    }
    if (!out.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
    return Status::Ok();
  }
};

// IEEE half precision, 2 bytes a value (little-endian binary16), rounded to nearest, ties to even
// (half.h). Values beyond +-65504 become infinities; |v| < 2^-25 becomes a signed zero. Lossy, so
// it is called on copies; the arithmetic around it (sums, optimizer) stays float32.
class Fp16 final : public Codec {
 public:
  std::string_view name() const override { return "fp16"; }
  uint32_t id() const override { return 1; }
  Status CheckEncodedSize(uint64_t values, uint64_t bytes) const override {
    if (values <= UINT64_MAX / 2 && bytes == values * 2) return Status::Ok();
    return InvalidArgument("fp16 codec: " + std::to_string(values) + " values take " + std::to_string(values * 2) +
                           " bytes, the payload has " + std::to_string(bytes));
  }
  std::vector<uint8_t> Encode(std::span<const float> values, const CodecContext&) const override {
    std::vector<uint8_t> out(values.size() * 2);
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t h = FloatToHalf(values[i]);
      out[2 * i] = static_cast<uint8_t>(h);
      out[2 * i + 1] = static_cast<uint8_t>(h >> 8);
    }
    return out;
  }
  Status Decode(std::span<const uint8_t> bytes, std::span<float> out, const CodecContext& ctx) const override {
    if (bytes.size() != out.size() * 2) {
      return DataLoss("fp16 codec: table " + std::to_string(ctx.table) + " chunk " + std::to_string(ctx.chunk) + ": " +
                      std::to_string(bytes.size()) + " bytes do not decode into " + std::to_string(out.size()) + " values");
    }
    for (size_t i = 0; i < out.size(); ++i) out[i] = HalfToFloat(static_cast<uint16_t>(bytes[2 * i] | (bytes[2 * i + 1] << 8)));
    return Status::Ok();
  }
};

}  // namespace

std::span<const Codec* const> RegisteredCodecs() {
  // The registry. To add a codec, list it here (ids are on the wire: never reuse or renumber one).
  // Built once, immutable after.
  static const Identity identity;
  static const Fp16 fp16;
  static const Codec* const all[] = {&identity, &fp16};
  return all;
}

const Codec* FindCodec(std::string_view name) {
  for (const Codec* c : RegisteredCodecs()) {
    if (c->name() == name) return c;
  }
  return nullptr;
}

const Codec* FindCodecById(uint32_t id) {
  for (const Codec* c : RegisteredCodecs()) {
    if (c->id() == id) return c;
  }
  return nullptr;
}

std::string RegisteredCodecNames() {
  std::string s;
  for (const Codec* c : RegisteredCodecs()) {
    if (!s.empty()) s += ", ";
    s += std::string(c->name()) + " (id " + std::to_string(c->id()) + ")";
  }
  return s;
}

Result<const Codec*> LookupCodec(std::string_view name) {
  if (const Codec* c = FindCodec(name)) return c;
  return InvalidArgument("unknown codec '" + std::string(name) + "' (registered: " + RegisteredCodecNames() + ")");
}

Result<const Codec*> LookupCodecById(uint32_t id) {
  if (const Codec* c = FindCodecById(id)) return c;
  return InvalidArgument("unknown codec id " + std::to_string(id) + " (registered: " + RegisteredCodecNames() + ")");
}

}  // namespace shardps
