#include "train_outputs.h"

#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "shardps/base/json.h"
#include "shardps/storage/safetensors.h"

namespace shardps::tools {
namespace {

// ,"distillation":{"teacher":PATH,"temperature":T,"alpha":A} when the run distilled, else nothing.
std::string DistillationJson(const config::TrainConfig& c) {
  if (!c.has_teacher()) return "";
  char buf[96];
  std::snprintf(buf, sizeof(buf), ",\"temperature\":%.7g,\"alpha\":%.7g}", c.distill_temperature(), c.distill_alpha());
  return ",\"distillation\":{\"teacher\":" + JsonQuote(c.teacher()) + buf;
}

// ,"federated":{...} for mode fedavg, else nothing.
std::string FederatedJson(const config::TrainConfig& c) {
  if (c.mode() != "fedavg") return "";
  const config::FederatedConfig& f = c.federated();
  char buf[256];
  std::snprintf(buf, sizeof(buf), ",\"federated\":{\"clients\":%d,\"fraction\":%.7g,\"local_epochs\":%d,\"local_batch\":%lld,\"rounds\":%d,",
                f.clients(), f.fraction(), f.local_epochs(), static_cast<long long>(f.local_batch()), f.rounds());
  return buf + std::string("\"partitioner\":") + JsonQuote(f.partitioner()) + "}";
}

// ,"dp":{...} for fedavg with clipping: the settings, epsilon (null when infinite: no noise) at
// delta, the RDP order that gave it, and the client updates clipped of all.
std::string DpJson(const config::TrainConfig& c, const worker::TrainResult& r) {
  if (c.mode() != "fedavg" || c.federated().clip_norm() <= 0) return "";
  const config::FederatedConfig& f = c.federated();
  char buf[320];
  char eps[32] = "null";
  if (std::isfinite(r.epsilon)) std::snprintf(eps, sizeof(eps), "%.6g", r.epsilon);
  std::snprintf(buf, sizeof(buf),
                ",\"dp\":{\"clip_norm\":%.7g,\"noise_multiplier\":%.7g,\"delta\":%.7g,\"epsilon\":%s,\"order\":%.7g,"
                "\"clipped\":%lld,\"client_updates\":%lld}",
                f.clip_norm(), f.noise_multiplier(), f.dp_delta(), eps, r.epsilon_order, static_cast<long long>(r.clipped),
                static_cast<long long>(r.client_updates));
  return buf;
}

// ,"secagg":{...} for fedavg with secure aggregation: the settings and what the rounds did.
std::string SecAggJson(const config::TrainConfig& c, const worker::TrainResult& r) {
  if (c.mode() != "fedavg" || !c.federated().secure_aggregation()) return "";
  const config::FederatedConfig& f = c.federated();
  char buf[320];
  std::snprintf(buf, sizeof(buf),
                ",\"secagg\":{\"bits\":%d,\"clip\":%.7g,\"threshold\":%d,\"dropouts\":%d,\"drop_phase\":%d,"
                "\"aborted_rounds\":%lld,\"client_updates\":%lld,\"clipped_values\":%lld}",
                f.secagg_bits(), f.secagg_clip(), f.secagg_threshold(), f.secagg_dropouts(), f.secagg_drop_phase(),
                static_cast<long long>(r.secagg_aborted), static_cast<long long>(r.secagg_survivors),
                static_cast<long long>(r.secagg_clipped));
  return buf;
}

}  // namespace

Status WriteSummary(FileSystem& fs, const std::string& path, const config::TrainConfig& c, int servers, int workers,
                    const worker::TrainResult& r) {
  std::ostringstream js;
  js << "{\"model\":" << JsonQuote(c.model()) << ",\"mode\":" << JsonQuote(c.mode()) << DistillationJson(c) << FederatedJson(c) << DpJson(c, r) << SecAggJson(c, r)
     << ",\"servers\":" << servers
     << ",\"workers\":" << workers << ",\"epochs\":" << r.epochs << ",\"steps\":" << r.steps
     << ",\"test_accuracy\":" << r.test_accuracy << ",\"train_loss\":" << r.train_loss
     << ",\"wall_seconds\":" << r.wall_seconds << ",\"samples_per_second\":" << r.samples_per_second
     << ",\"compute_seconds\":" << r.compute_seconds << ",\"wait_seconds\":" << r.wait_seconds
     << ",\"weights_sha256\":" << JsonQuote(r.weights_sha256) << ",\"codec\":" << JsonQuote(c.codec())
     << ",\"push_bytes\":" << r.wire.push_bytes << ",\"pull_bytes\":" << r.wire.pull_bytes
     << ",\"push_float32_bytes\":" << r.wire.push_floats * 4 << ",\"pull_float32_bytes\":" << r.wire.pull_floats * 4 << "}";
  std::cout << js.str() << std::endl;
  const std::string text = js.str() + "\n";
  return WriteFileAtomically(fs, path, {std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size())});
}

Result<Outputs> PrepareOutputs(FileSystem& fs, const OutputFlags& f, const config::TrainConfig& c) {
  Outputs o;
  o.fs = &fs;
  SHARDPS_RETURN_IF_ERROR(EnsureWritableDirectory(fs, f.out_dir, "output directory (--out-dir)"));
  o.summary_json = f.summary_json.empty() ? f.out_dir + "/summary.json" : f.summary_json;
  o.metrics_csv = !f.metrics_csv.empty() ? f.metrics_csv : c.has_metrics_csv() ? c.metrics_csv() : f.out_dir + "/metrics.csv";
  o.model_out = f.model_out.empty() ? f.out_dir + "/final_model.safetensors" : f.model_out;
  SHARDPS_RETURN_IF_ERROR(CheckOutputFile(fs, o.summary_json, "summary JSON (--summary-json)"));
  SHARDPS_RETURN_IF_ERROR(CheckOutputFile(fs, o.metrics_csv, "metrics CSV (--metrics-csv)"));
  SHARDPS_RETURN_IF_ERROR(CheckOutputFile(fs, o.model_out, "final model (--model-out)"));
  return o;
}

Status WriteFinalModel(FileSystem& fs, const std::string& path, const std::vector<TableSpec>& tables,
                       const std::vector<std::vector<float>>& weights) {
  std::vector<SafetensorsTensor> tensors;
  for (size_t t = 0; t < weights.size(); ++t) {
    tensors.push_back({tables[t].name, "F32", tables[t].shape.empty() ? std::vector<uint64_t>{tables[t].size} : tables[t].shape,
                       {reinterpret_cast<const uint8_t*>(weights[t].data()), weights[t].size() * sizeof(float)}});
  }
  return WriteSafetensors(fs, path, tensors);
}

}  // namespace shardps::tools
