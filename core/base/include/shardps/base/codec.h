// Gradient codecs: how the floats of a push or a pull reply become payload bytes and back, in a
// registry by name. A worker encodes its pushes and decodes its pull replies with the codec its
// ClientOptions name; every request carries the codec's id (wire::Header::codec), and the server
// decodes the push and encodes the pull reply with that codec, or refuses an id it does not know.
//
//   SHARDPS_ASSIGN_OR_RETURN(const Codec* c, LookupCodec("identity"));
//   std::vector<uint8_t> bytes = c->Encode(values, {.table = 0, .chunk = 3, .step = 7, .rank = 2});
//   SHARDPS_RETURN_IF_ERROR(c->Decode(bytes, out, ctx));   // out.size() == values.size()
//
// The identity codec is a fast path: its bytes are the floats themselves (little-endian float32),
// so `raw()` is true and callers send from and receive into their own float buffers without
// calling Encode or Decode at all (no copy). Every other codec is called on copies.
//
// Adding a codec: derive from Codec in core/base/src/codec.cc, give it a new id (ids are on the
// wire: never reuse or renumber one) and list it in RegisteredCodecs() there. Codecs are stateless
// and immutable; state that outlives a call (an error-feedback residual) lives with the caller,
// and randomness is drawn from `CodecContext`, so the same run gives the same bytes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardps/base/status.h"

namespace shardps {

// Where the values being coded belong: for codecs that draw random numbers (keyed by these, so
// both ends and every rerun agree) and for error messages.
struct CodecContext {
  uint32_t table = 0;
  uint32_t chunk = 0;
  uint64_t step = 0;
  int rank = -1;  // the encoding rank
};

class Codec {
 public:
  virtual ~Codec() = default;
  virtual std::string_view name() const = 0;
  // Carried in wire::Header::codec. 0 is the identity codec (what a header that sets no codec
  // means).
  virtual uint32_t id() const = 0;
  // True when the encoding of n floats is exactly their n * 4 little-endian bytes: callers then
  // skip Encode/Decode and move the floats' own memory.
  virtual bool raw() const { return false; }
  // Checks, before anything is allocated or received, that `bytes` can be an encoding of
  // `values` floats; the error names both.
  virtual Status CheckEncodedSize(uint64_t values, uint64_t bytes) const = 0;
  virtual std::vector<uint8_t> Encode(std::span<const float> values, const CodecContext& ctx) const = 0;
  // Fills `out` (as many floats as were encoded) from `bytes`; DATA_LOSS when they do not decode.
  virtual Status Decode(std::span<const uint8_t> bytes, std::span<float> out, const CodecContext& ctx) const = 0;
};

// The name of the codec that sends floats as they are.
inline constexpr std::string_view kIdentityCodec = "identity";

// The registry: every codec a client can name, in a fixed order. Built once from the list in
// codec.cc and immutable after, so it is shared by every caller without locking.
std::span<const Codec* const> RegisteredCodecs();
// The registered codec called `name` / with wire id `id`, or null.
const Codec* FindCodec(std::string_view name);
const Codec* FindCodecById(uint32_t id);
// The same, or InvalidArgument naming what was asked for and listing the registered codecs.
Result<const Codec*> LookupCodec(std::string_view name);
Result<const Codec*> LookupCodecById(uint32_t id);
// "identity (id 0), ...": the registered codecs, in registry order.
std::string RegisteredCodecNames();

}  // namespace shardps
