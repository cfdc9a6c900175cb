// shardps bench: synchronous push/pull rounds over MPI, next to MPI_Allreduce of the same floats, or
// over TCP between processes started on their own (--transport tcp).
#include <malloc.h>
#if SHARDPS_WITH_MPI
#include <mpi.h>
#endif

#include <algorithm>
#include <charconv>
#include <cstring>
#include <boost/program_options.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench.h"

#include "shardps/base/codec.h"
#include "commands.h"
#include "launch.h"
#if SHARDPS_WITH_MPI
#include "mpi_env.h"
#include "shardps/net/mpi_transport.h"
#endif
#include "shardps/node.h"

namespace shardps::tools {
namespace {

namespace po = boost::program_options;
using Ms = std::chrono::duration<double, std::milli>;

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
#if SHARDPS_WITH_MPI
std::vector<double> MaxOverRanks(const std::vector<double>& mine, MPI_Comm comm) {
  std::vector<double> out(mine.size());
  MPI_Allreduce(mine.data(), out.data(), static_cast<int>(mine.size()), MPI_DOUBLE, MPI_MAX, comm);
  return out;
}

std::vector<double> TimeAllreduce(const BenchFlags& f, MPI_Comm comm) {
  std::vector<float> send(f.floats, 1.0f), recv(f.floats);
  std::vector<double> times;
  for (int r = 0; r < f.warmup + f.rounds; ++r) {
    MPI_Barrier(comm);
    auto t0 = std::chrono::steady_clock::now();
    MPI_Allreduce(send.data(), recv.data(), static_cast<int>(f.floats), MPI_FLOAT, MPI_SUM, comm);
    auto t1 = std::chrono::steady_clock::now();
    if (r >= f.warmup) times.push_back(Ms(t1 - t0).count());
  }
  return MaxOverRanks(times, comm);
}

#endif  // SHARDPS_WITH_MPI

// ,"codec":...,"push_bytes":...: a worker's payload bytes each way over all its rounds, and the
// ratio to float32 (`w`: push, pull, push float32, pull float32 bytes; the most of any worker).
std::string WireJson(const BenchFlags& f, const std::vector<double>& w) {
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                ",\"codec\":\"%s\",\"push_bytes\":%.0f,\"pull_bytes\":%.0f,\"push_ratio\":%.3f,\"pull_ratio\":%.3f",
                f.codec.c_str(), w[0], w[1], w[0] > 0 ? w[2] / w[0] : 0.0, w[1] > 0 ? w[3] / w[1] : 0.0);
  return buf;
}

void PrintResult(const BenchFlags& f, int servers, int workers, const Summary& round, const Summary& push,
                 const Summary& pull, const std::string& extra) {
  const double bytes = 2.0 * static_cast<double>(f.floats) * sizeof(float);
  const double gbps = round.median > 0 ? bytes / (round.median * 1e-3) / 1e9 : 0.0;
  std::ostringstream js;
  js << "{\"floats\":" << f.floats << ",\"servers\":" << servers << ",\"workers\":" << workers
     << ",\"colocated\":" << (f.colocated ? "true" : "false") << ",\"rounds\":" << f.rounds
     << ",\"round_ms\":" << Json(round) << ",\"push_ms\":" << Json(push) << ",\"pull_ms\":" << Json(pull)
     << ",\"gbps_per_worker\":" << gbps << ",\"chunk_floats\":" << f.chunk_floats << extra << "}";
  std::cout << js.str() << std::endl;
  if (!f.json_out.empty()) {
    std::ofstream o(f.json_out);
    o << js.str() << "\n";
    if (!o) std::cerr << "shardps bench: could not write " << f.json_out << "\n";
  }
}

Status RunPs(const BenchFlags& f, Result<std::unique_ptr<Transport>> transport, int rank, int size, Rounds* out) {
  if (f.sparse_keys > 0) return RunSparsePs(f, std::move(transport), rank, size, out);
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
  SHARDPS_RETURN_IF_ERROR(transport.status());
  NodeOptions no;
  no.client.request_timeout = std::chrono::milliseconds(f.timeout_ms);
  no.client.codec = f.codec;
  no.server.codec = f.codec;
  no.startup_timeout = std::chrono::milliseconds(f.timeout_ms);
  // Declared before the node, so they outlive it: a round that fails leaves its requests to the
  // transport, which lets go of these buffers only when the node stops.
  std::vector<float> grad, weights;
  SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(*transport), cluster, layout, no));
  const auto timeout = std::chrono::milliseconds(f.timeout_ms);
  out->Reset(f.rounds);
  if (auto* client = node->client()) {
    grad.assign(f.floats, 1.0f);
    weights.assign(f.floats, 0.0f);
    SHARDPS_RETURN_IF_ERROR(client->Barrier().wait(timeout));
    SHARDPS_RETURN_IF_ERROR(TimeRounds(
        f, out, [&](uint64_t step) { return client->Push(0, grad, step).wait(timeout); },
        [&](uint64_t version) { return client->Pull(0, weights, version).wait(timeout); }));
    const worker::WireCounters wire = client->wire();
    out->push_bytes = static_cast<double>(wire.push_bytes);
    out->pull_bytes = static_cast<double>(wire.pull_bytes);
    out->push_float32_bytes = static_cast<double>(wire.push_floats) * 4;
    out->pull_float32_bytes = static_cast<double>(wire.pull_floats) * 4;
    const float expect = ExpectedBenchWeight(f, spec.optimizer.learning_rate, cluster.num_workers());
    // A lossy codec's weights are the float32 ones only within what it drops: the exact check
    // is for float32 rounds; compressed ones check that the servers' weights stayed finite.
    const bool lossy = client->lossy();
    if (lossy) SHARDPS_RETURN_IF_ERROR(client->PullExact(0, weights, static_cast<uint64_t>(f.warmup + f.rounds)).wait(timeout));
    for (uint64_t i = 0; i < f.floats; ++i) {
      if (lossy ? !std::isfinite(weights[i]) : weights[i] != expect) {
        return DataLoss("bench: weight " + std::to_string(i) + " is " + std::to_string(weights[i]) + ", expected " +
                        std::to_string(expect));
      }
    }
  }
  return node->Finish();
}

}  // namespace

Status TimeRounds(const BenchFlags& f, Rounds* out, const std::function<Status(uint64_t step)>& push,
                  const std::function<Status(uint64_t version)>& pull) {
  for (int r = 0; r < f.warmup + f.rounds; ++r) {
    const uint64_t step = static_cast<uint64_t>(r);
    auto t0 = std::chrono::steady_clock::now();
    SHARDPS_RETURN_IF_ERROR(push(step));
    auto t1 = std::chrono::steady_clock::now();
    SHARDPS_RETURN_IF_ERROR(pull(step + 1));
    auto t2 = std::chrono::steady_clock::now();
    if (r >= f.warmup) {
      out->push[r - f.warmup] = Ms(t1 - t0).count();
      out->pull[r - f.warmup] = Ms(t2 - t1).count();
      out->round[r - f.warmup] = Ms(t2 - t0).count();
    }
  }
  return Status::Ok();
}

float ExpectedBenchWeight(const BenchFlags& f, float lr, int workers) {
  // w -= lr * (g + wd * w) with wd = 0, g = the workers' sum: the Sgd optimizer's arithmetic.
  float expect = 0.0f;
  const float sum = static_cast<float>(workers);
  for (int r = 0; r < f.warmup + f.rounds; ++r) expect -= lr * (sum + 0.0f * expect);
  return expect;
}

namespace {

// ---- shardps bench --suite -------------------------------------------------------------------

#if SHARDPS_WITH_MPI
// Peak resident set size of this process since the last ResetPeakRss(), in MiB.
double PeakRssMiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
  }
  return -1;
}
void ResetPeakRss() {
  malloc_trim(0);  // return memory freed by earlier configurations, so it is not counted again
  std::ofstream out("/proc/self/clear_refs");
  out << "5";  // resets VmHWM to the current RSS (Linux >= 4.0)
}

double MemcpyGBps() {
  const size_t n = size_t{256} << 20;
  std::vector<char> a(n, 1), b(n, 2);
  std::vector<double> t;
  for (int r = 0; r < 5; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    std::memcpy(b.data(), a.data(), n);
    auto t1 = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double>(t1 - t0).count());
    a[r] = b[n - 1 - r];  // keep the copies observable
  }
  return n / Summarize(t).median / 1e9;
}

// A barrier that naps instead of spinning: ranks left out of a configuration wait here without
// taking a core from the ranks being measured.
void SleepyBarrier(MPI_Comm comm) {
  MPI_Request r;
  MPI_Ibarrier(comm, &r);
  for (int done = 0;;) {
    MPI_Test(&r, &done, MPI_STATUS_IGNORE);
    if (done) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// Rank 0 streams `count` messages of `bytes` to rank 1, each from and into its own slice of a
// large buffer (so the data comes from memory, not cache), all in flight at once; GB/s.
double P2pGBps(size_t bytes, int count, int rank) {
  std::vector<char> buf(rank <= 1 ? bytes * count : 1, static_cast<char>(rank));
  std::vector<MPI_Request> reqs(count);
  std::vector<double> t;
  for (int rep = 0; rep < 3; ++rep) {
    SleepyBarrier(MPI_COMM_WORLD);
    auto t0 = std::chrono::steady_clock::now();
    if (rank == 0) {
      for (int i = 0; i < count; ++i) MPI_Isend(buf.data() + i * bytes, static_cast<int>(bytes), MPI_BYTE, 1, 7, MPI_COMM_WORLD, &reqs[i]);
      MPI_Waitall(count, reqs.data(), MPI_STATUSES_IGNORE);
      MPI_Recv(nullptr, 0, MPI_BYTE, 1, 8, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else if (rank == 1) {
      for (int i = 0; i < count; ++i) MPI_Irecv(buf.data() + i * bytes, static_cast<int>(bytes), MPI_BYTE, 0, 7, MPI_COMM_WORLD, &reqs[i]);
      MPI_Waitall(count, reqs.data(), MPI_STATUSES_IGNORE);
      MPI_Send(nullptr, 0, MPI_BYTE, 0, 8, MPI_COMM_WORLD);
    }
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return static_cast<double>(bytes) * count / Summarize(t).median / 1e9;
}

struct SuiteConfig {
  const char* name;
  int ranks;
  int servers;
  bool colocated;
};

int SuiteMain(const BenchFlags& base, std::vector<uint64_t> sizes, const std::vector<uint64_t>& sparse_sizes, int rank,
              int size) {
  const SuiteConfig configs[] = {{"1 server + 1 worker", 2, 1, false},
                                 {"2 ranks colocated", 2, 2, true},
                                 {"1 server + 2 workers", 3, 1, false}};
  std::ostringstream rows, sparse_rows;
  bool sparse_first = true;
  std::ostringstream table;
  char line[512];
  std::snprintf(line, sizeof(line), "%-22s %10s %10s %10s %10s %12s %8s %10s %10s %10s\n", "configuration", "floats",
                "round_ms", "push_ms", "pull_ms", "allreduce_ms", "ratio", "srv_MiB", "srv_bound", "wrk_MiB");
  table << line;
  bool first = true;
  for (const SuiteConfig& c : configs) {
    for (uint64_t floats : sizes) {
      BenchFlags f = base;
      f.floats = floats;
      f.servers = c.servers;
      f.colocated = c.colocated;
      if (base.rounds <= 0) f.rounds = floats <= 1000 ? 1000 : floats <= 1'000'000 ? 100 : floats <= 10'000'000 ? 20 : 10;
      MPI_Comm comm;
      MPI_Comm_split(MPI_COMM_WORLD, rank < c.ranks ? 0 : MPI_UNDEFINED, rank, &comm);
      if (comm != MPI_COMM_NULL) {
        const Summary allreduce = Summarize(TimeAllreduce(f, comm));
        Rounds rounds;
        ResetPeakRss();
        Status s = RunPs(f, CreateMpiTransport(comm), rank, c.ranks, &rounds);
        const double rss = PeakRssMiB();
        int ok = s.ok() ? 1 : 0, all_ok = 0;
        MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, comm);
        if (!s.ok()) std::cerr << "shardps bench --suite: rank " << rank << ": " << s.ToString() << "\n";
        if (!all_ok) {
          MPI_Comm_free(&comm);
          MPI_Abort(MPI_COMM_WORLD, 1);  // a failed configuration leaves nothing meaningful to report
        }
        const Summary round = Summarize(MaxOverRanks(rounds.round, comm));
        const Summary push = Summarize(MaxOverRanks(rounds.push, comm));
        const Summary pull = Summarize(MaxOverRanks(rounds.pull, comm));
        // Peak RSS by role: servers are ranks < servers (non-colocated); workers the rest.
        // A colocated rank is also a worker holding its gradient and weight buffers (2 x floats x
        // 4 bytes); its server share is the rest.
        const bool is_server = c.colocated || rank < c.servers;
        const double worker_buffers_mib = 2.0 * static_cast<double>(floats) * 4 / (1 << 20);
        double srv = is_server ? (c.colocated ? rss - worker_buffers_mib : rss) : 0;
        double wrk = (c.colocated || !is_server) ? rss : 0, srv_max = 0, wrk_max = 0;
        MPI_Allreduce(&srv, &srv_max, 1, MPI_DOUBLE, MPI_MAX, comm);
        MPI_Allreduce(&wrk, &wrk_max, 1, MPI_DOUBLE, MPI_MAX, comm);
        // The target's bound: 1.25 x (shard floats x 4 bytes x (1 + optimizer slots)) + 64 MiB;
        // SGD has no slots, and a server's shard is floats / servers (balanced to within a chunk).
        const double shard_mib = static_cast<double>(floats) / (c.colocated ? c.ranks : c.servers) * 4 / (1 << 20);
        const double bound = 1.25 * shard_mib + 64;
        if (rank == 0) {
          std::snprintf(line, sizeof(line), "%-22s %10llu %10.4f %10.4f %10.4f %12.4f %8.2f %10.1f %10.1f %10.1f\n", c.name,
                        static_cast<unsigned long long>(floats), round.median, push.median, pull.median, allreduce.median,
                        round.median / allreduce.median, srv_max, bound, wrk_max);
          table << line;
          rows << (first ? "" : ",") << "{\"config\":\"" << c.name << "\",\"floats\":" << floats
               << ",\"servers\":" << (c.colocated ? c.ranks : c.servers)
               << ",\"workers\":" << (c.colocated ? c.ranks : c.ranks - c.servers)
               << ",\"colocated\":" << (c.colocated ? "true" : "false") << ",\"rounds\":" << f.rounds
               << ",\"round_ms\":" << Json(round) << ",\"push_ms\":" << Json(push) << ",\"pull_ms\":" << Json(pull)
               << ",\"allreduce_ms\":" << Json(allreduce) << ",\"round_over_allreduce\":" << round.median / allreduce.median
               << ",\"server_peak_rss_mib\":" << srv_max << ",\"server_rss_bound_mib\":" << bound
               << ",\"worker_peak_rss_mib\":" << wrk_max << "}";
          first = false;
        }
        MPI_Comm_free(&comm);
      }
      SleepyBarrier(MPI_COMM_WORLD);
    }
    // Sparse rounds next to the dense ones: keys of one float, the same keys every round.
    for (uint64_t keys : sparse_sizes) {
      BenchFlags f = base;
      f.sparse_keys = keys;
      f.sparse_dim = 1;
      f.floats = keys;
      f.servers = c.servers;
      f.colocated = c.colocated;
      if (base.rounds <= 0) f.rounds = 20;
      MPI_Comm comm;
      MPI_Comm_split(MPI_COMM_WORLD, rank < c.ranks ? 0 : MPI_UNDEFINED, rank, &comm);
      if (comm != MPI_COMM_NULL) {
        Rounds rounds;
        Status s = RunPs(f, CreateMpiTransport(comm), rank, c.ranks, &rounds);
        int ok = s.ok() ? 1 : 0, all_ok = 0;
        MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, comm);
        if (!s.ok()) std::cerr << "shardps bench --suite: rank " << rank << ": " << s.ToString() << "\n";
        if (!all_ok) {
          MPI_Comm_free(&comm);
          MPI_Abort(MPI_COMM_WORLD, 1);
        }
        const Summary round = Summarize(MaxOverRanks(rounds.round, comm));
        const Summary push = Summarize(MaxOverRanks(rounds.push, comm));
        const Summary pull = Summarize(MaxOverRanks(rounds.pull, comm));
        if (rank == 0) {
          std::snprintf(line, sizeof(line), "%-22s %10llu %10.4f %10.4f %10.4f   (sparse: keys of one float)\n", c.name,
                        static_cast<unsigned long long>(keys), round.median, push.median, pull.median);
          table << line;
          sparse_rows << (sparse_first ? "" : ",") << "{\"config\":\"" << c.name << "\",\"keys\":" << keys
                      << ",\"row_dim\":1,\"rounds\":" << f.rounds << ",\"round_ms\":" << Json(round)
                      << ",\"push_ms\":" << Json(push) << ",\"pull_ms\":" << Json(pull) << "}";
          sparse_first = false;
        }
        MPI_Comm_free(&comm);
      }
      SleepyBarrier(MPI_COMM_WORLD);
    }
  }
  // Reference bandwidths: MPI point-to-point streaming (ranks 0 -> 1) and single-thread memcpy.
  std::ostringstream p2p;
  table << "\nMPI point-to-point streaming, rank 0 -> rank 1:\n";
  bool pfirst = true;
  for (size_t bytes : {size_t{1} << 20, size_t{4} << 20, size_t{16} << 20, size_t{64} << 20}) {
    const int count = static_cast<int>(std::max<size_t>(4, (size_t{512} << 20) / bytes));
    const double gbps = P2pGBps(bytes, count, rank);
    if (rank == 0) {
      std::snprintf(line, sizeof(line), "  %6zu MiB messages: %6.2f GB/s\n", bytes >> 20, gbps);
      table << line;
      p2p << (pfirst ? "" : ",") << "{\"bytes\":" << bytes << ",\"gbps\":" << gbps << "}";
      pfirst = false;
    }
  }
  double memcpy_gbps = 0;
  if (rank == 0) {
    memcpy_gbps = MemcpyGBps();
    std::snprintf(line, sizeof(line), "single-thread memcpy (256 MiB): %.2f GB/s\n", memcpy_gbps);
    table << line;
    std::cout << table.str() << std::flush;
    const std::string path = base.json_out.empty() ? "bench_suite.json" : base.json_out;
    std::ofstream o(path);
    o << "{\"results\":[" << rows.str() << "],\"sparse\":[" << sparse_rows.str() << "],\"p2p\":[" << p2p.str()
      << "],\"memcpy_gbps\":" << memcpy_gbps
      << ",\"chunk_floats\":" << base.chunk_floats << ",\"ranks\":" << size << "}\n";
    if (!o) std::cerr << "shardps bench --suite: could not write " << path << "\n";
    else std::cout << "wrote " << path << "\n";
  }
  return 0;
}

#endif  // SHARDPS_WITH_MPI

}  // namespace

int RunTcp(const BenchFlags& f, const LaunchPlan& plan, int argc, char** argv);

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
      ("suite", "run the benchmark suite (needs 3 ranks): sizes x {1 server + 1 worker, 2 colocated, 1 server + 2 workers}")
      ("sizes", po::value<std::string>()->default_value("1000,1000000,10000000,40000000"), "--suite: table sizes in floats")
      ("sparse-sizes", po::value<std::string>()->default_value("1000000"), "--suite: sparse rounds of this many keys of one float (0: none)")
      ("sparse", po::value(&f.sparse_keys), "rounds of a sparse table instead: push and pull this many keys")
      ("sparse-dim", po::value(&f.sparse_dim)->default_value(f.sparse_dim), "--sparse: floats per row")
      ("sparse-fill", po::value(&f.sparse_fill), "--sparse: push new keys, --sparse at a time, until the servers hold this many rows; report their memory")
      ("sparse-optimizer", po::value(&f.sparse_optimizer)->default_value(f.sparse_optimizer), "--sparse: the table's optimizer")
      ("codec", po::value(&f.codec)->default_value(f.codec), "how pushes and pull replies travel: identity, fp16, int8, sign, topk, randomk")
      ("json-out", po::value(&f.json_out), "also write the JSON object to this file");
  LaunchFlags launch;
  po::options_description launch_desc("how the processes of the job find each other");
  AddLaunchOptions(&launch_desc, &launch);
  desc.add(launch_desc);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "shardps bench: " << e.what() << " (shardps bench --help lists the flags)\n";
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
  else if (vm.count("sparse") && (f.sparse_keys < 1 || f.sparse_keys > 100'000'000)) bad = "--sparse must be in [1, 100000000] keys";
  else if (f.sparse_dim < 1 || f.sparse_dim > 4096) bad = "--sparse-dim must be in [1, 4096]";
  else if (f.sparse_keys > 0 && (vm.count("suite") || f.colocated)) bad = "--sparse runs alone, without --suite or --colocated";
  else if (f.sparse_fill > 0 && f.sparse_keys == 0) bad = "--sparse-fill needs --sparse (keys a round)";
  else if (f.sparse_fill > 1'000'000'000) bad = "--sparse-fill must be at most 1000000000 rows";
  else if (auto c = LookupCodec(f.codec); !c.ok()) bad = "--codec: " + c.status().message();
  else if (f.codec != kIdentityCodec && (f.sparse_keys > 0 || vm.count("suite"))) bad = "--codec applies to the dense rounds (not --sparse or --suite)";
  else if (!FindOptimizer(f.sparse_optimizer) || f.sparse_optimizer == "sum") {
    bad = "--sparse-optimizer: '" + f.sparse_optimizer + "' is not one of " + RegisteredOptimizerNames() + " (but sum)";
  }
  if (f.sparse_keys > 0) {
    f.floats = f.sparse_keys * f.sparse_dim;  // what the round moves each way, for the GB/s figure
    f.allreduce = false;
  }
  // A list of sizes, each in [1, 2^31 - 1]; "0" alone is an empty list where `zero_empty`.
  auto parse_sizes = [&bad](const std::string& flag, const std::string& text, bool zero_empty) {
    std::vector<uint64_t> out;
    if (zero_empty && text == "0") return out;
    std::stringstream ss(text);
    for (std::string item; std::getline(ss, item, ',');) {
      uint64_t v = 0;
      auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
      if (ec != std::errc() || p != item.data() + item.size() || v < 1 || v > 0x7FFFFFFF) {
        if (bad.empty()) bad = flag + ": '" + item + "' is not a size in [1, 2147483647]";
        break;
      }
      out.push_back(v);
    }
    return out;
  };
  const std::vector<uint64_t> sizes = parse_sizes("--sizes", vm["sizes"].as<std::string>(), false);
  const std::vector<uint64_t> sparse_sizes = parse_sizes("--sparse-sizes", vm["sparse-sizes"].as<std::string>(), true);
  if (!bad.empty()) {
    std::cerr << "shardps bench: " << bad << "\n";
    return 2;
  }

  const Environment env = Environment::FromProcess();  // read once, here at the edge
  if (RequestedServers(launch, env) >= 0 && vm["servers"].defaulted()) f.servers = RequestedServers(launch, env);
  auto plan = ResolveLaunch(launch, env, f.servers);
  if (!plan.ok()) {
    std::cerr << "shardps bench: " << plan.status().message() << "\n";
    return 2;
  }
  if (plan->tcp) {
    if (vm.count("suite") || f.colocated) {
      std::cerr << "shardps bench: --suite and --colocated run under mpirun\n";
      return 2;
    }
    return RunTcp(f, *plan, argc, argv);
  }
#if !SHARDPS_WITH_MPI
  std::cerr << "shardps bench: this shardps was built without MPI (SHARDPS_WITH_MPI=OFF): use --transport tcp\n";
  return 2;
#else
  int rank = 0, size = 0;
  if (!InitMpi(&argc, &argv, "shardps bench", &rank, &size, MpiWorkload::kCommunicationOnly)) return 1;
  if (vm.count("suite")) {
    if (size < 3) {
      if (rank == 0) std::cerr << "shardps bench --suite needs 3 ranks (mpirun -np 3), got " << size << "\n";
      MPI_Finalize();
      return 2;
    }
    if (vm["rounds"].defaulted()) f.rounds = 0;  // chosen per size
    int rc = SuiteMain(f, sizes, sparse_sizes, rank, size);
    MPI_Finalize();
    return rc;
  }

  Summary allreduce;
  if (f.allreduce) allreduce = Summarize(TimeAllreduce(f, MPI_COMM_WORLD));

  Rounds rounds;
  Status s = RunPs(f, CreateMpiTransport(MPI_COMM_WORLD), rank, size, &rounds);
  // Agree on success before collective reductions so a failed rank cannot leave others waiting.
  int ok = s.ok() ? 1 : 0, all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!s.ok()) std::cerr << "shardps bench: rank " << rank << ": " << s.ToString() << "\n";
  if (!all_ok) {
    MPI_Finalize();
    return 1;
  }
  const auto wire = MaxOverRanks({rounds.push_bytes, rounds.pull_bytes, rounds.push_float32_bytes, rounds.pull_float32_bytes},
                                 MPI_COMM_WORLD);
  const auto round = Summarize(MaxOverRanks(rounds.round, MPI_COMM_WORLD));
  const auto push = Summarize(MaxOverRanks(rounds.push, MPI_COMM_WORLD));
  const auto pull = Summarize(MaxOverRanks(rounds.pull, MPI_COMM_WORLD));
  const int workers = f.colocated ? size : size - f.servers;
  const int servers = f.colocated ? size : f.servers;
  if (rank == 0) {
    std::string extra;
    if (f.allreduce) extra = ",\"allreduce_ms\":" + Json(allreduce) + ",\"allreduce_ranks\":" + std::to_string(size);
    if (f.sparse_keys > 0) {
      char rss[96];
      std::snprintf(rss, sizeof(rss), "%.1f,\"server0_peak_rss_mib\":%.1f", rounds.server_rss_mib, rounds.server_peak_rss_mib);
      extra += ",\"sparse_keys\":" + std::to_string(f.sparse_keys) + ",\"row_dim\":" + std::to_string(f.sparse_dim) +
               ",\"optimizer\":\"" + f.sparse_optimizer + "\",\"sparse_fill\":" + std::to_string(f.sparse_fill) +
               ",\"server0_rows\":" + std::to_string(rounds.sparse_rows) + ",\"server0_sparse_bytes\":" +
               std::to_string(rounds.sparse_bytes) + ",\"server0_rss_mib\":" + rss;
    }
    PrintResult(f, servers, workers, round, push, pull, extra + WireJson(f, wire) + ",\"transport\":\"mpi\"");
  }
  MPI_Finalize();
  return 0;
#endif  // SHARDPS_WITH_MPI
}

// The same rounds over TCP between processes started on their own; the first worker reports its
// own round times (with one worker, the round; with more, one worker's view of it).
int RunTcp(const BenchFlags& f, const LaunchPlan& plan, int argc, char** argv) {
  const auto t0 = std::chrono::steady_clock::now();
  auto job = StartJob(plan, &argc, &argv, "shardps bench", f.Describe());
  if (!job.ok()) {
    std::cerr << "shardps bench: " << job.status().ToString() << "\n";
    return 1;
  }
  const double setup_ms = Ms(std::chrono::steady_clock::now() - t0).count();
  const int rank = (*job)->rank(), size = (*job)->size();
  Rounds rounds;
  Status s = RunPs(f, (*job)->TakeTransport(), rank, size, &rounds);
  if (!s.ok()) {
    std::cerr << "shardps bench: rank " << rank << ": " << s.ToString() << "\n";
    return 1;
  }
  if (rank == f.servers) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.3f", setup_ms);
    PrintResult(f, f.servers, size - f.servers, Summarize(rounds.round), Summarize(rounds.push), Summarize(rounds.pull),
                std::string(",\"setup_ms\":") + buf + ",\"authenticated\":" + (plan.insecure ? "false" : "true") +
                    (f.sparse_keys > 0 ? ",\"sparse_keys\":" + std::to_string(f.sparse_keys) + ",\"row_dim\":" +
                                             std::to_string(f.sparse_dim)
                                       : std::string()) +
                    WireJson(f, {rounds.push_bytes, rounds.pull_bytes, rounds.push_float32_bytes, rounds.pull_float32_bytes}) +
                    ",\"transport\":\"tcp\"");
  }
  return 0;
}

}  // namespace shardps::tools
