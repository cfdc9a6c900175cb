// Server: requests for sparse tables (SPARSE_PUSH, SPARSE_PULL, SPARSE_PUSH_PULL). Each is
// checked before its payload is touched (table, codec, sizes), its payload (the key list unless
// cached, and a push's gradient rows) is received into a buffer of its own; a worker's requests
// are then taken in the order they arrived: the keys are checked (sorted, unique, held here) or
// the cached list found, and the table's SparseTable decides the rest (sparse_table.h).
#include <cstring>
#include <deque>
#include <limits>

#include "server_internal.h"
#include "sparse_table.h"

namespace shardps::ps {

void Server::HandleSparse(IncomingFrame& in, Frame& f) {
  const wire::Header& h = f.header;
  const bool push = h.op() != wire::SPARSE_PULL;
  const int w = cluster_.WorkerIndexOf(in.source);
  bool after_shutdown;
  {
    MutexLock lock(mu_);
    ++(push ? stats_.pushes : stats_.pulls);
    after_shutdown = worker_done_[w];
  }
  if (push && after_shutdown) {
    return Reject(in, h, FailedPrecondition("push from worker rank " + std::to_string(in.source) + " after its SHUTDOWN"));
  }
  if (h.table() >= layout_.num_tables()) {
    return Reject(in, h, NotFound("unknown table id " + std::to_string(h.table()) + " (this job has " +
                                  std::to_string(layout_.num_tables()) + " tables)"));
  }
  const TableSpec& spec = layout_.table(h.table());
  if (!spec.sparse()) {
    return Reject(in, h, InvalidArgument("table '" + spec.name + "' is dense: " + OpName(h.op()) +
                                         " is for sparse tables (use PUSH, PULL or PUSH_PULL with key ranges)"));
  }
  if (h.dtype() != wire::F32 || h.codec() != 0) {
    return Reject(in, h, InvalidArgument(OpName(h.op()) + " of sparse table '" + spec.name +
                                         "' must use float32 and the identity codec (id 0), not codec id " +
                                         std::to_string(h.codec())));
  }
  // The sizes, checked before anything is allocated: n keys (unless cached), and for a push n rows.
  const uint64_t n = h.element_count();
  const uint64_t row_bytes = uint64_t{spec.row_dim} * sizeof(float);
  const uint64_t per_key = (h.keys_cached() ? 0 : sizeof(uint64_t)) + (push ? row_bytes : 0);
  if ((per_key > 0 && n > std::numeric_limits<uint64_t>::max() / per_key) || in.payload_bytes != n * per_key) {
    return Reject(in, h, InvalidArgument(OpName(h.op()) + " of sparse table '" + spec.name + "' carries " +
                                         std::to_string(in.payload_bytes) + " bytes for " + std::to_string(n) +
                                         " keys; that needs " + std::to_string(per_key) + " bytes a key (" +
                                         (h.keys_cached() ? "cached keys" : "8 for the key") +
                                         (push ? ", " + std::to_string(row_bytes) + " for its row of " +
                                                     std::to_string(spec.row_dim) + " floats"
                                               : std::string()) +
                                         ")"));
  }
  auto r = std::make_shared<SparseRequest>();
  r->held = Hold(in, f);
  r->payload.resize(r->held->in.payload_bytes);
  sparse_queue_[w].push_back(r);
  if (r->payload.empty()) {
    r->received = true;
    return ProcessSparse(w);
  }
  Status started = endpoint_.transport().ReceivePayload(r->held->in, r->payload, [this, r, w](Status st) {
    r->held->in.payload_bytes = 0;  // consumed
    if (st.ok()) st = VerifyPayload(r->held->frame, r->payload);
    r->status = std::move(st);
    r->received = true;
    ProcessSparse(w);
  });
  if (!started.ok()) {
    r->status = started;
    r->received = true;
    ProcessSparse(w);
  }
}

void Server::ProcessSparse(int worker) {
  auto& queue = sparse_queue_[worker];
  while (!queue.empty() && queue.front()->received) {
    std::shared_ptr<SparseRequest> r = std::move(queue.front());
    queue.pop_front();
    HeldRequest& held = *r->held;
    if (!r->status.ok()) {
      Reject(held.in, held.h(), r->status);
      continue;
    }
    SparseTable& table = *sparse_[held.h().table()];
    if (Status s = table.ResolveKeys(*r, cluster_.server_index(), layout_.num_servers()); !s.ok()) {
      Reject(held.in, held.h(), s);
      continue;
    }
    if (held.h().op() == wire::SPARSE_PULL) table.OnPull(r);
    else table.OnPush(r);
  }
  UpdateSparseStats();
}

void Server::SendRows(const HeldRequest& request, uint64_t version, std::shared_ptr<std::vector<float>> rows,
                      bool elided) {
  UpdateSparseStats();  // the rows this reply may have created, counted before the worker hears of them
  const wire::Header& req = request.h();
  wire::Header r;
  r.set_op(wire::RESPONSE);
  r.set_reply_to(req.op());
  r.set_request_id(req.request_id());
  r.set_table(req.table());
  r.set_step(version);
  r.set_zero_rows_elided(elided);
  const uint64_t n = request.h().element_count();
  r.set_element_count(elided ? rows->size() - (n + 31) / 32 : rows->size());  // the bitmap is whole floats
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(rows->data()), rows->size() * sizeof(float));
  endpoint_.Send(request.in.source, std::move(r), bytes, [this, rows](Status s) {
    if (!s.ok()) endpoint_.Warn("sending sparse rows: " + s.ToString());
  });
}

void Server::UpdateSparseStats() {
  uint64_t rows = 0, bytes = 0, elided = 0;
  for (const auto& t : sparse_) {
    if (!t) continue;
    rows += t->rows().size();
    bytes += t->rows().bytes();
    elided += t->zero_rows_elided();
  }
  MutexLock lock(mu_);
  stats_.sparse_rows = rows;
  stats_.sparse_bytes = bytes;
  stats_.sparse_zero_rows_elided = elided;
}

}  // namespace shardps::ps
