// The checks `shardps train` makes before it trains, so that a job that cannot succeed is refused at
// start with a message naming what is wrong: the model against this process's memory, a resumed
// checkpoint against the data and batch, every process's configuration against the others', and
// what to tell the user about resuming when a process fails.
#pragma once

#include <cstdint>
#include <string>

#include "config.h"
#include "launch.h"
#include "shardps/base/cluster.h"
#include "shardps/storage/checkpoint.h"
#include "shardps/worker/data.h"
#include "shardps/worker/model.h"

namespace shardps::tools {

// How much memory a process of this job may use: the host's physical memory, or less if
// RLIMIT_AS / RLIMIT_DATA say so. Read once, at the program's edge.
uint64_t MemoryLimitBytes();
std::string Gigabytes(double bytes);  // "1.23 GB"

// What a process needs at least for the model, against `limit` (MemoryLimitBytes()).
Status CheckModelFits(const worker::ModelSpec& ms, const config::TrainConfig& c, bool trains, bool holds_tables,
                      int servers, int64_t test_rows, uint64_t limit);

// CRC32C over the training samples used (features, then labels).
uint32_t TrainDataCrc(const worker::Dataset& d);

// A resume continues at the checkpoint's data cursor: same samples, batch and seed required.
Status CheckResumeData(const CheckpointVersion& v, const config::TrainConfig& c, const worker::Dataset* train);

// The job agreement on the run's data and batch configuration (rank 0 gathers and compares).
Status CompareRanks(Job& job, const Cluster& cluster, const config::TrainConfig& c, const worker::Dataset& train,
                    const worker::Dataset& test);

// --test-slow-worker W:F (tests and benchmarks only): worker index W >= 0, or "any" (the slowed
// worker changes from step to step: *worker = kAnySlowWorker), and factor F in [1, 100]; anything
// else is INVALID_ARGUMENT naming the flag and the value.
inline constexpr int kAnySlowWorker = -2;
Status ParseSlowWorker(const std::string& spec, int* worker, double* factor);

// Where training stood and what to resume from, appended to a failed process's error.
std::string WhereToResume(const config::TrainConfig& c, int64_t steps_done);

}  // namespace shardps::tools
