// Framing: how one message is laid out on the wire.
//
//   [32-byte prefix][protobuf Header, header_len bytes]   then, separately, [payload_len bytes]
//
// Prefix (little-endian): magic "SPSF" | version u16 | flags u16 | header_len u32 | reserved u32 |
// payload_len u64 | payload_crc32c u32 | frame_crc32c u32 (over prefix bytes [0,28) + header).
// The payload travels as its own transfer so it can be sent from and received into the caller's
// buffer; its CRC32C is optional (flag bit 0) because the MPI and in-process transports are
// already reliable. Every length is checked against FrameLimits before anything is allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "shardps/base/status.h"
#include "shardps/net/endpoint_options.h"  // FrameLimits
#include "wire.pb.h"

namespace shardps {

inline constexpr size_t kFramePrefixBytes = 32;
inline constexpr uint32_t kFrameMagic = 0x46535053u;  // bytes "SPSF"
inline constexpr uint16_t kFrameVersion = 1;
inline constexpr uint16_t kFrameFlagPayloadCrc = 1u << 0;

// What the prefix says, before the header bytes are looked at.
struct FramePrefix {
  uint16_t version = 0;
  uint16_t flags = 0;
  uint32_t header_bytes = 0;
  uint64_t payload_bytes = 0;
  uint32_t payload_crc = 0;
  uint32_t frame_crc = 0;
};

struct Frame {
  wire::Header header;
  uint64_t payload_bytes = 0;
  std::optional<uint32_t> payload_crc;  // set when the sender checksummed the payload
};

// Builds prefix + header. `payload` is only read to compute its CRC when `checksum_payload`.
std::vector<uint8_t> EncodeFrame(const wire::Header& header, std::span<const uint8_t> payload,
                                 bool checksum_payload = false);

// Validates magic, version and lengths of the first kFramePrefixBytes of `bytes`. Stream
// transports call this to learn how many header bytes follow before reading them.
Result<FramePrefix> DecodeFramePrefix(std::span<const uint8_t> bytes, const FrameLimits& limits);

// Decodes a complete frame (prefix + header, no payload). Every failure is a DATA_LOSS or
// RESOURCE_EXHAUSTED status naming what is wrong and at which byte offset.
Result<Frame> DecodeFrame(std::span<const uint8_t> bytes, const FrameLimits& limits);

// Checks a received payload against the frame's CRC when the frame carries one.
Status VerifyPayload(const Frame& frame, std::span<const uint8_t> payload);

}  // namespace shardps
