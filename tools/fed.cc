// shardps fed-serve / fed-client: federated averaging with real clients, one process each, over
// authenticated TCP (worker/federated_remote.h, docs/federated.md#real-clients).
//
//   shardps keygen --out job.key
//   shardps fed-serve --config examples/configs/fashion_fedavg.prototxt --secret job.key
//       --listen 127.0.0.1:7100 --wait-clients 10 --set federated.clients=10 --set federated.fraction=1
//   for k in $(seq 0 9); do
//     shardps fed-client --config ... --secret job.key --connect 127.0.0.1:7100 --client $k
//         --set federated.clients=10 &
//   done
//
// Both read the same config (the data, the model, the partitioner, its seed and N, E, B, the
// optimizer, secagg_bits and secagg_clip). The coordinator reads the test set only; each client
// cuts its own partition from the training set. Secure aggregation is always on.
#include <boost/program_options.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "commands.h"
#include "flags.h"
#include "config.h"
#include "progress.h"
#include "shardps/net/auth.h"
#include "shardps/net/channel.h"
#include "shardps/net/http_server.h"
#include "shardps/storage/file_system.h"
#include "shardps/worker/federated_remote.h"
#include "train_common.h"
#include "train_outputs.h"

namespace shardps::tools {
namespace {

namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;

struct Common {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string secret_path;
};

void AddCommon(po::options_description& desc, Common& c) {
  desc.add_options()
      ("config", po::value(&c.config_path)->required(), "training config (text protobuf), the same for the coordinator and every client")
      ("set", po::value(&c.overrides)->composing(), "KEY=VALUE: override one config field (repeatable)")
      ("secret", po::value(&c.secret_path)->required(), "shared secret file (shardps keygen): both sides prove they hold it");
}

Result<config::TrainConfig> Config(const Common& f) {
  SHARDPS_ASSIGN_OR_RETURN(config::TrainConfig c, LoadTrainConfig(f.config_path));
  for (const std::string& o : f.overrides) SHARDPS_RETURN_IF_ERROR(ApplyConfigOverride(&c, o));
  SHARDPS_RETURN_IF_ERROR(ApplyConfigOverride(&c, "mode=fedavg"));
  SHARDPS_RETURN_IF_ERROR(ApplyConfigOverride(&c, "federated.secure_aggregation=true"));
  SHARDPS_RETURN_IF_ERROR(ValidateTrainConfig(c));
  return c;
}

// ParseHostPort with the flag named in its error.
Result<std::pair<std::string, uint16_t>> HostPort(const std::string& s, const char* flag) {
  auto hp = ParseHostPort(s);
  if (!hp.ok()) return InvalidArgument(std::string(flag) + ": " + hp.status().message());
  return hp;
}

void WriteU64s(const std::string& path, const std::vector<uint64_t>& v) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(uint64_t)));
}

}  // namespace

int FedServeMain(int argc, char** argv) {
  Common common;
  OutputFlags out_flags;
  out_flags.out_dir = "shardps_fed";
  std::string listen = "127.0.0.1:0", port_file, dump_sums, progress = "plain";
  int wait_clients = 2;
  int64_t join_ms = 120000, train_ms = 600000, phase_ms = 30000;
  po::options_description desc("shardps fed-serve: the coordinator of federated averaging with real clients");
  AddCommon(desc, common);
  desc.add_options()
      ("listen", po::value(&listen)->default_value(listen), "HOST:PORT to accept clients on (port 0: any free port)")
      ("port-file", po::value(&port_file), "write the port listened on to this file once listening")
      ("wait-clients", po::value(&wait_clients)->default_value(wait_clients), "clients that must join before round 1")
      ("join-timeout-ms", po::value(&join_ms)->default_value(join_ms), "how long to wait for them")
      ("train-timeout-ms", po::value(&train_ms)->default_value(train_ms), "deadline of a round's local training and key advertising")
      ("phase-timeout-ms", po::value(&phase_ms)->default_value(phase_ms), "deadline of each later phase of secure aggregation")
      ("out-dir", po::value(&out_flags.out_dir)->default_value(out_flags.out_dir), "summary.json, metrics.csv, final_model.safetensors")
      ("progress", po::value(&progress)->default_value(progress), "always, plain or never")
      ("test-dump-sums", po::value(&dump_sums), "test only: write each round's ring sum (round_R.sum) and survivors here");
  if (int rc = ParseFlags(argc, argv, desc, "fed-serve"); rc >= 0) return rc;
  auto fail = [](const Status& s) {
    std::cerr << "shardps fed-serve: " << s.ToString() << std::endl;
    return 1;
  };
  auto c = Config(common);
  if (!c.ok()) return fail(c.status());
  auto secret = LoadSecret(common.secret_path);
  if (!secret.ok()) return fail(secret.status());
  auto hp = HostPort(listen, "--listen");
  if (!hp.ok()) return fail(hp.status());
  PosixFileSystem fs;
  auto out = PrepareOutputs(fs, out_flags, *c);
  if (!out.ok()) return fail(out.status());
  auto test = LoadSplit(c->data(), false);
  if (!test.ok()) return fail(test.status());
  auto model = MakeModel(*c, *test);
  if (!model.ok()) return fail(model.status());
  const worker::RunOptions run = ToRunOptions(*c, 0, 1);
  auto listener = Listener::Bind(hp->first, hp->second);
  if (!listener.ok()) return fail(listener.status());
  std::cerr << "shardps fed-serve: listening on " << hp->first << ":" << listener->port() << ", waiting for " << wait_clients
            << " clients" << std::endl;
  if (!port_file.empty()) {
    std::ofstream pf(port_file + ".tmp");
    pf << listener->port() << "\n";
    pf.close();
    std::rename((port_file + ".tmp").c_str(), port_file.c_str());
  }
  worker::CoordinatorOptions o;
  o.fed = ToFederatedOptions(*c);
  o.wait_clients = wait_clients;
  o.join_timeout = std::chrono::milliseconds(join_ms);
  o.train_timeout = std::chrono::milliseconds(train_ms);
  o.phase_timeout = std::chrono::milliseconds(phase_ms);
  if (!dump_sums.empty()) {
    o.on_sum = [&](int round, const std::vector<uint32_t>& survivors, int ring_bits, const std::vector<uint64_t>& sum) {
      WriteU64s(dump_sums + "/round_" + std::to_string(round) + ".sum", sum);
      std::ofstream s(dump_sums + "/round_" + std::to_string(round) + ".survivors");
      s << "ring_bits " << ring_bits << "\n";
      for (uint32_t id : survivors) s << id << "\n";
    };
  }
  MetricsCsv csv;
  if (Status s = csv.Open(out->metrics_csv); !s.ok()) return fail(s);
  ProgressDisplay display(progress);
  worker::TrainHooks hooks;
  hooks.on_metrics = [&](const worker::MetricsRow& r) { csv.Write(r); };
  hooks.on_progress = [&](const worker::Progress& p) { display.Update(p); };
  hooks.on_notice = [](const std::string& m) { std::cerr << "shardps fed-serve: " << m << std::endl; };
  worker::LocalParams params(worker::TrainingTables(**model, run));
  auto r = worker::ServeFederated(**model, *test, params, run, o, *listener, *secret, hooks);
  if (!r.ok()) return fail(r.status());
  const std::vector<TableSpec> tables = worker::TrainingTables(**model, run);
  if (Status s = WriteFinalModel(fs, out->model_out, std::vector<TableSpec>(tables.begin(), tables.begin() + static_cast<long>(r->weights.size())),
                                 r->weights);
      !s.ok()) {
    return fail(s);
  }
  if (Status s = WriteSummary(fs, out->summary_json, *c, 0, wait_clients, *r); !s.ok()) return fail(s);
  return 0;
}

int FedClientMain(int argc, char** argv) {
  Common common;
  std::string connect, dump_inputs;
  int client = -1, exit_phase = -1, exit_round = 1;
  int64_t reply_ms = 900000, connect_ms = 60000;
  po::options_description desc("shardps fed-client: one client of federated averaging, with its own data partition");
  AddCommon(desc, common);
  desc.add_options()
      ("connect", po::value(&connect)->required(), "HOST:PORT of the coordinator (shardps fed-serve)")
      ("client", po::value(&client)->required(), "this client's partition index k in [0, federated.clients)")
      ("connect-timeout-ms", po::value(&connect_ms)->default_value(connect_ms), "how long to try to reach the coordinator")
      ("reply-timeout-ms", po::value(&reply_ms)->default_value(reply_ms), "the longest wait for the coordinator")
      ("test-exit-before-phase", po::value(&exit_phase), "test only: SIGKILL this process before sending its phase P (0-3) bundle")
      ("test-exit-round", po::value(&exit_round)->default_value(exit_round), "test only: ... in this round (1-based)")
      ("test-dump-inputs", po::value(&dump_inputs), "test only: write the ring vector this client masks, each round, here");
  if (int rc = ParseFlags(argc, argv, desc, "fed-client"); rc >= 0) return rc;
  const std::string me = "shardps fed-client " + std::to_string(client);
  auto fail = [&](const Status& s) {
    std::cerr << me << ": " << s.ToString() << std::endl;
    return 1;
  };
  auto c = Config(common);
  if (!c.ok()) return fail(c.status());
  auto secret = LoadSecret(common.secret_path);
  if (!secret.ok()) return fail(secret.status());
  auto hp = HostPort(connect, "--connect");
  if (!hp.ok()) return fail(hp.status());
  if (client < 0 || client >= c->federated().clients()) {
    return fail(InvalidArgument("--client " + std::to_string(client) + " is outside [0, " + std::to_string(c->federated().clients()) +
                                ") (federated.clients)"));
  }
  auto train = LoadSplit(c->data(), true);
  if (!train.ok()) return fail(train.status());
  auto model = MakeModel(*c, *train);
  if (!model.ok()) return fail(model.status());
  // The coordinator may still be starting: retry until the deadline.
  const auto deadline = Clock::now() + std::chrono::milliseconds(connect_ms);
  Result<Channel> ch = Unavailable("not tried");
  while (true) {
    ch = Channel::Connect(hp->first, hp->second, *secret, deadline);
    if (ch.ok() || Clock::now() >= deadline || ch.status().code() != StatusCode::kUnavailable) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (!ch.ok()) return fail(ch.status().WithContext("connecting to the coordinator at " + connect));
  worker::FedClientOptions o;
  o.fed = ToFederatedOptions(*c);
  o.client = client;
  o.reply_timeout = std::chrono::milliseconds(reply_ms);
  o.exit_before_phase = exit_phase;
  o.exit_round = exit_round;
  if (!dump_inputs.empty()) {
    o.on_input = [&](int round, uint32_t id, const std::vector<uint64_t>& input) {
      WriteU64s(dump_inputs + "/round_" + std::to_string(round) + "_id_" + std::to_string(id) + ".input", input);
    };
  }
  const worker::RunOptions run = ToRunOptions(*c, 0, 1);
  Status s = worker::RunFederatedClient(**model, *train, run, o, *ch);
  if (!s.ok()) return fail(s);
  std::cerr << me << ": done" << std::endl;
  return 0;
}

}  // namespace shardps::tools
