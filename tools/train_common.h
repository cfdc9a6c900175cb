// What the training commands share (defined in train.cc): reading the data splits, the model,
// and the run's options from a checked TrainConfig.
#pragma once

#include <memory>
#include <string>

#include "config.h"
#include "shardps/worker/data.h"
#include "shardps/worker/federated.h"
#include "shardps/worker/model.h"
#include "shardps/worker/trainer.h"

namespace shardps::tools {

// The training (train = true) or test split, cut to the config's limit; RESOURCE_EXHAUSTED naming
// the file when it does not fit in memory.
Result<worker::Dataset> LoadSplit(const config::DataConfig& d, bool train);
Result<std::unique_ptr<worker::Model>> MakeModel(const config::TrainConfig& c, const worker::Dataset& train);
worker::RunOptions ToRunOptions(const config::TrainConfig& c, int worker, int workers);
worker::FederatedOptions ToFederatedOptions(const config::TrainConfig& c);

}  // namespace shardps::tools
