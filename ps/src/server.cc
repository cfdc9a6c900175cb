#include "shardps/ps/server.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <limits>

#include "server_internal.h"
#include "sparse_table.h"
#include "shardps/base/codec.h"
#include "shardps/base/optimizer.h"

namespace shardps::ps {

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

// The RESPONSE to a pull carrying weights of the request's range (step, codec and count to set).
wire::Header WeightsReply(const wire::Header& req) {
  wire::Header r;
  r.set_op(wire::RESPONSE);
  r.set_reply_to(req.op());
  r.set_request_id(req.request_id());
  r.set_table(req.table());
  r.set_chunk(req.chunk());
  r.set_key_begin(req.key_begin());
  r.set_key_end(req.key_end());
  return r;
}

// `rank`: the encoding worker's index, or -1 for this server's replies (codec.h).
CodecContext ContextOf(const wire::Header& h, int rank) {
  return {.table = h.table(), .chunk = h.chunk(), .step = h.step(), .rank = rank, .density = h.codec_density()};
}

}  // namespace

Server::Server(Endpoint& endpoint, const Cluster& cluster, const TableLayout& layout, ServerOptions options)
    : endpoint_(endpoint),
      cluster_(cluster),
      layout_(layout),
      options_(options),
      num_workers_(cluster.num_workers()),
      policy_error_(ValidateServerOptions(options)),
      accum_pool_(layout.chunk_floats(), std::max<size_t>(1, options.accumulators)),
      scratch_pool_(layout.chunk_floats(), std::max<size_t>(1, options.scratch_buffers)),
      barrier_(std::make_unique<BarrierState>()),
      secagg_(cluster.server_index() == 0 ? std::make_unique<SecAggState>(cluster.num_workers()) : nullptr),
      worker_done_(cluster.num_workers(), false) {
  const ConsistencyPolicy* policy = nullptr;
  if (auto p = LookupConsistencyPolicy(options_.consistency); p.ok()) policy = *p;
  const SyncLimits limits{.num_workers = num_workers_,
                          .max_future_pushes_per_chunk = options_.max_future_pushes_per_chunk,
                          .max_waiting_pulls_per_chunk = options_.max_waiting_pulls_per_chunk,
                          .staleness = static_cast<uint64_t>(std::max(0, options_.staleness))};
  const int me = cluster_.server_index();
  sparse_.resize(layout_.num_tables());
  sparse_queue_.resize(num_workers_);
  for (uint32_t t = 0; t < layout_.num_tables(); ++t) {
    const TableSpec& spec = layout_.table(t);
    if (spec.sparse() && policy) {
      sparse_[t] = std::make_unique<SparseTable>(spec, t, static_cast<PolicyHost&>(*this), static_cast<SparseHost&>(*this), limits,
                                                 policy->name());
    }
    for (const ChunkInfo& c : layout_.chunks(t)) {
      if (c.server != me) continue;
      auto cs = std::make_unique<Served>();
      cs->info = c;
      cs->spec = &layout_.table(t);
      cs->weights.resize(c.size());
      InitializeWeights(spec.init, t, c.begin, cs->weights);
      cs->slots.assign(c.size() * OptimizerSlots(spec.optimizer.kind), 0.0f);
      if (policy) cs->sync = policy->ForChunk(*cs, *this, limits);
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

Status Server::WaitForWorkers(std::chrono::milliseconds timeout) {
  MutexLock lock(mu_);
  // The condition is tested here, in the locked scope, where the analysis sees the lock; once more
  // after the deadline, as wait_for with a predicate does. The deadline moves with every request
  // (last_request_): a job may train for days, but not go silent for `timeout`.
  auto deadline = [&] { return Clock::time_point(Clock::duration(last_request_.load(std::memory_order_relaxed))) + timeout; };
  for (bool timed_out = false;;) {
    if (std::all_of(worker_done_.begin(), worker_done_.end(), [](bool b) { return b; })) return Status::Ok();
    if (!lost_.ok()) return lost_;
    if (timed_out && Clock::now() >= deadline()) break;
    timed_out = cv_.wait_until(lock.native(), deadline()) == std::cv_status::timeout;
  }
  std::vector<int> missing;
  for (int w = 0; w < num_workers_; ++w) if (!worker_done_[w]) missing.push_back(cluster_.worker_rank(w));
  return DeadlineExceeded("server rank " + std::to_string(cluster_.rank()) + ": worker ranks " + FormatRanks(missing) +
                          " did not finish, and no worker has sent a request for " + std::to_string(timeout.count()) + " ms");
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
  last_request_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  if (!policy_error_.ok()) {
    Reject(in, h, policy_error_.WithContext("server rank " + std::to_string(cluster_.rank())));
    return;
  }
  const bool sparse_op = h.op() == wire::SPARSE_PUSH || h.op() == wire::SPARSE_PULL || h.op() == wire::SPARSE_PUSH_PULL;
  if (h.op() != wire::PUSH && h.op() != wire::PUSH_PULL && h.op() != wire::SECAGG && !sparse_op && in.payload_bytes > 0) {
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
    case wire::SPARSE_PUSH:
    case wire::SPARSE_PULL:
    case wire::SPARSE_PUSH_PULL: HandleSparse(in, frame); return;
    case wire::SECAGG: HandleSecAgg(in, frame); return;
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

Result<Server::Served*> Server::ValidateKeys(const wire::Header& h, bool allow_empty) {
  if (h.table() >= layout_.num_tables()) {
    return NotFound("unknown table id " + std::to_string(h.table()) + " (this job has " +
                    std::to_string(layout_.num_tables()) + " tables)");
  }
  const TableSpec& spec = layout_.table(h.table());
  if (spec.sparse()) {
    return InvalidArgument("table '" + spec.name + "' is sparse: " + OpName(h.op()) + " is for dense tables (use " +
                           OpName(h.op() == wire::PULL ? wire::SPARSE_PULL : h.op() == wire::PUSH ? wire::SPARSE_PUSH
                                                                                                   : wire::SPARSE_PUSH_PULL) +
                           ")");
  }
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
  if (h.dtype() != wire::F32) return InvalidArgument("only float32 payloads are supported");
  if (FindCodecById(h.codec()) == nullptr) {
    return InvalidArgument(OpName(h.op()) + " of table '" + spec.name + "' names codec id " + std::to_string(h.codec()) +
                           ", which server rank " + std::to_string(cluster_.rank()) +
                           " does not know (registered: " + RegisteredCodecNames() + ")");
  }
  return it->second;
}

HeldPtr Server::Hold(IncomingFrame& in, Frame& f) {
  auto held = std::make_shared<HeldRequest>();
  held->arrived = Clock::now();
  held->deadline = DeadlineFor(f.header, held->arrived);
  held->worker = cluster_.WorkerIndexOf(in.source);
  held->in = std::move(in);
  held->frame = std::move(f);
  return held;
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
  Served& cs = **v;
  const uint64_t n = h.key_end() - h.key_begin();
  const Codec* codec = FindCodecById(h.codec());  // known: ValidateKeys
  // Checked before anything is received or allocated.
  const uint64_t state_floats = uint64_t{WorkerArrays(cs)} * n;
  if (h.residual_floats() != 0 && (h.residual_floats() != state_floats || in.payload_bytes < state_floats * sizeof(float))) {
    return Reject(in, h, InvalidArgument("push to table '" + cs.spec->name + "' " + Range(h) + " declares " +
                                         std::to_string(h.residual_floats()) +
                                         " floats of worker state (error-feedback residual, optimizer slots) in a payload of " +
                                         std::to_string(in.payload_bytes) + " bytes (this job's workers keep " +
                                         std::to_string(WorkerArrays(cs)) + " arrays of the range's " + std::to_string(n) +
                                         " floats, sent after the values)"));
  }
  const Status size = codec->CheckEncodedSize(n, in.payload_bytes - h.residual_floats() * sizeof(float));
  if (h.element_count() != n || !size.ok()) {
    return Reject(in, h, InvalidArgument("push to table '" + cs.spec->name + "' " + Range(h) + " carries " +
                                         std::to_string(in.payload_bytes) + " bytes (element_count " +
                                         std::to_string(h.element_count()) + "); the range needs " +
                                         (codec->raw() ? std::to_string(n * sizeof(float)) : size.message())));
  }
  {
    MutexLock lock(mu_);
    stats_.push_bytes_received += in.payload_bytes;
  }
  cs.sync->OnPush(Hold(in, f));
}

void Server::HandlePull(IncomingFrame& in, Frame& f) {
  const wire::Header& h = f.header;
  {
    MutexLock lock(mu_);
    ++stats_.pulls;
  }
  auto v = ValidateKeys(h, /*allow_empty=*/false);
  if (!v.ok()) return Reject(in, h, v.status());
  (*v)->sync->OnPull(Hold(in, f));
}

// PolicyHost.

void Server::Refuse(HeldRequest& request, const Status& why) { Reject(request.in, request.h(), why); }

void Server::Acknowledge(const HeldRequest& push) { SendOk(push.in.source, push.h()); }

Status Server::ReceivePayload(const HeldPtr& push, std::span<float> dest, std::function<void(Status)> done) {
  const Codec* codec = FindCodecById(push->h().codec());  // known: ValidateKeys
  if (codec->raw() && push->h().residual_floats() == 0) {  // straight into `dest`
    const std::span<uint8_t> bytes = AsBytes(dest.data(), dest.size());
    return endpoint_.transport().ReceivePayload(push->in, bytes, [push, bytes, done = std::move(done)](Status st) {
      push->in.payload_bytes = 0;  // consumed
      if (st.ok()) st = VerifyPayload(push->frame, bytes);
      done(std::move(st));
    });
  }
  // Into a copy (its size checked against the codec in HandlePush), decoded into `dest`; the
  // worker's state after the values, if any, is kept for the checkpoint.
  auto encoded = std::make_shared<std::vector<uint8_t>>(push->in.payload_bytes);
  const CodecContext ctx = ContextOf(push->h(), cluster_.WorkerIndexOf(push->in.source));
  return endpoint_.transport().ReceivePayload(
      push->in, *encoded, [this, push, encoded, dest, codec, ctx, done = std::move(done)](Status st) {
        push->in.payload_bytes = 0;  // consumed
        if (st.ok()) st = VerifyPayload(push->frame, *encoded);
        const uint64_t residual = push->h().residual_floats();  // checked in HandlePush
        const size_t coded = encoded->size() - residual * sizeof(float);
        if (st.ok()) st = codec->Decode(std::span<const uint8_t>(*encoded).first(coded), dest, ctx);
        if (st.ok() && residual > 0) KeepWorkerState(*push, std::span<const uint8_t>(*encoded).subspan(coded));
        done(std::move(st));
      });
}

void Server::SendWeights(Chunk& chunk, const HeldRequest& pull) {
  const wire::Header& req = pull.h();
  const uint64_t off = req.key_begin() - chunk.info.begin;
  const uint64_t n = req.key_end() - req.key_begin();
  const Codec* codec = FindCodecById(req.codec());  // known: ValidateKeys
  if (!codec->raw()) return SendCompressed(static_cast<Served&>(chunk), pull, *codec);
  wire::Header r = WeightsReply(req);
  r.set_step(chunk.version);
  r.set_element_count(n);
  r.set_codec(codec->id());
  Served& restored = static_cast<Served&>(chunk);
  const int w = pull.worker;
  if (w >= 0 && static_cast<size_t>(w) < restored.restored.size() && restored.restored[w]) {
    // The first reply to a worker after a restore (optimizer on the workers, float32 replies):
    // a copy, with the worker's saved state after the weights.
    auto payload = FullPayload(restored, chunk.weights.data(), off, n, w, off == 0 && n == chunk.weights.size(), &r);
    {
      MutexLock lock(mu_);
      stats_.pull_bytes_sent += payload->size();
    }
    const std::span<const uint8_t> bytes(*payload);
    endpoint_.Send(pull.in.source, std::move(r), bytes, [this, &restored, payload](Status s) {
      if (!s.ok()) endpoint_.Warn("sending weights of " + Describe(restored) + ": " + s.ToString());
    });
    return;
  }
  {
    MutexLock lock(mu_);
    stats_.pull_bytes_sent += n * sizeof(float);
  }
  const std::span<const float> weights(chunk.weights.data() + off, n);
  Served& served = static_cast<Served&>(chunk);  // every Chunk a policy sees is one of chunks_
  ++chunk.inflight_sends;
  endpoint_.Send(pull.in.source, std::move(r), AsBytes(weights.data(), n), [this, &served](Status s) {
    if (!s.ok()) endpoint_.Warn("sending weights of " + Describe(served) + ": " + s.ToString());
    if (--served.inflight_sends == 0) served.sync->OnWeightsFree();
  });
}

Status Server::RefreshDownlink(Served& chunk, const Codec& codec, float density) {
  if (!chunk.down) {
    chunk.down = std::make_unique<Downlink>();
    chunk.down->known = chunk.weights;
    chunk.down->version = chunk.version;
    return Status::Ok();
  }
  Downlink& d = *chunk.down;
  if (d.version == chunk.version) return Status::Ok();
  // The change the replica lacks, encoded; the replica moves by what the workers will decode,
  // so weights - known is what compression has not sent yet (the residual).
  std::vector<float>& change = d.scratch;
  change.resize(chunk.weights.size());
  for (size_t i = 0; i < change.size(); ++i) change[i] = chunk.weights[i] - d.known[i];
  const CodecContext ctx{.table = chunk.info.table, .chunk = chunk.info.index, .step = chunk.version, .rank = -1,
                         .density = density};
  auto encoded = std::make_shared<std::vector<uint8_t>>();
  // A codec decodes its own encoding unless a value was not finite (int8 and sign then code a NaN
  // scale): the weights have diverged. The replica stays as it was.
  if (Status decoded = codec.EncodeDecoded(change, ctx, encoded.get(), change); !decoded.ok()) {
    return FailedPrecondition(Describe(chunk) + " cannot be sent as a " + std::string(codec.name()) +
                              " change: its weights are not all finite (" + decoded.message() + ")");
  }
  for (size_t i = 0; i < change.size(); ++i) d.known[i] += change[i];
  d.from = d.version;
  d.version = chunk.version;
  d.delta = std::move(encoded);
  d.codec = codec.id();
  d.density = density;
  return Status::Ok();
}

uint32_t Server::WorkerArrays(const Served& chunk) const {
  return WorkerStateArrays(*chunk.spec, WorkerState{.codec = options_.codec, .optimizer = options_.worker_optimizer,
                                                    .workers = static_cast<uint32_t>(num_workers_)});
}

void Server::KeepWorkerState(const HeldRequest& push, std::span<const uint8_t> bytes) {
  const wire::Header& h = push.h();
  Served& cs = *by_key_.at(Key(h.table(), h.chunk()));  // known: ValidateKeys
  cs.SizeWorkerState(static_cast<size_t>(num_workers_));
  const uint64_t chunk_n = cs.weights.size();
  const uint64_t n = h.key_end() - h.key_begin();
  const uint64_t arrays = h.residual_floats() / n;  // checked in HandlePush: WorkerArrays(cs)
  std::vector<float>& r = cs.worker_state[push.worker];
  r.resize(chunk_n * arrays);
  for (uint64_t j = 0; j < arrays; ++j) {
    std::memcpy(r.data() + j * chunk_n + (h.key_begin() - cs.info.begin), bytes.data() + j * n * sizeof(float), n * sizeof(float));
  }
  cs.state_at[push.worker] = h.step() + 1;
  cs.restored[push.worker] = false;
}

std::shared_ptr<std::vector<uint8_t>> Server::FullPayload(Served& chunk, const float* values, uint64_t off, uint64_t n,
                                                          int worker, bool whole, wire::Header* reply) {
  // A worker's first full reply after a restore also gives it back its saved state of the range.
  const bool give_back = worker >= 0 && static_cast<size_t>(worker) < chunk.restored.size() && chunk.restored[worker] &&
                         chunk.state_at[worker] == chunk.version;
  const uint64_t chunk_n = chunk.weights.size();
  const uint64_t arrays = give_back ? chunk.worker_state[worker].size() / chunk_n : 0;
  auto full = std::make_shared<std::vector<uint8_t>>(n * sizeof(float) * (1 + arrays));
  std::memcpy(full->data(), values + off, n * sizeof(float));
  for (uint64_t j = 0; j < arrays; ++j) {
    std::memcpy(full->data() + (1 + j) * n * sizeof(float), chunk.worker_state[worker].data() + j * chunk_n + off,
                n * sizeof(float));
  }
  if (arrays > 0) {
    reply->set_residual_floats(arrays * n);
    if (whole) chunk.restored[worker] = false;  // given back once
  }
  return full;
}

void Server::SendCompressed(Served& chunk, const HeldRequest& pull, const Codec& codec) {
  const wire::Header& req = pull.h();
  if (Status s = RefreshDownlink(chunk, codec, req.codec_density()); !s.ok()) {
    endpoint_.SendError(pull.in.source, req, s);
    MutexLock lock(mu_);
    ++stats_.errors_sent;
    return;
  }
  const Downlink& d = *chunk.down;
  const uint64_t off = req.key_begin() - chunk.info.begin;
  const uint64_t n = req.key_end() - req.key_begin();
  const bool whole = off == 0 && n == chunk.weights.size();
  wire::Header r = WeightsReply(req);
  r.set_step(d.version);
  r.set_codec_density(req.codec_density());
  std::shared_ptr<const std::vector<uint8_t>> payload;
  if (whole && req.base_version() == d.version + 1) {  // the worker holds this version: nothing to send
    r.set_delta_base(d.version + 1);
    r.set_codec(codec.id());
    r.set_element_count(n);
  } else if (whole && d.delta && req.base_version() == d.from + 1 && d.codec == codec.id() &&
             d.density == req.codec_density()) {
    r.set_delta_base(d.from + 1);
    r.set_codec(codec.id());
    r.set_element_count(n);
    payload = d.delta;
  } else {  // the replica itself, as float32 (a copy: the next change rewrites it)
    r.set_delta_base(0);
    r.set_codec(0);
    r.set_element_count(n);
    payload = FullPayload(chunk, d.known.data(), off, n, pull.worker, whole, &r);
  }
  {
    MutexLock lock(mu_);
    stats_.pull_bytes_sent += payload ? payload->size() : 0;
    ++(r.delta_base() == 0 ? stats_.full_replies : stats_.delta_replies);
  }
  const std::span<const uint8_t> bytes = payload ? std::span<const uint8_t>(*payload) : std::span<const uint8_t>();
  endpoint_.Send(pull.in.source, std::move(r), bytes, [this, &chunk, payload](Status s) {
    if (!s.ok()) endpoint_.Warn("sending weights of " + Describe(chunk) + ": " + s.ToString());
  });
}

void Server::ApplyUpdate(Chunk& chunk, std::span<const float> gradient) {
  if (chunk.spec->init.kind != InitKind::kFirstPush) {
    ApplyOptimizer(chunk.spec->optimizer, chunk.version + 1, chunk.weights, chunk.slots, gradient);
  } else if (chunk.version == 0) {  // step 0 is the initial weights (layout.h)
    std::copy(gradient.begin(), gradient.end(), chunk.weights.begin());
  } else {
    ApplyOptimizer(chunk.spec->optimizer, chunk.version, chunk.weights, chunk.slots, gradient);
  }
  ++chunk.version;
  MutexLock lock(mu_);
  ++stats_.steps_applied;
}

float* Server::BufferPool::Acquire(ChunkSync* waiter) {
  if (!free.empty()) {
    float* p = free.back();
    free.pop_back();
    return p;
  }
  if (buffers.size() < capacity) {
    buffers.push_back(std::make_unique<float[]>(floats));
    return buffers.back().get();
  }
  waiters.push_back(waiter);
  return nullptr;
}

void Server::BufferPool::Release(float* p) {
  free.push_back(p);
  // Wake waiters until one takes the buffer: a waiter whose pushes have expired meanwhile takes
  // nothing, and must not leave the buffer idle while others wait.
  while (!free.empty() && !waiters.empty()) {
    ChunkSync* sync = waiters.front();
    waiters.pop_front();
    sync->OnBufferFree();
  }
}

float* Server::AcquireAccumulator(ChunkSync* waiter) { return accum_pool_.Acquire(waiter); }
void Server::ReleaseAccumulator(float* buffer) { accum_pool_.Release(buffer); }
float* Server::AcquireScratch(ChunkSync* waiter) { return scratch_pool_.Acquire(waiter); }
void Server::ReleaseScratch(float* buffer) { scratch_pool_.Release(buffer); }

void Server::WakeAt(Clock::time_point deadline) { next_expiry_ = std::min(next_expiry_, deadline); }

std::string Server::Describe(const Chunk& cs) const {
  return "table '" + cs.spec->name + "' chunk " + std::to_string(cs.info.index) + " [" + std::to_string(cs.info.begin) +
         "," + std::to_string(cs.info.end) + ") at step " + std::to_string(cs.version);
}

std::string Server::Self() const { return "server rank " + std::to_string(cluster_.rank()); }

int Server::WorkerRank(int worker) const { return cluster_.worker_rank(worker); }

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
  auto held = std::make_shared<HeldRequest>();
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

Clock::time_point Server::OnTick(Clock::time_point now) {
  if (now >= next_expiry_) ExpireHeld(now);
  return next_expiry_;
}

void Server::ExpireHeld(Clock::time_point now) {
  Clock::time_point next = Clock::time_point::max();
  const std::string me = Self();
  for (auto& cs : chunks_) {
    if (cs->sync) next = std::min(next, cs->sync->Expire(now));
  }
  for (auto& st : sparse_) {
    if (st) next = std::min(next, st->Expire(now));
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
  next = std::min(next, ExpireSecAgg(now));
  next_expiry_ = next;
}

}  // namespace shardps::ps
