// A `shardps train` process in its job, shared by the dense trainer (train.cc) and sparse_lr
// (train_sparse.cc): the processes meet (StartJob, with the config as the job agreement), this one
// learns its role, and it reports and agrees with the others before any node starts.
#pragma once

#include <memory>
#include <string>

#include "config.h"
#include "launch.h"
#include "shardps/base/cluster.h"

namespace shardps::tools {

struct TrainProcess {
  std::unique_ptr<Job> job;
  Result<Cluster> cluster = Cancelled("not joined");
  std::string me;  // "rank 3 (worker 1)", for messages

  // Prints a failure with this process's name.
  void Report(const Status& s) const;
  // Every process passes its outcome (reported here when it failed); true when all succeeded. A
  // process that was fine says why it stops.
  bool Agree(const Status& s);
};

// Meets the job's other processes; the metrics CSV path may differ between them.
Result<TrainProcess> JoinTrainJob(const LaunchPlan& plan, int* argc, char*** argv, const config::TrainConfig& c);

}  // namespace shardps::tools
