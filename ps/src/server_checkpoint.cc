// Server: checkpoints of its chunks (CHECKPOINT requests, written in the background), restoring
// and initialising them before serving, and copies of them while serving.
#include <algorithm>
#include <filesystem>
#include <future>
#include <limits>

#include "server_internal.h"
#include "sparse_table.h"
#include "shardps/base/optimizer.h"

namespace shardps::ps {

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
    const Served& cs = *csp;
    if (!cs.spec->checkpointed) continue;
    const WorkerState state{.codec = options_.codec, .optimizer = options_.worker_optimizer,
                            .workers = static_cast<uint32_t>(num_workers_)};
    if (cs.down && CodecStateArrays(*cs.spec, options_.codec, static_cast<uint32_t>(num_workers_)) == 0) {
      // The workers' codec is lossy but this server was not told (ServerOptions::codec): the
      // manifest would declare codec state this shard lacks.
      return Reject(in, h, FailedPrecondition("server rank " + std::to_string(cluster_.rank()) +
                                              " answered compressed pulls of table '" + cs.spec->name +
                                              "' but its ServerOptions::codec is '" + options_.codec +
                                              "': set it to the workers' codec to checkpoint a compressed run"));
    }
    if (cs.version != h.step()) {
      return Reject(in, h, FailedPrecondition("checkpoint at step " + std::to_string(h.step()) + " requested, but " + Describe(cs)));
    }
    ChunkToSave c;
    c.table = ckpt_table[cs.info.table];
    c.begin = cs.info.begin;
    c.end = cs.info.end;
    const uint32_t codec_arrays = CodecStateArrays(*cs.spec, state);
    const uint32_t worker_arrays = WorkerArrays(cs);
    const uint64_t per_worker = uint64_t{worker_arrays} * cs.weights.size();
    c.data.reserve(cs.weights.size() * (1 + codec_arrays) + cs.slots.size());
    c.data.insert(c.data.end(), cs.weights.begin(), cs.weights.end());
    c.data.insert(c.data.end(), cs.slots.begin(), cs.slots.end());
    if (codec_arrays > 0) {
      if (codec_arrays > uint64_t{worker_arrays} * static_cast<uint64_t>(num_workers_)) {
        // With a lossy codec: the replica every worker holds at this step (the weights
        // themselves before the first compressed pull).
        const bool replica = cs.down && cs.down->version == cs.version;
        const std::vector<float>& known = replica ? cs.down->known : cs.weights;
        c.replica = replica;
        c.data.insert(c.data.end(), known.begin(), known.end());
      }
      // Then each worker's state (residual, optimizer slots) after its push of the step before.
      for (int w = 0; w < num_workers_; ++w) {
        const bool has = static_cast<size_t>(w) < cs.worker_state.size() && cs.state_at[w] == h.step() &&
                         cs.worker_state[w].size() == per_worker;
        if (has) c.data.insert(c.data.end(), cs.worker_state[w].begin(), cs.worker_state[w].end());
        else c.data.insert(c.data.end(), per_worker, 0.0f);
      }
    }
    chunks.push_back(std::move(c));
  }
  // Sparse tables: every row this server holds, with its optimizer state.
  for (uint32_t t = 0; t < layout_.num_tables(); ++t) {
    const SparseTable* st = sparse_[t].get();
    if (!st || !layout_.table(t).checkpointed) continue;
    if (st->version() != h.step()) {
      return Reject(in, h, FailedPrecondition("checkpoint at step " + std::to_string(h.step()) + " requested, but " +
                                              st->Describe()));
    }
    ChunkToSave c;
    c.table = ckpt_table[t];
    c.sparse = true;
    const SparseRows& rows = st->rows();
    c.keys.reserve(rows.size());
    c.data.reserve(rows.size() * rows.row_floats());
    rows.ForEach([&](uint64_t key, const float* row) {
      c.keys.push_back(key);
      c.data.insert(c.data.end(), row, row + rows.row_floats());
    });
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
  // Sparse tables: of every saved row, those this server holds now (SparseServerOf with today's
  // server count), whatever server wrote them.
  for (uint32_t t = 0; t < layout_.num_tables(); ++t) {
    SparseTable* st = sparse_[t].get();
    const TableSpec& spec = layout_.table(t);
    if (!st || !spec.checkpointed) continue;
    SparseRows& rows = st->mutable_rows();
    SHARDPS_ASSIGN_OR_RETURN(uint32_t saved, reader.FindSparseTable(spec.name, spec.row_dim,
                                                                    static_cast<uint32_t>(OptimizerSlots(spec.optimizer.kind))));
    if (const std::string& opt = reader.manifest().tables(static_cast<int>(saved)).optimizer(); opt != spec.optimizer.kind) {
      return InvalidArgument("checkpoint table '" + spec.name + "' was saved with optimizer '" + opt + "', this run has '" +
                             spec.optimizer.kind + "': its optimizer state would not mean the same");
    }
    const int me = cluster_.server_index();
    const uint32_t floats = rows.row_floats();
    SHARDPS_RETURN_IF_ERROR(reader.ReadSparseRows(saved, [&](std::span<const uint64_t> keys, std::span<const float> data) {
      for (size_t i = 0; i < keys.size(); ++i) {
        if (SparseServerOf(keys[i], layout_.num_servers()) != me) continue;
        std::copy_n(data.data() + i * floats, floats, rows.FindOrCreate(keys[i]));
      }
      return Status::Ok();
    }));
    st->set_version(step);
  }
  UpdateSparseStats();
  for (auto& csp : chunks_) {
    Served& cs = *csp;
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
    SHARDPS_RETURN_IF_ERROR(RestoreCodecState(reader, t, cs));
  }
  return Status::Ok();
}

Status Server::RestoreCodecState(CheckpointReader& reader, uint32_t t, Served& cs) {
  const auto& ti = reader.manifest().tables(static_cast<int>(t));
  const uint32_t saved = ti.codec_arrays();
  const WorkerState state{.codec = options_.codec, .optimizer = options_.worker_optimizer,
                          .workers = static_cast<uint32_t>(num_workers_)};
  const uint32_t mine = CodecStateArrays(*cs.spec, state);
  if (saved == 0 || mine == 0) return Status::Ok();  // nothing saved, or this run keeps no such state
  const uint32_t saved_replica = SavedReplica(ti) ? 1 : 0;
  const uint32_t saved_workers = reader.manifest().num_workers();
  const uint64_t saved_per_worker = SavedWorkerArrays(ti);
  if (saved != saved_replica + uint64_t{saved_workers} * saved_per_worker) {  // checked before anything is allocated
    return DataLoss("checkpoint table '" + cs.spec->name + "' declares " + std::to_string(saved) + " codec arrays; " +
                    (saved_replica ? "a replica and " : "") + std::to_string(saved_workers) + " workers of " +
                    std::to_string(saved_per_worker) + " arrays each make " +
                    std::to_string(saved_replica + uint64_t{saved_workers} * saved_per_worker));
  }
  const uint64_t n = cs.weights.size();
  std::vector<float> arrays(n * saved);
  bool replica = false;
  SHARDPS_RETURN_IF_ERROR(reader.ReadCodecState(t, cs.info.begin, cs.info.end, arrays, &replica));
  const bool lossy = mine > uint64_t{WorkerArrays(cs)} * static_cast<uint64_t>(num_workers_);  // this run keeps a replica
  if (replica && saved_replica && lossy) {  // else no compressed pull had been answered: the first one makes the replica
    cs.down = std::make_unique<Downlink>();
    cs.down->known.assign(arrays.begin(), arrays.begin() + static_cast<int64_t>(n));
    cs.down->version = cs.version;
  }
  // The workers' state goes back only to workers that keep the same: as many, with the same
  // codec kind and optimizer.
  const bool same = saved_workers == static_cast<uint32_t>(num_workers_) && saved_per_worker == WorkerArrays(cs) &&
                    saved_replica == (lossy ? 1u : 0u) && ti.worker_optimizer() == options_.worker_optimizer;
  if (!same) {
    if (cs.info.index == 0) {
      endpoint_.Warn("checkpoint table '" + cs.spec->name + "' holds the state of " + std::to_string(saved_workers) +
                     " workers (" + std::to_string(saved_per_worker) + " arrays each: " +
                     (saved_replica ? "an error-feedback residual" : "no residual") +
                     (ti.worker_optimizer().empty() ? "" : ", optimizer '" + ti.worker_optimizer() + "' slots") + "); this job has " +
                     std::to_string(num_workers_) + " workers keeping " + std::to_string(WorkerArrays(cs)) +
                     ": the workers start with none");
    }
    return Status::Ok();
  }
  const uint64_t per_worker = saved_per_worker * n;
  cs.SizeWorkerState(static_cast<size_t>(num_workers_));
  for (int w = 0; w < num_workers_; ++w) {
    const auto from = arrays.begin() + static_cast<int64_t>(saved_replica * n + per_worker * static_cast<uint64_t>(w));
    cs.worker_state[w].assign(from, from + static_cast<int64_t>(per_worker));
    cs.state_at[w] = cs.version;
    cs.restored[w] = true;
  }
  return Status::Ok();
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

std::optional<uint64_t> Server::CompletedSteps(uint32_t tables) const {
  std::optional<uint64_t> v;
  for (const auto& cs : chunks_) {
    if (cs->info.table < tables) v = std::min(v.value_or(std::numeric_limits<uint64_t>::max()), cs->version);
  }
  return v;
}

}  // namespace shardps::ps
