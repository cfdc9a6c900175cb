// The KServe v2 (Open Inference Protocol) REST endpoints of `shardps serve`, over one ModelStore:
//
//   GET  /v2/health/live                          200 {"live": true}
//   GET  /v2/health/ready                         200 ready / 503 not, with what is served and any problem
//   GET  /v2                                      server metadata
//   GET  /v2/models/NAME[/versions/V]             model metadata (inputs, outputs, the version served)
//   GET  /v2/models/NAME[/versions/V]/ready       200 {"name", "ready": true} / 404
//   POST /v2/models/NAME[/versions/V]/infer       inference (below)
//   GET  /metrics                                 Prometheus text exposition (serving and process)
//
// Infer request: {"id"?: "...", "inputs": [{"name": "input", "datatype": "FP32", "shape": [N, D],
// "data": [...]}], "outputs"?: [{"name": "logits" | "probabilities" | "label"}]} with D the
// model's input width and data row-major, flat or nested. The response has the requested
// outputs (default logits and label): "logits" and "probabilities" FP32 [N, C], "label" INT64 [N].
// One request is one batched forward pass (Eigen). A request names the version it wants or takes
// the one served when it arrives, and is answered entirely by that version even if a swap happens
// meanwhile; "model_version" in the response says which.
// Errors: 400 (malformed JSON, wrong datatype/shape/width, non-finite value, too many rows), 404
// (unknown model, path, or a version that is not the one served), 405 (method), 503 (nothing
// loaded); the body is {"error": "..."}.
// Metrics: requests, errors, latency histograms and rows by model and version; the series of a
// version are dropped once 3 newer ones have been served, so /metrics stays bounded.
// Thread safety: Handle() runs concurrently on the HTTP server's threads.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "shardps/base/metrics.h"
#include "shardps/net/http_server.h"
#include "shardps/serve/model_store.h"

namespace shardps::serve {

struct KServeOptions {
  int64_t max_batch_rows = 4096;
  std::string server_version = "0.1.0";
  // Called at each /metrics scrape before rendering (the program adds the HTTP server's refusals).
  std::function<void()> before_scrape;
};

class KServeHandler {
 public:
  KServeHandler(ModelStore& store, metrics::Registry& metrics, KServeOptions options = {});
  HttpResponse Handle(const HttpRequest& request);

 private:
  HttpResponse Route(const HttpRequest& request, std::string* endpoint, std::string* version);
  HttpResponse Infer(const HttpRequest& request, const std::string& version, std::string* served);
  HttpResponse ModelMetadata(const Servable& s) const;
  HttpResponse Ready() const;
  HttpResponse Metrics();
  // Drops the version-labelled series of versions older than the last kKeptVersions seen.
  void PruneVersions(const std::string& version);
  static constexpr size_t kKeptVersions = 3;

  ModelStore& store_;
  metrics::Registry& metrics_;
  KServeOptions options_;
  metrics::Family<metrics::Counter>& requests_;
  metrics::Family<metrics::Counter>& errors_;
  metrics::Family<metrics::Histogram>& latency_;
  metrics::Family<metrics::Counter>& rows_;
  metrics::Gauge& rss_;
  std::mutex versions_mu_;
  std::vector<std::string> recent_versions_;  // guarded by versions_mu_, oldest first
};

}  // namespace shardps::serve
