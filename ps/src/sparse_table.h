// SparseTable: one sparse table as one server holds it (its rows, SparseRows) and the job's
// consistency policy applied to it. A sparse table's unit of synchronisation is the table on this
// server, not a chunk: in each step every worker sends every server one key list (empty when none
// of its keys live there), so a server knows when a step is complete.
//
//  * "bsp": pushes of step t are counted when t is the table's current version or later (later
//    ones wait, up to max_future_pushes_per_chunk); once every worker's push of the current step
//    is in, the step's gradients are summed key by key in worker-rank order (a k-way merge of the
//    sorted key lists) and the optimizer runs once on each touched row, in key order, as update
//    version + 1. A pull for version v is answered at version >= v. Placement does not enter the
//    arithmetic, so the rows are bit-identical on any number of servers.
//  * "ssp" (staleness s): the same updates; a pull for version v is answered at version >= v - s.
//  * "asp": each push is applied on arrival, alone, as one update; pulls are answered at once.
// A PUSH_PULL of step t is a push of t, then a pull for version t + 1. Held pulls keep their
// deadline and are refused at it, naming the worker ranks the step still lacks; counted pushes
// stay counted, as in a dense chunk's sum.
// Communication thread only.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shardps/base/optimizer.h"
#include "shardps/ps/consistency.h"
#include "sparse_rows.h"

namespace shardps::ps {

// A key list as a server holds it: the keys (sorted, unique, checked) and their rows, resolved
// (created if new) when the list arrived. Rows never move, so the pointers stay valid. The last
// list of each worker is remembered (key caching), and requests hold the list they use.
struct KeyList {
  std::vector<uint64_t> keys;
  std::vector<float*> rows;
  uint64_t signature = 0;  // SparseKeySignature(keys)
};

// A sparse request with its payload received and its key list resolved.
struct SparseRequest {
  HeldPtr held;
  std::vector<uint8_t> payload;  // keys (8 bytes each, unless cached), then gradient rows (dim floats each)
  bool received = false;         // the payload is in (the server processes a worker's requests in order)
  Status status;                 // of the receive
  std::shared_ptr<const KeyList> list;
  std::span<const float> grads;  // empty for SPARSE_PULL
};
using SparsePtr = std::shared_ptr<SparseRequest>;

class SparseTable {
 public:
  // `policy`: "bsp", "ssp" or "asp" (validated by the server's options).
  SparseTable(const TableSpec& spec, uint32_t table_id, PolicyHost& host, SparseHost& rows_host,
              const SyncLimits& limits, std::string_view policy);

  void OnPush(SparsePtr push);  // SPARSE_PUSH / SPARSE_PUSH_PULL
  void OnPull(SparsePtr pull);  // SPARSE_PULL for version h().step()
  // Refuses what is held past its deadline; returns the earliest deadline still held.
  Clock::time_point Expire(Clock::time_point now);
  // Global ranks of the workers whose push of the current step is missing.
  std::vector<int> MissingWorkers() const;

  // The key list of `r` (worker `worker`): the keys its payload carries, checked (sorted,
  // unique, held by server `server` of `servers`) and remembered as the worker's list, or with
  // keys_cached the worker's remembered list. An error names what is wrong.
  Status ResolveKeys(SparseRequest& r, int server, int servers);

  uint64_t zero_rows_elided() const { return zero_rows_elided_; }
  const SparseRows& rows() const { return rows_; }
  uint64_t version() const { return version_; }
  // Restoring a checkpoint, before serving: rows are set and the version moved to the step.
  SparseRows& mutable_rows() { return rows_; }
  void set_version(uint64_t v) { version_ = v; }
  std::string Describe() const;

 private:
  bool Readable(uint64_t wanted) const { return asp_ || wanted <= version_ + staleness_; }
  void Advance();
  void Apply(std::span<const SparsePtr> by_worker);
  void Answer(const SparseRequest& r);
  // Runs the optimizer on `rows` with their gradient rows `grads` (row i at grads + i * dim).
  void ApplyRows(const std::vector<float*>& rows, const float* grads, uint64_t step);
  void Hold(SparsePtr pull);

  const TableSpec spec_;
  PolicyHost& host_;
  SparseHost& rows_host_;
  const SyncLimits limits_;
  const bool asp_;
  const uint64_t staleness_;
  const Optimizer* optimizer_;
  SparseRows rows_;
  uint64_t version_ = 0;
  std::map<uint64_t, std::vector<SparsePtr>> steps_;  // step -> pushes by worker index (current and later)
  size_t future_pushes_ = 0;                          // pushes counted for steps after version_
  std::vector<std::pair<uint64_t, SparsePtr>> pulls_;  // (version wanted, request), arrival order
  std::vector<float> sum_;                             // one row's summed gradient
  std::vector<std::shared_ptr<const KeyList>> cached_;  // by worker index: the last list it sent
  const bool elide_zero_rows_;  // FTRL with L1: rows of exact zeros are not sent (wire.proto)
  // The last reply made and its list (held, so no other list can take its address).
  struct LastReply {
    std::shared_ptr<const KeyList> list;
    uint64_t version = 0;
    std::shared_ptr<std::vector<float>> rows;
  } last_reply_;
  uint64_t zero_rows_elided_ = 0;
};

}  // namespace shardps::ps
