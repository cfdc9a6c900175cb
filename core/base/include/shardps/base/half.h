// IEEE 754 half precision (binary16) to and from float32, exactly as specified: shared by the
// fp16 gradient codec (codec.cc), `shardps ckpt export --dtype f16` and the safetensors reader.
//
//   uint16_t h = FloatToHalf(0.1f);     // round to nearest, ties to even
//   float f = HalfToFloat(h);           // exact
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>

namespace shardps {

// binary32 -> binary16, round to nearest, ties to even: subnormal halves kept, magnitudes from
// 65520 up to infinity, NaN stays NaN (quiet, its top payload bits kept).
uint16_t FloatToHalf(float f);
// binary16 -> binary32, exact (every half is a float).
float HalfToFloat(uint16_t h);

}  // namespace shardps
