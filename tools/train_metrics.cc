#include "train_metrics.h"

#include "shardps/net/endpoint.h"

namespace shardps::tools {

TrainMetrics::TrainMetrics(int job_size)
    : step_(registry_.AddGauge("shardps_train_step", "Global steps done (this worker's view)").With({})),
      epoch_(registry_.AddGauge("shardps_train_epoch", "Current epoch, 0-based").With({})),
      loss_(registry_.AddGauge("shardps_train_loss", "Mean training loss of this worker's recent steps").With({})),
      accuracy_(registry_.AddGauge("shardps_train_test_accuracy", "Test accuracy of the last evaluation").With({})),
      rate_(registry_.AddGauge("shardps_train_samples_per_second", "Training samples per second, all workers").With({})),
      peers_(registry_.AddGauge("shardps_train_peers", "Other processes of the job").With({})),
      alive_(registry_.AddGauge("shardps_train_peers_alive", "Other processes of the job not lost").With({})),
      rss_(registry_.AddGauge("process_resident_memory_bytes", "Resident memory size in bytes").With({})),
      samples_(registry_.AddCounter("shardps_train_samples_total", "Global training samples processed").With({})),
      ops_(registry_.AddHistogram("shardps_train_op_duration_seconds",
                                  "Push, pull and push-pull latency: from the call to the last server's answer",
                                  metrics::LatencyBuckets(), {"op"})),
      op_failures_(registry_.AddCounter("shardps_train_op_failures_total", "Pushes, pulls and push-pulls that failed", {"op"})),
      bytes_(registry_.AddCounter("shardps_train_wire_bytes_total", "This worker's table payload bytes", {"direction"})),
      checkpoint_seconds_(registry_.AddHistogram("shardps_train_checkpoint_duration_seconds",
                                                 "Time the training loop spent on each checkpoint", metrics::LatencyBuckets())
                              .With({})),
      checkpoints_(registry_.AddCounter("shardps_train_checkpoints_total", "Checkpoints written").With({})),
      job_size_(job_size) {
  peers_.Set(job_size - 1);
  alive_.Set(job_size - 1);
}

TrainMetrics::~TrainMetrics() {
  if (server_) server_->Stop();
}

Result<std::unique_ptr<TrainMetrics>> TrainMetrics::Start(const std::string& address, uint16_t port, const std::string& role,
                                                          int rank, int job_size) {
  std::unique_ptr<TrainMetrics> m(new TrainMetrics(job_size));
  m->registry_.AddGauge("shardps_train_info", "This process's role and rank in the job", {"role", "rank"})
      .With({role, std::to_string(rank)})
      .Set(1);
  HttpServerOptions o;
  o.listen = (address.find(':') != std::string::npos ? "[" + address + "]" : address) + ":" + std::to_string(port);
  o.threads = 1;
  o.max_body_bytes = 4096;
  TrainMetrics* self = m.get();
  auto server = HttpServer::Start(o, [self](const HttpRequest& r) -> HttpResponse {
    const std::string path = r.target.substr(0, r.target.find('?'));
    if (path != "/metrics") return HttpError(404, "no such endpoint: " + path + " (this training process serves /metrics)");
    if (r.method != "GET" && r.method != "HEAD") return HttpError(405, "method " + r.method + " not allowed on /metrics (use GET)");
    self->BeforeScrape();
    return HttpResponse{200, metrics::kContentType, self->registry_.Render()};
  });
  if (!server.ok()) return Status(server.status().code(), "--metrics-port: " + server.status().message());
  m->server_ = std::move(*server);
  return m;
}

void TrainMetrics::OnProgress(const worker::Progress& p) {
  step_.Set(static_cast<double>(p.step));
  epoch_.Set(p.epoch);
  loss_.Set(p.loss);
  if (p.test_accuracy >= 0) accuracy_.Set(p.test_accuracy);
  rate_.Set(p.samples_per_second);
}

void TrainMetrics::OnMetricsRow(const worker::MetricsRow& r) {
  std::lock_guard<std::mutex> l(mu_);
  if (r.samples > samples_seen_) {
    samples_.Inc(static_cast<double>(r.samples - samples_seen_));
    samples_seen_ = r.samples;
  }
  if (r.push_bytes > push_seen_) {
    bytes_.With({"push"}).Inc(static_cast<double>(r.push_bytes - push_seen_));
    push_seen_ = r.push_bytes;
  }
  if (r.pull_bytes > pull_seen_) {
    bytes_.With({"pull"}).Inc(static_cast<double>(r.pull_bytes - pull_seen_));
    pull_seen_ = r.pull_bytes;
  }
  if (r.test_accuracy >= 0) accuracy_.Set(r.test_accuracy);
}

void TrainMetrics::OnOp(const char* op, double seconds, bool ok) {
  ops_.With({op}).Observe(seconds);
  if (!ok) op_failures_.With({op}).Inc();
}

void TrainMetrics::OnCheckpoint(double seconds) {
  checkpoint_seconds_.Observe(seconds);
  checkpoints_.Inc();
}

void TrainMetrics::SetEndpoint(const Endpoint* endpoint) {
  std::lock_guard<std::mutex> l(mu_);
  endpoint_ = endpoint;
}

void TrainMetrics::BeforeScrape() {
  rss_.Set(static_cast<double>(metrics::ResidentBytes()));
  std::lock_guard<std::mutex> l(mu_);
  if (endpoint_ != nullptr) alive_.Set(endpoint_->lost().ok() ? job_size_ - 1 : job_size_ - 2);
}

}  // namespace shardps::tools
