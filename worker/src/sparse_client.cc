// KVClient for sparse tables: a sorted key list is split by SparseServerOf into one request per
// server; keys and gradient rows are packed into one send buffer per server (the payload is one
// contiguous transfer); the rows of a reply go straight into the caller's buffer when one server
// holds all the keys, else into a buffer per server and from there into their places.
#include <cstring>

#include "client_core.h"
#include "shardps/worker/kv_client.h"

namespace shardps::worker {

using internal::ClientCore;

// How a key list splits over the servers: by server index, the positions of its keys in the
// list (none with one server: all of them) and the signature of its part.
struct ClientCore::SparsePlan {
  std::vector<uint64_t> keys;
  std::vector<std::vector<uint32_t>> positions;
  std::vector<uint64_t> signature;
  uint64_t Count(int server) const { return positions.empty() ? keys.size() : positions[server].size(); }
};

namespace {

std::string What(wire::Op op, const TableSpec& spec, uint64_t step, size_t keys) {
  const char* name = op == wire::SPARSE_PUSH ? "sparse push" : op == wire::SPARSE_PULL ? "sparse pull" : "sparse push-pull";
  return std::string(name) + " of table '" + spec.name + "' " + (op == wire::SPARSE_PULL ? "version " : "step ") +
         std::to_string(step) + " (" + std::to_string(keys) + " keys)";
}

Status CheckSparseKeys(std::span<const uint64_t> keys) {
  for (size_t i = 1; i < keys.size(); ++i) {
    if (keys[i] <= keys[i - 1]) {
      return InvalidArgument("keys[" + std::to_string(i) + "] = " + std::to_string(keys[i]) + " follows keys[" +
                             std::to_string(i - 1) + "] = " + std::to_string(keys[i - 1]) +
                             " (keys must be sorted ascending, without repeats)");
    }
  }
  return Status::Ok();
}

// Rows of d floats between the caller's buffer (row pos[j]) and a server's packed buffer (row j).
// One float a row is a plain loop (a copy call per row would cost more than the copy).
void GatherRows(const float* from, const std::vector<uint32_t>& pos, uint64_t d, float* packed) {
  if (d == 1) {
    for (size_t j = 0; j < pos.size(); ++j) packed[j] = from[pos[j]];
    return;
  }
  for (size_t j = 0; j < pos.size(); ++j) std::memcpy(packed + j * d, from + uint64_t{pos[j]} * d, d * sizeof(float));
}
void ScatterRows(const float* packed, const std::vector<uint32_t>& pos, uint64_t d, float* to) {
  if (d == 1) {
    for (size_t j = 0; j < pos.size(); ++j) to[pos[j]] = packed[j];
    return;
  }
  for (size_t j = 0; j < pos.size(); ++j) std::memcpy(to + uint64_t{pos[j]} * d, packed + j * d, d * sizeof(float));
}

}  // namespace

Handle ClientCore::SparsePush(uint32_t table, std::span<const uint64_t> keys, std::span<const float> grads, uint64_t step) {
  return StartSparse(wire::SPARSE_PUSH, table, keys, grads, {}, step);
}
Handle ClientCore::SparsePull(uint32_t table, std::span<const uint64_t> keys, std::span<float> rows, uint64_t version) {
  return StartSparse(wire::SPARSE_PULL, table, keys, {}, rows, version);
}
Handle ClientCore::SparsePushPull(uint32_t table, std::span<const uint64_t> keys, std::span<const float> grads,
                                  std::span<float> rows, uint64_t step) {
  return StartSparse(wire::SPARSE_PUSH_PULL, table, keys, grads, rows, step);
}

Handle ClientCore::StartSparse(wire::Op op, uint32_t table, std::span<const uint64_t> keys, std::span<const float> grads,
                               std::span<float> rows, uint64_t step) {
  if (table >= layout_.num_tables()) {
    return Failed(NotFound("sparse request: unknown table id " + std::to_string(table) + " (this job has " +
                           std::to_string(layout_.num_tables()) + " tables)"));
  }
  const TableSpec& spec = layout_.table(table);
  const std::string what = What(op, spec, step, keys.size());
  if (!spec.sparse()) return Failed(InvalidArgument(what + ": the table is dense (use Push, Pull or PushPull)"));
  const uint64_t d = spec.row_dim;
  const bool push = op != wire::SPARSE_PULL;
  const bool pull = op != wire::SPARSE_PUSH;
  if (push && grads.size() != keys.size() * d) {
    return Failed(InvalidArgument(what + ": " + std::to_string(grads.size()) + " gradient floats, " +
                                  std::to_string(keys.size()) + " keys of " + std::to_string(d) + " need " +
                                  std::to_string(keys.size() * d)));
  }
  if (pull && rows.size() != keys.size() * d) {
    return Failed(InvalidArgument(what + ": room for " + std::to_string(rows.size()) + " floats, " +
                                  std::to_string(keys.size()) + " rows of " + std::to_string(d) + " need " +
                                  std::to_string(keys.size() * d)));
  }
  const int servers = layout_.num_servers();
  MutexLock lock(sparse_mu_);
  SparseTableState& state = sparse_[table];
  // The same list as last time (the usual case: a pull and then a push of the same batch, or a
  // benchmark's rounds): its split is known and the servers may hold their parts.
  if (!state.plan || state.plan->keys.size() != keys.size() ||
      (!keys.empty() && std::memcmp(state.plan->keys.data(), keys.data(), keys.size_bytes()) != 0)) {
    if (Status s = CheckSparseKeys(keys); !s.ok()) return Failed(s.WithContext(what));
    state.plan = MakePlan(keys, servers);
    state.held.assign(servers, false);
  }
  const std::shared_ptr<const SparsePlan> plan = state.plan;
  // Pushes go to every server (each counts one per worker and step); pulls only where keys are.
  std::vector<Piece> pieces;
  auto* out = reinterpret_cast<uint8_t*>(rows.data());
  const uint64_t row_bytes = d * sizeof(float);
  for (int s = 0; s < servers; ++s) {
    const uint64_t n = plan->Count(s);
    if (!push && n == 0) continue;
    const bool cached = n > 0 && state.held[s];
    state.held[s] = true;  // after this request (an error reply says otherwise: ForgetSparseKeys)
    Piece p;
    p.server_rank = cluster_.server_rank(s);
    p.server = s;
    p.sparse = true;
    p.header.set_op(op);
    p.header.set_table(table);
    p.header.set_step(step);
    p.header.set_codec(0);
    p.header.set_element_count(n);
    p.header.set_keys_cached(cached);
    p.header.set_key_signature(plan->signature[s]);
    if (servers == 1 && cached) {
      // Straight from the caller's buffer (nothing for a pull).
      if (push) p.payload = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(grads.data()), grads.size_bytes());
    } else if (push || !cached) {
      // One buffer: the keys (unless cached), then the gradient rows, in key order.
      const uint64_t key_bytes = cached ? 0 : n * sizeof(uint64_t);
      p.encoded = std::make_shared<std::vector<uint8_t>>(key_bytes + (push ? n * row_bytes : 0));
      uint8_t* keys_at = p.encoded->data();
      uint8_t* grads_at = keys_at + key_bytes;
      if (servers == 1) {
        if (n > 0 && !cached) std::memcpy(keys_at, keys.data(), key_bytes);
        if (n > 0 && push) std::memcpy(grads_at, grads.data(), n * row_bytes);
      } else {
        const auto& pos = plan->positions[s];
        for (uint64_t j = 0; !cached && j < n; ++j) std::memcpy(keys_at + j * sizeof(uint64_t), &keys[pos[j]], sizeof(uint64_t));
        if (push) GatherRows(grads.data(), pos, d, reinterpret_cast<float*>(grads_at));
      }
      p.payload = *p.encoded;
    }
    if (pull && n > 0) {
      if (servers == 1) {  // its reply is the caller's rows as they are
        p.out = std::span<uint8_t>(out, rows.size_bytes());
      } else {  // into a buffer, then each row into its place
        p.inbox = std::make_shared<std::vector<uint8_t>>(n * row_bytes);
        p.out = *p.inbox;
        p.after_receive = [inbox = p.inbox, plan, s, out, d] {
          ScatterRows(reinterpret_cast<const float*>(inbox->data()), plan->positions[s], d, reinterpret_cast<float*>(out));
        };
      }
    }
    pieces.push_back(std::move(p));
  }
  return Start(what, std::move(pieces));  // posted under sparse_mu_: in the order decided here
}

std::shared_ptr<const ClientCore::SparsePlan> ClientCore::MakePlan(std::span<const uint64_t> keys, int servers) {
  auto plan = std::make_shared<SparsePlan>();
  plan->keys.assign(keys.begin(), keys.end());
  plan->signature.resize(servers);
  if (servers == 1) {
    plan->signature[0] = SparseKeySignature(keys);
    return plan;
  }
  plan->positions.resize(servers);
  for (size_t i = 0; i < keys.size(); ++i) {
    plan->positions[SparseServerOf(keys[i], servers)].push_back(static_cast<uint32_t>(i));
  }
  std::vector<uint64_t> part;
  for (int s = 0; s < servers; ++s) {
    part.clear();
    for (uint32_t i : plan->positions[s]) part.push_back(keys[i]);
    plan->signature[s] = SparseKeySignature(part);
  }
  return plan;
}

void ClientCore::ForgetSparseKeys(uint32_t table, int server) {
  MutexLock lock(sparse_mu_);
  auto it = sparse_.find(table);
  if (it != sparse_.end() && server < static_cast<int>(it->second.held.size())) it->second.held[server] = false;
}

void ClientCore::ReceiveRows(IncomingFrame in, Frame frame, Pending p) {
  const wire::Header& h = frame.header;
  if (h.zero_rows_elided()) return ReceiveElidedRows(std::move(in), std::move(frame), std::move(p));
  if (h.codec() != 0 || in.payload_bytes != p.out.size()) {
    if (in.payload_bytes > 0) (void)endpoint_.transport().DiscardPayload(in);
    p.op->Part(p.piece, DataLoss(p.op->what + ": reply from rank " + std::to_string(in.source) + " carries " +
                                     std::to_string(in.payload_bytes) + " bytes with codec id " +
                                     std::to_string(h.codec()) + ", expected " + std::to_string(p.out.size()) +
                                     " raw float32 bytes"));
    return;
  }
  if (p.out.empty()) {
    p.op->Part(p.piece, Status::Ok());
    return;
  }
  auto op = p.op;
  const size_t piece = p.piece;
  auto out = p.out;
  auto fr = std::make_shared<Frame>(std::move(frame));
  Status s = endpoint_.transport().ReceivePayload(in, out, [op, piece, out, fr, after = std::move(p.after_receive)](Status st) {
    if (op->cancelled) return;  // the buffers may be gone: do not touch them
    if (st.ok()) st = VerifyPayload(*fr, out);
    if (st.ok() && after) after();
    op->Part(piece, st.ok() ? st : st.WithContext(op->what));
  });
  if (!s.ok()) p.op->Part(p.piece, s.WithContext(p.op->what));
}

// Rows of exact zeros left out (wire.proto, zero_rows_elided): a bitmap of the rows sent, then
// those rows; received into a buffer of their own and spread into `p.out`, zeros elsewhere.
void ClientCore::ReceiveElidedRows(IncomingFrame in, Frame frame, Pending p) {
  const uint64_t row_bytes = uint64_t{layout_.table(p.table).row_dim} * sizeof(float);
  const uint64_t n = p.out.size() / row_bytes;
  const uint64_t bitmap = (n + 31) / 32 * 4;
  const uint64_t got = in.payload_bytes;
  if (n == 0 && got == 0) {
    p.op->Part(p.piece, Status::Ok());
    return;
  }
  if (frame.header.codec() != 0 || got < bitmap || (got - bitmap) % row_bytes != 0 || got - bitmap > p.out.size()) {
    if (got > 0) (void)endpoint_.transport().DiscardPayload(in);
    p.op->Part(p.piece, DataLoss(p.op->what + ": reply from rank " + std::to_string(in.source) + " carries " +
                                     std::to_string(got) + " bytes, not a bitmap of " + std::to_string(bitmap) +
                                     " bytes and up to " + std::to_string(n) + " rows of " + std::to_string(row_bytes)));
    return;
  }
  auto op = p.op;
  const size_t piece = p.piece;
  auto out = p.out;
  auto buf = std::make_shared<std::vector<uint8_t>>(got);
  auto fr = std::make_shared<Frame>(std::move(frame));
  Status s = endpoint_.transport().ReceivePayload(
      in, *buf, [op, piece, out, fr, buf, n, bitmap, row_bytes, after = std::move(p.after_receive)](Status st) {
        if (op->cancelled) return;  // the buffers may be gone: do not touch them
        if (st.ok()) st = VerifyPayload(*fr, *buf);
        uint64_t sent = 0;
        for (uint64_t i = 0; st.ok() && i < n; ++i) {
          uint8_t* row = out.data() + i * row_bytes;
          if (((*buf)[i / 8] >> (i % 8)) & 1u) {
            if (bitmap + (sent + 1) * row_bytes > buf->size()) {
              st = DataLoss(op->what + ": the bitmap names more rows than the reply carries");
              break;
            }
            std::memcpy(row, buf->data() + bitmap + sent++ * row_bytes, row_bytes);
          } else {
            std::memset(row, 0, row_bytes);
          }
        }
        if (st.ok() && bitmap + sent * row_bytes != buf->size()) st = DataLoss(op->what + ": the reply carries rows its bitmap does not name");
        if (st.ok() && after) after();
        op->Part(piece, st.ok() ? st : st.WithContext(op->what));
      });
  if (!s.ok()) p.op->Part(p.piece, s.WithContext(p.op->what));
}

}  // namespace shardps::worker
