// shardps bench: synchronous push/pull rounds over MPI, next to MPI_Allreduce of the same floats.
#include <mpi.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "mpi_env.h"
#include "shardps/core/mpi_transport.h"
#include "shardps/node.h"

namespace shardps::tools {
namespace {

namespace po = boost::program_options;
using Ms = std::chrono::duration<double, std::milli>;

struct BenchFlags {
  uint64_t floats = 1'000'000;
  int servers = 1;
  bool colocated = false;
  int rounds = 100;
  int warmup = 5;
  uint64_t chunk_floats = 256 * 1024;
  int64_t timeout_ms = 60000;
  bool allreduce = true;
  std::string json_out;
};

struct Summary {
  double min = 0, median = 0, max = 0;
};

Summary Summarize(std::vector<double> v) {
  Summary s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.max = v.back();
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return s;
}

std::string Json(const Summary& s) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "{\"min\":%.4f,\"median\":%.4f,\"max\":%.4f}", s.min, s.median, s.max);
  return buf;
}

// Per-round times, reduced with MAX over ranks: a synchronous round is as slow as its slowest rank.
std::vector<double> MaxOverRanks(const std::vector<double>& mine, MPI_Comm comm) {
  std::vector<double> out(mine.size());
  MPI_Allreduce(mine.data(), out.data(), static_cast<int>(mine.size()), MPI_DOUBLE, MPI_MAX, comm);
  return out;
}

std::vector<double> TimeAllreduce(const BenchFlags& f) {
  std::vector<float> send(f.floats, 1.0f), recv(f.floats);
  std::vector<double> times;
  for (int r = 0; r < f.warmup + f.rounds; ++r) {
    MPI_Barrier(MPI_COMM_WORLD);
    auto t0 = std::chrono::steady_clock::now();
    MPI_Allreduce(send.data(), recv.data(), static_cast<int>(f.floats), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    auto t1 = std::chrono::steady_clock::now();
    if (r >= f.warmup) times.push_back(Ms(t1 - t0).count());
  }
  return MaxOverRanks(times, MPI_COMM_WORLD);
}

struct Rounds {
  std::vector<double> round, push, pull;
};

Status RunPs(const BenchFlags& f, int rank, int size, Rounds* out) {
  ClusterOptions co;
  co.num_servers = f.servers;
  co.colocated = f.colocated;
  SHARDPS_ASSIGN_OR_RETURN(Cluster cluster, Cluster::Create(size, rank, co));
  TableSpec spec;
  spec.name = "bench";
  spec.size = f.floats;
  spec.optimizer.kind = OptimizerKind::kSgd;
  spec.optimizer.learning_rate = 1e-6f;
  LayoutOptions lo;
  lo.chunk_floats = f.chunk_floats;
  SHARDPS_ASSIGN_OR_RETURN(TableLayout layout, TableLayout::Create({spec}, cluster.num_servers(), lo));
  SHARDPS_ASSIGN_OR_RETURN(auto transport, CreateMpiTransport(MPI_COMM_WORLD));
  NodeOptions no;
  no.client.request_timeout = std::chrono::milliseconds(f.timeout_ms);
  no.startup_timeout = std::chrono::milliseconds(f.timeout_ms);
  SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(transport), cluster, layout, no));
  const auto timeout = std::chrono::milliseconds(f.timeout_ms);
  out->round.assign(f.rounds, 0.0);
  out->push.assign(f.rounds, 0.0);
  out->pull.assign(f.rounds, 0.0);
  if (auto* client = node->client()) {
    std::vector<float> grad(f.floats, 1.0f), weights(f.floats);
    SHARDPS_RETURN_IF_ERROR(client->Barrier().wait(timeout));
    for (int r = 0; r < f.warmup + f.rounds; ++r) {
      const uint64_t step = static_cast<uint64_t>(r);
      auto t0 = std::chrono::steady_clock::now();
      SHARDPS_RETURN_IF_ERROR(client->Push(0, grad, step).wait(timeout));
      auto t1 = std::chrono::steady_clock::now();
      SHARDPS_RETURN_IF_ERROR(client->Pull(0, weights, step + 1).wait(timeout));
      auto t2 = std::chrono::steady_clock::now();
      if (r >= f.warmup) {
        out->push[r - f.warmup] = Ms(t1 - t0).count();
        out->pull[r - f.warmup] = Ms(t2 - t1).count();
        out->round[r - f.warmup] = Ms(t2 - t0).count();
      }
    }
    // The servers applied SGD (lr 1e-6) to the sum of every worker's gradient of ones each round:
    // recompute that in the same float arithmetic and check every weight, so a fast but wrong
    // data path cannot pass as a benchmark result.
    float expect = 0.0f;
    const float sum = static_cast<float>(cluster.num_workers());
    for (int r = 0; r < f.warmup + f.rounds; ++r) expect -= spec.optimizer.learning_rate * (sum + 0.0f * expect);
    for (uint64_t i = 0; i < f.floats; ++i) {
      if (weights[i] != expect) {
        return DataLoss("bench: weight " + std::to_string(i) + " is " + std::to_string(weights[i]) + ", expected " +
                        std::to_string(expect));
      }
    }
  }
  return node->Finish();
}

}  // namespace

int BenchMain(int argc, char** argv) {
  BenchFlags f;
  po::options_description desc("shardps bench flags");
  desc.add_options()("help,h", "print this help")
      ("floats", po::value(&f.floats)->default_value(f.floats), "floats in the dense table")
      ("servers", po::value(&f.servers)->default_value(f.servers), "ranks 0..S-1 serve, the rest work")
      ("colocated", po::bool_switch(&f.colocated), "every rank serves a shard and works")
      ("rounds", po::value(&f.rounds)->default_value(f.rounds), "timed push+pull rounds")
      ("warmup", po::value(&f.warmup)->default_value(f.warmup), "untimed rounds first")
      ("chunk-floats", po::value(&f.chunk_floats)->default_value(f.chunk_floats), "floats per chunk")
      ("timeout-ms", po::value(&f.timeout_ms)->default_value(f.timeout_ms), "deadline of every wait")
      ("no-allreduce", "skip the MPI_Allreduce reference")
      ("json-out", po::value(&f.json_out), "also write the JSON object to this file");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "shardps bench: " << e.what() << "\n" << desc;
    return 2;
  }
  if (vm.count("help")) {
    std::cout << "usage: mpirun -np N shardps bench [flags]\n" << desc;
    return 0;
  }
  f.allreduce = vm.count("no-allreduce") == 0;
  std::string bad;
  if (f.floats < 1 || f.floats > 0x7FFFFFFF) bad = "--floats must be in [1, 2147483647]";
  else if (f.rounds < 1) bad = "--rounds must be at least 1";
  else if (f.warmup < 0) bad = "--warmup must not be negative";
  else if (f.chunk_floats < 1) bad = "--chunk-floats must be at least 1";
  else if (f.timeout_ms < 1) bad = "--timeout-ms must be at least 1";
  if (!bad.empty()) {
    std::cerr << "shardps bench: " << bad << "\n";
    return 2;
  }

  ApplyMpiDefaults();
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (provided < MPI_THREAD_SERIALIZED) {
    if (rank == 0) std::cerr << "shardps bench: the MPI library does not provide MPI_THREAD_SERIALIZED\n";
    MPI_Finalize();
    return 1;
  }

  Summary allreduce;
  if (f.allreduce) allreduce = Summarize(TimeAllreduce(f));

  Rounds rounds;
  Status s = RunPs(f, rank, size, &rounds);
  // Agree on success before collective reductions so a failed rank cannot leave others waiting.
  int ok = s.ok() ? 1 : 0, all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!s.ok()) std::cerr << "shardps bench: rank " << rank << ": " << s.ToString() << "\n";
  if (!all_ok) {
    MPI_Finalize();
    return 1;
  }
  const auto round = Summarize(MaxOverRanks(rounds.round, MPI_COMM_WORLD));
  const auto push = Summarize(MaxOverRanks(rounds.push, MPI_COMM_WORLD));
  const auto pull = Summarize(MaxOverRanks(rounds.pull, MPI_COMM_WORLD));
  const int workers = f.colocated ? size : size - f.servers;
  const int servers = f.colocated ? size : f.servers;
  if (rank == 0) {
    const double bytes = 2.0 * static_cast<double>(f.floats) * sizeof(float);
    const double gbps = round.median > 0 ? bytes / (round.median * 1e-3) / 1e9 : 0.0;
    std::ostringstream js;
    js << "{\"floats\":" << f.floats << ",\"servers\":" << servers << ",\"workers\":" << workers
       << ",\"colocated\":" << (f.colocated ? "true" : "false") << ",\"rounds\":" << f.rounds
       << ",\"round_ms\":" << Json(round) << ",\"push_ms\":" << Json(push) << ",\"pull_ms\":" << Json(pull)
       << ",\"gbps_per_worker\":" << gbps;
    if (f.allreduce) js << ",\"allreduce_ms\":" << Json(allreduce) << ",\"allreduce_ranks\":" << size;
    js << ",\"chunk_floats\":" << f.chunk_floats << ",\"transport\":\"mpi\"}";
    std::cout << js.str() << std::endl;
    if (!f.json_out.empty()) {
      std::ofstream o(f.json_out);
      o << js.str() << "\n";
      if (!o) std::cerr << "shardps bench: could not write " << f.json_out << "\n";
    }
  }
  MPI_Finalize();
  return 0;
}

}  // namespace shardps::tools
