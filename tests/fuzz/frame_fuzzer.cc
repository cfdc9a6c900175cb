// libFuzzer target: the frame decoder. Any bytes must decode to a frame or a clean error; a frame
// that decodes must re-encode to bytes that decode to the same header.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "shardps/net/frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardps;
  FrameLimits limits;
  limits.max_header_bytes = 4096;
  limits.max_payload_bytes = 1 << 20;
  auto prefix = DecodeFramePrefix(std::span<const uint8_t>(data, size), limits);
  Result<Frame> f = DecodeFrame(std::span<const uint8_t>(data, size), limits);
  if (f.ok() && !prefix.ok()) std::abort();  // a valid frame has a valid prefix
  if (!f.ok()) {
    if (f.status().message().empty()) std::abort();  // every error says why
    return 0;
  }
  std::vector<uint8_t> payload;  // re-encode without payload CRC: compare headers only
  std::vector<uint8_t> again = EncodeFrame(f->header, payload, false);
  Result<Frame> g = DecodeFrame(again, limits);
  if (!g.ok() || g->header.SerializeAsString() != f->header.SerializeAsString()) std::abort();
  return 0;
}
