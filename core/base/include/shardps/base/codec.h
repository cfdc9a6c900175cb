// Gradient codecs: how the floats of a push or a pull reply become payload bytes and back, in a
// registry by name. A worker encodes its pushes and decodes its pull replies with the codec its
// ClientOptions name; every request carries the codec's id (wire::Header::codec), and the server
// decodes the push and encodes the pull reply with that codec, or refuses an id it does not know.
//
//   SHARDPS_ASSIGN_OR_RETURN(const Codec* c, LookupCodec("identity"));
//   std::vector<uint8_t> bytes = c->Encode(values, {.table = 0, .chunk = 3, .step = 7, .rank = 2});
//   SHARDPS_RETURN_IF_ERROR(c->Decode(bytes, out, ctx));   // out.size() == values.size()
//
// The codecs (id: name, payload for n values; all fields little-endian; docs/codecs.md has more):
//   0 identity  n float32: the values themselves (raw(), lossless).
//   1 fp16      n binary16, rounded to nearest even.
//   2 int8      per block of 512 values (the last may be shorter): float32 scale = max|v| / 127
//               (one float lower if 127 * scale would overflow), then one int8 per value,
//               round-to-nearest-even(v / scale) in [-127, 127]. ceil(n/512) * 4 + n bytes. A
//               block holding a non-finite value gets a NaN scale, which Decode refuses.
//   3 sign      float32 scale = mean |v|, then ceil(n/8) bytes of sign bits (bit i set: v >= 0,
//               decodes to +scale; clear: -scale; LSB first, padding bits zero). 4 + ceil(n/8).
//   4 topk      uint32 k, k uint32 indices (strictly ascending), k float32 values: the k values
//               of largest |v| (ties: the lower index). 4 + 8k bytes.
//   5 randomk   uint32 k, k float32 values at k distinct indices that both ends draw from a
//               counter-based generator keyed by (table, chunk, step, rank). 4 + 4k bytes.
//   topk and randomk send k = clamp(ceil(density * n), 1, n) values (0 when n is 0; the product
//   in float32); the others decode to 0.
// Encoding is deterministic: the same values and context give the same bytes on every run.
// Decode checks everything (sizes, scales, indices, padding) and returns DATA_LOSS naming the
// codec, table, chunk and what is wrong; it never allocates by a size read from the payload.
//
// The identity codec is a fast path: its bytes are the floats themselves (little-endian float32),
// so `raw()` is true and callers send from and receive into their own float buffers without
// calling Encode or Decode at all (no copy). Every other codec is called on copies.
//
// Adding a codec: derive from Codec in core/base/src/codec.cc, give it a new id (ids are on the
// wire: never reuse or renumber one) and list it in RegisteredCodecs() there. Codecs are stateless
// and immutable; state that outlives a call (an error-feedback residual, EncodeWithFeedback) lives
// with the caller, and randomness is drawn from `CodecContext`, so the same run gives the same
// bytes.
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
  // Who encodes: a worker's index (pushes), or -1 for a server's pull replies. Not a global rank,
  // so that the same run on another server count draws the same numbers.
  int rank = -1;
  // top-k and random-k: the fraction of the values sent, in (0, 1] (at least one value is sent).
  float density = 0.01f;
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
  // False when Decode(Encode(v)) gives back v bit for bit (identity); true for every other codec.
  // A raw codec is never lossy.
  virtual bool lossy() const { return true; }
  // Checks, before anything is allocated or received, that `bytes` can be an encoding of
  // `values` floats; the error names both.
  virtual Status CheckEncodedSize(uint64_t values, uint64_t bytes) const = 0;
  virtual std::vector<uint8_t> Encode(std::span<const float> values, const CodecContext& ctx) const = 0;
  // Fills `out` (as many floats as were encoded) from `bytes`; DATA_LOSS when they do not decode
  // (then `out` holds unspecified values).
  virtual Status Decode(std::span<const uint8_t> bytes, std::span<float> out, const CodecContext& ctx) const = 0;
  // Encode and Decode of those bytes in one call: *bytes = Encode(values), `decoded` (as many
  // floats, may alias `values`) = what they decode to, bit for bit what Decode gives, and Decode's
  // status. Error feedback and the servers' replicas need both; a codec may produce them in one
  // pass (int8 does, block by block in cache). The default calls Encode then Decode.
  virtual Status EncodeDecoded(std::span<const float> values, const CodecContext& ctx, std::vector<uint8_t>* bytes,
                               std::span<float> decoded) const;
};

// Error feedback around any codec: encodes v = values + residual (float32, element by element),
// decodes those bytes again (into the residual's memory) and sets residual = v - decoded, so what
// the compression dropped this call is added to the next call's values (the caller keeps one
// residual per buffer it sends, zero at first). Over calls, the decoded sums plus the last
// residual add up to the sum of the values sent (up to float32 rounding). For a codec that is not
// lossy() it returns codec.Encode(values) and sets the residual to zero. residual.size() must
// equal values.size() (a caller's bug: asserted, and an abort without assertions). When the
// encoding does not decode (int8 and sign refuse the encoding of a non-finite value), it is
// returned as it is, for the receiver to refuse, and the residual is set to zero so that the next
// call starts clean.
std::vector<uint8_t> EncodeWithFeedback(const Codec& codec, std::span<const float> values, std::span<float> residual,
                                        const CodecContext& ctx);

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
