#include "shardps/ps/server.h"

#include <algorithm>
#include <limits>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>

#include "shardps/base/optimizer.h"

namespace shardps::ps {

// A request the server holds: its frame (payload still on the wire for pushes) and deadline.
struct Server::Held {
  IncomingFrame in;
  Frame frame;
  Clock::time_point arrived;
  Clock::time_point deadline;
  int worker = -1;  // worker index of the sender
  const wire::Header& h() const { return frame.header; }
};

struct Server::ChunkState {
  ChunkInfo info;
  const TableSpec* spec = nullptr;
  std::vector<float> weights;
  std::vector<float> slots;
  float* accum = nullptr;  // from the accumulator pool, held from worker 0's first piece to the update
  uint64_t version = 0;  // optimizer updates applied

  // Gathering the current step (== version), in worker-rank order. Every worker covers the
  // whole chunk once per step, in one push or several disjoint ones.
  std::vector<std::vector<std::shared_ptr<Held>>> parked;  // by worker index: pieces waiting their turn
  std::vector<std::vector<std::pair<uint64_t, uint64_t>>> ranges;  // by worker: pieces accepted this step
  std::vector<uint64_t> covered;  // by worker index: elements summed this step
  std::vector<uint64_t> arrived;  // by worker index: elements pushed this step, even if later refused
                                  // or expired (so errors name the worker that never sent, not
                                  // the ones queued behind it)
  int next_worker = 0;            // worker index being summed; earlier ones are complete
  bool receiving = false;         // a payload of this chunk is being received
  bool waiting_scratch = false;
  bool waiting_accum = false;

  std::vector<std::shared_ptr<Held>> future;  // pushes for later steps
  std::vector<std::shared_ptr<Held>> pulls;   // waiting for version >= step
  int inflight_sends = 0;                     // pull replies still reading `weights`
  bool apply_pending = false;
};

struct Server::BarrierState {
  // barrier id -> requests, by worker index
  std::map<uint64_t, std::vector<std::shared_ptr<Held>>> waiting;
};

namespace {

uint64_t Key(uint32_t table, uint32_t chunk) { return (uint64_t{table} << 32) | chunk; }

std::span<uint8_t> AsBytes(float* p, uint64_t n) { return {reinterpret_cast<uint8_t*>(p), n * sizeof(float)}; }
std::span<const uint8_t> AsBytes(const float* p, uint64_t n) {
  return {reinterpret_cast<const uint8_t*>(p), n * sizeof(float)};
}

std::string Range(const wire::Header& h) {
  return "[" + std::to_string(h.key_begin()) + "," + std::to_string(h.key_end()) + ")";
}

int64_t Ms(Clock::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

}  // namespace

Server::Server(Endpoint& endpoint, const Cluster& cluster, const TableLayout& layout, ServerOptions options)
    : endpoint_(endpoint),
      cluster_(cluster),
      layout_(layout),
      options_(options),
      num_workers_(cluster.num_workers()),
      accum_pool_(layout.chunk_floats(), std::max<size_t>(1, options.accumulators)),
      scratch_pool_(layout.chunk_floats(), std::max<size_t>(1, options.scratch_buffers)),
      barrier_(std::make_unique<BarrierState>()),
      worker_done_(cluster.num_workers(), false) {
  const int me = cluster_.server_index();
  for (uint32_t t = 0; t < layout_.num_tables(); ++t) {
    const TableSpec& spec = layout_.table(t);
    for (const ChunkInfo& c : layout_.chunks(t)) {
      if (c.server != me) continue;
      auto cs = std::make_unique<ChunkState>();
      cs->info = c;
      cs->spec = &layout_.table(t);
      cs->weights.resize(c.size());
      InitializeWeights(spec.init, t, c.begin, cs->weights);
      cs->slots.assign(c.size() * OptimizerSlots(spec.optimizer.kind), 0.0f);
      cs->parked.resize(num_workers_);
      cs->ranges.resize(num_workers_);
      cs->covered.assign(num_workers_, 0);
      cs->arrived.assign(num_workers_, 0);
      by_key_[Key(t, c.index)] = cs.get();
      chunks_.push_back(std::move(cs));
    }
  }
}

Server::~Server() {
  if (writer_.joinable()) writer_.join();
}

ServerStats Server::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

void Server::OnPeerLost(const Status& why) {
  {
    MutexLock lock(mu_);
    if (lost_.ok()) lost_ = why;
  }
  cv_.notify_all();
}

std::optional<uint64_t> Server::CompletedSteps(uint32_t tables) const {
  std::optional<uint64_t> v;
  for (const auto& cs : chunks_) {
    if (cs->info.table < tables) v = std::min(v.value_or(std::numeric_limits<uint64_t>::max()), cs->version);
  }
  return v;
}

Status Server::WaitForWorkers(std::chrono::milliseconds timeout) {
  MutexLock lock(mu_);
  // The condition is tested here, in the locked scope, where the analysis sees the lock; once more
  // after the deadline, as wait_for with a predicate does.
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (bool timed_out = false;;) {
    if (std::all_of(worker_done_.begin(), worker_done_.end(), [](bool b) { return b; })) return Status::Ok();
    if (!lost_.ok()) return lost_;
    if (timed_out) break;
    timed_out = cv_.wait_until(lock.native(), until) == std::cv_status::timeout;
  }
  std::vector<int> missing;
  for (int w = 0; w < num_workers_; ++w) if (!worker_done_[w]) missing.push_back(cluster_.worker_rank(w));
  return DeadlineExceeded("server rank " + std::to_string(cluster_.rank()) + ": worker ranks " + FormatRanks(missing) +
                          " did not finish within " + std::to_string(timeout.count()) + " ms");
}

Result<std::vector<Server::ChunkCopy>> Server::Snapshot(std::optional<uint32_t> table,
                                                        std::chrono::milliseconds timeout) {
  auto copy = [this, table] {
    std::vector<ChunkCopy> out;
    for (const auto& cs : chunks_) {
      if (table && cs->info.table != *table) continue;
      out.push_back({cs->info, cs->version, cs->weights, cs->slots});
    }
    return out;
  };
  if (!endpoint_.running()) return copy();
  auto promise = std::make_shared<std::promise<std::vector<ChunkCopy>>>();
  auto fut = promise->get_future();
  endpoint_.Post([promise, copy] { promise->set_value(copy()); });
  if (fut.wait_for(timeout) != std::future_status::ready) {
    return DeadlineExceeded("server snapshot not taken within " + std::to_string(timeout.count()) + " ms");
  }
  return fut.get();
}

Clock::time_point Server::DeadlineFor(const wire::Header& h, Clock::time_point now) const {
  auto hold = options_.max_hold;
  if (h.timeout_ms() > 0) hold = std::min(hold, std::chrono::milliseconds(h.timeout_ms()));
  return now + hold;
}

void Server::Reject(IncomingFrame& in, const wire::Header& h, const Status& s) {
  if (in.payload_bytes > 0) {
    Status d = endpoint_.transport().DiscardPayload(in);
    if (!d.ok()) endpoint_.Warn("could not discard a payload: " + d.ToString());
    in.payload_bytes = 0;
  }
  endpoint_.SendError(in.source, h, s);
  MutexLock lock(mu_);
  ++stats_.errors_sent;
}

void Server::SendOk(int dest, const wire::Header& request) {
  wire::Header r;
  r.set_op(wire::RESPONSE);
  r.set_reply_to(request.op());
  r.set_request_id(request.request_id());
  r.set_table(request.table());
  r.set_chunk(request.chunk());
  r.set_step(request.step());
  r.set_barrier_id(request.barrier_id());
  endpoint_.Send(dest, std::move(r), {}, nullptr);
}

void Server::OnFrame(IncomingFrame in, Frame frame) {
  const wire::Header& h = frame.header;
  if (h.op() != wire::PUSH && h.op() != wire::PUSH_PULL && in.payload_bytes > 0) {
    Reject(in, h, InvalidArgument(OpName(h.op()) + " carries no payload, got " + std::to_string(in.payload_bytes) + " bytes"));
    return;
  }
  if (cluster_.WorkerIndexOf(in.source) < 0) {
    Reject(in, h, InvalidArgument("rank " + std::to_string(in.source) + " is not a worker; only workers send " + OpName(h.op())));
    return;
  }
  switch (h.op()) {
    case wire::HELLO: HandleHello(in, h); return;
    case wire::PUSH:
    case wire::PUSH_PULL: HandlePush(in, frame); return;
    case wire::PULL: HandlePull(in, frame); return;
    case wire::BARRIER: HandleBarrier(in, h); return;
    case wire::SHUTDOWN: HandleShutdown(in, h); return;
    case wire::HEARTBEAT: SendOk(in.source, h); return;
    case wire::CHECKPOINT: HandleCheckpoint(in, h); return;
    default:
      Reject(in, h, InvalidArgument(OpName(h.op()) + " is not a request"));
  }
}

void Server::HandleHello(IncomingFrame& in, const wire::Header& h) {
  if (h.layout_digest() != layout_.digest()) {
    Reject(in, h, FailedPrecondition("worker rank " + std::to_string(in.source) +
                                     " uses a different table layout than server rank " + std::to_string(cluster_.rank()) +
                                     " (tables, sizes, chunk size or server count differ)"));
    return;
  }
  SendOk(in.source, h);
}

void Server::HandleShutdown(IncomingFrame& in, const wire::Header& h) {
  SendOk(in.source, h);
  {
    MutexLock lock(mu_);
    worker_done_[cluster_.WorkerIndexOf(in.source)] = true;
  }
  cv_.notify_all();
}

void Server::HandleCheckpoint(IncomingFrame& in, const wire::Header& h) {
  if (options_.checkpoint_dir.empty()) {
    return Reject(in, h, FailedPrecondition("server rank " + std::to_string(cluster_.rank()) + " has no checkpoint directory"));
  }
  if (writer_busy_) return Reject(in, h, ResourceExhausted("a checkpoint write is already in flight on this server"));
  if (cluster_.WorkerIndexOf(in.source) != 0) {
    return Reject(in, h, FailedPrecondition("checkpoints are requested by the lead worker (rank " +
                                            std::to_string(cluster_.worker_rank(0)) + ")"));
  }
  {
    // Only into a version the lead worker has just created, never over a committed one.
    const std::string v = CheckpointVersionDir(options_.checkpoint_dir, h.checkpoint_version());
    std::error_code ec;
    if (h.checkpoint_version() >= 100000000 || !std::filesystem::is_directory(v, ec) ||
        std::filesystem::exists(v + "/MANIFEST", ec)) {
      return Reject(in, h, FailedPrecondition("checkpoint version " + std::to_string(h.checkpoint_version()) +
                                              " is not a version being written in " + options_.checkpoint_dir));
    }
  }
  // Snapshot (copy) every model chunk now; the file is written in the background while training
  // goes on. Every chunk must be exactly at the requested step.
  std::vector<ChunkToSave> chunks;
  std::vector<uint32_t> ckpt_table(layout_.num_tables(), 0);
  for (uint32_t t = 0, k = 0; t < layout_.num_tables(); ++t) {
    if (layout_.table(t).checkpointed) ckpt_table[t] = k++;
  }
  for (const auto& csp : chunks_) {
    const ChunkState& cs = *csp;
    if (!cs.spec->checkpointed) continue;
    if (cs.version != h.step()) {
      return Reject(in, h, FailedPrecondition("checkpoint at step " + std::to_string(h.step()) + " requested, but " + Describe(cs)));
    }
    ChunkToSave c;
    c.table = ckpt_table[cs.info.table];
    c.begin = cs.info.begin;
    c.end = cs.info.end;
    c.data.reserve(cs.weights.size() + cs.slots.size());
    c.data.insert(c.data.end(), cs.weights.begin(), cs.weights.end());
    c.data.insert(c.data.end(), cs.slots.begin(), cs.slots.end());
    chunks.push_back(std::move(c));
  }
  if (writer_.joinable()) writer_.join();
  writer_busy_ = true;
  const std::string vdir = CheckpointVersionDir(options_.checkpoint_dir, h.checkpoint_version());
  const int source = in.source;
  writer_ = std::thread([this, vdir, source, h, chunks = std::move(chunks)] {
    Result<ckpt::ShardInfo> r =
        options_.file_system ? WriteShard(*options_.file_system, vdir, static_cast<uint32_t>(cluster_.server_index()), h.step(), chunks,
                                          options_.checkpoint_fault)
                             : WriteShard(vdir, static_cast<uint32_t>(cluster_.server_index()), h.step(), chunks, options_.checkpoint_fault);
    Status s = r.ok() ? Status::Ok() : r.status();
    endpoint_.Post([this, s, source, h] {
      writer_busy_ = false;
      if (s.ok()) SendOk(source, h);
      else endpoint_.SendError(source, h, s);
    });
  });
}

Status Server::InitFrom(const SafetensorsFile& file) {
  for (uint32_t t = 0; t < layout_.num_tables(); ++t) {
    const TableSpec& spec = layout_.table(t);
    if (!spec.checkpointed) continue;
    bool mine = false;
    for (const auto& cs : chunks_) mine |= cs->info.table == t;
    if (!mine) continue;
    SHARDPS_ASSIGN_OR_RETURN(std::vector<float> w, file.ReadFloats(spec.name));
    if (w.size() != spec.size) {
      return InvalidArgument("tensor '" + spec.name + "' has " + std::to_string(w.size()) + " elements, the table " +
                             std::to_string(spec.size));
    }
    for (auto& cs : chunks_) {
      if (cs->info.table != t) continue;
      std::copy(w.begin() + static_cast<int64_t>(cs->info.begin), w.begin() + static_cast<int64_t>(cs->info.end),
                cs->weights.begin());
    }
  }
  return Status::Ok();
}

Status Server::Restore(CheckpointReader& reader) {
  const uint64_t step = reader.manifest().step();
  for (auto& csp : chunks_) {
    ChunkState& cs = *csp;
    if (!cs.spec->checkpointed) continue;
    const uint32_t nslots = static_cast<uint32_t>(OptimizerSlots(cs.spec->optimizer.kind));
    SHARDPS_ASSIGN_OR_RETURN(uint32_t t, reader.FindTable(cs.spec->name, cs.spec->size, nslots));
    // Optimizers with as many slots may keep different state in them (momentum, adagrad). An
    // empty name: a manifest that did not record it, checked by slot count alone.
    if (const std::string& saved = reader.manifest().tables(static_cast<int>(t)).optimizer();
        !saved.empty() && saved != cs.spec->optimizer.kind) {
      return InvalidArgument("checkpoint table '" + cs.spec->name + "' was saved with optimizer '" + saved +
                             "', this run has '" + cs.spec->optimizer.kind + "': its optimizer state would not mean the same");
    }
    SHARDPS_RETURN_IF_ERROR(reader.Read(t, cs.info.begin, cs.info.end, cs.weights, cs.slots));
    cs.version = step;
  }
  return Status::Ok();
}

Result<Server::ChunkState*> Server::ValidateKeys(const wire::Header& h, bool allow_empty) {
  if (h.table() >= layout_.num_tables()) {
    return NotFound("unknown table id " + std::to_string(h.table()) + " (this job has " +
                    std::to_string(layout_.num_tables()) + " tables)");
  }
  const TableSpec& spec = layout_.table(h.table());
  const auto chunks = layout_.chunks(h.table());
  if (h.chunk() >= chunks.size()) {
    return OutOfRange("chunk " + std::to_string(h.chunk()) + " of table '" + spec.name + "' does not exist (it has " +
                      std::to_string(chunks.size()) + ")");
  }
  const ChunkInfo& c = chunks[h.chunk()];
  if (h.key_begin() > h.key_end() || (!allow_empty && h.key_begin() == h.key_end())) {
    return OutOfRange("empty or inverted key range " + Range(h) + " for table '" + spec.name + "'");
  }
  if (h.key_end() > spec.size) {
    return OutOfRange("key range " + Range(h) + " is outside table '" + spec.name + "' of " + std::to_string(spec.size) +
                      " elements");
  }
  if (h.key_begin() < c.begin || h.key_end() > c.end) {
    return OutOfRange("key range " + Range(h) + " is not inside chunk " + std::to_string(c.index) + " [" +
                      std::to_string(c.begin) + "," + std::to_string(c.end) + ") of table '" + spec.name + "'");
  }
  auto it = by_key_.find(Key(h.table(), h.chunk()));
  if (it == by_key_.end()) {
    return InvalidArgument("chunk " + std::to_string(c.index) + " of table '" + spec.name + "' is served by rank " +
                           std::to_string(cluster_.server_rank(c.server)) + ", not rank " + std::to_string(cluster_.rank()));
  }
  if (h.dtype() != wire::F32 || h.codec() != wire::RAW) return InvalidArgument("only raw float32 payloads are supported");
  return it->second;
}

void Server::HandlePush(IncomingFrame& in, Frame& f) {
  const wire::Header& h = f.header;
  const int w = cluster_.WorkerIndexOf(in.source);
  bool after_shutdown;
  {
    MutexLock lock(mu_);
    ++stats_.pushes;
    after_shutdown = worker_done_[w];
  }
  if (after_shutdown) {
    return Reject(in, h, FailedPrecondition("push from worker rank " + std::to_string(in.source) + " after its SHUTDOWN"));
  }
  auto v = ValidateKeys(h, /*allow_empty=*/false);
  if (!v.ok()) return Reject(in, h, v.status());
  ChunkState& cs = **v;
  const uint64_t n = h.key_end() - h.key_begin();
  if (h.element_count() != n || in.payload_bytes != n * sizeof(float)) {
    return Reject(in, h, InvalidArgument("push to table '" + cs.spec->name + "' " + Range(h) + " carries " +
                                         std::to_string(in.payload_bytes) + " bytes (element_count " +
                                         std::to_string(h.element_count()) + "); the range needs " +
                                         std::to_string(n * sizeof(float))));
  }
  if (h.step() < cs.version) {
    return Reject(in, h, FailedPrecondition("push for step " + std::to_string(h.step()) + " to " + Describe(cs) +
                                            ", which has already applied that step (stale push)"));
  }
  auto held = std::make_shared<Held>();
  held->arrived = Clock::now();
  held->deadline = DeadlineFor(h, held->arrived);
  held->worker = w;
  held->in = std::move(in);
  held->frame = std::move(f);
  AcceptPush(cs, std::move(held));
}

void Server::AcceptPush(ChunkState& cs, std::shared_ptr<Held> held) {
  const wire::Header& h = held->h();
  const int w = held->worker;
  if (h.step() > cs.version) {
    if (cs.future.size() >= options_.max_future_pushes_per_chunk) {
      return Reject(held->in, h, ResourceExhausted("push for step " + std::to_string(h.step()) + " to " + Describe(cs) +
                                                   ": too many pushes for future steps are already parked"));
    }
    next_expiry_ = std::min(next_expiry_, held->deadline);
    cs.future.push_back(std::move(held));
    return;
  }
  if (!Claim(cs, *held)) return;
  next_expiry_ = std::min(next_expiry_, held->deadline);
  cs.parked[w].push_back(std::move(held));
  Advance(cs);
}

bool Server::Claim(ChunkState& cs, Held& held) {
  const wire::Header& h = held.h();
  auto& rs = cs.ranges[held.worker];
  for (const auto& [b, e] : rs) {
    if (h.key_begin() < e && b < h.key_end()) {
      Reject(held.in, h, FailedPrecondition("push for step " + std::to_string(h.step()) + " to " + Describe(cs) +
                                            " from worker rank " + std::to_string(held.in.source) + " overlaps keys [" +
                                            std::to_string(b) + "," + std::to_string(e) +
                                            ") it already pushed for this step (duplicate push)"));
      return false;
    }
  }
  rs.emplace_back(h.key_begin(), h.key_end());
  cs.arrived[held.worker] += h.key_end() - h.key_begin();
  return true;
}

void Server::Unclaim(ChunkState& cs, const Held& held) {
  auto& rs = cs.ranges[held.worker];
  auto it = std::find(rs.begin(), rs.end(), std::make_pair(held.h().key_begin(), held.h().key_end()));
  if (it != rs.end()) rs.erase(it);
}

float* Server::BufferPool::Acquire() {
  if (!free.empty()) {
    float* p = free.back();
    free.pop_back();
    return p;
  }
  if (buffers.size() < capacity) {
    buffers.push_back(std::make_unique<float[]>(floats));
    return buffers.back().get();
  }
  return nullptr;
}

void Server::Release(BufferPool& pool, float* p) {
  pool.free.push_back(p);
  // Wake waiters until one takes the buffer: a waiter whose pushes have expired meanwhile takes
  // nothing, and must not leave the buffer idle while others wait.
  while (!pool.free.empty() && !pool.waiters.empty()) {
    ChunkState* cs = pool.waiters.front();
    pool.waiters.pop_front();
    cs->waiting_scratch = false;
    cs->waiting_accum = false;
    Advance(*cs);
  }
}

// Sums parked pushes in worker-rank order, applies the step when complete, and repeats while
// parked pushes for the next step are already there.
void Server::Advance(ChunkState& cs) {
  const uint64_t size = cs.info.size();
  for (;;) {
    while (!cs.receiving && !cs.waiting_scratch && !cs.waiting_accum && cs.next_worker < num_workers_) {
      if (cs.covered[cs.next_worker] == size) {
        ++cs.next_worker;
        continue;
      }
      auto& queue = cs.parked[cs.next_worker];
      if (queue.empty()) break;
      std::shared_ptr<Held> held = queue.front();
      const wire::Header& h = held->h();
      const uint64_t n = h.key_end() - h.key_begin();
      const uint64_t off = h.key_begin() - cs.info.begin;
      if (cs.accum == nullptr) {
        // Accumulators come from a bounded pool: a server's memory is its weights, their state
        // and a fixed number of chunk buffers, whatever the table size. A chunk that finds none
        // free leaves its pushes unreceived (in the transport) until another chunk's update
        // returns one; that one never waits on this one, so this cannot deadlock.
        cs.accum = accum_pool_.Acquire();
        if (cs.accum == nullptr) {
          cs.waiting_accum = true;
          accum_pool_.waiters.push_back(&cs);
          return;
        }
      }
      float* dest;
      bool scratch = false;
      if (cs.next_worker == 0) {
        dest = cs.accum + off;  // worker 0 covers the chunk: its values start the sum
      } else {
        dest = scratch_pool_.Acquire();
        if (dest == nullptr) {
          cs.waiting_scratch = true;
          scratch_pool_.waiters.push_back(&cs);
          return;
        }
        scratch = true;
      }
      queue.erase(queue.begin());
      cs.receiving = true;
      Status s = endpoint_.transport().ReceivePayload(
          held->in, AsBytes(dest, n),
          [this, &cs, held, dest, scratch](Status st) { OnPushPayload(cs, held, dest, scratch, std::move(st)); });
      if (!s.ok()) {
        cs.receiving = false;
        if (scratch) Release(scratch_pool_, dest);
        Unclaim(cs, *held);
        Reject(held->in, h, s);
        continue;  // the worker's other parked pieces go on
      }
    }
    if (cs.receiving || cs.next_worker < num_workers_) return;
    if (cs.inflight_sends > 0) {
      cs.apply_pending = true;  // a pull reply is still reading the weights
      return;
    }
    ApplyStep(cs);
  }
}

void Server::OnPushPayload(ChunkState& cs, std::shared_ptr<Held> held, float* dest, bool scratch, Status st) {
  cs.receiving = false;
  const wire::Header& h = held->h();
  const uint64_t n = h.key_end() - h.key_begin();
  if (st.ok()) st = VerifyPayload(held->frame, AsBytes(static_cast<const float*>(dest), n));
  if (!st.ok()) {
    // The sum is unchanged (worker 0's region of the accumulator is overwritten by its re-push);
    // the worker may push these keys again for this step.
    held->in.payload_bytes = 0;  // consumed
    Unclaim(cs, *held);
    endpoint_.SendError(held->in.source, h, st.WithContext("push to " + Describe(cs)));
    if (scratch) Release(scratch_pool_, dest);
    Advance(cs);  // the worker's other parked pieces go on
    return;
  }
  if (scratch) {
    const uint64_t off = h.key_begin() - cs.info.begin;
    AddInto(std::span<float>(cs.accum + off, n), std::span<const float>(dest, n));
  }
  FinishContribution(cs, *held);
  if (scratch) Release(scratch_pool_, dest);  // may Advance() another chunk waiting for a buffer
  Advance(cs);
}

void Server::FinishContribution(ChunkState& cs, Held& held) {
  const wire::Header& h = held.h();
  cs.covered[held.worker] += h.key_end() - h.key_begin();
  if (h.op() == wire::PUSH) {
    SendOk(held.in.source, h);
  } else {  // PUSH_PULL: answer with the weights after this step
    auto pull = std::make_shared<Held>();
    pull->in.source = held.in.source;
    pull->frame.header = h;
    pull->frame.header.set_step(h.step() + 1);
    pull->arrived = held.arrived;
    pull->deadline = held.deadline;
    pull->worker = held.worker;
    cs.pulls.push_back(std::move(pull));
  }
}

void Server::ApplyStep(ChunkState& cs) {
  ApplyOptimizer(cs.spec->optimizer, cs.version + 1, cs.weights, cs.slots,
                 std::span<const float>(cs.accum, cs.info.size()));
  ++cs.version;
  cs.apply_pending = false;
  cs.next_worker = 0;
  std::fill(cs.covered.begin(), cs.covered.end(), 0);
  std::fill(cs.arrived.begin(), cs.arrived.end(), 0);
  for (auto& r : cs.ranges) r.clear();
  {
    MutexLock lock(mu_);
    ++stats_.steps_applied;
  }
  AnswerPulls(cs);
  // Pushes that arrived early for this step join it now.
  std::vector<std::shared_ptr<Held>> later;
  std::vector<std::shared_ptr<Held>> now;
  for (auto& f : cs.future) (f->h().step() == cs.version ? now : later).push_back(std::move(f));
  cs.future = std::move(later);
  for (auto& f : now) {
    if (Claim(cs, *f)) cs.parked[f->worker].push_back(std::move(f));
  }
  float* accum = cs.accum;
  cs.accum = nullptr;
  Release(accum_pool_, accum);  // may Advance() a chunk waiting for an accumulator
}

void Server::SendWeights(ChunkState& cs, Held& held) {
  const wire::Header& req = held.h();
  const uint64_t off = req.key_begin() - cs.info.begin;
  const uint64_t n = req.key_end() - req.key_begin();
  wire::Header r;
  r.set_op(wire::RESPONSE);
  r.set_reply_to(req.op());
  r.set_request_id(req.request_id());
  r.set_table(req.table());
  r.set_chunk(req.chunk());
  r.set_key_begin(req.key_begin());
  r.set_key_end(req.key_end());
  r.set_step(cs.version);
  r.set_element_count(n);
  ++cs.inflight_sends;
  endpoint_.Send(held.in.source, std::move(r), AsBytes(static_cast<const float*>(cs.weights.data() + off), n),
                 [this, &cs](Status s) {
                   if (!s.ok()) endpoint_.Warn("sending weights of " + Describe(cs) + ": " + s.ToString());
                   if (--cs.inflight_sends == 0 && cs.apply_pending) Advance(cs);
                 });
}

void Server::AnswerPulls(ChunkState& cs) {
  std::vector<std::shared_ptr<Held>> still;
  std::vector<std::shared_ptr<Held>> ready;
  for (auto& p : cs.pulls) (p->h().step() <= cs.version ? ready : still).push_back(std::move(p));
  cs.pulls = std::move(still);
  for (auto& p : ready) SendWeights(cs, *p);
}

void Server::HandlePull(IncomingFrame& in, Frame& f) {
  const wire::Header& h = f.header;
  {
    MutexLock lock(mu_);
    ++stats_.pulls;
  }
  auto v = ValidateKeys(h, /*allow_empty=*/false);
  if (!v.ok()) return Reject(in, h, v.status());
  ChunkState& cs = **v;
  auto held = std::make_shared<Held>();
  held->arrived = Clock::now();
  held->deadline = DeadlineFor(h, held->arrived);
  held->worker = cluster_.WorkerIndexOf(in.source);
  held->in = std::move(in);
  held->frame = std::move(f);
  if (held->h().step() <= cs.version) {
    SendWeights(cs, *held);
    return;
  }
  if (cs.pulls.size() >= options_.max_waiting_pulls_per_chunk) {
    return Reject(held->in, held->h(), ResourceExhausted("too many pulls waiting on " + Describe(cs)));
  }
  next_expiry_ = std::min(next_expiry_, held->deadline);
  cs.pulls.push_back(std::move(held));
}

void Server::HandleBarrier(IncomingFrame& in, const wire::Header& h) {
  if (cluster_.server_index() != 0) {
    return Reject(in, h, InvalidArgument("barriers are coordinated by server rank " + std::to_string(cluster_.server_rank(0))));
  }
  if (barrier_->waiting.size() >= 64 && !barrier_->waiting.count(h.barrier_id())) {
    return Reject(in, h, ResourceExhausted("too many barriers open at once"));
  }
  auto& slots = barrier_->waiting[h.barrier_id()];
  if (slots.empty()) slots.resize(num_workers_);
  const int w = cluster_.WorkerIndexOf(in.source);
  if (slots[w]) {
    return Reject(in, h, FailedPrecondition("worker rank " + std::to_string(in.source) + " entered barrier " +
                                            std::to_string(h.barrier_id()) + " twice"));
  }
  auto held = std::make_shared<Held>();
  held->arrived = Clock::now();
  held->deadline = DeadlineFor(h, held->arrived);
  held->worker = w;
  held->in = std::move(in);
  held->frame.header = h;
  next_expiry_ = std::min(next_expiry_, held->deadline);
  slots[w] = std::move(held);
  if (std::all_of(slots.begin(), slots.end(), [](const auto& s) { return s != nullptr; })) {
    for (auto& s : slots) SendOk(s->in.source, s->h());
    barrier_->waiting.erase(h.barrier_id());
  }
}

std::vector<int> Server::MissingWorkers(const ChunkState& cs) const {
  std::vector<int> missing;
  for (int w = 0; w < num_workers_; ++w) {
    if (cs.arrived[w] < cs.info.size()) missing.push_back(cluster_.worker_rank(w));
  }
  return missing;
}

std::string Server::Describe(const ChunkState& cs) const {
  return "table '" + cs.spec->name + "' chunk " + std::to_string(cs.info.index) + " [" + std::to_string(cs.info.begin) +
         "," + std::to_string(cs.info.end) + ") at step " + std::to_string(cs.version);
}

Clock::time_point Server::OnTick(Clock::time_point now) {
  if (now >= next_expiry_) ExpireHeld(now);
  return next_expiry_;
}

void Server::ExpireHeld(Clock::time_point now) {
  Clock::time_point next = Clock::time_point::max();
  const std::string me = "server rank " + std::to_string(cluster_.rank());
  for (auto& csp : chunks_) {
    ChunkState& cs = *csp;
    const std::string missing = FormatRanks(MissingWorkers(cs));
    // Pulls waiting for a step that is not complete.
    std::vector<std::shared_ptr<Held>> keep;
    for (auto& p : cs.pulls) {
      if (p->deadline > now) {
        next = std::min(next, p->deadline);
        keep.push_back(std::move(p));
        continue;
      }
      Reject(p->in, p->h(),
             DeadlineExceeded(OpName(p->h().op()) + " of table '" + cs.spec->name + "' " + Range(p->h()) + " for step " +
                              std::to_string(p->h().step()) + " held " + std::to_string(Ms(now - p->arrived)) + " ms on " + me +
                              ": step " + std::to_string(cs.version) + " is missing pushes from worker ranks " + missing));
    }
    cs.pulls = std::move(keep);
    // Pushes parked behind lower-ranked workers.
    for (int w = 0; w < num_workers_; ++w) {
      std::vector<std::shared_ptr<Held>> still;
      for (auto& p : cs.parked[w]) {
        if (p->deadline > now) {
          next = std::min(next, p->deadline);
          still.push_back(std::move(p));
          continue;
        }
        Unclaim(cs, *p);
        Reject(p->in, p->h(),
               DeadlineExceeded("push for step " + std::to_string(p->h().step()) + " held " +
                                std::to_string(Ms(now - p->arrived)) + " ms on " + me + ": " + Describe(cs) +
                                " is missing pushes from worker ranks " + missing + " (summed in worker-rank order)"));
      }
      cs.parked[w] = std::move(still);
    }
    // Pushes for future steps.
    keep.clear();
    for (auto& p : cs.future) {
      if (p->deadline > now) {
        next = std::min(next, p->deadline);
        keep.push_back(std::move(p));
        continue;
      }
      Reject(p->in, p->h(),
             DeadlineExceeded("push for step " + std::to_string(p->h().step()) + " held " +
                              std::to_string(Ms(now - p->arrived)) + " ms on " + me + ": " + Describe(cs) +
                              " is missing pushes from worker ranks " + missing));
    }
    cs.future = std::move(keep);
  }
  for (auto it = barrier_->waiting.begin(); it != barrier_->waiting.end();) {
    auto& slots = it->second;
    bool expired = false;
    for (auto& s : slots) if (s && s->deadline <= now) expired = true;
    if (!expired) {
      for (auto& s : slots) if (s) next = std::min(next, s->deadline);
      ++it;
      continue;
    }
    std::vector<int> missing;
    for (int w = 0; w < num_workers_; ++w) if (!slots[w]) missing.push_back(cluster_.worker_rank(w));
    for (auto& s : slots) {
      if (!s) continue;
      Reject(s->in, s->h(),
             DeadlineExceeded("barrier " + std::to_string(it->first) + " timed out after " +
                              std::to_string(Ms(now - s->arrived)) + " ms on " + me + ": worker ranks " +
                              FormatRanks(missing) + " never arrived"));
    }
    it = barrier_->waiting.erase(it);
  }
  next_expiry_ = next;
}

}  // namespace shardps::ps
