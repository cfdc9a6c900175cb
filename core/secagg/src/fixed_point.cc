#include "shardps/secagg/fixed_point.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <string>

#include "shardps/base/random.h"
#include "shardps/secagg/round.h"

namespace shardps::secagg {
namespace {

std::string Num(unsigned long long v) { return std::to_string(v); }
std::string SNum(long long v) { return std::to_string(v); }

uint64_t Level(int bits) { return (uint64_t{1} << (bits - 1)) - 1; }

Status CheckFixedPoint(const FixedPoint& fp) {
  if (!(fp.clip > 0.0f) || !std::isfinite(fp.clip)) {
    return InvalidArgument("fixed point: the clip range c = " + std::to_string(fp.clip) +
                           " must be a positive finite number");
  }
  if (fp.bits < kMinQuantizationBits || fp.bits > kMaxQuantizationBits) {
    return InvalidArgument("fixed point: bits = " + SNum(fp.bits) + " must be in [" + SNum(kMinQuantizationBits) +
                           ", " + SNum(kMaxQuantizationBits) + "]");
  }
  if (fp.ring_bits < fp.bits || fp.ring_bits > 64) {
    return InvalidArgument("fixed point: the ring width m = " + SNum(fp.ring_bits) + " must be in [bits = " +
                           SNum(fp.bits) + ", 64]");
  }
  return Status::Ok();
}

}  // namespace

int RingBits(uint64_t n, int bits) {
  int log2 = 0;
  while (log2 < 64 && (uint64_t{1} << log2) < n) ++log2;
  return bits + log2;
}

Status CheckRing(uint64_t n, int bits, int m) {
  if (n < 1) return InvalidArgument("ring check: the client count n must be at least 1");
  if (bits < kMinQuantizationBits || bits > kMaxQuantizationBits) {
    return InvalidArgument("ring check: bits = " + SNum(bits) + " must be in [" + SNum(kMinQuantizationBits) + ", " +
                           SNum(kMaxQuantizationBits) + "]");
  }
  if (m < bits || m > 64) {
    return InvalidArgument("ring check: the ring width m = " + SNum(m) + " must be in [bits = " + SNum(bits) + ", 64]");
  }
  // The largest sum, n * L, must be a non-negative m-bit two's-complement integer.
  const unsigned __int128 worst = static_cast<unsigned __int128>(n) * Level(bits);
  const unsigned __int128 limit = (static_cast<unsigned __int128>(1) << (m - 1)) - 1;
  if (worst > limit) {
    return InvalidArgument("ring check: the sum of n = " + Num(n) + " values of " + SNum(bits) +
                           " bits can overflow a ring of m = " + SNum(m) + " bits: n x (2^(bits-1) - 1) = " + Num(n) +
                           " x " + Num(Level(bits)) + " = " + Num(static_cast<unsigned long long>(worst)) +
                           " > 2^(m-1) - 1 = " + Num(static_cast<unsigned long long>(limit)) + "; use m >= " +
                           SNum(RingBits(n, bits)));
  }
  return Status::Ok();
}

Result<std::vector<uint64_t>> Quantize(std::span<const float> values, const FixedPoint& fp, const RoundingKey& key) {
  SHARDPS_RETURN_IF_ERROR(CheckFixedPoint(fp));
  const double c = fp.clip;
  const double level = static_cast<double>(Level(fp.bits));
  const uint64_t mask = RingMask(fp.ring_bits);
  uint64_t stream = SplitMix64(0x712d676761636573ull);  // "secagg-q"
  stream = SplitMix64(stream ^ key.seed);
  stream = SplitMix64(stream ^ key.round);
  stream = SplitMix64(stream ^ key.client);
  std::vector<uint64_t> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return InvalidArgument("quantize: value " + Num(i) + " is " + std::to_string(values[i]) + ", not finite");
    }
    const double q = std::clamp(static_cast<double>(values[i]), -c, c) / c * level;  // in [-L, L]
    const double down = std::floor(q);
    // A uniform draw in [0, 1) with 53 random bits; round up with probability q - floor(q).
    const double u = static_cast<double>(SplitMix64(stream + i * 0x9E3779B97F4A7C15ull) >> 11) * 0x1p-53;
    const int64_t r = static_cast<int64_t>(down) + (u < q - down ? 1 : 0);
    out[i] = static_cast<uint64_t>(r) & mask;
  }
  return out;
}

Result<std::vector<float>> Dequantize(std::span<const uint64_t> sum, uint64_t count, const FixedPoint& fp) {
  SHARDPS_RETURN_IF_ERROR(CheckFixedPoint(fp));
  SHARDPS_RETURN_IF_ERROR(CheckRing(count, fp.bits, fp.ring_bits));
  const int m = fp.ring_bits;
  const uint64_t mask = RingMask(m);
  const uint64_t level = Level(fp.bits);
  const int64_t bound = static_cast<int64_t>(count * level);  // <= 2^(m-1) - 1 by CheckRing
  const double scale = static_cast<double>(fp.clip) / static_cast<double>(level);
  std::vector<float> out(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) {
    if ((sum[i] & ~mask) != 0) {
      return InvalidArgument("dequantize: element " + Num(i) + " = " + Num(sum[i]) + " is not in Z_2^" + SNum(m));
    }
    // Sign-extend the m-bit two's-complement value (C++20: >> of a negative value is arithmetic).
    const int64_t s = static_cast<int64_t>(sum[i] << (64 - m)) >> (64 - m);
    if (s > bound || s < -bound) {
      return InvalidArgument("dequantize: element " + Num(i) + " is " + SNum(s) + ", outside +-" + SNum(bound) +
                             " = +-n x (2^(bits-1) - 1) with n = " + Num(count) +
                             ": not a sum of that many quantized values");
    }
    out[i] = static_cast<float>(static_cast<double>(s) * scale);
  }
  return out;
}

uint64_t PackedBytes(uint64_t count, int m) {
  assert(count <= kMaxVectorLength && m >= 1 && m <= 64);
  return (count * static_cast<uint64_t>(m) + 7) / 8;
}

std::vector<uint8_t> PackRing(std::span<const uint64_t> values, int m) {
  std::vector<uint8_t> out(PackedBytes(values.size(), m));
  const uint64_t mask = RingMask(m);
  unsigned __int128 acc = 0;  // pending bits, least significant first
  int pending = 0;
  size_t at = 0;
  for (uint64_t v : values) {
    assert((v & ~mask) == 0 && "PackRing: element not in Z_2^m");
    acc |= static_cast<unsigned __int128>(v & mask) << pending;
    pending += m;
    while (pending >= 8) {
      out[at++] = static_cast<uint8_t>(acc);
      acc >>= 8;
      pending -= 8;
    }
  }
  if (pending > 0) out[at++] = static_cast<uint8_t>(acc);
  assert(at == out.size());
  return out;
}

Result<std::vector<uint64_t>> UnpackRing(std::span<const uint8_t> bytes, uint64_t count, int m) {
  if (m < 1 || m > 64) return DataLoss("packed ring elements: m = " + SNum(m) + " is not in [1, 64]");
  if (count > kMaxVectorLength) {
    return DataLoss("packed ring elements: " + Num(count) + " elements exceed the limit of " + Num(kMaxVectorLength));
  }
  const uint64_t want = PackedBytes(count, m);
  if (bytes.size() != want) {
    return DataLoss("packed ring elements: " + Num(count) + " elements of " + SNum(m) + " bits take " + Num(want) +
                    " bytes, got " + Num(bytes.size()));
  }
  std::vector<uint64_t> out(count);
  const uint64_t mask = RingMask(m);
  unsigned __int128 acc = 0;
  int pending = 0;
  size_t at = 0;
  for (uint64_t i = 0; i < count; ++i) {
    while (pending < m) {
      acc |= static_cast<unsigned __int128>(bytes[at++]) << pending;
      pending += 8;
    }
    out[i] = static_cast<uint64_t>(acc) & mask;
    acc >>= m;
    pending -= m;
  }
  if (acc != 0) return DataLoss("packed ring elements: the padding bits of the last byte are not zero");
  return out;
}

}  // namespace shardps::secagg
