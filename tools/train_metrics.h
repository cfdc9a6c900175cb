// Prometheus metrics of a training process (`shardps train --metrics-port P`): what a job's
// operator watches while it runs, in the text exposition format on http://ADDRESS:PORT/metrics.
//
// Every process of a job serves its own: under mpirun rank r listens on P + r (P = 0: any free
// port, logged), so one Prometheus scrape config lists them all. Metrics (no labels but the
// ones named; shardps_train_info carries the process's role and rank):
//   shardps_train_info{role,rank}                    1
//   shardps_train_step, shardps_train_epoch           progress of this worker
//   shardps_train_loss                                mean training loss of the recent steps
//   shardps_train_test_accuracy                       last evaluation (0 until the first one)
//   shardps_train_samples_per_second                  all workers together
//   shardps_train_samples_total                       global samples processed
//   shardps_train_op_duration_seconds{op}             push / pull / push_pull latency histogram
//   shardps_train_op_failures_total{op}
//   shardps_train_wire_bytes_total{direction}         this worker's payload bytes (push, pull)
//   shardps_train_checkpoint_duration_seconds         time the training loop spent per checkpoint
//   shardps_train_checkpoints_total
//   shardps_train_peers, shardps_train_peers_alive    other processes of the job; alive drops to
//                                                     peers - 1 once a peer is lost (the job then ends)
//   process_resident_memory_bytes
// Thread safety: the On* calls may come from any thread (the op observer from the
// communication thread); SetEndpoint from the training thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "shardps/base/metrics.h"
#include "shardps/base/status.h"
#include "shardps/net/http_server.h"
#include "shardps/worker/trainer.h"

namespace shardps {
class Endpoint;
}

namespace shardps::tools {

class TrainMetrics {
 public:
  // Binds ADDRESS:PORT and starts serving /metrics; the error names the address.
  static Result<std::unique_ptr<TrainMetrics>> Start(const std::string& address, uint16_t port, const std::string& role,
                                                     int rank, int job_size);
  ~TrainMetrics();
  uint16_t port() const { return server_->port(); }

  void OnProgress(const worker::Progress& p);
  void OnMetricsRow(const worker::MetricsRow& r);
  void OnOp(const char* op, double seconds, bool ok);
  void OnCheckpoint(double seconds);
  // The job's communication endpoint, for peers alive (null before it starts and after it stops).
  void SetEndpoint(const Endpoint* endpoint);

 private:
  explicit TrainMetrics(int job_size);
  void BeforeScrape();

  metrics::Registry registry_;
  metrics::Gauge &step_, &epoch_, &loss_, &accuracy_, &rate_, &peers_, &alive_, &rss_;
  metrics::Counter& samples_;
  metrics::Family<metrics::Histogram>& ops_;
  metrics::Family<metrics::Counter>& op_failures_;
  metrics::Family<metrics::Counter>& bytes_;
  metrics::Histogram& checkpoint_seconds_;
  metrics::Counter& checkpoints_;
  std::mutex mu_;
  int64_t samples_seen_ = 0;     // guarded by mu_
  uint64_t push_seen_ = 0, pull_seen_ = 0;
  const Endpoint* endpoint_ = nullptr;
  const int job_size_;
  std::unique_ptr<HttpServer> server_;  // last: stopped first
};

}  // namespace shardps::tools
