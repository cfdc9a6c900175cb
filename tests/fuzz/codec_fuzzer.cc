// libFuzzer target: the gradient codecs (codec.h). The input's first bytes pick a registered
// codec, a value count (at most 1 << 16) and a CodecContext; the rest is used twice:
//   - as a payload from a remote peer: CheckEncodedSize, then (if it passes) Decode. Decode must
//     not crash and either succeed or return DATA_LOSS with a message; a payload whose size
//     CheckEncodedSize refuses must not decode either (the check is a necessary one).
//   - as float32 values: Encode must give a payload CheckEncodedSize accepts, the same bytes a
//     second time, and one Decode accepts (int8 and sign refuse the encoding of a non-finite value,
//     and only then); top-k and random-k deliver the values they send exactly, the identity codec
//     all of them bit for bit. EncodeWithFeedback runs on them too.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

#include "shardps/base/codec.h"

namespace {

using namespace shardps;

// codec, value count (3 bytes), table, chunk, step (2 bytes), rank, density kind, density (4 bytes).
constexpr size_t kHeaderBytes = 14;
constexpr uint64_t kMaxValues = uint64_t{1} << 16;

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeaderBytes) return 0;
  const auto codecs = RegisteredCodecs();
  const Codec& codec = *codecs[data[0] % codecs.size()];
  const uint64_t n = (data[1] | uint64_t{data[2]} << 8 | uint64_t{data[3]} << 16) % (kMaxValues + 1);
  CodecContext ctx;
  ctx.table = data[4];
  ctx.chunk = data[5];
  ctx.step = data[6] | uint64_t{data[7]} << 8;
  ctx.rank = static_cast<int8_t>(data[8]);  // -128..127: -1 is a server
  // (0, 1] in 256ths, or (data[9] odd) any float: NaN, negative, huge.
  if (data[9] & 1) {
    std::memcpy(&ctx.density, data + 10, sizeof(float));
  } else {
    ctx.density = static_cast<float>(data[10] + 1) / 256.0f;
  }
  const std::span<const uint8_t> rest(data + kHeaderBytes, size - kHeaderBytes);

  // 1. The rest as a payload for n values.
  {
    std::vector<float> out(n);
    const Status size_ok = codec.CheckEncodedSize(n, rest.size());
    const Status decoded = codec.Decode(rest, out, ctx);
    if (!size_ok.ok()) {
      Check(size_ok.code() == StatusCode::kInvalidArgument && !size_ok.message().empty());
      Check(!decoded.ok());  // CheckEncodedSize is necessary: what it refuses never decodes
    }
    if (!decoded.ok()) Check(decoded.code() == StatusCode::kDataLoss && !decoded.message().empty());
  }

  // 2. The rest as float32 values: a round trip.
  {
    const size_t m = rest.size() / sizeof(float);
    std::vector<float> values(m);
    if (m > 0) std::memcpy(values.data(), rest.data(), m * sizeof(float));
    bool finite = true;
    for (float v : values) finite = finite && std::isfinite(v);
    const std::vector<uint8_t> bytes = codec.Encode(values, ctx);
    Check(codec.CheckEncodedSize(m, bytes.size()).ok());
    Check(codec.Encode(values, ctx) == bytes);  // deterministic
    std::vector<float> out(m);
    const Status s = codec.Decode(bytes, out, ctx);
    const bool refuses_non_finite = codec.name() == "int8" || codec.name() == "sign";
    if (finite || !refuses_non_finite) {
      Check(s.ok());
    } else {
      // int8: only the blocks holding a non-finite value are refused; sign refuses any.
      Check(s.ok() || s.code() == StatusCode::kDataLoss);
    }
    if (s.ok()) {
      if (!codec.lossy()) Check(m == 0 || std::memcmp(out.data(), values.data(), m * sizeof(float)) == 0);
      if (codec.name() == "topk" || codec.name() == "randomk") {
        size_t sent = 0;
        for (size_t i = 0; i < m; ++i) {
          uint32_t a, b;
          std::memcpy(&a, &out[i], 4);
          std::memcpy(&b, &values[i], 4);
          if (a == b) ++sent;
          else Check(out[i] == 0.0f);  // not sent (a sent value is its own bits)
        }
        Check(m == 0 || sent >= 1);
      }
      if (codec.name() == "int8" && finite) {
        // Finite, and within half a step of its block's scale when the scale is a normal float
        // (a subnormal scale has fewer significant bits).
        for (size_t b = 0; b < m; b += 512) {
          float scale;
          std::memcpy(&scale, bytes.data() + b / 512 * (512 + 4), 4);
          for (size_t i = b; i < m && i < b + 512; ++i) {
            Check(std::isfinite(out[i]));
            if (scale >= std::numeric_limits<float>::min()) {
              Check(std::fabs(static_cast<double>(out[i]) - values[i]) <= scale * 0.5 * 1.001);
            }
          }
        }
      }
    }
    std::vector<float> residual(m, 0.0f);
    const std::vector<uint8_t> fb = EncodeWithFeedback(codec, values, residual, ctx);
    Check(codec.CheckEncodedSize(m, fb.size()).ok());
    if (finite && codec.lossy()) {
      // v - decoded (v = values + 0: equal to values, -0 becomes +0), with what Decode of the
      // same bytes gives back.
      std::vector<float> again(m);
      if (codec.Decode(fb, again, ctx).ok()) {
        for (size_t i = 0; i < m; ++i) {
          const float want = values[i] - again[i];
          Check(want == residual[i] || (std::isnan(want) && std::isnan(residual[i])));
        }
      } else {
        for (float r : residual) Check(r == 0.0f);  // an encoding that does not decode: reset
      }
    }
  }
  return 0;
}
