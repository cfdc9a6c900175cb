// EndpointOptions: how a process's communication thread bounds frames, checksums payloads and
// reports warnings. Given to a Node (NodeOptions::endpoint).
//
//   NodeOptions options;
//   options.endpoint.checksum_payloads = true;   // CRC32C over every payload too
//   options.endpoint.on_warning = [](const std::string& m) { log(m); };
//   SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(transport), cluster, layout, options));
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace shardps {

// Largest frame header and payload a rank accepts: checked before anything is allocated.
struct FrameLimits {
  uint32_t max_header_bytes = 16 * 1024;
  uint64_t max_payload_bytes = uint64_t{1} << 31;  // 2 GiB
};

struct EndpointOptions {
  FrameLimits limits;
  bool checksum_payloads = false;  // CRC32C over payloads; transports here are already reliable
  std::chrono::milliseconds max_idle_wait{100};
  // Where warnings go (a reply to an unknown request, a frame that failed to decode). Called on
  // the communication thread. Default: stderr with the rank.
  std::function<void(const std::string&)> on_warning;
  // Names a rank in errors, e.g. "rank 3 (worker 1)". Default: "rank 3".
  std::function<std::string(int)> describe_rank;
  // A transport whose Poll keeps failing this long (every Poll in between failed) has failed:
  // the endpoint ends the job on this rank as if a peer were lost, with the transport's error
  // (lost() returns it, handlers get OnPeerLost, every later send fails with it at once). An
  // operation already in flight still ends at its own deadline: its buffers may be in the
  // broken transport's hands. The first failure is warned about once (not on every loop turn),
  // and the loop pauses between failing Polls instead of spinning.
  std::chrono::milliseconds poll_failure_limit{2000};
};

}  // namespace shardps
