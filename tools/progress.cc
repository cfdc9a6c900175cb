#include "progress.h"

#include <unistd.h>

#include <cstdio>

namespace shardps::tools {

ProgressDisplay::ProgressDisplay(const std::string& mode) {
  enabled_ = mode != "never";
  redraw_ = mode == "always" || (mode == "auto" && isatty(STDOUT_FILENO));
}

std::string ProgressDisplay::FormatDuration(double seconds) {
  if (seconds < 0) seconds = 0;
  long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60) std::snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof(buf), "%lds", s);
  return buf;
}

std::string ProgressDisplay::Line(const worker::Progress& p) {
  char acc[32] = "-";
  if (p.test_accuracy >= 0) std::snprintf(acc, sizeof(acc), "%.4f", p.test_accuracy);
  char buf[256];
  if (p.clients >= 0) {  // fedavg: a round at a time
    std::snprintf(buf, sizeof(buf), "round %lld/%lld  clients %d  loss %.4f  acc %s  %.0f samples/s  ETA %s",
                  static_cast<long long>(p.step), static_cast<long long>(p.total_steps), p.clients, p.loss, acc,
                  p.samples_per_second, FormatDuration(p.eta_seconds).c_str());
    return buf;
  }
  std::snprintf(buf, sizeof(buf), "epoch %d/%d  step %lld/%lld  loss %.4f  acc %s  %.0f samples/s  ETA %s", p.epoch + 1,
                p.epochs, static_cast<long long>(p.step), static_cast<long long>(p.total_steps), p.loss, acc,
                p.samples_per_second, FormatDuration(p.eta_seconds).c_str());
  return buf;
}

void ProgressDisplay::Update(const worker::Progress& p) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const bool new_epoch = p.epoch != last_epoch_;
  const auto gap = redraw_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(5000);
  if (!new_epoch && p.step != p.total_steps && now - last_ < gap) return;
  last_ = now;
  last_epoch_ = p.epoch;
  if (redraw_) {
    std::printf("\r\x1b[2K%s", Line(p).c_str());
  } else {
    std::printf("%s\n", Line(p).c_str());
  }
  std::fflush(stdout);
}

void ProgressDisplay::Finish(const worker::TrainResult& r, bool rounds) {
  if (!enabled_) return;
  if (redraw_) std::printf("\n");
  if (rounds) {
    std::printf("done: %lld rounds, test accuracy %.4f, train loss %.4f, %.0f samples/s, %s\n", static_cast<long long>(r.steps),
                r.test_accuracy, r.train_loss, r.samples_per_second, FormatDuration(r.wall_seconds).c_str());
    std::fflush(stdout);
    return;
  }
  std::printf("done: %d epochs, %lld steps, test accuracy %.4f, train loss %.4f, %.0f samples/s, %s\n", r.epochs,
              static_cast<long long>(r.steps), r.test_accuracy, r.train_loss, r.samples_per_second,
              FormatDuration(r.wall_seconds).c_str());
  std::fflush(stdout);
}

}  // namespace shardps::tools
