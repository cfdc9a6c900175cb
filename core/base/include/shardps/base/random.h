// Counter-based randomness shared by initialisation and data shuffling: pure functions, no state.
#pragma once

#include <cstdint>

namespace shardps {

// The SplitMix64 finaliser applied to (x + golden gamma) (Steele, Lea, Flood 2014): a bijection
// on 64-bit values whose outputs pass statistical tests even for consecutive inputs.
inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace shardps
