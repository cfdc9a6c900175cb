// Progress of a training run on the lead worker: redrawn in place on a terminal, plain lines
// (at most one every few seconds, and one per epoch) when the output is a file or a pipe.
#pragma once

#include <chrono>
#include <string>

#include "shardps/worker/trainer.h"

namespace shardps::tools {

class ProgressDisplay {
 public:
  // mode: "auto" (redraw if stdout is a terminal), "always" (redraw), "plain" or "never".
  explicit ProgressDisplay(const std::string& mode);
  void Update(const worker::Progress& p);
  // `rounds`: fedavg, whose TrainResult counts rounds.
  void Finish(const worker::TrainResult& r, bool rounds = false);

  // "1h02m", "3m05s", "12s".
  static std::string FormatDuration(double seconds);
  static std::string Line(const worker::Progress& p);

 private:
  bool redraw_ = false;
  bool enabled_ = true;
  int last_epoch_ = -1;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace shardps::tools
