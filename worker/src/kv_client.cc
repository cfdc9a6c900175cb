#include "shardps/worker/kv_client.h"

#include "client_core.h"

#include <algorithm>
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

namespace shardps::worker {


using internal::ClientCore;
using internal::OpState;

Handle internal::CompletedHandle(Status s) { return Handle(std::make_shared<OpState>(std::move(s))); }

const Codec* ClientCore::CodecFor(uint32_t table) const {
  if (table < layout_.num_tables() && layout_.table(table).optimizer.kind == OptimizerKind::kSum) {
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

Status ValidateClientOptions(const ClientOptions& options) { return LookupCodec(options.codec).status(); }

KVClient::KVClient(Endpoint& endpoint, const Cluster& cluster, const TableLayout& layout, ClientOptions options)
    : core_(std::make_unique<ClientCore>(endpoint, cluster, layout, options)) {}

KVClient::~KVClient() = default;

Handle KVClient::Push(uint32_t table, std::span<const float> grad, uint64_t step, KeyRange range) {
  return core_->Push(table, grad, step, range);
}
Handle KVClient::Pull(uint32_t table, std::span<float> out, uint64_t version, KeyRange range) {
  return core_->Pull(table, out, version, range);
}
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

std::vector<ClientCore::Piece> ClientCore::Split(wire::Op op, uint32_t table, uint64_t begin, uint64_t end, uint64_t step,
                                             const float* grad, float* out) const {
  std::vector<Piece> pieces;
  const Codec* codec = CodecFor(table);
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
    if (grad) {
      p.header.set_element_count(e - b);
      if (codec->raw()) {
        p.payload = Bytes(grad + (b - begin), e - b);  // sent from the caller's buffer
      } else {
        const CodecContext ctx{.table = table, .chunk = c.index, .step = step, .rank = cluster_.rank()};
        p.encoded = std::make_shared<std::vector<uint8_t>>(
            codec->Encode(std::span<const float>(grad + (b - begin), e - b), ctx));
        p.payload = *p.encoded;
      }
    }
    if (out) p.out = Bytes(out + (b - begin), e - b);
    pieces.push_back(std::move(p));
  }
  return pieces;
}

Handle ClientCore::Push(uint32_t table, std::span<const float> grad, uint64_t step, KeyRange range) {
  if (!codec_error_.ok()) return Failed(codec_error_);
  auto r = Resolve(table, range, grad.size(), "push");
  if (!r.ok()) return Failed(r.status());
  return Start("push of table '" + layout_.table(table).name + "' step " + std::to_string(step),
               Split(wire::PUSH, table, r->first, r->second, step, grad.data(), nullptr));
}

Handle ClientCore::Pull(uint32_t table, std::span<float> out, uint64_t version, KeyRange range) {
  if (!codec_error_.ok()) return Failed(codec_error_);
  auto r = Resolve(table, range, out.size(), "pull");
  if (!r.ok()) return Failed(r.status());
  return Start("pull of table '" + layout_.table(table).name + "' version " + std::to_string(version),
               Split(wire::PULL, table, r->first, r->second, version, nullptr, out.data()));
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
               Split(wire::PUSH_PULL, table, r->first, r->second, step, grad.data(), out.data()));
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

Handle ClientCore::Start(std::string what, std::vector<Piece> pieces) {
  auto op = std::make_shared<OpState>(std::move(what), pieces.size());  // each piece: sent + answered
  op->client = this;
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
      pending_[id] = Pending{op,       i,       p.out, p.header.op(), p.server_rank, p.header.chunk(), p.sparse,
                             std::move(p.after_receive), p.header.table(), p.server};
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
  const Codec* codec = CodecFor(p.table);  // the request's table's
  if (h.codec() != codec->id()) {
    if (in.payload_bytes > 0) (void)endpoint_.transport().DiscardPayload(in);
    p.op->Part(p.piece, DataLoss(p.op->what + ": reply from rank " + std::to_string(in.source) + " is coded with codec id " +
                                     std::to_string(h.codec()) + ", the request asked for " + std::string(codec->name()) +
                                     " (id " + std::to_string(codec->id()) + ")"));
    return;
  }
  const uint64_t floats = p.out.size() / sizeof(float);
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
  } else {  // into a copy, decoded into the caller's buffer once complete
    auto encoded = std::make_shared<std::vector<uint8_t>>(in.payload_bytes);
    const CodecContext ctx{.table = h.table(), .chunk = h.chunk(), .step = h.step(), .rank = in.source};
    s = endpoint_.transport().ReceivePayload(in, *encoded, [op, piece, out, fr, encoded, ctx, codec](Status st) {
      if (op->cancelled) return;  // the buffer may be gone: do not write it
      if (st.ok()) st = VerifyPayload(*fr, *encoded);
      if (st.ok()) {
        st = codec->Decode(*encoded, std::span<float>(reinterpret_cast<float*>(out.data()), out.size() / sizeof(float)), ctx);
      }
      op->Part(piece, st.ok() ? st : st.WithContext(op->what));
    });
  }
  if (!s.ok()) p.op->Part(p.piece, s.WithContext(p.op->what));
}

}  // namespace shardps::worker
