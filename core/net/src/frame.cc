#include "shardps/net/frame.h"

#include <cstdio>
#include <cstring>
#include <string>

#include "shardps/base/crc32c.h"

namespace shardps {
namespace {

void Put16(uint8_t* p, uint16_t v) { p[0] = v & 0xFF; p[1] = v >> 8; }
void Put32(uint8_t* p, uint32_t v) { for (int i = 0; i < 4; ++i) p[i] = (v >> (8 * i)) & 0xFF; }
void Put64(uint8_t* p, uint64_t v) { for (int i = 0; i < 8; ++i) p[i] = (v >> (8 * i)) & 0xFF; }
uint16_t Get16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
uint32_t Get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t Get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

constexpr size_t kCrcCoveredPrefix = 28;

}  // namespace

std::vector<uint8_t> EncodeFrame(const wire::Header& header, std::span<const uint8_t> payload,
                                 bool checksum_payload) {
  const size_t header_len = header.ByteSizeLong();
  std::vector<uint8_t> out(kFramePrefixBytes + header_len);
  uint8_t* p = out.data();
  Put32(p + 0, kFrameMagic);
  Put16(p + 4, kFrameVersion);
  Put16(p + 6, checksum_payload ? kFrameFlagPayloadCrc : 0);
  Put32(p + 8, static_cast<uint32_t>(header_len));
  Put32(p + 12, 0);
  Put64(p + 16, payload.size());
  Put32(p + 24, checksum_payload ? Crc32c(payload.data(), payload.size()) : 0);
  header.SerializeWithCachedSizesToArray(p + kFramePrefixBytes);
  uint32_t crc = Crc32c(p, kCrcCoveredPrefix);
  crc = Crc32cExtend(crc, p + kFramePrefixBytes, header_len);
  Put32(p + 28, crc);
  return out;
}

Result<FramePrefix> DecodeFramePrefix(std::span<const uint8_t> bytes, const FrameLimits& limits) {
  if (bytes.size() < kFramePrefixBytes) {
    return DataLoss("truncated frame: " + std::to_string(bytes.size()) +
                    " bytes, the prefix alone is " + std::to_string(kFramePrefixBytes));
  }
  const uint8_t* p = bytes.data();
  if (Get32(p) != kFrameMagic) return DataLoss("bad frame magic at byte 0");
  FramePrefix f;
  f.version = Get16(p + 4);
  if (f.version != kFrameVersion) {
    return DataLoss("unsupported frame version " + std::to_string(f.version) + " at byte 4 (this build speaks " +
                    std::to_string(kFrameVersion) + ")");
  }
  f.flags = Get16(p + 6);
  if ((f.flags & ~kFrameFlagPayloadCrc) != 0) {
    char hex[16];
    std::snprintf(hex, sizeof(hex), "0x%x", static_cast<unsigned>(f.flags));
    return DataLoss(std::string("unknown frame flags ") + hex + " at byte 6");
  }
  f.header_bytes = Get32(p + 8);
  if (Get32(p + 12) != 0) return DataLoss("non-zero reserved field at byte 12");
  f.payload_bytes = Get64(p + 16);
  f.payload_crc = Get32(p + 24);
  f.frame_crc = Get32(p + 28);
  if (f.header_bytes > limits.max_header_bytes) {
    return ResourceExhausted("frame header of " + std::to_string(f.header_bytes) +
                             " bytes exceeds the limit of " + std::to_string(limits.max_header_bytes));
  }
  if (f.payload_bytes > limits.max_payload_bytes) {
    return ResourceExhausted("frame payload of " + std::to_string(f.payload_bytes) +
                             " bytes exceeds the limit of " + std::to_string(limits.max_payload_bytes));
  }
  return f;
}

Result<Frame> DecodeFrame(std::span<const uint8_t> bytes, const FrameLimits& limits) {
  SHARDPS_ASSIGN_OR_RETURN(FramePrefix prefix, DecodeFramePrefix(bytes, limits));
  const size_t expected = kFramePrefixBytes + size_t{prefix.header_bytes};
  if (bytes.size() < expected) {
    return DataLoss("truncated frame: header_len says " + std::to_string(prefix.header_bytes) +
                    " header bytes but only " + std::to_string(bytes.size() - kFramePrefixBytes) +
                    " follow the prefix");
  }
  if (bytes.size() > expected) {
    return DataLoss("frame has " + std::to_string(bytes.size() - expected) +
                    " trailing bytes after its header");
  }
  uint32_t crc = Crc32c(bytes.data(), kCrcCoveredPrefix);
  crc = Crc32cExtend(crc, bytes.data() + kFramePrefixBytes, prefix.header_bytes);
  if (crc != prefix.frame_crc) return DataLoss("frame CRC32C mismatch (bytes 0-27 and header)");
  Frame frame;
  if (!frame.header.ParseFromArray(bytes.data() + kFramePrefixBytes, static_cast<int>(prefix.header_bytes))) {
    return DataLoss("frame header at byte 32 is not a valid protobuf Header");
  }
  frame.payload_bytes = prefix.payload_bytes;
  if (prefix.flags & kFrameFlagPayloadCrc) frame.payload_crc = prefix.payload_crc;
  return frame;
}

Status VerifyPayload(const Frame& frame, std::span<const uint8_t> payload) {
  if (payload.size() != frame.payload_bytes) {
    return DataLoss("payload has " + std::to_string(payload.size()) + " bytes, frame announced " +
                    std::to_string(frame.payload_bytes));
  }
  if (frame.payload_crc && Crc32c(payload.data(), payload.size()) != *frame.payload_crc) {
    return DataLoss("payload CRC32C mismatch");
  }
  return Status::Ok();
}

}  // namespace shardps
