// shardps train with model "sparse_lr": logistic regression whose weights are one sparse table of
// feature ids (TableSpec::row_dim = 1), trained through the parameter servers. Each step a worker
// builds the batch of its share of the global batch, pulls only the rows of the batch's keys,
// computes the log-loss gradient and pushes it for those keys. See docs/sparse.md.
#pragma once

#include <string>

#include "config.h"
#include "launch.h"
#include "shardps/storage/file_system.h"
#include "train_outputs.h"

namespace shardps::tools {

// The whole run of one process of the job (exit status). `resume`: "" (fresh), a checkpoint spec
// or "auto", as `shardps train --resume`.
int RunSparseLr(FileSystem& fs, const config::TrainConfig& c, const OutputFlags& outputs, const std::string& resume,
                const LaunchPlan& plan, int argc, char** argv);

}  // namespace shardps::tools
