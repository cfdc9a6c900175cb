// Consistency policies: when a server counts a push, when a chunk's step is complete and when a
// pull may be answered. The server (server.cc) handles requests: it parses and validates them,
// owns the chunks, the buffers and the replies; for each chunk it holds, a ChunkSync made by the
// job's ConsistencyPolicy decides what happens to the validated pushes and pulls of that chunk.
// Internal to ps/ (and its tests): not part of the installed API.
//
//   ServerOptions o;
//   o.consistency = "bsp";                       // a registered policy's name (the default)
//   SHARDPS_RETURN_IF_ERROR(ValidateServerOptions(o));   // unknown names: INVALID_ARGUMENT
//
// Each policy sees one chunk and the server through PolicyHost; everything runs on the
// endpoint's communication thread. A policy:
//  * receives every push that passed validation (table, chunk, key range, length, codec), payload
//    still unread, and either refuses it (stale, duplicate, too many parked: an ERROR reply that
//    names why), parks it, or receives its payload into a buffer and counts it;
//  * applies the optimizer when it decides a step is complete (PolicyHost::ApplyUpdate);
//  * answers a pull when the chunk is recent enough for it, or holds it;
//  * refuses what it holds at the request's deadline, naming the worker ranks it waits for.
// Registered (consistency.cc):
//  * "bsp" (bulk synchronous, bsp_policy.cc): a push for step t is counted when it is the chunk's
//    current step, summed in worker-rank order, the update runs once all workers covered the
//    chunk, and a pull for version v is answered when version >= v.
//  * "ssp" (bounded staleness s = ServerOptions::staleness, ssp_policy.cc): updates as "bsp" (the
//    same sum, bit for bit), but pushes up to s steps ahead are received at once and a pull for
//    version v (a PUSH_PULL of step t: v = t + 1) is answered at version >= v - s. s = 0 gives
//    the weights of "bsp".
//  * "asp" (asynchronous, asp_policy.cc): each worker's values are applied, one update each, as
//    soon as they cover the chunk; a PUSH_PULL is answered right after its own update. Not
//    deterministic.
// A reply's step field carries the version of the weights it holds. Tables whose optimizer is
// "sum" (reductions) stay bulk synchronous under "ssp" and "asp". A policy is a ChunkSync and an
// entry in RegisteredConsistencyPolicies(); the server does not change.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardps/base/layout.h"
#include "shardps/base/status.h"
#include "shardps/net/endpoint.h"

namespace shardps::ps {

// One chunk as its server holds it. The server owns it; a policy reads it and changes it only
// through PolicyHost.
struct Chunk {
  ChunkInfo info;
  const TableSpec* spec = nullptr;
  std::vector<float> weights;
  std::vector<float> slots;
  uint64_t version = 0;    // optimizer updates applied
  int inflight_sends = 0;  // pull replies still reading `weights`
};

// A request held by the server: its frame (a push's payload still in the transport) and deadline.
struct HeldRequest {
  IncomingFrame in;
  Frame frame;
  Clock::time_point arrived;
  Clock::time_point deadline;
  int worker = -1;  // worker index of the sender
  const wire::Header& h() const { return frame.header; }
  uint64_t keys() const { return frame.header.key_end() - frame.header.key_begin(); }
};
using HeldPtr = std::shared_ptr<HeldRequest>;

class ChunkSync;

// What a policy may ask of the server. Communication thread only.
class PolicyHost {
 public:
  virtual ~PolicyHost() = default;
  // An ERROR reply with `why`; the payload, if still unread, is discarded.
  virtual void Refuse(HeldRequest& request, const Status& why) = 0;
  // The OK reply to a push whose contribution is counted.
  virtual void Acknowledge(const HeldRequest& push) = 0;
  // Replies to a pull with the weights of its key range as they are now (chunk.version). The
  // chunk's inflight_sends counts the reply until the transport is done reading the weights; then
  // the chunk's ChunkSync::OnWeightsFree runs.
  virtual void SendWeights(Chunk& chunk, const HeldRequest& pull) = 0;
  // Receives the push's payload, decoded by its codec, into `dest` (push.keys() floats); `done`
  // runs with the outcome (the payload verified) later on this thread. An error returned here
  // means the receive never started and `done` will not run; the payload is still unread.
  virtual Status ReceivePayload(const HeldPtr& push, std::span<float> dest, std::function<void(Status)> done) = 0;
  // Runs the table's optimizer on the whole chunk with `gradient` (chunk-sized) as update number
  // version + 1, and advances chunk.version. Call only while chunk.inflight_sends == 0.
  virtual void ApplyUpdate(Chunk& chunk, std::span<const float> gradient) = 0;
  // Chunk-sized buffers from the server's bounded pools: accumulators hold a step's sum, scratch
  // buffers a payload being received before it is added. Null when none is free: `waiter`'s
  // OnBufferFree runs when one may be (it must then ask again).
  virtual float* AcquireAccumulator(ChunkSync* waiter) = 0;
  virtual void ReleaseAccumulator(float* buffer) = 0;
  virtual float* AcquireScratch(ChunkSync* waiter) = 0;
  virtual void ReleaseScratch(float* buffer) = 0;
  // The policy holds a request until `deadline`: its ChunkSync::Expire runs by then.
  virtual void WakeAt(Clock::time_point deadline) = 0;
  // "table 'w' chunk 2 [128,192) at step 7", for error texts.
  virtual std::string Describe(const Chunk& chunk) const = 0;
  // "server rank 3", for error texts.
  virtual std::string Self() const = 0;
  // The global rank of worker index `worker`.
  virtual int WorkerRank(int worker) const = 0;
};

// What a sparse table (ps/src/sparse_table.h) asks of the server beyond PolicyHost.
// Communication thread only.
class SparseHost {
 public:
  virtual ~SparseHost() = default;
  // Replies to `request` with `rows` (its keys' rows, in its key order) at `version`. With
  // `elided`, `rows` is a bitmap of the sent rows then those rows (wire.proto, zero_rows_elided).
  virtual void SendRows(const HeldRequest& request, uint64_t version, std::shared_ptr<std::vector<float>> rows,
                        bool elided = false) = 0;
};

// The policy's decisions for one chunk. Made by ConsistencyPolicy::ForChunk; called by the server
// on the communication thread.
class ChunkSync {
 public:
  virtual ~ChunkSync() = default;
  // A validated push of this chunk; its payload is unread. Refuse, park, or receive and count it.
  // A PUSH_PULL is answered with the weights after its step, when the policy decides they exist.
  virtual void OnPush(HeldPtr push) = 0;
  // A validated pull of this chunk for version h().step(): answer it now or hold it.
  virtual void OnPull(HeldPtr pull) = 0;
  // The last pull reply reading the chunk's weights has been sent: an update may run now.
  virtual void OnWeightsFree() = 0;
  // A pooled buffer this chunk waited for may be free.
  virtual void OnBufferFree() = 0;
  // Refuses every held request whose deadline is <= now, with DEADLINE_EXCEEDED naming what it
  // waited for; returns the earliest deadline still held (time_point::max() when none).
  virtual Clock::time_point Expire(Clock::time_point now) = 0;
  // Global ranks of the workers whose contribution the chunk's current step still lacks.
  virtual std::vector<int> MissingWorkers() const = 0;
};

// The limits every policy keeps (from ServerOptions).
struct SyncLimits {
  int num_workers = 1;
  size_t max_future_pushes_per_chunk = 4096;  // pushes parked for later steps
  size_t max_waiting_pulls_per_chunk = 4096;  // pulls held
  uint64_t staleness = 0;                     // "ssp": steps a read may lag (ServerOptions::staleness)
};

// A consistency model, by name. Stateless; its ChunkSyncs hold the state.
class ConsistencyPolicy {
 public:
  virtual ~ConsistencyPolicy() = default;
  virtual std::string_view name() const = 0;
  // The decisions for `chunk`, which outlives the result, as does `host`.
  virtual std::unique_ptr<ChunkSync> ForChunk(Chunk& chunk, PolicyHost& host, const SyncLimits& limits) const = 0;
};

// The name of the bulk synchronous policy, the default.
inline constexpr std::string_view kBspConsistency = "bsp";
// Bounded staleness and asynchronous updates.
inline constexpr std::string_view kSspConsistency = "ssp";
inline constexpr std::string_view kAspConsistency = "asp";

// The registry: every policy a job can name, in a fixed order; built once, immutable after.
std::span<const ConsistencyPolicy* const> RegisteredConsistencyPolicies();
// The registered policy called `name`, or INVALID_ARGUMENT naming it and listing the registered ones.
Result<const ConsistencyPolicy*> LookupConsistencyPolicy(std::string_view name);

}  // namespace shardps::ps
