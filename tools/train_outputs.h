// The outputs of `shardps train` on the lead worker: the summary JSON, the metrics CSV, the final
// model (safetensors), all checked before training starts and written through the FileSystem the
// program made.
#pragma once

#include <fstream>
#include <string>
#include <vector>

#include "config.h"
#include "shardps/base/layout.h"
#include "shardps/storage/file_system.h"
#include "shardps/worker/trainer.h"

namespace shardps::tools {

// The output flags of `shardps train` (empty: the default under out_dir).
struct OutputFlags {
  std::string out_dir = "shardps_run";
  std::string summary_json;
  std::string metrics_csv;
  std::string model_out;
};

struct Outputs {
  std::string summary_json, metrics_csv, model_out;
  FileSystem* fs = nullptr;  // every output and checkpoint write goes through it
};

// Resolves the output paths and checks every location now, before any training: a missing or
// read-only directory, a device or a directory where a file should go is refused at start.
Result<Outputs> PrepareOutputs(FileSystem& fs, const OutputFlags& f, const config::TrainConfig& c);

// The run's summary as one JSON line, on stdout and (atomically) at `path`.
Status WriteSummary(FileSystem& fs, const std::string& path, const config::TrainConfig& c, int servers, int workers,
                    const worker::TrainResult& r);

// The final model as one safetensors file: every table as a float32 tensor of its shape.
Status WriteFinalModel(FileSystem& fs, const std::string& path, const std::vector<TableSpec>& tables,
                       const std::vector<std::vector<float>>& weights);

// The metrics CSV, streamed while training runs.
class MetricsCsv {
 public:
  Status Open(const std::string& path) {
    // Streamed while training runs, so not renamed into place: it is never opened over a device.
    SHARDPS_RETURN_IF_ERROR(CheckRegularOrAbsent(path, "metrics CSV"));
    out_.open(path, std::ios::trunc);
    if (!out_) return IoError("cannot create metrics CSV '" + path + "'");
    out_ << "epoch,step,samples,train_loss,test_loss,test_accuracy,samples_per_second,wall_seconds,push_bytes,pull_bytes,clients,epsilon,clipped,update_norm,survivors,secagg_clipped\n";
    out_.flush();
    return Status::Ok();
  }
  // %.6g, "inf" for an infinite epsilon.
  static std::string Real(double v) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.6g", v);
    return buf;
  }
  void Write(const worker::MetricsRow& r) {
    char buf[256];
    auto opt = [](double v) { return v < 0 ? std::string() : std::to_string(v); };
    std::snprintf(buf, sizeof(buf), "%d,%lld,%lld,%.6f,", r.epoch, static_cast<long long>(r.step),
                  static_cast<long long>(r.samples), r.train_loss);
    out_ << buf << opt(r.test_loss) << "," << opt(r.test_accuracy) << "," << r.samples_per_second << "," << r.wall_seconds
         << "," << r.push_bytes << "," << r.pull_bytes << ","
         << (r.clients < 0 ? std::string() : std::to_string(r.clients)) << "," << (r.epsilon < 0 ? std::string() : Real(r.epsilon))
         << "," << (r.clipped < 0 ? std::string() : std::to_string(r.clipped)) << ","
         << (r.update_norm < 0 ? std::string() : Real(r.update_norm)) << ","
         << (r.survivors < 0 ? std::string() : std::to_string(r.survivors)) << ","
         << (r.secagg_clipped < 0 ? std::string() : std::to_string(r.secagg_clipped)) << "\n";
    out_.flush();
  }

 private:
  std::ofstream out_;
};

}  // namespace shardps::tools
