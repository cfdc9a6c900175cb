#include "shardps/base/codec.h"

#include "shardps/base/half.h"

#include <algorithm>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <bit>
#include <cassert>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <functional>
#include <limits>
#include <numeric>

namespace shardps {

namespace {

static_assert(std::endian::native == std::endian::little, "payloads are little-endian float32");

// Bounds the value counts the size arithmetic below works with, so that no size overflows.
constexpr uint64_t kMaxValues = uint64_t{1} << 60;

void PutU32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
void PutF32(uint8_t* p, float v) { std::memcpy(p, &v, 4); }
uint32_t GetU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
float GetF32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

uint64_t CeilDiv(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

std::string FloatText(float f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(f));
  return buf;
}

// DATA_LOSS naming the codec, the table and the chunk, then what is wrong.
Status Corrupt(std::string_view codec, const CodecContext& ctx, const std::string& what) {
  return DataLoss(std::string(codec) + " codec: table " + std::to_string(ctx.table) + " chunk " +
                  std::to_string(ctx.chunk) + ": " + what);
}

Status WrongSize(std::string_view codec, uint64_t values, uint64_t bytes, const std::string& needs) {
  return InvalidArgument(std::string(codec) + " codec: " + std::to_string(values) + " values take " + needs +
                         ", the payload has " + std::to_string(bytes) + " bytes");
}

// The floats' own bytes. Callers take the raw() fast path and never call Encode/Decode; they are
// here so the codec is complete on its own (and for code that wants a copy).
class Identity final : public Codec {
 public:
  std::string_view name() const override { return kIdentityCodec; }
  uint32_t id() const override { return 0; }
  bool raw() const override { return true; }
  bool lossy() const override { return false; }
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

// int8 block kernels: SSE2 (every x86-64 has it) with a scalar tail, and the scalar loops alone
// elsewhere. Both compute the same values: max is exact in any order, and the rounding is the
// same IEEE operations.
struct BlockStats {
  float max = 0.0f;
  bool finite = true;
};

BlockStats MaxAbs(const float* __restrict v, uint64_t m) {
  BlockStats st;
  uint64_t i = 0;
#if defined(__SSE2__)
  const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF));
  const __m128 big = _mm_set1_ps(std::numeric_limits<float>::max());
  __m128 mx = _mm_setzero_ps();
  __m128 ok = _mm_castsi128_ps(_mm_set1_epi32(-1));
  for (; i + 4 <= m; i += 4) {
    const __m128 a = _mm_and_ps(_mm_loadu_ps(v + i), abs_mask);
    ok = _mm_and_ps(ok, _mm_cmple_ps(a, big));  // false for NaN and infinities
    mx = _mm_max_ps(mx, a);
  }
  alignas(16) float lanes[4];
  _mm_store_ps(lanes, mx);
  st.finite = _mm_movemask_ps(ok) == 0xF;
  for (float l : lanes) st.max = l > st.max ? l : st.max;
#endif
  for (; i < m; ++i) {
    const float a = std::fabs(v[i]);
    st.finite &= a <= std::numeric_limits<float>::max();
    st.max = a > st.max ? a : st.max;
  }
  return st;
}

// q = round-half-even(clamp(v / scale, -127, 127)), scale > 0 and every v finite.
void Quantize(const float* __restrict v, uint64_t m, float scale, int8_t* __restrict q) {
  uint64_t i = 0;
#if defined(__SSE2__)
  const __m128 s = _mm_set1_ps(scale), lo = _mm_set1_ps(-127.0f), hi = _mm_set1_ps(127.0f);
  const __m128 magic = _mm_set1_ps(12582912.0f);
  for (; i + 16 <= m; i += 16) {
    __m128i w[4];
    for (int k = 0; k < 4; ++k) {
      __m128 x = _mm_div_ps(_mm_loadu_ps(v + i + 4 * k), s);
      x = _mm_min_ps(_mm_max_ps(x, lo), hi);
      x = _mm_sub_ps(_mm_add_ps(x, magic), magic);
      w[k] = _mm_cvttps_epi32(x);
    }
    const __m128i h0 = _mm_packs_epi32(w[0], w[1]), h1 = _mm_packs_epi32(w[2], w[3]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm_packs_epi16(h0, h1));
  }
#endif
  for (; i < m; ++i) {
    float x = v[i] / scale;
    x = x < -127.0f ? -127.0f : x > 127.0f ? 127.0f : x;
    x = (x + 12582912.0f) - 12582912.0f;  // ties to even: exact for |x| < 2^22
    q[i] = static_cast<int8_t>(static_cast<int>(x));
  }
}

// out = q * scale; returns whether some q is -128.
bool Dequantize(const int8_t* __restrict q, uint64_t m, float scale, float* __restrict out) {
  uint64_t i = 0;
  bool bad = false;
#if defined(__SSE2__)
  const __m128 s = _mm_set1_ps(scale);
  const __m128i minus128 = _mm_set1_epi8(-128);
  int badmask = 0;
  for (; i + 16 <= m; i += 16) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i));
    badmask |= _mm_movemask_epi8(_mm_cmpeq_epi8(b, minus128));
    // Sign-extend 16 int8 to 4 x 4 int32: duplicate into the high byte, then shift right.
    const __m128i lo16 = _mm_srai_epi16(_mm_unpacklo_epi8(b, b), 8);
    const __m128i hi16 = _mm_srai_epi16(_mm_unpackhi_epi8(b, b), 8);
    const __m128i w[4] = {_mm_srai_epi32(_mm_unpacklo_epi16(lo16, lo16), 16), _mm_srai_epi32(_mm_unpackhi_epi16(lo16, lo16), 16),
                          _mm_srai_epi32(_mm_unpacklo_epi16(hi16, hi16), 16), _mm_srai_epi32(_mm_unpackhi_epi16(hi16, hi16), 16)};
    for (int k = 0; k < 4; ++k) _mm_storeu_ps(out + i + 4 * k, _mm_mul_ps(_mm_cvtepi32_ps(w[k]), s));
  }
  bad = badmask != 0;
#endif
  for (; i < m; ++i) {
    bad |= q[i] == -128;
    out[i] = static_cast<float>(q[i]) * scale;
  }
  return bad;
}

// Blocks of 512 values: a float32 scale = max|v| / 127 (0 for an all-zero block), then an int8 a
// value, round-to-nearest-even(v / scale) clamped to [-127, 127] (-128 is never sent). A block
// holding a non-finite value is sent with a NaN scale (and zeros), which Decode refuses. Decoded:
// q * scale, within scale / 2 of v when the scale is a normal float.
class Int8 final : public Codec {
 public:
  static constexpr uint64_t kBlock = 512;
  std::string_view name() const override { return "int8"; }
  uint32_t id() const override { return 2; }
  static uint64_t Size(uint64_t n) { return CeilDiv(n, kBlock) * 4 + n; }  // n <= kMaxValues
  Status CheckEncodedSize(uint64_t values, uint64_t bytes) const override {
    if (values > kMaxValues) return WrongSize(name(), values, bytes, "more than 2^60 bytes");
    if (bytes == Size(values)) return Status::Ok();
    return WrongSize(name(), values, bytes, std::to_string(Size(values)) + " bytes");
  }
  std::vector<uint8_t> Encode(std::span<const float> values, const CodecContext&) const override {
    const uint64_t n = values.size();
    std::vector<uint8_t> out(Size(n));
    uint8_t* p = out.data();
    for (uint64_t b = 0; b < n; b += kBlock) {
      const uint64_t e = std::min(n, b + kBlock);
      const float* __restrict v = values.data() + b;
      const uint64_t m = e - b;
      const BlockStats st = MaxAbs(v, m);
      const bool finite = st.finite;
      const float max = st.max;
      float scale = finite ? max / 127.0f : std::numeric_limits<float>::quiet_NaN();
      // max|v| near FLT_MAX: when 127 * scale rounds to infinity, the next float down, so that
      // every decoded value is finite.
      if (finite && !std::isfinite(127.0f * scale)) scale = std::nextafter(scale, 0.0f);
      PutF32(p, scale);
      p += 4;
      if (!(finite && scale > 0.0f)) {
        std::memset(p, 0, m);
      } else {
        Quantize(v, m, scale, reinterpret_cast<int8_t*>(p));
      }
      p += m;
    }
    return out;
  }
  Status Decode(std::span<const uint8_t> bytes, std::span<float> out, const CodecContext& ctx) const override {
    const uint64_t n = out.size();
    if (bytes.size() != Size(n)) {
      return Corrupt(name(), ctx, std::to_string(bytes.size()) + " bytes do not decode into " + std::to_string(n) +
                                      " values (that takes " + std::to_string(Size(n)) + ")");
    }
    const uint8_t* p = bytes.data();
    for (uint64_t b = 0; b < n; b += kBlock) {
      const uint64_t e = std::min(n, b + kBlock);
      const float scale = GetF32(p);
      p += 4;
      auto block = [&] {
        return "block " + std::to_string(b / kBlock) + " (values " + std::to_string(b) + ".." +
               std::to_string(e - 1) + ")";
      };
      if (!std::isfinite(scale)) {
        return Corrupt(name(), ctx, block() + " has scale " + FloatText(scale) + ": a non-finite value was encoded");
      }
      if (std::signbit(scale)) return Corrupt(name(), ctx, block() + " has a negative scale " + FloatText(scale));
      // A -128 anywhere is looked for again only then.
      const bool bad = Dequantize(reinterpret_cast<const int8_t*>(p), e - b, scale, out.data() + b);
      if (bad) {
        for (uint64_t i = b; i < e; ++i) {
          if (static_cast<int8_t>(p[i - b]) == -128) {
            return Corrupt(name(), ctx, "value " + std::to_string(i) + " is coded -128, outside [-127, 127]");
          }
        }
      }
      p += e - b;
    }
    return Status::Ok();
  }
  // One pass per block: the codes as Encode writes them, then their values from the codes just
  // written, in cache (`decoded` may alias `values`: a block is read before it is written). A
  // block holding a non-finite value is coded as Encode codes it (NaN scale), and the status is
  // then Decode's of the whole encoding, which names the block.
  Status EncodeDecoded(std::span<const float> values, const CodecContext& ctx, std::vector<uint8_t>* bytes,
                       std::span<float> decoded) const override {
    const uint64_t n = values.size();
    assert(decoded.size() == n);
    bytes->resize(Size(n));
    uint8_t* p = bytes->data();
    bool non_finite = false;
    for (uint64_t b = 0; b < n; b += kBlock) {
      const uint64_t m = std::min(n, b + kBlock) - b;
      const BlockStats st = MaxAbs(values.data() + b, m);
      float scale = st.finite ? st.max / 127.0f : std::numeric_limits<float>::quiet_NaN();
      if (st.finite && !std::isfinite(127.0f * scale)) scale = std::nextafter(scale, 0.0f);  // as Encode
      PutF32(p, scale);
      p += 4;
      int8_t* q = reinterpret_cast<int8_t*>(p);
      if (!(st.finite && scale > 0.0f)) {
        std::memset(q, 0, m);
      } else {
        Quantize(values.data() + b, m, scale, q);
      }
      if (st.finite) {
        Dequantize(q, m, scale, decoded.data() + b);  // codes in [-127, 127]: never "bad"
      } else {
        non_finite = true;
      }
      p += m;
    }
    return non_finite ? Decode(*bytes, decoded, ctx) : Status::Ok();
  }
};

// Scaled sign: a float32 scale = mean |v| (summed in double, in index order), then one bit a value,
// LSB first: set when v >= 0 (decodes to +scale), clear otherwise (-scale). The last byte's unused
// bits are zero. A non-finite value makes the scale non-finite, which Decode refuses.
class Sign final : public Codec {
 public:
  std::string_view name() const override { return "sign"; }
  uint32_t id() const override { return 3; }
  static uint64_t Size(uint64_t n) { return 4 + CeilDiv(n, 8); }
  Status CheckEncodedSize(uint64_t values, uint64_t bytes) const override {
    if (bytes == Size(values)) return Status::Ok();
    return WrongSize(name(), values, bytes, std::to_string(Size(values)) + " bytes");
  }
  std::vector<uint8_t> Encode(std::span<const float> values, const CodecContext&) const override {
    const uint64_t n = values.size();
    std::vector<uint8_t> out(Size(n), 0);
    double sum = 0.0;
    for (const float v : values) sum += std::fabs(static_cast<double>(v));
    const float scale = n == 0 ? 0.0f : static_cast<float>(sum / static_cast<double>(n));
    PutF32(out.data(), scale);
    uint8_t* bits = out.data() + 4;
    for (uint64_t i = 0; i < n; i += 8) {  // a byte at a time
      const uint64_t m = std::min<uint64_t>(8, n - i);
      unsigned byte = 0;
      for (uint64_t j = 0; j < m; ++j) byte |= static_cast<unsigned>(values[i + j] >= 0.0f) << j;
      bits[i / 8] = static_cast<uint8_t>(byte);
    }
    return out;
  }
  Status Decode(std::span<const uint8_t> bytes, std::span<float> out, const CodecContext& ctx) const override {
    const uint64_t n = out.size();
    if (bytes.size() != Size(n)) {
      return Corrupt(name(), ctx, std::to_string(bytes.size()) + " bytes do not decode into " + std::to_string(n) +
                                      " values (that takes " + std::to_string(Size(n)) + ")");
    }
    const float scale = GetF32(bytes.data());
    if (!std::isfinite(scale)) {
      return Corrupt(name(), ctx, "the scale is " + FloatText(scale) + ": a non-finite value was encoded");
    }
    if (std::signbit(scale)) return Corrupt(name(), ctx, "the scale " + FloatText(scale) + " is negative");
    if (n % 8 != 0 && (bytes.back() >> (n % 8)) != 0) {
      char last[8];
      std::snprintf(last, sizeof last, "0x%02x", static_cast<unsigned>(bytes.back()));
      return Corrupt(name(), ctx, std::string("padding bits are set in the last byte (") + last + ", which holds " +
                                      std::to_string(n % 8) + " values)");
    }
    const uint8_t* bits = bytes.data() + 4;
    for (uint64_t i = 0; i < n; ++i) out[i] = ((bits[i / 8] >> (i % 8)) & 1) != 0 ? scale : -scale;
    return Status::Ok();
  }
};

// How many values top-k and random-k send out of n: ceil(density * n) in float32, at least 1 and
// at most n (0 when n is 0). A NaN or non-positive density sends 1.
uint64_t SentCount(uint64_t n, float density) {
  if (n == 0) return 0;
  const float p = std::ceil(density * static_cast<float>(n));
  if (!(p >= 1.0f)) return 1;
  if (p >= static_cast<float>(n)) return n;
  return std::min<uint64_t>(n, static_cast<uint64_t>(p));
}

// Top-k and random-k send uint32 indices or counts: at most 2^32 - 1 values.
constexpr uint64_t kMaxSparseValues = std::numeric_limits<uint32_t>::max();

// A sparse payload: uint32 k, then k entries of `entry` bytes each.
Status CheckSparseSize(std::string_view codec, uint64_t values, uint64_t bytes, uint64_t entry) {
  if (values > kMaxSparseValues) return WrongSize(codec, values, bytes, "an index that does not fit 32 bits");
  if (bytes >= 4 && (bytes - 4) % entry == 0 && (bytes - 4) / entry <= values) return Status::Ok();
  return WrongSize(codec, values, bytes,
                   "4 + " + std::to_string(entry) + "k bytes for a k <= " + std::to_string(values));
}

// Reads k from a sparse payload and checks it against the payload's size and the value count.
Result<uint64_t> SparseCount(std::string_view codec, std::span<const uint8_t> bytes, uint64_t n, uint64_t entry,
                             const CodecContext& ctx) {
  if (bytes.size() < 4) {
    return Corrupt(codec, ctx, std::to_string(bytes.size()) + " bytes: truncated before the 4-byte count");
  }
  const uint64_t k = GetU32(bytes.data());
  if (bytes.size() - 4 != entry * k) {
    return Corrupt(codec, ctx, "a count of " + std::to_string(k) + " needs " + std::to_string(4 + entry * k) +
                                   " bytes, the payload has " + std::to_string(bytes.size()));
  }
  if (k > n) {
    return Corrupt(codec, ctx, "a count of " + std::to_string(k) + " exceeds the " + std::to_string(n) + " values");
  }
  return k;
}

// The k values of largest magnitude, ordered by the bits of |v| (so a strict total order: NaNs
// rank above infinities, +0 and -0 are equal) and among equal magnitudes by the lower index:
// uint32 k, the k indices ascending, then their k float32 values in index order.
class TopK final : public Codec {
 public:
  std::string_view name() const override { return "topk"; }
  uint32_t id() const override { return 4; }
  Status CheckEncodedSize(uint64_t values, uint64_t bytes) const override {
    return CheckSparseSize(name(), values, bytes, 8);
  }
  std::vector<uint8_t> Encode(std::span<const float> values, const CodecContext& ctx) const override {
    const uint64_t n = values.size();
    assert(n <= kMaxSparseValues);
    const uint64_t k = SentCount(n, ctx.density);
    // The k-th largest magnitude T (magnitudes as the bits of |v|), then one scan in index order:
    // every value above T, and values at T from the lowest index until k are taken. The same set
    // as sorting by (magnitude descending, index ascending), without sorting the indices.
    auto magnitude = [&](uint64_t i) { return std::bit_cast<uint32_t>(values[i]) & 0x7FFFFFFFu; };
    std::vector<uint32_t> idx;
    idx.reserve(k);
    if (k > 0) {
      std::vector<uint32_t> mags(n);
      for (uint64_t i = 0; i < n; ++i) mags[i] = magnitude(i);
      std::nth_element(mags.begin(), mags.begin() + static_cast<int64_t>(k - 1), mags.end(), std::greater<uint32_t>());
      const uint32_t t = mags[k - 1];
      uint64_t above = 0;
      for (uint64_t i = 0; i < n; ++i) above += magnitude(i) > t;
      uint64_t at_t = k - above;  // how many values equal to T are taken
      for (uint64_t i = 0; i < n && idx.size() < k; ++i) {
        const uint32_t m = magnitude(i);
        if (m > t || (m == t && at_t > 0)) {
          if (m == t) --at_t;
          idx.push_back(static_cast<uint32_t>(i));
        }
      }
    }
    std::vector<uint8_t> out(4 + 8 * k);
    PutU32(out.data(), static_cast<uint32_t>(k));
    for (uint64_t j = 0; j < k; ++j) {
      PutU32(out.data() + 4 + 4 * j, idx[j]);
      PutF32(out.data() + 4 + 4 * k + 4 * j, values[idx[j]]);
    }
    return out;
  }
  Status Decode(std::span<const uint8_t> bytes, std::span<float> out, const CodecContext& ctx) const override {
    const uint64_t n = out.size();
    SHARDPS_ASSIGN_OR_RETURN(const uint64_t k, SparseCount(name(), bytes, n, 8, ctx));
    const uint8_t* indices = bytes.data() + 4;
    for (uint64_t j = 0; j < k; ++j) {
      const uint32_t i = GetU32(indices + 4 * j);
      if (i >= n) {
        return Corrupt(name(), ctx, "index " + std::to_string(j) + " is " + std::to_string(i) + ", not below the " +
                                        std::to_string(n) + " values");
      }
      if (j > 0 && i <= GetU32(indices + 4 * (j - 1))) {
        return Corrupt(name(), ctx, "indices not strictly ascending: index " + std::to_string(j - 1) + " is " +
                                        std::to_string(GetU32(indices + 4 * (j - 1))) + ", index " +
                                        std::to_string(j) + " is " + std::to_string(i));
      }
    }
    std::fill(out.begin(), out.end(), 0.0f);
    const uint8_t* v = indices + 4 * k;
    for (uint64_t j = 0; j < k; ++j) out[GetU32(indices + 4 * j)] = GetF32(v + 4 * j);
    return Status::Ok();
  }
};

// SplitMix64's output function.
uint64_t Mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15u;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
  return z ^ (z >> 31);
}

// The k distinct indices in [0, n) random-k sends, ascending: Floyd's sampling driven by a
// counter-based generator, draw c = Mix(key + c * 0x9E3779B97F4A7C15) with
// key = Mix(Mix(Mix(Mix(Mix("randomk") ^ table) ^ chunk) ^ step) ^ uint32(rank)).
// k <= n <= 2^32 - 1.
std::vector<uint32_t> RandomIndices(uint64_t n, uint64_t k, const CodecContext& ctx) {
  std::vector<uint32_t> idx;
  idx.reserve(k);
  if (k == n) {
    idx.resize(n);
    std::iota(idx.begin(), idx.end(), 0u);
    return idx;
  }
  uint64_t key = Mix(0x6b6d6f646e6172u);  // "randomk"
  key = Mix(key ^ ctx.table);
  key = Mix(key ^ ctx.chunk);
  key = Mix(key ^ ctx.step);
  key = Mix(key ^ static_cast<uint32_t>(ctx.rank));
  std::vector<bool> taken(n, false);
  uint64_t counter = 0;
  for (uint64_t j = n - k; j < n; ++j, ++counter) {
    const uint64_t r = Mix(key + counter * 0x9E3779B97F4A7C15u);
    const uint64_t t = ((r >> 32) * (j + 1)) >> 32;  // in [0, j]; j + 1 <= 2^32
    const uint64_t pick = taken[t] ? j : t;
    taken[pick] = true;
    idx.push_back(static_cast<uint32_t>(pick));
  }
  std::sort(idx.begin(), idx.end());
  return idx;
}

// k values at indices both ends draw from the context (RandomIndices): uint32 k, then the k
// float32 values in index order, as they are (not scaled by n / k).
class RandomK final : public Codec {
 public:
  std::string_view name() const override { return "randomk"; }
  uint32_t id() const override { return 5; }
  Status CheckEncodedSize(uint64_t values, uint64_t bytes) const override {
    return CheckSparseSize(name(), values, bytes, 4);
  }
  std::vector<uint8_t> Encode(std::span<const float> values, const CodecContext& ctx) const override {
    const uint64_t n = values.size();
    assert(n <= kMaxSparseValues);
    const uint64_t k = SentCount(n, ctx.density);
    const std::vector<uint32_t> idx = RandomIndices(n, k, ctx);
    std::vector<uint8_t> out(4 + 4 * k);
    PutU32(out.data(), static_cast<uint32_t>(k));
    for (uint64_t j = 0; j < k; ++j) PutF32(out.data() + 4 + 4 * j, values[idx[j]]);
    return out;
  }
  Status Decode(std::span<const uint8_t> bytes, std::span<float> out, const CodecContext& ctx) const override {
    const uint64_t n = out.size();
    if (n > kMaxSparseValues) return Corrupt(name(), ctx, std::to_string(n) + " values: more than 2^32 - 1");
    SHARDPS_ASSIGN_OR_RETURN(const uint64_t k, SparseCount(name(), bytes, n, 4, ctx));
    const std::vector<uint32_t> idx = RandomIndices(n, k, ctx);
    std::fill(out.begin(), out.end(), 0.0f);
    for (uint64_t j = 0; j < k; ++j) out[idx[j]] = GetF32(bytes.data() + 4 + 4 * j);
    return Status::Ok();
  }
};

}  // namespace

Status Codec::EncodeDecoded(std::span<const float> values, const CodecContext& ctx, std::vector<uint8_t>* bytes,
                            std::span<float> decoded) const {
  *bytes = Encode(values, ctx);
  return Decode(*bytes, decoded, ctx);
}

std::vector<uint8_t> EncodeWithFeedback(const Codec& codec, std::span<const float> values, std::span<float> residual,
                                        const CodecContext& ctx) {
  assert(residual.size() == values.size());
  if (residual.size() != values.size()) std::abort();  // a caller's bug, also without assertions
  if (!codec.lossy()) {
    std::fill(residual.begin(), residual.end(), 0.0f);
    return codec.Encode(values, ctx);
  }
  const size_t n = values.size();
  std::unique_ptr<float[]> v(new float[n]);  // every element written below: no zeroing pass
  for (size_t i = 0; i < n; ++i) v[i] = values[i] + residual[i];
  std::vector<uint8_t> bytes;
  // The residual's memory is what the encoding decodes into.
  if (!codec.EncodeDecoded(std::span<const float>(v.get(), n), ctx, &bytes, residual).ok()) {
    std::fill(residual.begin(), residual.end(), 0.0f);
    return bytes;
  }
  for (size_t i = 0; i < n; ++i) residual[i] = v[i] - residual[i];
  return bytes;
}

std::span<const Codec* const> RegisteredCodecs() {
  // The registry. To add a codec, list it here (ids are on the wire: never reuse or renumber one).
  // Built once, immutable after.
  static const Identity identity;
  static const Fp16 fp16;
  static const Int8 int8;
  static const Sign sign;
  static const TopK topk;
  static const RandomK randomk;
  static const Codec* const all[] = {&identity, &fp16, &int8, &sign, &topk, &randomk};
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
