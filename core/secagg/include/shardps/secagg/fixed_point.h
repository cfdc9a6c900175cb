// Fixed point for secure aggregation: floats become elements of the ring Z_{2^m} (which masks can
// hide perfectly and which sums cannot overflow), and the ring sum of n clients becomes floats again.
//
//   const int m = RingBits(/*n=*/10, /*bits=*/16);                    // 16 + ceil(log2 10) = 20
//   SHARDPS_RETURN_IF_ERROR(CheckRing(10, 16, m));
//   FixedPoint fp{.clip = 1.0f, .bits = 16, .ring_bits = m};
//   SHARDPS_ASSIGN_OR_RETURN(std::vector<uint64_t> q,
//                            Quantize(grad, fp, {.seed = 1, .round = 7, .client = 3}));
//   ... secure aggregation sums the q of every client mod 2^m ...
//   SHARDPS_ASSIGN_OR_RETURN(std::vector<float> sum, Dequantize(ring_sum, /*count=*/10, fp));
//
// Quantize: x is clipped to [-c, c] and scaled to q = x / c * L with L = 2^(bits-1) - 1, then
// rounded stochastically: floor(q) + 1 with probability q - floor(q), else floor(q), so the
// rounding is unbiased (E[result] = q) and the error is below one step c / L. The uniform draw of
// element i is counter-based, Mix(key + i * 0x9E3779B97F4A7C15) with Mix = SplitMix64 and
// key = Mix(Mix(Mix(Mix("secagg-q") ^ seed) ^ round) ^ client), so a run is bit-identical on every
// machine and two clients' roundings are independent. The integer in [-L, L] is stored in
// two's complement mod 2^m.
// Dequantize reads each element as a signed m-bit integer s (the sum of `count` quantized values,
// |s| <= count * L) and returns s * c / L.
//
// Ring width: m = bits + ceil(log2 n) keeps n * L <= 2^(m-1) - 1, so the sum of n clients never
// wraps; CheckRing refuses any (n, bits, m) for which it could.
// Packing: m-bit elements as one little-endian bitstream (element i in bits [i*m, (i+1)*m), bit 0
// the least significant bit of byte 0, zero padding in the last byte): ceil(count * m / 8) bytes,
// m / bits times the size of the clear quantized vector (1.5x for bits = 16, n <= 255).
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "shardps/base/status.h"

namespace shardps::secagg {

inline constexpr int kMinQuantizationBits = 2;
inline constexpr int kMaxQuantizationBits = 32;

struct FixedPoint {
  float clip = 1.0f;  // c > 0: values are clipped to [-c, c]
  int bits = 16;      // quantization levels: integers in [-(2^(bits-1) - 1), 2^(bits-1) - 1]
  int ring_bits = 0;  // m, in [bits, 64]
};

// The key of the stochastic rounding's counter-based generator.
struct RoundingKey {
  uint64_t seed = 0;
  uint64_t round = 0;
  uint32_t client = 0;
};

// All-ones in the low m bits (m in [1, 64]).
inline uint64_t RingMask(int m) { return m >= 64 ? ~uint64_t{0} : (uint64_t{1} << m) - 1; }

// bits + ceil(log2 n) (n >= 1): the ring in which the sum of n clients' values cannot wrap.
int RingBits(uint64_t n, int bits);

// INVALID_ARGUMENT, with the numbers, unless n >= 1, bits in [2, 32], m in [bits, 64] and
// n * (2^(bits-1) - 1) <= 2^(m-1) - 1.
Status CheckRing(uint64_t n, int bits, int m);

// Elements of Z_{2^m}, one per value. INVALID_ARGUMENT for a bad FixedPoint or a value that is
// not finite (naming its index).
Result<std::vector<uint64_t>> Quantize(std::span<const float> values, const FixedPoint& fp, const RoundingKey& key);

// The floats of the signed sums of `count` clients. INVALID_ARGUMENT when CheckRing(count, bits,
// ring_bits) fails, an element is not in Z_{2^m}, or an element lies outside +-count * L (not a
// sum of `count` quantized values).
Result<std::vector<float>> Dequantize(std::span<const uint64_t> sum, uint64_t count, const FixedPoint& fp);

// ceil(count * m / 8), the packed size. count <= kMaxVectorLength (round.h) and m in [1, 64].
uint64_t PackedBytes(uint64_t count, int m);
// The elements' low m bits as one little-endian bitstream (higher bits must be zero: asserted).
std::vector<uint8_t> PackRing(std::span<const uint64_t> values, int m);
// The inverse: DATA_LOSS unless `bytes` holds exactly PackedBytes(count, m) bytes with zero padding.
Result<std::vector<uint64_t>> UnpackRing(std::span<const uint8_t> bytes, uint64_t count, int m);

}  // namespace shardps::secagg
