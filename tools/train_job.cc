#include "train_job.h"

#include <iostream>

namespace shardps::tools {

void TrainProcess::Report(const Status& s) const {
  if (!s.ok()) std::cerr << "shardps train: " << me << ": " << s.ToString() << std::endl;
}

bool TrainProcess::Agree(const Status& s) {
  Report(s);
  if (job->Agree(s.ok())) return true;
  if (s.ok()) std::cerr << "shardps train: " << me << ": stopping: another process failed to start (its message says why)" << std::endl;
  return false;
}

Result<TrainProcess> JoinTrainJob(const LaunchPlan& plan, int* argc, char*** argv, const config::TrainConfig& c) {
  config::TrainConfig shared = c;
  shared.clear_metrics_csv();  // as in the job agreement: each process may write its metrics elsewhere
  TrainProcess p;
  SHARDPS_ASSIGN_OR_RETURN(p.job, StartJob(plan, argc, argv, "shardps train", ConfigToText(shared)));
  const int rank = p.job->rank();
  p.cluster = Cluster::Create(p.job->size(), rank, ClusterOptions{.num_servers = c.servers(), .colocated = c.colocated()});
  p.me = p.cluster.ok() ? p.cluster->Describe(rank) : "rank " + std::to_string(rank);
  return p;
}

}  // namespace shardps::tools
