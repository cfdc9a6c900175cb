#include "sparse_table.h"

#include <algorithm>
#include <cassert>
#include <cstring>

#include "shardps/base/cluster.h"

namespace shardps::ps {

SparseTable::SparseTable(const TableSpec& spec, uint32_t table_id, PolicyHost& host, SparseHost& rows_host,
                         const SyncLimits& limits, std::string_view policy)
    : spec_(spec),
      host_(host),
      rows_host_(rows_host),
      limits_(limits),
      asp_(policy == kAspConsistency),
      staleness_(policy == kSspConsistency ? limits.staleness : 0),
      optimizer_(FindOptimizer(spec.optimizer.kind)),
      rows_(spec, table_id),
      sum_(spec.row_dim),
      cached_(limits.num_workers),
      elide_zero_rows_(spec.optimizer.kind == "ftrl" && spec.optimizer.l1 > 0) {
  assert(optimizer_ != nullptr);
}

std::string SparseTable::Describe() const {
  return "sparse table '" + spec_.name + "' at step " + std::to_string(version_);
}

std::vector<int> SparseTable::MissingWorkers() const {
  std::vector<int> missing;
  auto it = steps_.find(version_);
  for (int w = 0; w < limits_.num_workers; ++w) {
    if (it == steps_.end() || !it->second[w]) missing.push_back(host_.WorkerRank(w));
  }
  return missing;
}

Status SparseTable::ResolveKeys(SparseRequest& r, int server, int servers) {
  const wire::Header& h = r.held->h();
  const uint64_t n = h.element_count();
  const std::string what = OpName(h.op()) + " of sparse table '" + spec_.name + "'";
  auto& cached = cached_[r.held->worker];
  size_t grads_at = 0;
  if (h.keys_cached()) {
    if (!cached || cached->keys.size() != n || cached->signature != h.key_signature()) {
      return FailedPrecondition(what + " refers to a cached key list of " + std::to_string(n) +
                                " keys, which is not the list this server holds for worker rank " +
                                std::to_string(host_.WorkerRank(r.held->worker)) +
                                (cached ? " (" + std::to_string(cached->keys.size()) + " keys)" : " (none)"));
    }
    r.list = cached;
  } else {
    if (n >= SparseRows::kMaxRows - rows_.size()) {  // rows are numbered in 32 bits
      return ResourceExhausted(what + ": " + std::to_string(n) + " keys could create more rows than the " +
                               std::to_string(SparseRows::kMaxRows) + " one server can hold of a table");
    }
    auto list = std::make_shared<KeyList>();
    list->keys.resize(n);
    if (n > 0) std::memcpy(list->keys.data(), r.payload.data(), n * sizeof(uint64_t));
    grads_at = n * sizeof(uint64_t);
    const auto& keys = list->keys;
    // Ascending without repeats, every one held by this server.
    for (uint64_t i = 0; i < n; ++i) {
      if (i > 0 && keys[i] <= keys[i - 1]) {
        return InvalidArgument(what + ": keys[" + std::to_string(i) + "] = " + std::to_string(keys[i]) + " follows keys[" +
                               std::to_string(i - 1) + "] = " + std::to_string(keys[i - 1]) +
                               " (keys must be sorted ascending, without repeats)");
      }
      if (const int s = SparseServerOf(keys[i], servers); s != server) {
        return InvalidArgument(what + ": keys[" + std::to_string(i) + "] = " + std::to_string(keys[i]) +
                               " is held by server index " + std::to_string(s) + ", not " + host_.Self() +
                               " (server index " + std::to_string(server) + ")");
      }
    }
    list->signature = SparseKeySignature(keys);
    if (list->signature != h.key_signature()) {
      return DataLoss(what + ": the keys do not match the request's key signature");
    }
    // Another worker's remembered list may be this one (workers pulling the same ids): share it,
    // so the step's sum sees one list (Apply) and its rows are resolved once.
    std::shared_ptr<const KeyList> same;
    for (const auto& other : cached_) {
      if (other && other->signature == list->signature && other->keys == list->keys) {
        same = other;
        break;
      }
    }
    if (!same) {
      list->rows.resize(n);
      for (uint64_t i = 0; i < n; ++i) list->rows[i] = rows_.FindOrCreate(keys[i]);
      same = std::move(list);
    }
    cached = same;
    r.list = std::move(same);
  }
  if (h.op() != wire::SPARSE_PULL) {
    r.grads = std::span<const float>(reinterpret_cast<const float*>(r.payload.data() + grads_at), n * spec_.row_dim);
  }
  return Status::Ok();
}

void SparseTable::OnPush(SparsePtr push) {
  HeldRequest& h = *push->held;
  const bool push_pull = h.h().op() == wire::SPARSE_PUSH_PULL;
  if (asp_) {
    Apply(std::span<const SparsePtr>(&push, 1));
    ++version_;
    if (push_pull) Answer(*push);
    else host_.Acknowledge(h);
    return;
  }
  const uint64_t t = h.h().step();
  if (t < version_) {
    return host_.Refuse(h, FailedPrecondition("push for step " + std::to_string(t) + " of " + Describe() +
                                              ": that step is already applied (a push arrived late or twice)"));
  }
  auto& by_worker = steps_[t];
  if (by_worker.empty()) by_worker.resize(limits_.num_workers);
  if (by_worker[h.worker]) {
    return host_.Refuse(h, FailedPrecondition("worker rank " + std::to_string(host_.WorkerRank(h.worker)) +
                                              " pushed step " + std::to_string(t) + " of sparse table '" + spec_.name +
                                              "' twice"));
  }
  if (t > version_) {
    if (future_pushes_ >= limits_.max_future_pushes_per_chunk) {
      return host_.Refuse(h, ResourceExhausted("push for step " + std::to_string(t) + " of " + Describe() + ": " +
                                               std::to_string(future_pushes_) + " pushes for later steps are held already"));
    }
    ++future_pushes_;
  }
  by_worker[h.worker] = push;
  if (push_pull) Hold(push);  // answered by Advance once version t + 1 (less the staleness) exists
  else host_.Acknowledge(h);
  Advance();
}

void SparseTable::OnPull(SparsePtr pull) {
  if (Readable(pull->held->h().step())) return Answer(*pull);
  if (pulls_.size() >= limits_.max_waiting_pulls_per_chunk) {
    return host_.Refuse(*pull->held, ResourceExhausted("pull of " + Describe() + ": " + std::to_string(pulls_.size()) +
                                                       " pulls are held already"));
  }
  Hold(std::move(pull));
}

void SparseTable::Hold(SparsePtr pull) {
  const HeldRequest& h = *pull->held;
  const uint64_t wanted = h.h().op() == wire::SPARSE_PUSH_PULL ? h.h().step() + 1 : h.h().step();
  host_.WakeAt(h.deadline);
  pulls_.emplace_back(wanted, std::move(pull));
}

void SparseTable::Advance() {
  for (;;) {
    auto it = steps_.find(version_);
    if (it == steps_.end()) break;
    const auto& by_worker = it->second;
    if (std::any_of(by_worker.begin(), by_worker.end(), [](const SparsePtr& p) { return !p; })) break;
    Apply(by_worker);
    ++version_;
    steps_.erase(it);
    if (auto next = steps_.find(version_); next != steps_.end()) {
      future_pushes_ -= static_cast<size_t>(std::count_if(next->second.begin(), next->second.end(),
                                                          [](const SparsePtr& p) { return p != nullptr; }));
    }
  }
  // The held pulls now readable, in arrival order.
  std::vector<std::pair<uint64_t, SparsePtr>> keep;
  for (auto& [wanted, p] : pulls_) {
    if (Readable(wanted)) Answer(*p);
    else keep.emplace_back(wanted, std::move(p));
  }
  pulls_ = std::move(keep);
}

void SparseTable::Apply(std::span<const SparsePtr> by_worker) {
  const uint32_t d = rows_.dim();
  const OptimizerConfig& cfg = spec_.optimizer;
  const uint64_t step = version_ + 1;
  if (by_worker.size() == 1) {  // one list: its rows as they are
    const SparseRequest& r = *by_worker[0];
    const auto& rows = r.list->rows;
    ApplyRows(rows, r.grads.data(), step);
    return;
  }
  // Every worker pushed the same keys (a common case: the same batch ids, or a benchmark): the
  // rows summed in worker-rank order, all at once, then applied; the same sums as the merge below.
  const auto& first = *by_worker[0]->list;
  const bool same = std::all_of(by_worker.begin() + 1, by_worker.end(), [&](const SparsePtr& r) { return r->list.get() == &first; });
  if (same) {
    std::vector<float> sum(by_worker[0]->grads.begin(), by_worker[0]->grads.end());
    for (size_t w = 1; w < by_worker.size(); ++w) AddInto(sum, by_worker[w]->grads);
    const auto& rows = first.rows;
    ApplyRows(rows, sum.data(), step);
    return;
  }
  // A k-way merge of the sorted lists: each key once, in ascending order, its gradient summed over
  // the workers that pushed it in worker-rank order.
  std::vector<size_t> pos(by_worker.size(), 0);
  for (;;) {
    uint64_t key = 0;
    bool any = false;
    for (size_t w = 0; w < by_worker.size(); ++w) {
      const auto& keys = by_worker[w]->list->keys;
      if (pos[w] < keys.size() && (!any || keys[pos[w]] < key)) {
        key = keys[pos[w]];
        any = true;
      }
    }
    if (!any) break;
    float* row = nullptr;
    for (size_t w = 0; w < by_worker.size(); ++w) {
      const SparseRequest& r = *by_worker[w];
      if (pos[w] >= r.list->keys.size() || r.list->keys[pos[w]] != key) continue;
      const std::span<const float> g(r.grads.data() + pos[w] * d, d);
      if (!row) std::copy(g.begin(), g.end(), sum_.begin());
      else AddInto(sum_, g);
      row = r.list->rows[pos[w]];
      ++pos[w];
    }
    optimizer_->Apply(cfg, step, row, row + d, d, sum_.data(), d);
  }
}

void SparseTable::ApplyRows(const std::vector<float*>& rows, const float* grads, uint64_t step) {
  const uint32_t d = rows_.dim();
  for (size_t i = 0; i < rows.size(); ++i) optimizer_->Apply(spec_.optimizer, step, rows[i], rows[i] + d, d, grads + i * d, d);
}

void SparseTable::Answer(const SparseRequest& r) {
  const uint32_t d = rows_.dim();
  const auto& rows = r.list->rows;
  if (elide_zero_rows_) {
    // The bitmap (in whole floats: ceil(n / 32) of them), then the rows that are not all zero.
    const size_t words = (rows.size() + 31) / 32;
    auto out = std::make_shared<std::vector<float>>(words);
    auto* bits = reinterpret_cast<uint8_t*>(out->data());
    for (size_t i = 0; i < rows.size(); ++i) {
      const float* row = rows[i];
      if (std::all_of(row, row + d, [](float v) { return v == 0.0f; })) {
        ++zero_rows_elided_;
        continue;
      }
      bits[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
      out->insert(out->end(), row, row + d);
      bits = reinterpret_cast<uint8_t*>(out->data());  // the insert may have moved the buffer
    }
    rows_host_.SendRows(*r.held, version_, std::move(out), /*elided=*/true);
    return;
  }
  // Workers pulling the same list at the same version (the same batch ids) share one reply.
  if (last_reply_.list == r.list && last_reply_.version == version_ && last_reply_.rows) {
    rows_host_.SendRows(*r.held, version_, last_reply_.rows);
    return;
  }
  auto out = std::make_shared<std::vector<float>>(rows.size() * d);
  last_reply_ = {r.list, version_, out};
  float* o = out->data();
  if (d == 1) {  // one float a row (a plain loop: a copy call per row costs more than the copy)
    for (size_t i = 0; i < rows.size(); ++i) o[i] = *rows[i];
  } else {
    for (const float* row : rows) {
      std::copy(row, row + d, o);
      o += d;
    }
  }
  rows_host_.SendRows(*r.held, version_, std::move(out));
}

Clock::time_point SparseTable::Expire(Clock::time_point now) {
  const std::string me = host_.Self();
  const std::string missing = FormatRanks(MissingWorkers());
  Clock::time_point next = Clock::time_point::max();
  std::vector<std::pair<uint64_t, SparsePtr>> keep;
  for (auto& [wanted, p] : pulls_) {
    if (p->held->deadline > now) {
      next = std::min(next, p->held->deadline);
      keep.emplace_back(wanted, std::move(p));
      continue;
    }
    const auto held_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - p->held->arrived).count();
    host_.Refuse(*p->held, DeadlineExceeded("pull for version " + std::to_string(wanted) + " held " +
                                            std::to_string(held_ms) + " ms on " + me + ": " + Describe() +
                                            " is missing pushes from worker ranks " + missing));
  }
  pulls_ = std::move(keep);
  // Counted pushes stay counted (as a dense chunk's sum does): the step completes if the missing
  // workers still push, and a worker whose own wait ends first fails the job with its error.
  return next;
}

}  // namespace shardps::ps
