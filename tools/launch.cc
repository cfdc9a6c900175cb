#include "launch.h"

#if SHARDPS_WITH_MPI
#include <mpi.h>
#endif
#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <iostream>

#if SHARDPS_WITH_MPI
#include "mpi_env.h"
#endif
#include "shardps/net/auth.h"
#include "shardps/base/cluster.h"
#include "shardps/base/digest.h"
#include "shardps/net/frame.h"
#if SHARDPS_WITH_MPI
#include "shardps/net/mpi_transport.h"
#endif
#include "shardps/net/tcp_transport.h"

extern char** environ;

namespace shardps::tools {

namespace po = boost::program_options;

void AddLaunchOptions(po::options_description* desc, LaunchFlags* f) {
  desc->add_options()
      ("transport", po::value(&f->transport), "mpi (default: started by mpirun) or tcp (processes started on their own)")
      ("coordinator", po::value(&f->coordinator), "tcp: HOST:PORT where server 0 listens and every process meets")
      ("role", po::value(&f->role), "tcp: server or worker")
      ("rank", po::value(&f->rank), "tcp: this process's 0-based index within its role")
      ("num-servers", po::value(&f->num_servers), "tcp: servers in the job")
      ("num-workers", po::value(&f->num_workers), "tcp: workers in the job")
      ("secret-file", po::value(&f->secret_file), "tcp: shared secret (>= 32 bytes, mode 600; shardps keygen --out FILE)")
      ("insecure", po::bool_switch(&f->insecure), "tcp: no authentication (anyone who can connect can join or overwrite the model)")
      ("listen", po::value(&f->listen), "tcp: address this process listens on for its peers (default 127.0.0.1)")
      ("peer-timeout", po::value(&f->peer_timeout), "tcp: seconds without a heartbeat before a peer is declared lost (default 60)")
      ("setup-timeout", po::value(&f->setup_timeout), "tcp: seconds to wait for every process to join (default 300)");
}

Environment Environment::FromProcess() {
  Environment e;
  for (char** p = environ; p && *p; ++p) {
    const std::string kv = *p;
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) continue;
    const std::string k = kv.substr(0, eq);
    if (k.rfind("SHARDPS_", 0) == 0 || k.rfind("SLURM_", 0) == 0 || k == "OMPI_COMM_WORLD_SIZE") e.vars[k] = kv.substr(eq + 1);
  }
  return e;
}

namespace {

Result<int64_t> ParseInt(const std::string& what, const std::string& text) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size()) return InvalidArgument(what + ": '" + text + "' is not an integer");
  return v;
}

Result<double> ParseSeconds(const std::string& what, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0' || !(v > 0) || v > 1e6) return InvalidArgument(what + ": '" + text + "' is not a positive number of seconds");
  return v;
}

#if SHARDPS_WITH_MPI
class MpiJob final : public Job {
 public:
  MpiJob(int rank, int size) : rank_(rank), size_(size) {}
  ~MpiJob() override { MPI_Finalize(); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool Agree(bool ok) override { return AgreeFinal(ok); }
  bool AgreeFinal(bool ok) override {
    int mine = ok ? 1 : 0, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all == 1;
  }
  Result<int64_t> Max(int64_t value) override {
    int64_t out = 0;
    MPI_Allreduce(&value, &out, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    return out;
  }
  Result<std::vector<int64_t>> Gather(int64_t value) override {
    std::vector<int64_t> all(rank_ == 0 ? size_ : 0);
    MPI_Gather(&value, 1, MPI_INT64_T, all.data(), 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
    return all;
  }
  Result<std::unique_ptr<Transport>> TakeTransport() override { return CreateMpiTransport(MPI_COMM_WORLD); }
  void Fail() override { MPI_Abort(MPI_COMM_WORLD, 1); }  // mpirun ends every rank

 private:
  int rank_, size_;
};
#endif  // SHARDPS_WITH_MPI

// Hands frames that arrived during the agreement (a peer that already started its Node may send
// its HELLO before this process has the agreement's answer) to the Node's first Poll.
class StashingTransport final : public ForwardingTransport {
 public:
  StashingTransport(std::unique_ptr<Transport> inner, std::vector<IncomingFrame> stash)
      : ForwardingTransport(std::move(inner)), stash_(std::move(stash)) {}
  Status Poll(std::vector<IncomingFrame>* frames, Clock::time_point deadline) override {
    if (!stash_.empty()) {
      for (auto& f : stash_) frames->push_back(std::move(f));
      stash_.clear();
      deadline = Clock::now();  // make progress, do not wait
    }
    return ForwardingTransport::Poll(frames, deadline);
  }

 private:
  std::vector<IncomingFrame> stash_;
};

// Agreement over the TCP transport before the Node owns it, in JOB_AGREE frames (protocol.md):
// every process sends its value to rank 0, which answers every one with the reduction. A lost
// peer ends it with that peer's name.
class TcpJob final : public Job {
 public:
  TcpJob(std::unique_ptr<Transport> t, const LaunchPlan& plan, Cluster cluster, std::string program)
      : t_(std::move(t)), plan_(plan), cluster_(std::move(cluster)), program_(std::move(program)) {}
  int rank() const override { return plan_.rank; }
  int size() const override { return plan_.size; }
  bool Agree(bool ok) override {
    auto r = Reduce(ok ? 1 : 0, /*max=*/false);
    if (!r.ok()) {
      std::cerr << program_ << ": " << cluster_.Describe(plan_.rank) << ": " << r.status().ToString() << std::endl;
      return false;
    }
    return *r == 1;
  }
  bool AgreeFinal(bool ok) override { return ok; }
  Result<int64_t> Max(int64_t value) override { return Reduce(value, /*max=*/true); }
  Result<std::vector<int64_t>> Gather(int64_t value) override {
    std::vector<int64_t> all(plan_.rank == 0 ? plan_.size : 0);
    if (plan_.rank == 0) all[0] = value;
    SHARDPS_RETURN_IF_ERROR(Reduce(value, /*max=*/true, plan_.rank == 0 ? &all : nullptr).status());
    return all;
  }
  Result<std::unique_ptr<Transport>> TakeTransport() override {
    if (!t_) return FailedPrecondition("transport already taken");
    if (stash_.empty()) return std::move(t_);
    return std::unique_ptr<Transport>(new StashingTransport(std::move(t_), std::move(stash_)));
  }
  void Fail() override {}

 private:
  // An agreement this process cannot complete ends the job for everyone: the others learn why
  // (an abort carrying the reason) instead of only seeing this process vanish.
  Result<int64_t> Reduce(int64_t value, bool max, std::vector<int64_t>* all = nullptr) {
    Result<int64_t> r = ReduceOnce(value, max, all);
    if (!r.ok() && t_) {
      t_->Abort(cluster_.Describe(plan_.rank) + ": " + r.status().ToString());
      const Clock::time_point flush_by = Clock::now() + std::chrono::seconds(1);
      std::vector<IncomingFrame> frames;
      while (!t_->Idle() && Clock::now() < flush_by) {
        frames.clear();
        (void)t_->Poll(&frames, Clock::now() + std::chrono::milliseconds(10));
      }
    }
    return r;
  }

  // `all` (rank 0 only): every rank's value, by rank.
  Result<int64_t> ReduceOnce(int64_t value, bool max, std::vector<int64_t>* all) {
    if (!t_) return FailedPrecondition("the transport belongs to the node now");
    const uint64_t seq = ++seq_;
    const Clock::time_point deadline = Clock::now() + plan_.setup_timeout;
    const wire::AgreeReduce reduce = max ? wire::AGREE_MAX : wire::AGREE_MIN;
    auto send = [&](int dest, int64_t v) {
      wire::Header h;
      h.set_op(wire::JOB_AGREE);
      h.set_sender(plan_.rank);
      h.set_agree_round(seq);
      h.set_agree_reduce(reduce);
      h.set_agree_value(v);
      return t_->Send(dest, EncodeFrame(h, {}), {}, nullptr);
    };
    int64_t acc = value;
    int waiting = plan_.rank == 0 ? plan_.size - 1 : 1;
    std::vector<bool> heard(plan_.size, false);
    std::vector<IncomingFrame> frames;
    if (plan_.rank != 0) SHARDPS_RETURN_IF_ERROR(send(0, value));
    // Frames set aside earlier may belong to this agreement (a fast rank's next value arriving
    // while rank 0 still flushed the previous answers): look at them first.
    frames = std::move(stash_);
    stash_.clear();
    bool from_stash = true;
    while (waiting > 0) {
      if (!from_stash) {
        if (Clock::now() >= deadline) {
          std::string missing;
          for (int r = 1; r < plan_.size; ++r) if (plan_.rank == 0 && !heard[r]) missing += " " + cluster_.Describe(r);
          return DeadlineExceeded("job agreement " + std::to_string(seq) + " not reached within " +
                                  std::to_string(plan_.setup_timeout.count()) + " ms" +
                                  (missing.empty() ? std::string(" (waiting for rank 0)") : "; waiting for" + missing));
        }
        frames.clear();
        SHARDPS_RETURN_IF_ERROR(t_->Poll(&frames, std::min(deadline, Clock::now() + std::chrono::milliseconds(100))));
      }
      from_stash = false;
      for (auto& in : frames) {
        // Only the peers this process waits for matter now: rank 0 for the others, everyone for
        // rank 0. Another rank may already have its answer and be gone (a failed agreement).
        if (!in.error.ok() && (plan_.rank == 0 || in.source == 0)) {
          return Unavailable(cluster_.Describe(in.source) + " lost: " + in.error.message());
        }
        if (!in.error.ok()) {
          stash_.push_back(std::move(in));
          continue;
        }
        auto f = DecodeFrame(in.frame, FrameLimits{});
        if (!f.ok() || f->header.op() != wire::JOB_AGREE || f->header.agree_round() != seq || f->header.sender() != in.source ||
            in.payload_bytes != 0 || (plan_.rank != 0 && in.source != 0) || (plan_.rank == 0 && heard[in.source])) {
          stash_.push_back(std::move(in));  // for the Node (it validates everything)
          continue;
        }
        if (f->header.agree_reduce() != reduce) {  // the same program takes the same rounds: a bug or a stranger
          return FailedPrecondition(cluster_.Describe(in.source) + " takes part in job agreement " + std::to_string(seq) +
                                    " as " + wire::AgreeReduce_Name(f->header.agree_reduce()) + ", this process as " +
                                    wire::AgreeReduce_Name(reduce));
        }
        heard[in.source] = true;
        const int64_t v = f->header.agree_value();
        if (all) (*all)[in.source] = v;
        acc = plan_.rank == 0 ? (max ? std::max(acc, v) : std::min(acc, v)) : v;
        --waiting;
      }
    }
    if (plan_.rank == 0) {
      for (int r = 1; r < plan_.size; ++r) SHARDPS_RETURN_IF_ERROR(send(r, acc));
      // Written out before going on: after a failed agreement this process exits next, and the
      // answers must reach everyone first. Frames arriving meanwhile are kept for the node.
      while (!t_->Idle() && Clock::now() < deadline) {
        frames.clear();
        SHARDPS_RETURN_IF_ERROR(t_->Poll(&frames, Clock::now() + std::chrono::milliseconds(10)));
        // A peer that got its answer may exit at once (the agreement failed) or start its node;
        // whatever arrives, a loss included, is for the node if there is one.
        for (auto& in : frames) stash_.push_back(std::move(in));
      }
    }
    return acc;
  }

  std::unique_ptr<Transport> t_;
  LaunchPlan plan_;
  Cluster cluster_;  // names ranks in messages
  std::string program_;
  uint64_t seq_ = 0;
  std::vector<IncomingFrame> stash_;
};

}  // namespace

int RequestedServers(const LaunchFlags& f, const Environment& env) {
  if (f.num_servers >= 0) return f.num_servers;
  if (const std::string* v = env.Get("SHARDPS_NUM_SERVERS")) {
    auto n = ParseInt("SHARDPS_NUM_SERVERS", *v);
    if (n.ok() && *n >= 0 && *n <= 4096) return static_cast<int>(*n);
  }
  return -1;
}

Result<LaunchPlan> ResolveLaunch(const LaunchFlags& f, const Environment& env, int config_servers) {
  LaunchPlan p;
  if (const std::string* w = env.Get("OMPI_COMM_WORLD_SIZE")) {
    p.under_mpirun = true;
    p.mpi_world_hint = std::atoi(w->c_str());
  }
  std::string transport = f.transport;
  if (transport.empty()) transport = env.Get("SHARDPS_TRANSPORT") ? *env.Get("SHARDPS_TRANSPORT") : "mpi";
  if (transport != "mpi" && transport != "tcp") return InvalidArgument("--transport must be mpi or tcp, got '" + transport + "'");
  p.tcp = transport == "tcp";
  const bool tcp_flags = !f.coordinator.empty() || !f.role.empty() || f.rank >= 0 || f.num_workers >= 0 ||
                         !f.secret_file.empty() || f.insecure || !f.listen.empty() || f.peer_timeout > 0 || f.setup_timeout > 0;
  if (!p.tcp) {
    if (tcp_flags) return InvalidArgument("--coordinator, --role, --rank, --num-workers, --secret-file, --insecure, --listen and the timeouts belong to --transport tcp");
    return p;
  }
  if (p.under_mpirun) return InvalidArgument("--transport tcp was asked for, but this process was started by mpirun");
  auto text = [&](const std::string& flag, const char* var) -> std::string {
    if (!flag.empty()) return flag;
    return env.Get(var) ? *env.Get(var) : std::string();
  };
  auto number = [&](int flag, const char* var, const char* what) -> Result<int64_t> {
    if (flag >= 0) return flag;
    if (const std::string* v = env.Get(var)) return ParseInt(std::string(var), *v);
    return InvalidArgument(std::string("--transport tcp needs ") + what);
  };
  const std::string coord = text(f.coordinator, "SHARDPS_COORDINATOR");
  if (coord.empty()) return InvalidArgument("--transport tcp needs --coordinator HOST:PORT (or SHARDPS_COORDINATOR)");
  SHARDPS_RETURN_IF_ERROR(ParseHostPort(coord, &p.host, &p.port).WithContext("--coordinator"));
  // Servers: the flag, SHARDPS_NUM_SERVERS, or the run's config.
  int64_t servers = f.num_servers;
  if (servers < 0 && env.Get("SHARDPS_NUM_SERVERS")) {
    SHARDPS_ASSIGN_OR_RETURN(servers, ParseInt("SHARDPS_NUM_SERVERS", *env.Get("SHARDPS_NUM_SERVERS")));
  }
  if (servers < 0) servers = config_servers;
  if (servers < 1) return InvalidArgument("--transport tcp needs --num-servers S >= 1 (or SHARDPS_NUM_SERVERS)");
  if (config_servers >= 0 && servers != config_servers) {
    return InvalidArgument("--num-servers " + std::to_string(servers) + " disagrees with the config's servers " + std::to_string(config_servers));
  }
  p.num_servers = static_cast<int>(servers);
  const std::string role = text(f.role, "SHARDPS_ROLE");
  if (role.empty() && f.rank < 0 && !env.Get("SHARDPS_RANK") && env.Get("SLURM_PROCID") && env.Get("SLURM_NTASKS")) {
    // One task per process under srun: the first S tasks serve, the rest work.
    SHARDPS_ASSIGN_OR_RETURN(int64_t procid, ParseInt("SLURM_PROCID", *env.Get("SLURM_PROCID")));
    SHARDPS_ASSIGN_OR_RETURN(int64_t ntasks, ParseInt("SLURM_NTASKS", *env.Get("SLURM_NTASKS")));
    if (ntasks <= servers) return InvalidArgument("SLURM_NTASKS " + std::to_string(ntasks) + " leaves no workers beside " + std::to_string(servers) + " servers");
    if (procid < 0 || procid >= ntasks) return InvalidArgument("SLURM_PROCID " + std::to_string(procid) + " outside SLURM_NTASKS " + std::to_string(ntasks));
    if (f.num_workers >= 0 && f.num_workers != ntasks - servers) return InvalidArgument("--num-workers disagrees with SLURM_NTASKS - servers");
    p.rank = static_cast<int>(procid);
    p.size = static_cast<int>(ntasks);
  } else {
    if (role != "server" && role != "worker") return InvalidArgument("--transport tcp needs --role server or worker (or SHARDPS_ROLE), got '" + role + "'");
    SHARDPS_ASSIGN_OR_RETURN(int64_t index, number(f.rank, "SHARDPS_RANK", "--rank R (or SHARDPS_RANK)"));
    SHARDPS_ASSIGN_OR_RETURN(int64_t workers, number(f.num_workers, "SHARDPS_NUM_WORKERS", "--num-workers W (or SHARDPS_NUM_WORKERS)"));
    if (workers < 1 || workers > 4096 || servers > 4096) return InvalidArgument("need 1..4096 workers and servers");
    const int64_t within = role == "server" ? servers : workers;
    if (index < 0 || index >= within) return InvalidArgument("--rank " + std::to_string(index) + " outside 0.." + std::to_string(within - 1) + " for a " + role);
    p.rank = static_cast<int>(role == "server" ? index : servers + index);
    p.size = static_cast<int>(servers + workers);
  }
  p.secret_file = text(f.secret_file, "SHARDPS_SECRET_FILE");
  p.insecure = f.insecure || (env.Get("SHARDPS_INSECURE") && *env.Get("SHARDPS_INSECURE") == "1");
  if (p.insecure && !p.secret_file.empty()) return InvalidArgument("give --secret-file or --insecure, not both");
  if (!p.insecure && p.secret_file.empty()) {
    return InvalidArgument("--transport tcp needs --secret-file FILE (shardps keygen --out FILE writes one); --insecure runs without authentication");
  }
  const std::string listen = text(f.listen, "SHARDPS_LISTEN");
  if (!listen.empty()) p.listen = listen;
  if (f.peer_timeout > 1e6 || f.setup_timeout > 1e6) return InvalidArgument("--peer-timeout and --setup-timeout are at most 1000000 seconds");
  if (f.peer_timeout > 0) {
    p.peer_timeout = std::chrono::milliseconds(static_cast<int64_t>(f.peer_timeout * 1000));
  } else if (const std::string* v = env.Get("SHARDPS_PEER_TIMEOUT")) {
    SHARDPS_ASSIGN_OR_RETURN(double s, ParseSeconds("SHARDPS_PEER_TIMEOUT", *v));
    p.peer_timeout = std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
  }
  if (f.setup_timeout > 0) p.setup_timeout = std::chrono::milliseconds(static_cast<int64_t>(f.setup_timeout * 1000));
  if (p.peer_timeout.count() < 10) return InvalidArgument("--peer-timeout must be at least 0.01 s");
  if (p.setup_timeout.count() < 1) return InvalidArgument("--setup-timeout must be at least 0.001 s");
  return p;
}

JobTag MakeJobTag(const LaunchPlan& plan, const std::string& program, const std::string& configuration) {
  Sha256 h;
  const std::string head = "shardps job tag 1\n" + program + "\n" + std::to_string(plan.size) + "\n" + plan.host + ":" +
                           std::to_string(plan.port) + "\n";
  h.Update(head.data(), head.size());
  h.Update(configuration.data(), configuration.size());
  const std::string hex = h.HexDigest();
  JobTag tag{};
  for (size_t i = 0; i < tag.size(); ++i) tag[i] = static_cast<uint8_t>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
  return tag;
}

Result<std::unique_ptr<Job>> StartJob(const LaunchPlan& plan, int* argc, char*** argv, const std::string& program,
                                      const std::string& configuration) {
  if (!plan.tcp) {
#if SHARDPS_WITH_MPI
    int rank = 0, size = 0;
    if (!InitMpi(argc, argv, program.c_str(), &rank, &size, MpiWorkload::kTraining)) return Unavailable("MPI could not be initialised");
    return std::unique_ptr<Job>(new MpiJob(rank, size));
#else
    return FailedPrecondition(program + " was built without MPI (SHARDPS_WITH_MPI=OFF): start each process with "
                              "--transport tcp (docs/deployment.md)");
#endif
  }
  TcpOptions o;
  o.host = plan.host;
  o.port = plan.port;
  o.listen = plan.listen;
  o.rank = plan.rank;
  o.size = plan.size;
  o.insecure = plan.insecure;
  o.job_tag = MakeJobTag(plan, program, configuration);
  o.setup_timeout = plan.setup_timeout;
  o.peer_timeout = plan.peer_timeout;
  o.handshake_timeout = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(10000), plan.peer_timeout);
  SHARDPS_ASSIGN_OR_RETURN(Cluster cluster, Cluster::Create(plan.size, plan.rank, {.num_servers = plan.num_servers}));
  const std::string me = cluster.Describe(plan.rank);
  o.on_warning = [program, me](const std::string& m) { std::cerr << program << ": " << me << ": warning: " << m << std::endl; };
  if (!plan.insecure) {
    SHARDPS_ASSIGN_OR_RETURN(o.secret, LoadSecret(plan.secret_file));
  }
  SHARDPS_ASSIGN_OR_RETURN(auto t, CreateTcpTransport(o));
  return std::unique_ptr<Job>(new TcpJob(std::move(t), plan, std::move(cluster), program));
}

}  // namespace shardps::tools
