#include "shardps/worker/kv_client.h"

#include "client_core.h"

#include <algorithm>
#include <cstring>
#include <condition_variable>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "shardps/base/codec.h"
#include "shardps/base/thread_annotations.h"
#include "shardps/net/endpoint.h"
#include "shardps/base/optimizer.h"
#include "shardps/storage/checkpoint.h"

namespace shardps::worker {


using internal::ClientCore;
using internal::OpState;

Handle internal::CompletedHandle(Status s) { return Handle(std::make_shared<OpState>(std::move(s))); }

const Codec* ClientCore::CodecFor(uint32_t table, uint64_t step) const {
  if ((table < layout_.num_tables() && layout_.table(table).optimizer.kind == OptimizerKind::kSum) ||
      step < options_.compress_after) {
    return FindCodec(kIdentityCodec);
  }
  return codec_;
}

Status Handle::wait(std::chrono::milliseconds timeout) const {
  if (!state_) return Status::Ok();
  MutexLock lock(state_->mu);
  if (state_->remaining == 0) return state_->error;
  // While this thread blocks, the communication thread may poll eagerly (Endpoint::BeginWait).
  ClientCore* client = state_->client;
  if (client) client->endpoint().BeginWait();
  // wait_for(timeout, predicate), with the predicate tested here, where the analysis sees the lock.
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (state_->remaining != 0) {
    if (state_->cv.wait_until(lock.native(), until) == std::cv_status::timeout) break;
  }
  const bool done = state_->remaining == 0;
  if (client) client->endpoint().EndWait();
  if (done) return state_->error;
  std::set<int> missing;
  for (size_t i = 0; i < state_->parts_left.size(); ++i) if (state_->parts_left[i] > 0) missing.insert(state_->server[i]);
  return DeadlineExceeded(state_->what + ": no reply within " + std::to_string(timeout.count()) +
                          " ms from server ranks " + FormatRanks(std::vector<int>(missing.begin(), missing.end())));
}

Status Handle::Cancel(std::chrono::milliseconds timeout) const {
  if (!state_ || done() || !state_->client) return Status::Ok();
  return state_->client->Cancel(state_, timeout);
}

bool Handle::done() const {
  if (!state_) return true;
  MutexLock lock(state_->mu);
  return state_->remaining == 0;
}

namespace {

std::span<const uint8_t> Bytes(const float* p, uint64_t n) {
  return {reinterpret_cast<const uint8_t*>(p), n * sizeof(float)};
}
std::span<uint8_t> Bytes(float* p, uint64_t n) { return {reinterpret_cast<uint8_t*>(p), n * sizeof(float)}; }

}  // namespace

Status ValidateClientOptions(const ClientOptions& options) {
  SHARDPS_RETURN_IF_ERROR(LookupCodec(options.codec).status());
  if (!(options.codec_density > 0.0f && options.codec_density <= 1.0f)) {
    return InvalidArgument("codec density " + std::to_string(options.codec_density) + " is outside (0, 1]");
  }
  if (!options.worker_optimizer.empty()) {
    SHARDPS_RETURN_IF_ERROR(LookupOptimizer(options.worker_optimizer).status().WithContext("ClientOptions::worker_optimizer"));
  }
  return Status::Ok();
}

KVClient::KVClient(Endpoint& endpoint, const Cluster& cluster, const TableLayout& layout, ClientOptions options)
    : core_(std::make_unique<ClientCore>(endpoint, cluster, layout, options)) {}

KVClient::~KVClient() = default;

Handle KVClient::Push(uint32_t table, std::span<const float> grad, uint64_t step, KeyRange range) {
  return core_->Push(table, grad, step, range);
}
Handle KVClient::Pull(uint32_t table, std::span<float> out, uint64_t version, KeyRange range) {
  return core_->Pull(table, out, version, range);
}
Handle KVClient::PullExact(uint32_t table, std::span<float> out, uint64_t version, KeyRange range) {
  return core_->Pull(table, out, version, range, /*exact=*/true);
}
bool KVClient::lossy() const { return core_->lossy(); }
void KVClient::ShareOptimizerSlots(uint32_t table, std::span<float> slots) { core_->ShareOptimizerSlots(table, slots); }
WireCounters KVClient::wire() const { return core_->wire(); }
Handle KVClient::PushPull(uint32_t table, std::span<const float> grad, std::span<float> out, uint64_t step,
                          KeyRange range) {
  return core_->PushPull(table, grad, out, step, range);
}
Handle KVClient::SparsePush(uint32_t table, std::span<const uint64_t> keys, std::span<const float> grads, uint64_t step) {
  return core_->SparsePush(table, keys, grads, step);
}
Handle KVClient::SparsePull(uint32_t table, std::span<const uint64_t> keys, std::span<float> rows, uint64_t version) {
  return core_->SparsePull(table, keys, rows, version);
}
Handle KVClient::SparsePushPull(uint32_t table, std::span<const uint64_t> keys, std::span<const float> grads,
                                std::span<float> rows, uint64_t step) {
  return core_->SparsePushPull(table, keys, grads, rows, step);
}
Handle KVClient::Barrier() { return core_->Barrier(); }
Handle KVClient::SecAgg(uint64_t round, uint32_t phase, std::span<const uint8_t> bundle, std::vector<uint8_t>* reply) {
  return core_->SecAgg(round, phase, bundle, reply);
}
Handle KVClient::Hello() { return core_->Hello(); }
Handle KVClient::Shutdown() { return core_->Shutdown(); }
void KVClient::Retain(std::shared_ptr<void> keep) { core_->Retain(std::move(keep)); }
Handle KVClient::Checkpoint(uint64_t version, uint64_t step) { return core_->Checkpoint(version, step); }
const TableLayout& KVClient::layout() const { return core_->layout(); }
FrameHandler* KVClient::frame_handler() { return core_.get(); }

void ClientCore::Retain(std::shared_ptr<void> keep) {
  MutexLock lock(mu_);
  retained_.push_back(std::move(keep));
}

Status ClientCore::Cancel(const std::shared_ptr<OpState>& op, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  if (!endpoint_.running()) {
    // Stopped: the endpoint shut its transport down, which then touches no buffer.
    MutexLock lock(op->mu);
    if (op->error.ok()) op->error = Cancelled(op->what + ": cancelled");
    std::fill(op->parts_left.begin(), op->parts_left.end(), 0);
    op->remaining = 0;
    return Status::Ok();
  }
  auto answer = std::make_shared<std::promise<Status>>();
  auto result = answer->get_future();
  // The transport gets half the time, so its verdict comes back before this wait gives up.
  const auto release_by = Clock::now() + timeout / 2;
  endpoint_.Post([this, op, answer, release_by] { answer->set_value(CancelOnCommThread(op, release_by)); });
  if (result.wait_until(deadline) != std::future_status::ready) {
    return DeadlineExceeded(op->what + ": cancel not confirmed by the communication thread within " +
                            std::to_string(timeout.count()) + " ms; its buffers must stay allocated");
  }
  return result.get();
}

Status ClientCore::CancelOnCommThread(const std::shared_ptr<OpState>& op, Clock::time_point deadline) {
  {
    MutexLock lock(op->mu);
    if (op->remaining == 0) return Status::Ok();  // finished meanwhile
  }
  op->cancelled = true;  // completions still queued in a transport leave the buffers alone
  std::erase_if(pending_, [&](const auto& kv) { return kv.second.op == op; });  // late replies are dropped
  Status held;
  for (std::span<const uint8_t> region : op->regions) {
    Status s = endpoint_.transport().Release(region, deadline);
    if (!s.ok() && held.ok()) held = s.WithContext(op->what + ": cancel");
  }
  {
    MutexLock lock(op->mu);
    if (op->error.ok()) op->error = Cancelled(op->what + ": cancelled");
    std::fill(op->parts_left.begin(), op->parts_left.end(), 0);
    op->remaining = 0;
  }
  op->cv.notify_all();
  return held;
}

Handle ClientCore::Failed(Status s) { return internal::CompletedHandle(std::move(s)); }

Result<std::pair<uint64_t, uint64_t>> ClientCore::Resolve(uint32_t table, KeyRange range, size_t buffer_size,
                                                        const char* what) const {
  if (table >= layout_.num_tables()) {
    return NotFound(std::string(what) + ": unknown table id " + std::to_string(table) + " (this job has " +
                    std::to_string(layout_.num_tables()) + " tables)");
  }
  const TableSpec& spec = layout_.table(table);
  const uint64_t end = range.EndIn(spec.size);
  if (range.begin >= end || end > spec.size) {
    return OutOfRange(std::string(what) + " of table '" + spec.name + "': key range [" + std::to_string(range.begin) + "," +
                      std::to_string(end) + ") is empty or outside its " + std::to_string(spec.size) + " elements");
  }
  if (buffer_size != end - range.begin) {
    return InvalidArgument(std::string(what) + " of table '" + spec.name + "': buffer has " + std::to_string(buffer_size) +
                           " floats, the key range [" + std::to_string(range.begin) + "," + std::to_string(end) + ") has " +
                           std::to_string(end - range.begin));
  }
  return std::make_pair(range.begin, end);
}

void ClientCore::ShareOptimizerSlots(uint32_t table, std::span<float> slots) {
  MutexLock lock(ef_mu_);
  worker_slots_[table] = slots;
}

uint32_t ClientCore::StateArrays(uint32_t table) const {
  if (table >= layout_.num_tables()) return 0;
  return WorkerStateArrays(layout_.table(table), WorkerState{.codec = options_.codec, .optimizer = options_.worker_optimizer});
}

void ClientCore::AppendState(uint32_t table, uint64_t b, uint64_t e, std::vector<uint8_t>& out) {
  const uint64_t n = e - b;
  const uint64_t size = layout_.table(table).size;
  auto append = [&](const float* from) {  // null: zeros
    const size_t at = out.size();
    out.resize(at + n * sizeof(float), 0);
    if (from) std::memcpy(out.data() + at, from + b, n * sizeof(float));
  };
  MutexLock lock(ef_mu_);
  if (lossy()) {  // the residual (zeros when there is none: no error feedback, or not yet compressed)
    auto r = residual_.find(table);
    append(r != residual_.end() && r->second.size() == size ? r->second.data() : nullptr);
  }
  if (!options_.worker_optimizer.empty()) {
    const uint64_t slots = static_cast<uint64_t>(OptimizerSlots(options_.worker_optimizer));
    auto it = worker_slots_.find(table);
    const bool shared = it != worker_slots_.end() && it->second.size() == slots * size;
    for (uint64_t j = 0; j < slots; ++j) append(shared ? it->second.data() + j * size : nullptr);
  }
}

void ClientCore::RestoreState(uint32_t table, uint64_t b, uint64_t e, const uint8_t* bytes, uint64_t arrays) {
  const uint64_t n = e - b;
  const uint64_t size = layout_.table(table).size;
  MutexLock lock(ef_mu_);
  uint64_t j = 0;
  if (lossy() && j < arrays) {
    std::vector<float>& r = residual_[table];
    if (r.empty()) r.assign(size, 0.0f);
    std::memcpy(r.data() + b, bytes, n * sizeof(float));
    ++j;
  }
  auto it = worker_slots_.find(table);
  if (options_.worker_optimizer.empty() || it == worker_slots_.end()) return;
  for (uint64_t k = 0; j < arrays && (k + 1) * size <= it->second.size(); ++j, ++k) {
    std::memcpy(it->second.data() + k * size + b, bytes + j * n * sizeof(float), n * sizeof(float));
  }
}

std::vector<ClientCore::Piece> ClientCore::Split(wire::Op op, uint32_t table, uint64_t begin, uint64_t end, uint64_t step,
                                             const float* grad, float* out, const Codec* codec) {
  std::vector<Piece> pieces;
  for (const ChunkInfo& c : layout_.ChunksIn(table, begin, end)) {
    const uint64_t b = std::max(begin, c.begin);
    const uint64_t e = std::min(end, c.end);
    Piece p;
    p.server_rank = cluster_.server_rank(c.server);
    p.header.set_op(op);
    p.header.set_table(table);
    p.header.set_chunk(c.index);
    p.header.set_key_begin(b);
    p.header.set_key_end(e);
    p.header.set_step(step);
    p.header.set_codec(codec->id());
    p.codec = codec;
    if (!codec->raw()) p.header.set_codec_density(options_.codec_density);
    if (grad) {
      p.header.set_element_count(e - b);
      // Before a checkpoint step: this worker's state of the range (its error-feedback residual,
      // its optimizer slots) follows the values, for the checkpoint.
      const bool save = options_.checkpoint_at && StateArrays(table) > 0 && options_.checkpoint_at(step + 1);
      if (codec->raw() && !save) {
        p.payload = Bytes(grad + (b - begin), e - b);  // sent from the caller's buffer
      } else if (codec->raw()) {
        const std::span<const uint8_t> values = Bytes(grad + (b - begin), e - b);
        p.encoded = std::make_shared<std::vector<uint8_t>>(values.begin(), values.end());
      } else {
        const CodecContext ctx{.table = table, .chunk = c.index, .step = step, .rank = cluster_.worker_index(),
                               .density = options_.codec_density};
        const std::span<const float> g(grad + (b - begin), e - b);
        if (options_.error_feedback) {
          MutexLock lock(ef_mu_);
          std::vector<float>& r = residual_[table];
          if (r.empty()) r.assign(layout_.table(table).size, 0.0f);
          p.encoded = std::make_shared<std::vector<uint8_t>>(
              EncodeWithFeedback(*codec, g, std::span<float>(r).subspan(b, e - b), ctx));
        } else {
          p.encoded = std::make_shared<std::vector<uint8_t>>(codec->Encode(g, ctx));
        }
      }
      if (save) {
        AppendState(table, b, e, *p.encoded);
        p.header.set_residual_floats(uint64_t{StateArrays(table)} * (e - b));
      }
      if (p.encoded) p.payload = *p.encoded;
      push_bytes_ += p.payload.size();
      push_floats_ += e - b;
    }
    if (out) {
      p.out = Bytes(out + (b - begin), e - b);
      p.whole_chunk = !codec->raw() && b == c.begin && e == c.end;
    }
    pieces.push_back(std::move(p));
  }
  return pieces;
}

Handle ClientCore::Push(uint32_t table, std::span<const float> grad, uint64_t step, KeyRange range) {
  if (!codec_error_.ok()) return Failed(codec_error_);
  auto r = Resolve(table, range, grad.size(), "push");
  if (!r.ok()) return Failed(r.status());
  return Start("push of table '" + layout_.table(table).name + "' step " + std::to_string(step),
               Split(wire::PUSH, table, r->first, r->second, step, grad.data(), nullptr, CodecFor(table, step)), "push");
}

Handle ClientCore::Pull(uint32_t table, std::span<float> out, uint64_t version, KeyRange range, bool exact) {
  if (!codec_error_.ok()) return Failed(codec_error_);
  auto r = Resolve(table, range, out.size(), "pull");
  if (!r.ok()) return Failed(r.status());
  return Start("pull of table '" + layout_.table(table).name + "' version " + std::to_string(version),
               Split(wire::PULL, table, r->first, r->second, version, nullptr, out.data(),
                     // the codec of the step whose reply this version is (step version - 1)
                     exact ? FindCodec(kIdentityCodec) : CodecFor(table, version == 0 ? 0 : version - 1)),
               "pull");
}

Handle ClientCore::PushPull(uint32_t table, std::span<const float> grad, std::span<float> out, uint64_t step,
                            KeyRange range) {
  if (!codec_error_.ok()) return Failed(codec_error_);
  auto r = Resolve(table, range, grad.size(), "push-pull");
  if (!r.ok()) return Failed(r.status());
  if (out.size() != grad.size()) {
    return Failed(InvalidArgument("push-pull: gradient has " + std::to_string(grad.size()) + " floats, output " +
                                  std::to_string(out.size())));
  }
  return Start("push-pull of table '" + layout_.table(table).name + "' step " + std::to_string(step),
               Split(wire::PUSH_PULL, table, r->first, r->second, step, grad.data(), out.data(), CodecFor(table, step)),
               "push_pull");
}

Handle ClientCore::Barrier() {
  uint64_t id;
  {
    MutexLock lock(mu_);
    id = barrier_count_++;
  }
  Piece p;
  p.server_rank = cluster_.server_rank(0);
  p.header.set_op(wire::BARRIER);
  p.header.set_barrier_id(id);
  std::vector<Piece> pieces;
  pieces.push_back(std::move(p));
  return Start("barrier " + std::to_string(id), std::move(pieces));
}

Handle ClientCore::SecAgg(uint64_t round, uint32_t phase, std::span<const uint8_t> bundle, std::vector<uint8_t>* reply) {
  if (bundle.empty() || reply == nullptr) return Failed(InvalidArgument("secure aggregation: an empty bundle or no reply buffer"));
  Piece p;
  p.server_rank = cluster_.server_rank(0);
  p.header.set_op(wire::SECAGG);
  p.header.set_step(round);
  p.header.set_secagg_phase(phase);
  p.payload = bundle;
  p.bytes_out = reply;
  push_bytes_ += bundle.size();
  std::vector<Piece> pieces;
  pieces.push_back(std::move(p));
  return Start("secure aggregation round " + std::to_string(round) + " phase " + std::to_string(phase), std::move(pieces));
}

Handle ClientCore::Hello() {
  std::vector<Piece> pieces;
  for (int s : cluster_.server_ranks()) {
    Piece p;
    p.server_rank = s;
    p.header.set_op(wire::HELLO);
    p.header.set_layout_digest(layout_.digest());
    pieces.push_back(std::move(p));
  }
  return Start("hello", std::move(pieces));
}

Handle ClientCore::Shutdown() {
  std::vector<Piece> pieces;
  for (int s : cluster_.server_ranks()) {
    Piece p;
    p.server_rank = s;
    p.header.set_op(wire::SHUTDOWN);
    pieces.push_back(std::move(p));
  }
  return Start("shutdown", std::move(pieces));
}

Handle ClientCore::Checkpoint(uint64_t version, uint64_t step) {
  std::vector<Piece> pieces;
  for (int s : cluster_.server_ranks()) {
    Piece p;
    p.server_rank = s;
    p.header.set_op(wire::CHECKPOINT);
    p.header.set_step(step);
    p.header.set_checkpoint_version(version);
    pieces.push_back(std::move(p));
  }
  return Start("checkpoint version " + std::to_string(version) + " at step " + std::to_string(step), std::move(pieces));
}

Handle ClientCore::Start(std::string what, std::vector<Piece> pieces, const char* kind) {
  auto op = std::make_shared<OpState>(std::move(what), pieces.size());  // each piece: sent + answered
  op->client = this;
  if (kind != nullptr && options_.on_op_done) {
    op->on_done = [observe = options_.on_op_done, kind, start = std::chrono::steady_clock::now()](const Status& s) {
      observe(kind, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), s.ok());
    };
  }
  for (const Piece& p : pieces) op->server.push_back(p.server_rank);
  // The pieces are consecutive slices of one gradient and one output buffer: release each whole.
  // Encoded copies are the op's own buffers, one region each.
  for (const Piece& p : pieces) {
    if (p.encoded) {
      op->encoded.push_back(p.encoded);
      op->regions.push_back(*p.encoded);
    }
    if (p.inbox) {
      op->encoded.push_back(p.inbox);
      op->regions.push_back(*p.inbox);
    }
  }
  auto bounds = [](auto member, const std::vector<Piece>& ps) {
    const uint8_t* lo = nullptr;
    const uint8_t* hi = nullptr;
    for (const Piece& p : ps) {
      std::span<const uint8_t> b = member(p);
      if (b.empty()) continue;
      if (!lo || b.data() < lo) lo = b.data();
      if (!hi || b.data() + b.size() > hi) hi = b.data() + b.size();
    }
    return lo ? std::span<const uint8_t>(lo, static_cast<size_t>(hi - lo)) : std::span<const uint8_t>();
  };
  for (auto region : {bounds([](const Piece& p) { return p.encoded ? std::span<const uint8_t>() : p.payload; }, pieces),
                      bounds([](const Piece& p) { return p.inbox ? std::span<const uint8_t>() : std::span<const uint8_t>(p.out); },
                             pieces)}) {
    if (!region.empty()) op->regions.push_back(region);
  }
  if (pieces.empty()) return Handle(op);
  if (!endpoint_.running()) {
    MutexLock lock(op->mu);
    op->error = Unavailable(op->what + ": the communication thread is not running");
    op->remaining = 0;
    return Handle(op);
  }
  endpoint_.Post([this, op, pieces = std::move(pieces)]() mutable {
    for (size_t i = 0; i < pieces.size(); ++i) {
      Piece& p = pieces[i];
      const uint64_t id = next_request_id_++;
      p.header.set_request_id(id);
      p.header.set_timeout_ms(static_cast<uint64_t>(options_.request_timeout.count()));
      if (p.whole_chunk) {  // which version of the chunk this worker holds, decided here, in order
        auto rep = replicas_.find((uint64_t{p.header.table()} << 32) | p.header.chunk());
        if (rep != replicas_.end() && rep->second.valid) p.header.set_base_version(rep->second.version + 1);
      }
      pending_[id] = Pending{op,       i,       p.out, p.header.op(), p.server_rank, p.header.chunk(), p.sparse,
                             std::move(p.after_receive), p.header.table(), p.server, p.codec, p.whole_chunk,
                             p.header.key_begin(), p.bytes_out, p.header.secagg_phase()};
      endpoint_.Send(p.server_rank, p.header, p.payload, [this, op, i, id](Status s) {
        op->Part(i, s);
        if (!s.ok() && pending_.erase(id) > 0) op->Part(i, s);  // no reply will come
      });
    }
  });
  return Handle(op);
}

void ClientCore::OnPeerLost(const Status& why) {
  // Every request fails now; later ones fail in Endpoint::Send.
  auto pending = std::move(pending_);
  pending_.clear();
  // Only the answer part: the send part completes when the transport is done with the
  // caller's buffer (at once for a lost peer; a live one's queued sends still go out).
  for (auto& [id, p] : pending) p.op->Part(p.piece, why.WithContext(p.op->what));
}

void ClientCore::OnFrame(IncomingFrame in, Frame frame) {
  const wire::Header& h = frame.header;
  auto it = pending_.find(h.request_id());
  if (it == pending_.end()) {
    endpoint_.Warn(std::string(h.op() == wire::ERROR ? "error" : "reply") + " from rank " + std::to_string(in.source) +
                   " for unknown request " + std::to_string(h.request_id()) +
                   (h.op() == wire::ERROR ? ": " + h.error() : std::string()));
    if (in.payload_bytes > 0) (void)endpoint_.transport().DiscardPayload(in);
    return;
  }
  // Only the server the request went to may answer it, about the same op and chunk (request ids
  // are easy to guess; a reply from anyone else is dropped, not trusted).
  const Pending& expected = it->second;
  if (in.source != expected.server_rank || h.reply_to() != expected.op_code ||
      (h.op() == wire::RESPONSE && h.chunk() != expected.chunk)) {
    endpoint_.Warn("dropped a reply from rank " + std::to_string(in.source) + " for request " +
                   std::to_string(h.request_id()) + ", which went to rank " + std::to_string(expected.server_rank));
    if (in.payload_bytes > 0) (void)endpoint_.transport().DiscardPayload(in);
    return;
  }
  Pending p = std::move(it->second);
  pending_.erase(it);
  if (h.op() == wire::ERROR) {
    if (in.payload_bytes > 0) (void)endpoint_.transport().DiscardPayload(in);
    // The server may not hold the key list this request carried: the next one sends its keys.
    if (p.sparse) ForgetSparseKeys(p.table, p.server);
    int code = h.error_code();
    if (code <= 0 || code > static_cast<int>(StatusCode::kCancelled)) code = static_cast<int>(StatusCode::kInternal);
    p.op->Part(p.piece, Status(static_cast<StatusCode>(code), p.op->what + ": " + h.error()));
    return;
  }
  if (p.op_code == wire::SECAGG) return ReceiveBundle(std::move(in), std::move(frame), std::move(p));
  const bool wants_payload = p.op_code == wire::PULL || p.op_code == wire::PUSH_PULL || p.op_code == wire::SPARSE_PULL ||
                             p.op_code == wire::SPARSE_PUSH_PULL;
  if (!wants_payload) {
    if (in.payload_bytes > 0) {
      (void)endpoint_.transport().DiscardPayload(in);
      p.op->Part(p.piece, DataLoss(p.op->what + ": unexpected payload in the reply from rank " + std::to_string(in.source)));
      return;
    }
    p.op->Part(p.piece, Status::Ok());
    return;
  }
  if (p.sparse) return ReceiveRows(std::move(in), std::move(frame), std::move(p));
  const Codec* codec = p.codec;  // the request's
  pull_floats_ += p.out.size() / sizeof(float);
  pull_bytes_ += in.payload_bytes;
  if (!codec->raw()) return ReceiveCompressed(std::move(in), std::move(frame), std::move(p));
  if (h.codec() != codec->id()) {
    if (in.payload_bytes > 0) (void)endpoint_.transport().DiscardPayload(in);
    p.op->Part(p.piece, DataLoss(p.op->what + ": reply from rank " + std::to_string(in.source) + " is coded with codec id " +
                                     std::to_string(h.codec()) + ", the request asked for " + std::string(codec->name()) +
                                     " (id " + std::to_string(codec->id()) + ")"));
    return;
  }
  const uint64_t floats = p.out.size() / sizeof(float);
  if (h.residual_floats() != 0) return ReceiveWithState(std::move(in), std::move(frame), std::move(p));
  if (codec->raw() ? in.payload_bytes != p.out.size() : !codec->CheckEncodedSize(floats, in.payload_bytes).ok()) {
    if (in.payload_bytes > 0) (void)endpoint_.transport().DiscardPayload(in);
    p.op->Part(p.piece, DataLoss(p.op->what + ": reply from rank " + std::to_string(in.source) + " carries " +
                                     std::to_string(in.payload_bytes) + " bytes, expected " +
                                     (codec->raw() ? std::to_string(p.out.size())
                                                    : codec->CheckEncodedSize(floats, in.payload_bytes).message())));
    return;
  }
  auto op = p.op;
  const size_t piece = p.piece;
  auto out = p.out;
  auto fr = std::make_shared<Frame>(std::move(frame));
  Status s;
  if (codec->raw()) {  // straight into the caller's buffer
    s = endpoint_.transport().ReceivePayload(in, out, [op, piece, out, fr](Status st) {
      if (op->cancelled) return;  // the buffer may be gone: do not read it
      if (st.ok()) st = VerifyPayload(*fr, out);
      op->Part(piece, st.ok() ? st : st.WithContext(op->what));
    });
  }
  if (!s.ok()) p.op->Part(p.piece, s.WithContext(p.op->what));
}

void ClientCore::ReceiveBundle(IncomingFrame in, Frame frame, Pending p) {
  const wire::Header& h = frame.header;
  if (in.payload_bytes == 0 || h.secagg_phase() != p.secagg_phase) {
    if (in.payload_bytes > 0) (void)endpoint_.transport().DiscardPayload(in);
    p.op->Part(p.piece, DataLoss(p.op->what + ": the reply from rank " + std::to_string(in.source) + " carries " +
                                     std::to_string(in.payload_bytes) + " bytes for phase " + std::to_string(h.secagg_phase())));
    return;
  }
  auto op = p.op;
  const size_t piece = p.piece;
  std::vector<uint8_t>* out = p.bytes_out;
  auto fr = std::make_shared<Frame>(std::move(frame));
  auto bytes = std::make_shared<std::vector<uint8_t>>(in.payload_bytes);
  pull_bytes_ += in.payload_bytes;
  Status s = endpoint_.transport().ReceivePayload(in, *bytes, [op, piece, out, fr, bytes](Status st) {
    if (op->cancelled) return;  // the caller's vector may be gone: do not write it
    if (st.ok()) st = VerifyPayload(*fr, *bytes);
    if (st.ok()) *out = std::move(*bytes);
    op->Part(piece, st.ok() ? st : st.WithContext(op->what));
  });
  if (!s.ok()) p.op->Part(p.piece, s.WithContext(p.op->what));
}

void ClientCore::ReceiveWithState(IncomingFrame in, Frame frame, Pending p) {
  // The first float32 reply after a restore (the optimizer on the workers): the weights, then
  // this worker's saved state of the range.
  const wire::Header& h = frame.header;
  const uint64_t floats = p.out.size() / sizeof(float);
  const uint64_t arrays = StateArrays(p.table);
  if (arrays == 0 || h.residual_floats() != arrays * floats || in.payload_bytes != p.out.size() * (1 + arrays) ||
      h.key_begin() != p.key_begin || h.key_end() < h.key_begin() || h.key_end() - h.key_begin() != floats) {
    if (in.payload_bytes > 0) (void)endpoint_.transport().DiscardPayload(in);
    p.op->Part(p.piece, DataLoss(p.op->what + ": reply from rank " + std::to_string(in.source) + " for keys [" +
                                     std::to_string(h.key_begin()) + "," + std::to_string(h.key_end()) + ") carries " +
                                     std::to_string(h.residual_floats()) + " worker-state floats in " +
                                     std::to_string(in.payload_bytes) + " bytes; this worker keeps " +
                                     std::to_string(arrays) + " arrays of the " + std::to_string(floats) + " keys"));
    return;
  }
  auto op = p.op;
  const size_t piece = p.piece;
  const auto out = p.out;
  const uint32_t table = p.table;
  auto fr = std::make_shared<Frame>(std::move(frame));
  auto both = std::make_shared<std::vector<uint8_t>>(in.payload_bytes);
  Status s = endpoint_.transport().ReceivePayload(in, *both, [this, op, piece, out, fr, both, table, arrays](Status st) {
    if (op->cancelled) return;  // the buffer may be gone: do not read it
    if (st.ok()) st = VerifyPayload(*fr, *both);
    if (st.ok()) {
      std::memcpy(out.data(), both->data(), out.size());
      RestoreState(table, fr->header.key_begin(), fr->header.key_end(), both->data() + out.size(), arrays);
    }
    op->Part(piece, st.ok() ? st : st.WithContext(op->what));
  });
  if (!s.ok()) p.op->Part(p.piece, s.WithContext(p.op->what));
}

void ClientCore::ReceiveCompressed(IncomingFrame in, Frame frame, Pending p) {
  auto fr = std::make_shared<Frame>(std::move(frame));
  const wire::Header& h = fr->header;
  const Codec* codec = p.codec;
  const uint64_t floats = p.out.size() / sizeof(float);
  const std::string from = "reply from rank " + std::to_string(in.source);
  auto fail = [&](const std::string& why) {
    if (in.payload_bytes > 0) (void)endpoint_.transport().DiscardPayload(in);
    p.op->Part(p.piece, DataLoss(p.op->what + ": " + from + " " + why));
  };
  const uint64_t key = (uint64_t{p.table} << 32) | p.chunk;
  auto op = p.op;
  const size_t piece = p.piece;
  const auto out = std::span<float>(reinterpret_cast<float*>(p.out.data()), floats);
  Status s;
  if (h.delta_base() == 0) {  // the server's replica of the range, as float32
    // After a restore: this worker's state of the range (StateArrays arrays) after the weights.
    const uint64_t arrays = h.residual_floats() != 0 ? StateArrays(p.table) : 0;
    const uint64_t expect = p.out.size() * (1 + arrays);
    if (h.codec() != 0 || in.payload_bytes != expect || h.residual_floats() != arrays * floats ||
        h.key_begin() != p.key_begin || h.key_end() < h.key_begin() || h.key_end() - h.key_begin() != floats) {
      return fail("holds the weights whole, but as codec id " + std::to_string(h.codec()) + " in " +
                  std::to_string(in.payload_bytes) + " bytes for keys [" + std::to_string(h.key_begin()) + "," +
                  std::to_string(h.key_end()) + ") with " + std::to_string(h.residual_floats()) +
                  " worker-state floats (expected float32, " + std::to_string(expect) + " bytes for " +
                  std::to_string(floats) + " keys)");
    }
    const bool whole = p.whole_chunk;
    // With worker state, into a copy first (the caller's buffer has room for the weights only).
    auto both = arrays > 0 ? std::make_shared<std::vector<uint8_t>>(expect) : nullptr;
    const std::span<uint8_t> into = both ? std::span<uint8_t>(*both) : p.out;
    const uint32_t table = p.table;
    s = endpoint_.transport().ReceivePayload(in, into, [this, op, piece, out, fr, key, whole, both, into, table, arrays](Status st) {
      if (op->cancelled) return;  // the buffer may be gone: do not read it
      if (st.ok()) st = VerifyPayload(*fr, into);
      if (st.ok() && both) {
        std::memcpy(out.data(), both->data(), out.size_bytes());
        RestoreState(table, fr->header.key_begin(), fr->header.key_end(), both->data() + out.size_bytes(), arrays);
      }
      if (st.ok() && whole) {
        Replica& rep = replicas_[key];
        rep.values.assign(out.begin(), out.end());
        rep.version = fr->header.step();
        rep.valid = true;
      }
      op->Part(piece, st.ok() ? st : st.WithContext(op->what));
    });
  } else {  // a change of this worker's replica of the chunk
    Replica& rep = replicas_[key];
    if (!p.whole_chunk || h.codec() != codec->id()) {
      return fail("is a change coded with codec id " + std::to_string(h.codec()) + " for a request of " +
                  (p.whole_chunk ? "codec " + std::string(codec->name()) : std::string("part of a chunk")));
    }
    if (rep.valid && rep.values.size() == floats && rep.version == h.step()) {
      // Already applied (another pull of this chunk in flight got the same change): as it is.
      if (in.payload_bytes > 0) (void)endpoint_.transport().DiscardPayload(in);
      std::copy(rep.values.begin(), rep.values.end(), out.begin());
      op->Part(piece, Status::Ok());
      return;
    }
    if (!rep.valid || rep.values.size() != floats || rep.version + 1 != h.delta_base()) {
      const std::string holds = rep.valid ? "version " + std::to_string(rep.version) : std::string("none");
      rep.valid = false;  // the next request asks for the replica whole
      return fail("is a change from version " + std::to_string(h.delta_base() - 1) + " to " + std::to_string(h.step()) +
                  " of chunk " + std::to_string(p.chunk) + ", this worker holds " + holds);
    }
    if (h.delta_base() == h.step() + 1) {  // unchanged
      if (in.payload_bytes != 0) return fail("says nothing changed but carries " + std::to_string(in.payload_bytes) + " bytes");
      std::copy(rep.values.begin(), rep.values.end(), out.begin());
      op->Part(piece, Status::Ok());
      return;
    }
    if (Status size = codec->CheckEncodedSize(floats, in.payload_bytes); !size.ok()) return fail(size.message());
    auto encoded = std::make_shared<std::vector<uint8_t>>(in.payload_bytes);
    const CodecContext ctx{.table = h.table(), .chunk = h.chunk(), .step = h.step(), .rank = -1, .density = h.codec_density()};
    s = endpoint_.transport().ReceivePayload(in, *encoded, [this, op, piece, out, fr, encoded, ctx, codec, key](Status st) {
      if (op->cancelled) return;  // the buffer may be gone: do not write it
      if (st.ok()) st = VerifyPayload(*fr, *encoded);
      Replica& rep = replicas_[key];
      if (st.ok() && rep.valid && rep.version == fr->header.step()) {  // applied meanwhile (see above)
        std::copy(rep.values.begin(), rep.values.end(), out.begin());
        op->Part(piece, st);
        return;
      }
      if (st.ok() && (!rep.valid || rep.version + 1 != fr->header.delta_base())) {
        st = DataLoss("a change from version " + std::to_string(fr->header.delta_base() - 1) + " arrived when this worker's " +
                      (rep.valid ? "replica was at version " + std::to_string(rep.version) : std::string("replica was gone")));
      }
      if (st.ok()) {
        std::vector<float>& change = rep.change;
        change.resize(out.size());
        st = codec->Decode(*encoded, change, ctx);
        if (st.ok()) {
          for (size_t i = 0; i < change.size(); ++i) rep.values[i] += change[i];
          rep.version = fr->header.step();
          std::copy(rep.values.begin(), rep.values.end(), out.begin());
        }
      }
      if (!st.ok()) rep.valid = false;
      op->Part(piece, st.ok() ? st : st.WithContext(op->what));
    });
  }
  if (!s.ok()) op->Part(piece, s.WithContext(op->what));
}

}  // namespace shardps::worker
