#include "shardps/base/half.h"

#include <cmath>
#include <cstring>

namespace shardps {

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t exp = (x >> 23) & 0xffu;
  const uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff) {  // inf, or NaN (kept quiet, top payload bits kept)
    if (mant == 0) return sign | 0x7c00u;
    return static_cast<uint16_t>(sign | 0x7e00u | (mant >> 13));
  }
  if (exp >= 143) return sign | 0x7c00u;  // >= 2^16: beyond the largest half, rounds to inf
  if (exp >= 113) {                       // a normal half (2^-14 <= |f| < 2^16)
    uint32_t q = ((exp - 112) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ++q;  // may carry into the exponent, up to inf
    return static_cast<uint16_t>(sign | q);
  }
  // A half subnormal (units of 2^-24) or zero: |f| = m * 2^(exp - 150) with the implicit bit.
  if (exp < 102) return sign;  // |f| < 2^-25: below half the smallest subnormal (float subnormals too)
  const uint32_t m = mant | 0x800000u;
  const uint32_t shift = 126 - exp;  // 14..24
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;  // q == 0x400 is the smallest normal: correct
  return static_cast<uint16_t>(sign | q);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31) v = mant ? std::nanf("") : INFINITY;
  else v = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

}  // namespace shardps
