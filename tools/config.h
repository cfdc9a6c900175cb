// Loading and checking the training configuration (tools/config.proto).
//
//   SHARDPS_ASSIGN_OR_RETURN(config::TrainConfig c, LoadTrainConfig("run.prototxt"));
//   SHARDPS_RETURN_IF_ERROR(ApplyConfigOverride(&c, "optimizer.learning_rate=0.05"));
//   SHARDPS_RETURN_IF_ERROR(ValidateTrainConfig(c));
//
// Parsed once at the program's edge and passed down. Unknown keys, malformed values and values
// out of range are INVALID_ARGUMENT errors that name the key (and the file, line and column for
// text-format errors).
#pragma once

#include <string>

#include "config.pb.h"
#include "shardps/base/layout.h"
#include "shardps/base/status.h"

namespace shardps {

Result<config::TrainConfig> LoadTrainConfig(const std::string& path);
Result<config::TrainConfig> ParseTrainConfig(const std::string& text, const std::string& source);

// Applies "dotted.key=value" (e.g. "epochs=3", "optimizer.kind=adam", "hidden=256,128") on top of
// `config`. Repeated fields are replaced; strings need no quotes.
Status ApplyConfigOverride(config::TrainConfig* config, const std::string& assignment);

// Checks values that the schema cannot: known model/mode/optimizer names, positive sizes...
Status ValidateTrainConfig(const config::TrainConfig& config);

// The table optimizer the config describes.
Result<OptimizerConfig> ToOptimizerConfig(const config::OptimizerConfig& c);

// The config in text format (for logs and checkpoints).
std::string ConfigToText(const config::TrainConfig& config);

}  // namespace shardps
