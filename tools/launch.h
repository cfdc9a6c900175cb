// How a shardps process finds the rest of its job: under mpirun (the MPI transport), or started
// on its own (the TCP transport, by hand, by scripts/launch_local.sh or by Slurm's srun).
//
//   LaunchFlags lf;  AddLaunchOptions(&desc, &lf);   // --transport, --coordinator, --role, ...
//   ... parse ...
//   SHARDPS_ASSIGN_OR_RETURN(LaunchPlan plan, ResolveLaunch(lf, Environment::FromProcess(), config_servers));
//   SHARDPS_ASSIGN_OR_RETURN(auto job, StartJob(plan, &argc, &argv));   // MPI_Init or the TCP rendezvous
//   bool all_ok = job->Agree(my_status.ok());                         // before the Node starts
//   SHARDPS_ASSIGN_OR_RETURN(auto transport, job->TakeTransport());
//
// The environment is read once, here at the program's edge (Environment::FromProcess).
// Thread safety: one thread.
#pragma once

#include <boost/program_options.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "shardps/net/auth.h"
#include "shardps/base/status.h"
#include "shardps/net/transport.h"

namespace shardps::tools {

struct LaunchFlags {
  std::string transport;    // mpi (default) or tcp
  std::string coordinator;  // HOST:PORT where server 0 listens
  std::string role;         // server or worker
  int rank = -1;            // index within the role
  int num_servers = -1;
  int num_workers = -1;
  std::string secret_file;
  bool insecure = false;
  std::string listen;        // where this process listens (TCP; default 127.0.0.1)
  double peer_timeout = -1;  // seconds
  double setup_timeout = -1;
};

void AddLaunchOptions(boost::program_options::options_description* desc, LaunchFlags* f);

// The variables a launcher may set, captured once.
struct Environment {
  std::map<std::string, std::string> vars;
  static Environment FromProcess();
  const std::string* Get(const std::string& name) const {
    auto it = vars.find(name);
    return it == vars.end() || it->second.empty() ? nullptr : &it->second;
  }
};

struct LaunchPlan {
  bool tcp = false;
  bool under_mpirun = false;  // OMPI_COMM_WORLD_SIZE is set
  int mpi_world_hint = 1;
  // TCP only:
  std::string host;
  uint16_t port = 0;
  std::string listen = "127.0.0.1";
  int rank = 0;  // global: servers are 0..S-1, workers S..S+W-1
  int size = 1;
  int num_servers = 0;
  std::string secret_file;
  bool insecure = false;
  std::chrono::milliseconds peer_timeout{60000};
  std::chrono::milliseconds setup_timeout{300000};
};

// The server count a TCP launch asks for (--num-servers, else SHARDPS_NUM_SERVERS), -1 if none:
// the run's config follows it.
int RequestedServers(const LaunchFlags& f, const Environment& env);

// Flags win over SHARDPS_* variables, which win over Slurm's SLURM_PROCID / SLURM_NTASKS.
// `config_servers` is the server count of the run's config (train), or -1.
Result<LaunchPlan> ResolveLaunch(const LaunchFlags& f, const Environment& env, int config_servers);

// The processes of one job and what they agree on before the Node starts.
class Job {
 public:
  virtual ~Job() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Every process passes its outcome; all learn whether every one succeeded. Each process must
  // call it the same number of times, whatever happened. Only before TakeTransport().
  virtual bool Agree(bool ok) = 0;
  // The largest `value` over all processes (only before TakeTransport()).
  virtual Result<int64_t> Max(int64_t value) = 0;
  // Every process's `value`, indexed by rank, on rank 0 (empty elsewhere); only before
  // TakeTransport(). The job agreement compares the ranks' configurations with it.
  virtual Result<std::vector<int64_t>> Gather(int64_t value) = 0;
  virtual Result<std::unique_ptr<Transport>> TakeTransport() = 0;
  // After TakeTransport: this process failed. MPI ends the whole job (MPI_Abort); over TCP the
  // process exits and its peers see it lost.
  virtual void Fail() = 0;
  // Under MPI the final outcome is agreed (every rank exits non-zero if one failed); over TCP
  // peers have learned of a failure through the lost connection already.
  virtual bool AgreeFinal(bool ok) = 0;
};

// MPI_Init (MPI) or the rendezvous (TCP). `program` prefixes messages. `configuration` is the
// text every process of the job must share (the run's config, the bench's flags): over TCP its
// digest is the job tag (auth.h), so a process of this job holding another secret ends the
// rendezvous at once instead of being taken for a stranger.
Result<std::unique_ptr<Job>> StartJob(const LaunchPlan& plan, int* argc, char*** argv, const std::string& program,
                                      const std::string& configuration);

// The job tag of a configuration: the first 16 bytes of SHA-256 over the program, the world
// size, the coordinator and the configuration text.
JobTag MakeJobTag(const LaunchPlan& plan, const std::string& program, const std::string& configuration);

}  // namespace shardps::tools
