// shardps._core: the pybind11 extension behind the `shardps` Python package (python/shardps).
// A Job object (the package makes one per process): init() (MPI_Init under mpirun, or the TCP settings), declare() the tables
// (optimizer "sum", so a push_pull answers the sum of that step's pushes), start() the Node, then
// push_pull (in place on a float32 C-contiguous numpy array), barrier and shutdown. The
// environment is read by the Python side only (shardps/__init__.py); this file gets plain values.
// Every blocking call runs without the GIL, in slices that check for signals (Ctrl-C).
// Errors: shardps.Error (a RuntimeError) carrying the Status message and its code name;
// shardps.TimeoutError (also a builtin TimeoutError) for DEADLINE_EXCEEDED.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#if SHARDPS_WITH_MPI
#include <mpi.h>

#include "mpi_env.h"
#include "shardps/net/mpi_transport.h"
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shardps/base/cluster.h"
#include "shardps/base/digest.h"
#include "shardps/base/layout.h"
#include "shardps/base/status.h"
#include "shardps/net/auth.h"
#include "shardps/net/tcp_transport.h"
#include "shardps/node.h"
#include "shardps/storage/checkpoint_registry.h"
#include "shardps/storage/file_system.h"
#include "shardps/storage/safetensors.h"
#include "shardps/worker/checkpoint_driver.h"

namespace py = pybind11;
using namespace std::chrono_literals;

namespace shardps::python {
namespace {

using Ms = std::chrono::milliseconds;

// A Status that is not OK, thrown to Python through the translator below.
struct StatusError {
  Status status;
};
[[noreturn]] void Raise(Status s) { throw StatusError{std::move(s)}; }
void Check(Status s) {
  if (!s.ok()) Raise(std::move(s));
}

PyObject* g_error = nullptr;    // shardps.Error
PyObject* g_timeout = nullptr;  // shardps.TimeoutError

struct Config {
  std::string transport;  // "mpi" or "tcp"
  int num_servers = 1;
  // TCP: the global rank (servers 0..S-1, workers S..) and world size, the coordinator, the secret.
  int rank = -1;
  int size = -1;
  std::string host;
  int port = 0;
  std::string listen = "127.0.0.1";
  std::string secret_file;
  bool insecure = false;
  Ms peer_timeout{60000};
  Ms setup_timeout{300000};
  Ms timeout{60000};          // every wait's default deadline; also the servers' hold of a request
  Ms finish_timeout{600000};  // Node::Finish: servers give up on workers silent for this long
};

enum class State { kNone, kInitialized, kStarting, kStarted, kServed, kShutdown, kFailed };

struct TableState {
  uint32_t id = 0;
  std::vector<uint64_t> shape;
  uint64_t next_step = 0;  // the step of this table's next push_pull
  // A table whose servers run an optimizer: it holds weights, starts from the workers' step 0
  // (initialize()) and is checkpointed. Otherwise optimizer "sum" (push_pull answers the sum).
  bool server_optimizer = false;
};

// The arguments of declare(..., optimizer=...): OptimizerConfig's fields.
struct OptimizerArgs {
  std::string kind = "sum";
  float lr = 0.01f;
  float momentum = 0.9f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  float initial_accumulator = 0.1f;
};

// A process's job: the Python package holds one (shardps._job) and passes it to every call; a
// Handle keeps its job alive. Touched with the GIL held, except inside the blocking calls, which
// first move the state to one that refuses other calls (kStarting) or touch only the node.
struct Job {
  State state = State::kNone;
  Config config;
  std::optional<Cluster> cluster;
  std::vector<TableSpec> specs;
  std::map<std::string, TableState> tables;
  std::unique_ptr<Node> node;
  // Checkpoints (start(checkpoint_dir=...)): the lead worker's driver and the directory's writer
  // lock, held for the whole run; the reader of the version the servers restored.
  std::string checkpoint_dir;
  PosixFileSystem fs;
  std::optional<CheckpointDirLock> writer_lock;
  std::unique_ptr<worker::CheckpointDriver> checkpoints;
  std::unique_ptr<CheckpointReader> restored;
  uint64_t resumed_step = 0;
  std::optional<uint64_t> last_checkpoint_step;  // the step of the newest checkpoint requested
  uint64_t generation = 0;  // bumped when the node goes away: handles of an older one are dead
  bool mpi_initialized_here = false;
};

std::string StateName(State s) {
  switch (s) {
    case State::kNone: return "not initialised (call shardps.init() first)";
    case State::kInitialized: return "initialised, not started (call shardps.start())";
    case State::kStarting: return "starting";
    case State::kStarted: return "started";
    case State::kServed: return "a server that has finished serving";
    case State::kShutdown: return "shut down";
    case State::kFailed: return "failed";
  }
  return "?";
}

Status NotIn(const std::string& what, State s) {
  return FailedPrecondition(what + ": shardps is " + StateName(s));
}

// Waits for `h` up to `timeout`, without the GIL, in slices between which Python signal
// handlers run (a KeyboardInterrupt leaves the operation pending). Returns the handle's status, or
// DEADLINE_EXCEEDED naming `what` and the servers that did not answer.
Status WaitFor(const worker::Handle& h, Ms timeout, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<Ms>(deadline - std::chrono::steady_clock::now());
    const Ms slice = std::clamp(left, Ms(0), Ms(100));
    Status s;
    {
      py::gil_scoped_release release;
      s = h.wait(slice);
    }
    if (s.code() != StatusCode::kDeadlineExceeded || h.done()) return s;
    if (std::chrono::steady_clock::now() >= deadline) {
      return DeadlineExceeded(what + ": not complete within " + std::to_string(timeout.count()) + " ms (" + s.message() +
                              ")");
    }
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
}

Ms ToMs(double seconds, const char* what) {
  if (!(seconds > 0) || seconds > 1e7) throw py::value_error(std::string(what) + " must be a positive number of seconds, got " + std::to_string(seconds));
  return Ms(std::max<int64_t>(1, static_cast<int64_t>(seconds * 1000)));
}

Ms WaitTimeout(const Job& r, const std::optional<double>& timeout) {
  return timeout ? ToMs(*timeout, "timeout") : r.config.timeout;
}

// ---- init, declare, start, shutdown ----

std::pair<int, int> Init(Job& r, const Config& c) {
  if (r.state != State::kNone) Raise(FailedPrecondition("init: already called (shardps is " + StateName(r.state) + ")"));
  if (c.num_servers < 1) throw py::value_error("init: servers must be at least 1, got " + std::to_string(c.num_servers));
  int rank = c.rank, size = c.size;
  if (c.transport == "mpi") {
#if SHARDPS_WITH_MPI
    int initialized = 0;
    MPI_Initialized(&initialized);
    int provided = 0;
    if (!initialized) {
      tools::ApplyMpiDefaults(tools::MpiWorkload::kTraining);
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
      r.mpi_initialized_here = true;
    } else {
      MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_SERIALIZED) {
      Raise(Unavailable("init: the MPI library does not provide MPI_THREAD_SERIALIZED (it gives level " +
                        std::to_string(provided) + ")"));
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
#else
    Raise(FailedPrecondition("init: shardps was built without MPI (SHARDPS_WITH_MPI=OFF): use transport='tcp'"));
#endif
  } else if (c.transport == "tcp") {
    if (c.size < 2 || c.rank < 0 || c.rank >= c.size) {
      throw py::value_error("init: tcp needs 0 <= rank < size and size >= 2, got rank " + std::to_string(c.rank) +
                            " of " + std::to_string(c.size));
    }
    if (c.port <= 0 || c.port > 65535) throw py::value_error("init: coordinator port " + std::to_string(c.port) + " outside 1..65535");
    if (c.insecure == !c.secret_file.empty()) {
      throw py::value_error(c.insecure ? "init: give secret_file or insecure=True, not both"
                                       : "init: tcp needs secret_file (shardps keygen --out FILE writes one) or insecure=True");
    }
  } else {
    throw py::value_error("init: transport must be 'mpi' or 'tcp', got '" + c.transport + "'");
  }
  Result<Cluster> cluster = Cluster::Create(size, rank, ClusterOptions{.num_servers = c.num_servers});
  if (!cluster.ok()) Raise(cluster.status().WithContext("init: " + std::to_string(size) + " processes, " + std::to_string(c.num_servers) + " servers"));
  r.config = c;
  r.config.rank = rank;
  r.config.size = size;
  r.cluster = std::move(*cluster);
  r.state = State::kInitialized;
  return {rank, size};
}

void Declare(Job& r, const std::string& name, const std::vector<int64_t>& shape, const OptimizerArgs& opt) {
  if (r.state != State::kInitialized) {
    Raise(r.state == State::kNone ? NotIn("declare('" + name + "')", r.state)
                                  : FailedPrecondition("declare('" + name + "'): tables are declared before start(); shardps is " +
                                                       StateName(r.state)));
  }
  if (name.empty()) throw py::value_error("declare: the table name is empty");
  if (r.tables.count(name)) throw py::value_error("declare('" + name + "'): a table of that name is already declared");
  std::vector<uint64_t> dims;
  for (int64_t d : shape) {
    if (d <= 0) throw py::value_error("declare('" + name + "'): shape dimensions must be positive, got " + std::to_string(d));
    dims.push_back(static_cast<uint64_t>(d));
  }
  const uint64_t n = ShapeElements(dims);
  if (n == 0 || n > (uint64_t{1} << 40)) throw py::value_error("declare('" + name + "'): shape holds too many elements");
  TableSpec spec;
  spec.name = name;
  spec.size = n;
  spec.shape = dims;
  const bool server_optimizer = opt.kind != OptimizerKind::kSum;
  if (auto o = LookupOptimizer(opt.kind); !o.ok()) throw py::value_error("declare('" + name + "'): " + o.status().message());
  spec.optimizer = OptimizerConfig{.kind = opt.kind, .learning_rate = opt.lr, .momentum = opt.momentum, .beta1 = opt.beta1,
                                   .beta2 = opt.beta2, .epsilon = opt.eps, .weight_decay = opt.weight_decay,
                                   .initial_accumulator = opt.initial_accumulator};
  // "sum": the table holds the sum of the last step's pushes, bookkeeping no checkpoint keeps.
  // Otherwise the servers hold the weights, from the workers' step 0 on.
  spec.checkpointed = server_optimizer;
  if (server_optimizer) spec.init.kind = InitKind::kFirstPush;
  r.tables[name] = TableState{.id = static_cast<uint32_t>(r.specs.size()), .shape = dims, .server_optimizer = server_optimizer};
  r.specs.push_back(std::move(spec));
}

// The job tag of a TCP job (auth.h): what every process of the job shares.
JobTag MakeTag(const Config& c) {
  Sha256 h;
  const std::string text = "shardps python job tag 1\n" + std::to_string(c.size) + "\n" + c.host + ":" +
                           std::to_string(c.port) + "\n" + std::to_string(c.num_servers) + "\n";
  h.Update(text.data(), text.size());
  const std::string hex = h.HexDigest();
  JobTag tag{};
  for (size_t i = 0; i < tag.size(); ++i) tag[i] = static_cast<uint8_t>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
  return tag;
}

Result<std::unique_ptr<Transport>> MakeTransport(const Config& c, const Cluster& cluster) {
  if (c.transport == "mpi") {
#if SHARDPS_WITH_MPI
    return CreateMpiTransport(MPI_COMM_WORLD);
#endif
  }
  TcpOptions o;
  o.host = c.host;
  o.port = static_cast<uint16_t>(c.port);
  o.listen = c.listen;
  o.rank = c.rank;
  o.size = c.size;
  o.insecure = c.insecure;
  o.job_tag = MakeTag(c);
  o.setup_timeout = c.setup_timeout;
  o.peer_timeout = c.peer_timeout;
  o.handshake_timeout = std::min(Ms(10000), c.peer_timeout);
  const std::string me = cluster.Describe(c.rank);
  o.on_warning = [me](const std::string& m) { std::cerr << "shardps: " << me << ": warning: " << m << std::endl; };
  if (!c.insecure) {
    SHARDPS_ASSIGN_OR_RETURN(o.secret, LoadSecret(c.secret_file));
  }
  return CreateTcpTransport(o);
}

// Resolves what start(resume=...) names: "auto" (checkpoint_dir's newest valid version, or a fresh
// start when it has none), else "DIR", "DIR@N" or "DIR@TAG" (an error if there is none). Null: fresh.
std::unique_ptr<CheckpointReader> ResolveResume(const std::string& resume, const std::string& checkpoint_dir, bool lead) {
  auto warn = [lead](const std::string& w) {
    if (lead) std::cerr << "shardps: start: warning: " << w << std::endl;
  };
  if (resume == "auto") {
    Result<AutoResume> a = ResolveCheckpointAuto(checkpoint_dir, warn);
    if (!a.ok()) Raise(a.status().WithContext("start(resume='auto')"));
    if (!a->version) {
      if (lead) std::cerr << "shardps: start(resume='auto'): " << a->why << "; starting fresh" << std::endl;
      return nullptr;
    }
    return std::make_unique<CheckpointReader>(std::move(*a->version));
  }
  Result<CheckpointVersion> v = ResolveCheckpoint(resume, warn);
  if (!v.ok()) Raise(v.status().WithContext("start(resume='" + resume + "')"));
  return std::make_unique<CheckpointReader>(std::move(*v));
}

// Starts the node. On a worker returns true at once; on a server serves until every worker has
// finished (Node::Finish) and returns false. checkpoint_dir: where checkpoint() writes (the lead
// worker commits the versions and holds the directory's writer lock; every server writes its
// shards there, so it is one machine's directory or a shared file system). resume: see
// ResolveResume; the servers load the version, the workers go on from its step.
bool Start(Job& r, const std::string& checkpoint_dir, const std::string& resume, int64_t keep_last) {
  if (r.state != State::kInitialized) Raise(NotIn("start", r.state));
  if (resume == "auto" && checkpoint_dir.empty()) throw py::value_error("start: resume='auto' resumes from checkpoint_dir: give it");
  if (keep_last < 0) throw py::value_error("start: keep_last must be >= 0 (0 keeps every version)");
  Result<TableLayout> layout = TableLayout::Create(r.specs, r.cluster->num_servers());
  if (!layout.ok()) Raise(layout.status().WithContext("start: the declared tables"));
  const bool any_checkpointed = std::any_of(r.specs.begin(), r.specs.end(), [](const TableSpec& t) { return t.checkpointed; });
  if ((!checkpoint_dir.empty() || !resume.empty()) && !any_checkpointed) {
    throw py::value_error("start: checkpoints hold the tables whose servers run an optimizer (declare(..., optimizer=...)); "
                          "none is declared (declared: " + [&] {
                            std::string names;
                            for (const TableSpec& t : r.specs) names += (names.empty() ? "'" : ", '") + t.name + "'";
                            return names.empty() ? std::string("none") : names;
                          }() + ")");
  }
  const Cluster& cluster = *r.cluster;
  const bool lead = cluster.is_worker() && cluster.worker_index() == 0;
  if (lead && !checkpoint_dir.empty()) {
    Check(EnsureWritableDirectory(r.fs, checkpoint_dir, "checkpoint directory").WithContext("start"));
    Result<CheckpointDirLock> lock = CheckpointDirLock::Acquire(checkpoint_dir, CheckpointDirLock::Kind::kWriter,
                                                                "shardps (python)", Ms(0));
    if (!lock.ok()) Raise(lock.status().WithContext("start: checkpoint directory " + checkpoint_dir));
    if (!lock->taken_over_from().empty()) {
      std::cerr << "shardps: start: took over the lock of " << checkpoint_dir << " left by " << lock->taken_over_from()
                << " (that process is gone)" << std::endl;
    }
    r.writer_lock = std::move(*lock);
  }
  std::unique_ptr<CheckpointReader> reader;
  if (!resume.empty()) {
    reader = ResolveResume(resume, checkpoint_dir, lead);
    if (reader) {
      // Checked here on every rank (the servers check again as they load): each checkpointed
      // table must be in the version with the same size and optimizer state.
      for (const TableSpec& t : r.specs) {
        if (!t.checkpointed) continue;
        Result<uint32_t> found = reader->FindTable(t.name, t.size, static_cast<uint32_t>(OptimizerSlots(t.optimizer.kind)));
        if (!found.ok()) Raise(found.status().WithContext("start: resuming from " + reader->checkpoint().path));
      }
      r.resumed_step = reader->checkpoint().manifest.step();
      for (auto& [name, t] : r.tables) {
        if (t.server_optimizer) t.next_step = r.resumed_step;
      }
      if (lead) {
        std::cerr << "shardps: resuming from " << reader->checkpoint().path << " at step " << r.resumed_step << std::endl;
      }
    }
  }
  NodeOptions options;
  options.client.request_timeout = r.config.timeout;
  options.server.max_hold = r.config.timeout;
  options.startup_timeout = std::max(r.config.setup_timeout, r.config.timeout);
  options.finish_timeout = r.config.finish_timeout;
  options.server.checkpoint_dir = checkpoint_dir;
  options.server.file_system = &r.fs;
  r.restored = std::move(reader);
  if (cluster.is_server()) options.restore_from = r.restored.get();
  r.checkpoint_dir = checkpoint_dir;
  r.state = State::kStarting;
  Status s;
  {
    py::gil_scoped_release release;
    Result<std::unique_ptr<Transport>> transport = MakeTransport(r.config, cluster);
    if (!transport.ok()) {
      s = transport.status();
    } else {
      Result<std::unique_ptr<Node>> node = Node::Start(std::move(*transport), cluster, *layout, options);
      if (node.ok()) r.node = std::move(*node);
      else s = node.status();
    }
  }
  if (!s.ok()) {
    r.state = State::kFailed;
    Raise(s.WithContext("start: " + cluster.Describe(r.config.rank)));
  }
  r.state = State::kStarted;
  if (r.node->client()) {
    if (lead && !checkpoint_dir.empty()) {
      worker::CheckpointRun run{.seed = 0,
                                .config = "shardps python job",
                                .num_servers = static_cast<uint32_t>(cluster.num_servers()),
                                .num_workers = static_cast<uint32_t>(cluster.num_workers()),
                                .chunk_floats = layout->chunk_floats(),
                                .tables = layout->tables()};
      worker::CheckpointOptions co{.dir = checkpoint_dir, .every = 1, .keep_last = static_cast<uint64_t>(keep_last),
                                   .timeout = std::max(r.config.timeout, Ms(120000))};
      r.checkpoints = std::make_unique<worker::CheckpointDriver>(r.fs, *r.node->client(), run, co);
      if (r.restored) r.checkpoints->set_resumed_at(r.resumed_step);
    }
    return true;
  }
  // A server only: serve until every worker said goodbye.
  {
    py::gil_scoped_release release;
    s = r.node->Finish();
  }
  r.state = s.ok() ? State::kServed : State::kFailed;
  Check(s.WithContext("serving: " + cluster.Describe(r.config.rank)));
  return false;
}

// Workers say goodbye (Node::Finish), the node stops, MPI is finalised (if init() started it and
// every step succeeded; after a failure mpirun is left to end the job). Idempotent.
void Shutdown(Job& r) {
  if (r.state == State::kNone || r.state == State::kShutdown) return;
  if (r.state == State::kStarting) Raise(NotIn("shutdown", r.state));
  [[maybe_unused]] const bool failed_before = r.state == State::kFailed;
  Status s;
  if (r.node) {
    const bool finish = r.state == State::kStarted;  // a worker (servers finished in start())
    r.state = State::kStarting;                      // refuses other calls meanwhile
    py::gil_scoped_release release;
    if (finish && r.checkpoints && r.last_checkpoint_step) {
      // The newest checkpoint asked for is committed before the servers go.
      s = r.checkpoints->OnStep({.step = *r.last_checkpoint_step}, /*final=*/true);
    }
    r.checkpoints.reset();
    if (finish && s.ok()) {
      s = r.node->Finish();
    } else if (finish) {
      r.node->Abandon(s);
    }
    r.node.reset();
  }
  r.checkpoints.reset();
  r.writer_lock.reset();  // also when start() failed after taking it
  ++r.generation;
  r.state = State::kShutdown;
#if SHARDPS_WITH_MPI
  if (r.mpi_initialized_here && s.ok() && !failed_before) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
#endif
  Check(s.WithContext("shutdown: " + (r.cluster ? r.cluster->Describe(r.config.rank) : std::string("this process"))));
}

worker::KVClient& Client(Job& r, const std::string& what) {
  if (r.state != State::kStarted || !r.node) Raise(NotIn(what, r.state));
  worker::KVClient* c = r.node->client();
  if (!c) Raise(FailedPrecondition(what + ": " + r.cluster->Describe(r.config.rank) + " only serves; run it on the workers"));
  return *c;
}

// ---- push_pull ----

// One push_pull in flight: its handle and the array it reads and writes (kept alive until done).
class PushPullHandle {
 public:
  // divide_by > 1: the answer (a sum) is divided by it (push_pull(average=True) of a sum table).
  PushPullHandle(std::shared_ptr<Job> job, worker::Handle h, py::array array, std::span<float> data, int divide_by,
                 std::string what)
      : job_(std::move(job)), handle_(std::move(h)), array_(std::move(array)), data_(data), divide_by_(divide_by),
        what_(std::move(what)), generation_(job_->generation) {}

  ~PushPullHandle() {
    // Dropped while pending: take the buffer back from the transport before the array may go.
    if (finished_ || generation_ != job_->generation || !job_->node || handle_.done()) return;
    Status s;
    {
      py::gil_scoped_release release;
      s = handle_.Cancel();
    }
    if (!s.ok()) {
      std::cerr << "shardps: " << what_ << ": dropped while pending and not cancellable (" << s.ToString()
                << "); its array is kept alive" << std::endl;
      array_.release();  // a reference never given back: the transport may still use the buffer
    }
  }

  bool done() const { return finished_ || handle_.done(); }

  // Waits up to `timeout`; on success the array holds the sum (or mean) and is returned. A
  // timeout leaves the operation pending (wait again, or drop the handle to cancel it).
  py::array Wait(std::optional<double> timeout) {
    if (!finished_) {
      if (generation_ != job_->generation || !job_->node) {
        Raise(FailedPrecondition(what_ + ": shardps was shut down before this push_pull was waited for"));
      }
      Status s = WaitFor(handle_, WaitTimeout(*job_, timeout), what_);
      if (s.code() == StatusCode::kDeadlineExceeded && !handle_.done()) Raise(s);
      finished_ = true;
      result_ = s;
      if (s.ok() && divide_by_ > 1) {
        const float n = static_cast<float>(divide_by_);
        py::gil_scoped_release release;
        for (float& v : data_) v /= n;
      }
    }
    Check(result_);
    return array_;
  }

  const std::string& what() const { return what_; }

 private:
  std::shared_ptr<Job> job_;
  worker::Handle handle_;
  py::array array_;
  std::span<float> data_;
  int divide_by_;
  std::string what_;
  uint64_t generation_;
  bool finished_ = false;
  Status result_;
};

std::string DeclaredNames(const Job& r) {
  std::string out;
  for (const TableSpec& s : r.specs) out += (out.empty() ? "'" : ", '") + s.name + "'";
  return out.empty() ? "none" : out;
}

std::string ShapeString(const std::vector<uint64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += std::to_string(shape[i]) + (shape.size() == 1 ? "," : i + 1 < shape.size() ? ", " : "");
  return s + ")";
}

// The array `obj` checked for an in-place operation on table `name`: float32, C-contiguous,
// writable, the declared shape.
struct Target {
  py::array array;
  std::span<float> data;
  TableState* table;
};
Target CheckTarget(Job& r, py::object obj, const std::string& name, const std::string& what) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(what + ": expected a numpy.ndarray of float32, got " + std::string(py::str(obj.get_type().attr("__name__"))));
  }
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  if (!py::array_t<float>::check_(arr)) {
    throw py::type_error(what + ": the array's dtype is " + std::string(py::str(arr.dtype())) +
                         ", expected float32 (native byte order; no conversion is made)");
  }
  if (!(arr.flags() & py::array::c_style)) throw py::value_error(what + ": the array is not C-contiguous (use numpy.ascontiguousarray)");
  if (!arr.writeable()) throw py::value_error(what + ": the array is read-only; the result is written into it");
  auto it = r.tables.find(name);
  if (it == r.tables.end()) throw py::value_error(what + ": no table of that name was declared (declared: " + DeclaredNames(r) + ")");
  std::vector<uint64_t> shape(arr.shape(), arr.shape() + arr.ndim());
  if (shape != it->second.shape) {
    throw py::value_error(what + ": the array's shape " + ShapeString(shape) + " differs from the declared " + ShapeString(it->second.shape));
  }
  std::span<float> data(static_cast<float*>(arr.mutable_data()), static_cast<size_t>(arr.size()));
  return Target{std::move(arr), data, &it->second};
}

std::unique_ptr<PushPullHandle> PushPullAsync(const std::shared_ptr<Job>& job, py::object obj, const std::string& name, bool average) {
  Job& r = *job;
  const std::string what = "push_pull('" + name + "')";
  Target x = CheckTarget(r, std::move(obj), name, what);
  worker::KVClient& client = Client(r, what);
  TableState& t = *x.table;
  const int workers = r.cluster->num_workers();
  int divide_by = average ? workers : 1;
  if (t.server_optimizer) {
    if (t.next_step == 0) {
      Raise(FailedPrecondition(what + ": the table's servers run an optimizer and its weights are not set yet: call "
                               "shardps.initialize(array, '" + name + "') first (one worker's array becomes the weights)"));
    }
    // The push is a gradient, the answer the weights: average=True makes the optimizer see the
    // mean of the workers' gradients (each scaled before it is sent; exact for a power-of-two count).
    if (average && workers > 1) {
      const float inv = 1.0f / static_cast<float>(workers);
      py::gil_scoped_release release;
      for (float& v : x.data) v *= inv;
    }
    divide_by = 1;
  }
  const uint64_t step = t.next_step++;
  // In place: the gradient is sent from `data` and the answer received into it. Each chunk's reply
  // comes only after the server has received that chunk's push, so it never overwrites bytes
  // still to be sent.
  worker::Handle h = client.PushPull(t.id, x.data, x.data, step);
  return std::make_unique<PushPullHandle>(job, std::move(h), std::move(x.array), x.data, divide_by, what + " step " + std::to_string(step));
}

// A table whose servers run an optimizer: its weights. Fresh (step 0): worker `root`'s array
// becomes them (the others push -0.0, so the sum is root's values bit for bit, signed zeros
// included) and every worker's array receives them. Resumed or already set: the current weights.
std::unique_ptr<PushPullHandle> InitializeAsync(const std::shared_ptr<Job>& job, py::object obj, const std::string& name, int root) {
  Job& r = *job;
  const std::string what = "initialize('" + name + "')";
  Target x = CheckTarget(r, std::move(obj), name, what);
  worker::KVClient& client = Client(r, what);
  TableState& t = *x.table;
  if (!t.server_optimizer) {
    throw py::value_error(what + ": the table's servers run no optimizer (optimizer 'sum'); its push_pull answers sums, "
                          "there are no weights to set");
  }
  const Cluster& cluster = *r.cluster;
  if (root < 0 || root >= cluster.num_workers()) {
    throw py::value_error(what + ": root " + std::to_string(root) + " outside the workers 0.." + std::to_string(cluster.num_workers() - 1));
  }
  if (t.next_step > 0) {  // the weights exist: pull those of the newest step
    worker::Handle h = client.Pull(t.id, x.data, t.next_step);
    return std::make_unique<PushPullHandle>(job, std::move(h), std::move(x.array), x.data, 1, what + " (weights of step " + std::to_string(t.next_step) + ")");
  }
  if (cluster.worker_index() != root) std::fill(x.data.begin(), x.data.end(), -0.0f);
  t.next_step = 1;
  worker::Handle h = client.PushPull(t.id, x.data, x.data, 0);
  return std::make_unique<PushPullHandle>(job, std::move(h), std::move(x.array), x.data, 1, what + " step 0");
}

// The weights of a table whose servers run an optimizer, after its newest step.
std::unique_ptr<PushPullHandle> PullAsync(const std::shared_ptr<Job>& job, py::object obj, const std::string& name) {
  Job& r = *job;
  const std::string what = "pull('" + name + "')";
  Target x = CheckTarget(r, std::move(obj), name, what);
  worker::KVClient& client = Client(r, what);
  TableState& t = *x.table;
  if (!t.server_optimizer) throw py::value_error(what + ": the table's servers run no optimizer (optimizer 'sum'): use push_pull");
  if (t.next_step == 0) Raise(FailedPrecondition(what + ": the weights are not set yet: call shardps.initialize(array, '" + name + "') first"));
  worker::Handle h = client.Pull(t.id, x.data, t.next_step);
  return std::make_unique<PushPullHandle>(job, std::move(h), std::move(x.array), x.data, 1, what + " step " + std::to_string(t.next_step));
}

// Every worker calls it after the same step of every table whose servers run an optimizer; the
// lead worker's call writes a version of the checkpoint directory at that step (in the
// background; `wait`: until it is committed). The version before is committed first.
void Checkpoint(Job& r, bool wait) {
  Client(r, "checkpoint");
  if (r.checkpoint_dir.empty()) Raise(FailedPrecondition("checkpoint: start() was given no checkpoint_dir"));
  std::optional<uint64_t> step;
  std::string first;
  for (const auto& [name, t] : r.tables) {
    if (!t.server_optimizer) continue;
    if (!step) {
      step = t.next_step;
      first = name;
    } else if (*step != t.next_step) {
      Raise(FailedPrecondition("checkpoint: the tables are at different steps ('" + first + "' at " + std::to_string(*step) + ", '" +
                               name + "' at " + std::to_string(t.next_step) + "): checkpoint after a step of every table"));
    }
  }
  if (!step || *step == 0) Raise(FailedPrecondition("checkpoint: no weights yet (call initialize() on every table first)"));
  if (!r.checkpoints) return;  // not the lead worker: it writes
  Status s;
  {
    py::gil_scoped_release release;
    s = r.checkpoints->OnStep({.step = *step}, wait);
  }
  r.last_checkpoint_step = *step;
  Check(s.WithContext("checkpoint at step " + std::to_string(*step)));
}

// The weights of every dense table of a checkpoint version ("DIR", "DIR@N", "DIR@TAG"), each in
// its recorded shape (sparse tables, rows by key, are left out). No job needed.
struct SavedWeights {
  std::string path;
  uint64_t version = 0;
  uint64_t step = 0;
  struct Tensor {
    std::string name;
    std::vector<uint64_t> shape;
    std::vector<float> values;
  };
  std::vector<Tensor> tensors;
};
SavedWeights ReadCheckpointWeights(const std::string& spec, const std::string& what) {
  auto warn = [what](const std::string& w) { std::cerr << "shardps: " << what << ": warning: " << w << std::endl; };
  SavedWeights out;
  Status s;
  {
    py::gil_scoped_release release;
    Result<CheckpointVersion> v = ResolveCheckpoint(spec, warn);
    if (!v.ok()) Raise(v.status().WithContext(what));
    out.path = v->path;
    out.version = v->version;
    out.step = v->manifest.step();
    CheckpointReader reader(std::move(*v));
    uint32_t id = 0;
    for (const CheckpointManifest::Table& t : reader.checkpoint().manifest.tables()) {
      const uint32_t index = id++;
      if (t.row_dim > 0) continue;
      SavedWeights::Tensor x{.name = t.name, .shape = t.shape.empty() ? std::vector<uint64_t>{t.size} : t.shape};
      x.values.resize(t.size);
      s = reader.Read(index, 0, t.size, x.values, {});  // the weights only: no optimizer state is read
      if (!s.ok()) {
        s = s.WithContext(what + ": table '" + t.name + "'");
        break;
      }
      out.tensors.push_back(std::move(x));
    }
  }
  Check(s);
  return out;
}

// name -> numpy float32 array, plus "__step__": the steps the version holds.
py::dict LoadCheckpoint(const std::string& spec) {
  SavedWeights w = ReadCheckpointWeights(spec, "load_checkpoint('" + spec + "')");
  py::dict out;
  for (SavedWeights::Tensor& t : w.tensors) {
    std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
    py::array_t<float> a(shape);
    std::copy(t.values.begin(), t.values.end(), a.mutable_data());
    out[py::str(t.name)] = std::move(a);
  }
  out[py::str("__step__")] = py::int_(w.step);
  return out;
}

// The weights as a safetensors file (atomically written; metadata: the source version and step).
// Returns the version's path.
std::string ExportCheckpoint(const std::string& spec, const std::string& path) {
  const std::string what = "export_checkpoint('" + spec + "')";
  SavedWeights w = ReadCheckpointWeights(spec, what);
  std::vector<SafetensorsTensor> tensors;
  for (const SavedWeights::Tensor& t : w.tensors) {
    tensors.push_back({.name = t.name, .dtype = "F32", .shape = t.shape,
                       .bytes = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(t.values.data()), t.values.size() * sizeof(float))});
  }
  PosixFileSystem fs;
  Status s;
  {
    py::gil_scoped_release release;
    s = WriteSafetensors(fs, path, tensors, {{"source", w.path}, {"step", std::to_string(w.step)}});
  }
  Check(s.WithContext(what + " to " + path));
  return w.path;
}

void Barrier(Job& r, std::optional<double> timeout) {
  worker::KVClient& client = Client(r, "barrier");
  worker::Handle h = client.Barrier();
  Check(WaitFor(h, WaitTimeout(r, timeout), "barrier"));
}

int64_t NextStep(const Job& r, const std::string& name) {
  auto it = r.tables.find(name);
  if (it == r.tables.end()) throw py::value_error("no table '" + name + "' was declared (declared: " + DeclaredNames(r) + ")");
  return static_cast<int64_t>(it->second.next_step);
}

const Cluster& Clus(const Job& r, const char* what) {
  if (!r.cluster) Raise(NotIn(what, r.state));
  return *r.cluster;
}

}  // namespace
}  // namespace shardps::python

PYBIND11_MODULE(_core, m) {
  using namespace shardps;
  using namespace shardps::python;
  m.doc() = "shardps parameter-server bindings (use the shardps package, not this module)";

  g_error = PyErr_NewException("shardps.Error", PyExc_RuntimeError, nullptr);
  py::tuple bases = py::make_tuple(py::handle(g_error), py::handle(PyExc_TimeoutError));
  g_timeout = PyErr_NewException("shardps.TimeoutError", bases.ptr(), nullptr);
  m.attr("Error") = py::handle(g_error);
  m.attr("TimeoutError") = py::handle(g_timeout);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      PyObject* cls = e.status.code() == StatusCode::kDeadlineExceeded ? g_timeout : g_error;
      py::object exc = py::reinterpret_steal<py::object>(PyObject_CallFunction(cls, "s", e.status.message().c_str()));
      if (!exc) return;  // the call raised: that error stands
      exc.attr("code") = py::str(std::string(StatusCodeName(e.status.code())));
      PyErr_SetObject(cls, exc.ptr());
    }
  });

  py::class_<Config>(m, "Config")
      .def(py::init<>())
      .def_readwrite("transport", &Config::transport)
      .def_readwrite("num_servers", &Config::num_servers)
      .def_readwrite("rank", &Config::rank)
      .def_readwrite("size", &Config::size)
      .def_readwrite("host", &Config::host)
      .def_readwrite("port", &Config::port)
      .def_readwrite("listen", &Config::listen)
      .def_readwrite("secret_file", &Config::secret_file)
      .def_readwrite("insecure", &Config::insecure)
      .def_property("peer_timeout", [](const Config& c) { return c.peer_timeout.count() / 1000.0; }, [](Config& c, double s) { c.peer_timeout = ToMs(s, "peer_timeout"); })
      .def_property("setup_timeout", [](const Config& c) { return c.setup_timeout.count() / 1000.0; }, [](Config& c, double s) { c.setup_timeout = ToMs(s, "setup_timeout"); })
      .def_property("timeout", [](const Config& c) { return c.timeout.count() / 1000.0; }, [](Config& c, double s) { c.timeout = ToMs(s, "timeout_s"); })
      .def_property("finish_timeout", [](const Config& c) { return c.finish_timeout.count() / 1000.0; }, [](Config& c, double s) { c.finish_timeout = ToMs(s, "finish_timeout_s"); });

  py::class_<PushPullHandle>(m, "Handle")
      .def("wait", &PushPullHandle::Wait, py::arg("timeout") = py::none(),
           "Waits (without the GIL) up to `timeout` seconds (default: init's timeout_s); returns the array, "
           "which now holds the sum (or mean). shardps.TimeoutError leaves the operation pending.")
      .def("done", &PushPullHandle::done)
      .def("__repr__", [](const PushPullHandle& h) { return "<shardps.Handle " + h.what() + ">"; });

  py::class_<OptimizerArgs>(m, "OptimizerArgs")
      .def(py::init<>())
      .def_readwrite("kind", &OptimizerArgs::kind)
      .def_readwrite("lr", &OptimizerArgs::lr)
      .def_readwrite("momentum", &OptimizerArgs::momentum)
      .def_readwrite("beta1", &OptimizerArgs::beta1)
      .def_readwrite("beta2", &OptimizerArgs::beta2)
      .def_readwrite("eps", &OptimizerArgs::eps)
      .def_readwrite("weight_decay", &OptimizerArgs::weight_decay)
      .def_readwrite("initial_accumulator", &OptimizerArgs::initial_accumulator);

  // The job's calls are methods of Job (shardps/__init__.py makes one and calls through it).
  py::class_<Job, std::shared_ptr<Job>>(m, "Job")
      .def(py::init<>())
      .def("init", &Init, py::arg("config"))
      .def("declare", &Declare, py::arg("name"), py::arg("shape"), py::arg("optimizer"))
      .def("start", &Start, py::arg("checkpoint_dir"), py::arg("resume"), py::arg("keep_last"))
      .def("shutdown", &Shutdown)
      .def("push_pull_async", &PushPullAsync, py::arg("array"), py::arg("name"), py::arg("average") = true)
      .def("initialize_async", &InitializeAsync, py::arg("array"), py::arg("name"), py::arg("root"))
      .def("pull_async", &PullAsync, py::arg("array"), py::arg("name"))
      .def("checkpoint", &Checkpoint, py::arg("wait"))
      .def("barrier", &Barrier, py::arg("timeout") = py::none())
      .def("next_step", &NextStep, py::arg("name"))
      .def("resumed_step", [](const Job& r) { return r.resumed_step; })
      .def("initialized", [](const Job& r) { return r.state != State::kNone; })
      .def("started", [](const Job& r) { return r.state == State::kStarted || r.state == State::kServed; })
      .def("rank", [](const Job& r) { return Clus(r, "rank").rank(); })
      .def("size", [](const Job& r) { return Clus(r, "size").size(); })
      .def("num_workers", [](const Job& r) { return Clus(r, "num_workers").num_workers(); })
      .def("num_servers", [](const Job& r) { return Clus(r, "num_servers").num_servers(); })
      .def("worker_index", [](const Job& r) { return Clus(r, "worker_index").worker_index(); })
      .def("is_server", [](const Job& r) { return Clus(r, "is_server").is_server(); })
      .def("is_worker", [](const Job& r) { return Clus(r, "is_worker").is_worker(); });
  m.def("load_checkpoint", &LoadCheckpoint, py::arg("spec"));
  m.def("export_checkpoint", &ExportCheckpoint, py::arg("spec"), py::arg("path"));
  m.def("optimizers", [] { return RegisteredOptimizerNames(); });
  m.attr("with_mpi") = py::bool_(SHARDPS_WITH_MPI != 0);
}
