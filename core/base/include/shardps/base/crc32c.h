// CRC32C (Castagnoli), as used by iSCSI, ext4 and leveldb. Uses the SSE4.2 instruction when the
// CPU has it (checked once per process), a table otherwise.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shardps {

// Extends `crc` (the value returned for the preceding bytes; 0 to start) over data[0, n).
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);
inline uint32_t Crc32c(const void* data, size_t n) { return Crc32cExtend(0, data, n); }

}  // namespace shardps
