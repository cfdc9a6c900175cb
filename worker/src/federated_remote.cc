#include "shardps/worker/federated_remote.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <thread>

#include "federated_internal.h"
#include "shardps/base/random.h"
#include "shardps/secagg/aggregator.h"
#include "shardps/secagg/fixed_point.h"
#include "shardps/secagg/host.h"
#include "shardps/secagg/random_source.h"
#include "train_internal.h"

namespace shardps::worker {
namespace {

using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

// ---- Bytes -----------------------------------------------------------------------------------

void PutU32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void PutU64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// Reads a payload front to back; every read checks the bytes left.
class Reader {
 public:
  Reader(std::span<const uint8_t> b, std::string what) : b_(b), what_(std::move(what)) {}
  Result<uint64_t> U(int bytes) {
    if (b_.size() - pos_ < static_cast<size_t>(bytes)) return Fail("truncated at byte " + std::to_string(pos_));
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(b_[pos_++]) << (8 * i);
    return v;
  }
  Result<std::span<const uint8_t>> Bytes(uint64_t n) {
    if (b_.size() - pos_ < n) return Fail(std::to_string(n) + " bytes announced at byte " + std::to_string(pos_) + ", " +
                                          std::to_string(b_.size() - pos_) + " left");
    auto s = b_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  Status Done() const { return pos_ == b_.size() ? Status::Ok() : Fail(std::to_string(b_.size() - pos_) + " trailing bytes"); }
  Status Fail(const std::string& why) const { return DataLoss(what_ + ": " + why); }

 private:
  std::span<const uint8_t> b_;
  std::string what_;
  size_t pos_ = 0;
};

// TASK: round u64 | secagg id u32 | n-bar f64 (the selected clients' mean sample count: updates are
// weighted n_k / n-bar) | config length u32 | RoundConfig message | tables u32 | per table:
// floats u64 | float32 little-endian.
std::vector<uint8_t> EncodeTask(uint64_t round, uint32_t id, double n_bar, const secagg::RoundConfig& config,
                                const std::vector<std::vector<float>>& w) {
  std::vector<uint8_t> out;
  PutU64(out, round);
  PutU32(out, id);
  PutU64(out, std::bit_cast<uint64_t>(n_bar));
  const std::vector<uint8_t> cfg = secagg::Serialize(secagg::RoundConfigMessage{config});
  PutU32(out, static_cast<uint32_t>(cfg.size()));
  out.insert(out.end(), cfg.begin(), cfg.end());
  PutU32(out, static_cast<uint32_t>(w.size()));
  for (const auto& t : w) {
    PutU64(out, t.size());
    const size_t at = out.size();
    out.resize(at + t.size() * sizeof(float));
    if (!t.empty()) std::memcpy(out.data() + at, t.data(), t.size() * sizeof(float));
  }
  return out;
}

struct Task {
  uint64_t round = 0;
  uint32_t id = 0;
  double n_bar = 1;
  secagg::RoundConfig config;
  std::vector<std::vector<float>> w;
};

// `shapes`: the model's table sizes; the task must match them.
Result<Task> DecodeTask(std::span<const uint8_t> bytes, const std::vector<uint64_t>& shapes) {
  Reader r(bytes, "a TASK from the coordinator");
  Task t;
  SHARDPS_ASSIGN_OR_RETURN(t.round, r.U(8));
  SHARDPS_ASSIGN_OR_RETURN(const uint64_t id, r.U(4));
  t.id = static_cast<uint32_t>(id);
  SHARDPS_ASSIGN_OR_RETURN(const uint64_t nb, r.U(8));
  t.n_bar = std::bit_cast<double>(nb);
  if (!(t.n_bar > 0) || !std::isfinite(t.n_bar)) return r.Fail("n-bar " + std::to_string(t.n_bar) + " is not a positive number");
  SHARDPS_ASSIGN_OR_RETURN(const uint64_t n, r.U(4));
  SHARDPS_ASSIGN_OR_RETURN(const std::span<const uint8_t> cfg, r.Bytes(n));
  SHARDPS_ASSIGN_OR_RETURN(secagg::RoundConfigMessage cm, secagg::ParseRoundConfig(cfg));
  t.config = std::move(cm.config);
  SHARDPS_ASSIGN_OR_RETURN(const uint64_t tables, r.U(4));
  if (tables != shapes.size()) return r.Fail(std::to_string(tables) + " tables, this client's model has " + std::to_string(shapes.size()));
  for (uint64_t shape : shapes) {
    SHARDPS_ASSIGN_OR_RETURN(const uint64_t floats, r.U(8));
    if (floats != shape) return r.Fail("a table of " + std::to_string(floats) + " weights where the model has " + std::to_string(shape));
    SHARDPS_ASSIGN_OR_RETURN(const std::span<const uint8_t> b, r.Bytes(floats * sizeof(float)));
    std::vector<float> v(floats);
    if (floats > 0) std::memcpy(v.data(), b.data(), b.size());
    t.w.push_back(std::move(v));
  }
  SHARDPS_RETURN_IF_ERROR(r.Done());
  if (std::find(t.config.participants.begin(), t.config.participants.end(), t.id) == t.config.participants.end()) {
    return DataLoss("a TASK gives this client secagg id " + std::to_string(t.id) + ", which is not among the round's participants");
  }
  return t;
}

std::string Text(std::span<const uint8_t> b) { return std::string(b.begin(), b.end()); }

// ---- Coordinator -----------------------------------------------------------------------------

// One client connection: its channel, the reader thread that turns what arrives into events.
struct Peer {
  int client = -1;    // partition index
  uint64_t samples = 0;
  Channel channel;
  std::thread reader;
  bool alive = true;  // main thread: false once its connection failed
};

struct Event {
  Peer* peer = nullptr;
  Result<Channel::Message> message = Status::Ok();
};

// Everything the accept and reader threads hand the coordinator's thread.
class Inbox {
 public:
  void Push(Event e) {
    {
      std::lock_guard lock(mu_);
      events_.push_back(std::move(e));
    }
    cv_.notify_all();
  }
  void AddPeer(std::unique_ptr<Peer> p) {
    {
      std::lock_guard lock(mu_);
      joined_.push_back(std::move(p));
    }
    cv_.notify_all();
  }
  // The next event before `deadline` (nullopt on timeout); new peers move to `peers`.
  std::optional<Event> Next(Clock::time_point deadline, std::vector<std::unique_ptr<Peer>>& peers) {
    std::unique_lock lock(mu_);
    cv_.wait_until(lock, deadline, [&] { return !events_.empty() || !joined_.empty(); });
    for (auto& p : joined_) peers.push_back(std::move(p));
    joined_.clear();
    if (events_.empty()) return std::nullopt;
    Event e = std::move(events_.front());
    events_.pop_front();
    return e;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
  std::vector<std::unique_ptr<Peer>> joined_;
};

}  // namespace

Result<TrainResult> ServeFederated(const Model& model, const Dataset& test, ParamStore& params, const RunOptions& run,
                                   const CoordinatorOptions& o, Listener& listener, const Secret& secret, const TrainHooks& hooks) {
  const auto start = Clock::now();
  const FederatedOptions& fed = o.fed;
  if (fed.rounds < 1) return InvalidArgument("rounds is " + std::to_string(fed.rounds) + ": at least 1");
  if (o.wait_clients < 2) return InvalidArgument("wait for at least 2 clients (secure aggregation sums 2 or more), not " + std::to_string(o.wait_clients));
  if (fed.clip_norm > 0) return InvalidArgument("differential privacy is not available with real clients yet (clip_norm " + std::to_string(fed.clip_norm) + ")");
  const size_t M = model.num_tables();
  const std::vector<TableSpec> tables = TrainingTables(model, run);
  uint64_t floats = 0;
  for (size_t t = 0; t < M; ++t) floats += tables[t].size;
  std::vector<std::vector<float>> w(M), next(M), push(M);
  for (size_t t = 0; t < M; ++t) {
    w[t].resize(tables[t].size);
    next[t].resize(tables[t].size);
    push[t].resize(tables[t].size);
  }
  {
    std::vector<Handle> hs;
    for (size_t t = 0; t < M; ++t) hs.push_back(params.Pull(static_cast<uint32_t>(t), w[t], 0));
    SHARDPS_RETURN_IF_ERROR(internal::WaitAll(params, hs, run.timeout, w).WithContext("pulling the initial model"));
  }

  Inbox inbox;
  std::atomic<bool> stop{false};
  // Accepts clients for as long as the coordinator runs: handshake, then JOIN (client index,
  // samples), then a reader thread.
  std::thread acceptor([&] {
    while (!stop.load()) {
      auto ch = listener.Accept(secret, Clock::now() + std::chrono::milliseconds(200));
      if (!ch.ok()) {
        if (ch.status().code() != StatusCode::kDeadlineExceeded && hooks.on_notice) {
          hooks.on_notice("refused a connection: " + ch.status().message());
        }
        continue;
      }
      auto join = ch->Receive(Clock::now() + std::chrono::seconds(10));
      if (!join.ok() || join->type != kFedJoin || join->payload.size() != 12) {
        if (hooks.on_notice) hooks.on_notice("a connection from " + ch->peer() + " did not join: " +
                                             (join.ok() ? "message type " + std::to_string(join->type) : join.status().message()));
        continue;
      }
      auto p = std::make_unique<Peer>();
      uint64_t k = 0, n = 0;
      for (int i = 0; i < 4; ++i) k |= static_cast<uint64_t>(join->payload[static_cast<size_t>(i)]) << (8 * i);
      for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(join->payload[static_cast<size_t>(4 + i)]) << (8 * i);
      p->client = static_cast<int>(k);
      p->samples = n;
      p->channel = std::move(ch).value();
      inbox.AddPeer(std::move(p));
    }
  });
  std::vector<std::unique_ptr<Peer>> peers;
  auto start_reader = [&](Peer* p) {
    p->reader = std::thread([&inbox, p] {
      while (true) {
        auto m = p->channel.Receive(Clock::now() + std::chrono::hours(24));
        const bool failed = !m.ok();
        inbox.Push(Event{p, std::move(m)});
        if (failed) return;
      }
    });
  };
  size_t started = 0;
  // New peers: refuse a client index that is out of range or already connected; start readers.
  auto admit = [&]() {
    for (; started < peers.size(); ++started) {
      Peer* p = peers[started].get();
      std::string why;
      if (p->client < 0 || p->client >= fed.partition.clients) {
        why = "client index " + std::to_string(p->client) + " is outside [0, " + std::to_string(fed.partition.clients) + ")";
      } else if (p->samples == 0) {
        why = "client " + std::to_string(p->client) + " has no samples";
      }
      for (size_t j = 0; j < started && why.empty(); ++j) {
        if (peers[j]->alive && peers[j]->client == p->client) why = "client " + std::to_string(p->client) + " is already connected";
      }
      if (!why.empty()) {
        (void)p->channel.Send(kFedRefused, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(why.data()), why.size()),
                              Clock::now() + std::chrono::seconds(5));
        p->channel.Close();
        p->alive = false;
        if (hooks.on_notice) hooks.on_notice("refused a join from " + p->channel.peer() + ": " + why);
        continue;
      }
      start_reader(p);
      if (hooks.on_notice) hooks.on_notice("client " + std::to_string(p->client) + " joined from " + p->channel.peer());
    }
  };
  auto alive_count = [&] {
    return std::count_if(peers.begin(), peers.end(), [](const auto& p) { return p->alive && p->reader.joinable(); });
  };
  bool shut = false;
  auto shutdown = [&](const std::string& why) {
    if (shut) return;
    shut = true;
    stop.store(true);
    acceptor.join();
    std::vector<std::unique_ptr<Peer>> late;
    inbox.Next(Clock::now(), late);
    for (auto& p : late) peers.push_back(std::move(p));
    for (auto& p : peers) {
      if (p->alive) (void)p->channel.Send(kFedBye, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(why.data()), why.size()),
                                          Clock::now() + std::chrono::seconds(5));
      p->channel.Close();
      if (p->reader.joinable()) p->reader.join();
    }
  };
  // Every return path ends the clients' connections and joins the threads.
  struct Guard {
    std::function<void()> f;
    ~Guard() { f(); }
  } guard{[&] { shutdown("the coordinator stopped"); }};
  // A client that left, failed or missed a deadline: out for good (its connection is closed).
  auto lost = [&](Peer* p, const Status& why) {
    if (p->alive && hooks.on_notice) hooks.on_notice("client " + std::to_string(p->client) + " (" + p->channel.peer() + ") is out: " + why.message());
    p->alive = false;
    p->channel.Close();
  };

  // Round 1 waits for wait_clients.
  const auto join_deadline = Clock::now() + o.join_timeout;
  while (alive_count() < o.wait_clients) {
    auto e = inbox.Next(std::min(join_deadline, Clock::now() + std::chrono::milliseconds(200)), peers);
    admit();
    if (e && !e->message.ok()) lost(e->peer, e->message.status());
    if (Clock::now() >= join_deadline && alive_count() < o.wait_clients) {
      const auto have = alive_count();
      shutdown("the coordinator gave up waiting for clients");
      return DeadlineExceeded(std::to_string(have) + " of the " + std::to_string(o.wait_clients) + " clients to wait for joined within " +
                              std::to_string(o.join_timeout.count()) + " ms");
    }
  }

  TrainResult result;
  const BatchSlice all_test{0, test.num_samples};
  double train_seconds = 0;
  int64_t samples = 0;
  for (int round = 0; round < fed.rounds; ++round) {
    const auto t0 = Clock::now();
    {  // take in whoever joined since
      while (auto e = inbox.Next(Clock::now(), peers)) {
        admit();
        if (!e->message.ok()) lost(e->peer, e->message.status());
      }
      admit();
    }
    std::vector<Peer*> connected;
    for (auto& p : peers) {
      if (p->alive && p->reader.joinable()) connected.push_back(p.get());
    }
    std::sort(connected.begin(), connected.end(), [](Peer* a, Peer* b) { return a->client < b->client; });
    if (connected.size() < 2) {
      shutdown("too few clients");
      return FailedPrecondition("round " + std::to_string(round + 1) + ": " + std::to_string(connected.size()) +
                                " client(s) connected; secure aggregation needs at least 2");
    }
    const int n_conn = static_cast<int>(connected.size());
    const int m = std::clamp(static_cast<int>(std::llround(fed.fraction * n_conn)), 2, std::min<int>(n_conn, secagg::kMaxClients));
    // A seeded choice of m of the connected clients, kept in client order.
    std::vector<Peer*> chosen = connected;
    {
      uint64_t key = SplitMix64(SplitMix64(run.seed ^ 0x5345'4c45'4354ull) ^ static_cast<uint64_t>(round));
      for (int i = 0; i < m; ++i) {
        key = SplitMix64(key);
        std::swap(chosen[static_cast<size_t>(i)], chosen[static_cast<size_t>(i) + key % static_cast<uint64_t>(n_conn - i)]);
      }
      chosen.resize(static_cast<size_t>(m));
      std::sort(chosen.begin(), chosen.end(), [](Peer* a, Peer* b) { return a->client < b->client; });
    }
    uint64_t sample_bound = 0;
    for (Peer* p : chosen) sample_bound += p->samples;
    const double n_bar = static_cast<double>(sample_bound) / m;
    const uint32_t t = fed.secagg_threshold > 0 ? static_cast<uint32_t>(fed.secagg_threshold) : static_cast<uint32_t>(2 * m / 3 + 1);
    secagg::FixedPoint fp{.clip = static_cast<float>(fed.secagg_clip), .bits = fed.secagg_bits,
                          .ring_bits = std::max(secagg::RingBits(static_cast<uint64_t>(m), fed.secagg_bits),
                                                static_cast<int>(std::bit_width(sample_bound)) + 1)};
    secagg::RoundConfig config{.round_id = static_cast<uint64_t>(round), .threshold = std::min<uint32_t>(t, static_cast<uint32_t>(m)),
                               .participants = {}, .vector_length = floats + 1, .ring_bits = fp.ring_bits};
    for (int i = 1; i <= m; ++i) config.participants.push_back(static_cast<secagg::ClientId>(i));
    std::optional<secagg::OutcomeMessage> outcome;
    std::string abort_reason;
    if (t > static_cast<uint32_t>(m)) abort_reason = "threshold " + std::to_string(t) + " exceeds the " + std::to_string(m) + " clients selected";
    secagg::Aggregator agg(m);
    std::map<Peer*, int> host_of;
    for (int h = 0; h < m; ++h) {
      host_of[chosen[static_cast<size_t>(h)]] = h;
      agg.RestrictHost(h, {static_cast<secagg::ClientId>(h + 1)});  // a client process speaks only for itself
    }
    auto drop = [&](Peer* p, const Status& why) {
      auto it = host_of.find(p);
      if (it != host_of.end()) agg.Drop(it->second);
      lost(p, why);
    };
    if (abort_reason.empty()) {
      for (int h = 0; h < m; ++h) {
        Peer* p = chosen[static_cast<size_t>(h)];
        Status s = p->channel.Send(kFedTask, EncodeTask(static_cast<uint64_t>(round), static_cast<uint32_t>(h + 1), n_bar, config, w),
                                   Clock::now() + o.phase_timeout);
        if (!s.ok()) drop(p, s);
      }
    }
    for (int phase = 0; phase < 4 && abort_reason.empty() && !outcome; ++phase) {
      const auto deadline = Clock::now() + (phase == 0 ? o.train_timeout : o.phase_timeout);
      while (!agg.Ready() && !(phase == 0 && !agg.open() && agg.Missing().empty())) {
        auto e = inbox.Next(deadline, peers);
        admit();
        if (!e) {
          if (Clock::now() < deadline) continue;
          for (int h : agg.Missing()) {
            drop(chosen[static_cast<size_t>(h)], DeadlineExceeded("no bundle of phase " + std::string(secagg::PhaseName(static_cast<secagg::Phase>(phase))) +
                                                                  " within " + std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                                                                  (phase == 0 ? o.train_timeout : o.phase_timeout)).count()) + " ms"));
          }
          break;
        }
        if (!e->message.ok()) {
          drop(e->peer, e->message.status());
          continue;
        }
        auto it = host_of.find(e->peer);
        if (e->message->type != kFedSecAgg || it == host_of.end()) {
          if (hooks.on_notice) hooks.on_notice("ignored a message of type " + std::to_string(e->message->type) + " from client " +
                                               std::to_string(e->peer->client) + " in round " + std::to_string(round + 1));
          continue;
        }
        Status s = agg.Submit(it->second, static_cast<uint64_t>(round), static_cast<secagg::Phase>(phase), e->message->payload);
        if (!s.ok()) drop(e->peer, s);
      }
      if (!agg.open()) {
        abort_reason = "no selected client sent its keys";
        break;
      }
      if (!agg.Ready()) continue;  // unreachable: the loop above ends Ready or with the missing dropped
      std::vector<std::vector<uint8_t>> replies = agg.Finish();
      for (int h = 0; h < m; ++h) {
        Peer* p = chosen[static_cast<size_t>(h)];
        if (!p->alive) continue;
        Status s = p->channel.Send(kFedSecAgg, replies[static_cast<size_t>(h)], Clock::now() + o.phase_timeout);
        if (!s.ok()) drop(p, s);
      }
      if (!agg.open()) {  // the round closed: its Outcome is in every reply
        auto parts = secagg::ParseBundle(replies[0]);
        if (!parts.ok() || parts->size() != 1) return Internal("the aggregator's closing reply is not one Outcome");
        auto oc = secagg::ParseOutcome((*parts)[0]);
        if (!oc.ok()) return oc.status();
        outcome = std::move(oc).value();
      }
    }
    if (!outcome && abort_reason.empty()) abort_reason = "the round did not close";
    if (outcome && outcome->aborted) abort_reason = outcome->reason;
    for (auto& p : push) std::fill(p.begin(), p.end(), 0.0f);
    int survivors = 0;
    if (abort_reason.empty()) {
      if (o.on_sum) o.on_sum(round + 1, outcome->survivors, outcome->ring_bits, outcome->sum);
      // The survivors' updates were weighted n_k / n-bar: divide by their samples / n-bar.
      SHARDPS_RETURN_IF_ERROR(internal::SpreadSum(outcome->sum, outcome->survivors.size(), fp,
                                                  [&](uint64_t count) { return n_bar / static_cast<double>(count); }, push)
                                  .WithContext("round " + std::to_string(round + 1)));
      const uint64_t count = outcome->sum[floats];
      survivors = static_cast<int>(outcome->survivors.size());
      samples += static_cast<int64_t>(count) * fed.local_epochs;
    } else {
      ++result.secagg_aborted;
      if (hooks.on_notice) hooks.on_notice("round " + std::to_string(round + 1) + " aborted, the model is left as it was: " + abort_reason);
    }
    {
      std::vector<Handle> hs;
      for (size_t tb = 0; tb < M; ++tb) hs.push_back(params.PushPull(static_cast<uint32_t>(tb), push[tb], next[tb], static_cast<uint64_t>(round), {}));
      SHARDPS_RETURN_IF_ERROR(internal::WaitAll(params, hs, run.timeout, push, next).WithContext("round " + std::to_string(round + 1)));
      std::swap(w, next);
    }
    train_seconds += Seconds(Clock::now() - t0).count();
    result.secagg_survivors += survivors;
    std::vector<float> counts(internal::kMetricsFloats, 0.0f);
    internal::AddTestCounts(model, w, test, all_test, counts);
    result.test_accuracy = counts[internal::kTested] > 0 ? counts[internal::kCorrect] / counts[internal::kTested] : 0.0;
    result.test_loss = counts[internal::kTested] > 0 ? counts[internal::kTestLoss] / counts[internal::kTested] : 0.0;
    if (hooks.on_metrics) {
      MetricsRow row;
      row.epoch = round;
      row.step = round + 1;
      row.samples = samples;
      row.test_loss = result.test_loss;
      row.test_accuracy = result.test_accuracy;
      row.samples_per_second = train_seconds > 0 ? static_cast<double>(samples) / train_seconds : 0;
      row.wall_seconds = Seconds(Clock::now() - start).count();
      row.clients = m;
      row.survivors = survivors;
      row.secagg_clipped = 0;
      hooks.on_metrics(row);
    }
    if (hooks.on_progress) hooks.on_progress(internal::RoundProgress(round, fed.rounds, result.test_accuracy, m));
  }
  shutdown("training is over");
  result.epochs = fed.rounds;
  result.steps = fed.rounds;
  result.wall_seconds = Seconds(Clock::now() - start).count();
  result.samples_per_second = train_seconds > 0 ? static_cast<double>(samples) / train_seconds : 0;
  result.weights = std::move(w);
  result.weights_sha256 = WeightsSha256(result.weights);
  return result;
}

// ---- Client ----------------------------------------------------------------------------------

Status RunFederatedClient(const Model& model, const Dataset& train, const RunOptions& run, const FedClientOptions& o,
                          Channel& channel) {
  const FederatedOptions& fed = o.fed;
  PartitionOptions po = fed.partition;
  po.seed = run.seed;
  if (o.client < 0 || o.client >= po.clients) {
    return InvalidArgument("client " + std::to_string(o.client) + " is outside [0, " + std::to_string(po.clients) + ")");
  }
  SHARDPS_ASSIGN_OR_RETURN(const Partition part, MakePartition(train.labels, train.num_classes, po));
  const std::vector<int64_t>& mine = part.clients[static_cast<size_t>(o.client)];
  const auto nk = static_cast<uint64_t>(mine.size());
  const std::string me = "client " + std::to_string(o.client);
  std::vector<uint8_t> join;
  PutU32(join, static_cast<uint32_t>(o.client));
  PutU64(join, nk);
  SHARDPS_RETURN_IF_ERROR(channel.Send(kFedJoin, join, Clock::now() + o.reply_timeout).WithContext(me + ": joining"));
  std::vector<uint64_t> shapes;
  for (const TableSpec& t : TrainingTables(model, run)) shapes.push_back(t.size);
  shapes.resize(model.num_tables());
  internal::LocalScratch scratch;
  secagg::SystemRandomSource rng;
  while (true) {
    SHARDPS_ASSIGN_OR_RETURN(Channel::Message msg, channel.Receive(Clock::now() + o.reply_timeout));
    if (msg.type == kFedBye) return Status::Ok();
    if (msg.type == kFedRefused) return FailedPrecondition(me + ": the coordinator refused the join: " + Text(msg.payload));
    if (msg.type != kFedTask) return DataLoss(me + ": expected a TASK or BYE from the coordinator, got message type " + std::to_string(msg.type));
    SHARDPS_ASSIGN_OR_RETURN(const Task task, DecodeTask(msg.payload, shapes));
    const int round = static_cast<int>(task.round);
    SHARDPS_ASSIGN_OR_RETURN(const internal::LocalResult lr,
                             internal::LocalUpdate(model, train, mine, run, fed, round, o.client, task.w, scratch));
    (void)lr;
    const float weight = static_cast<float>(static_cast<double>(nk) / task.n_bar);
    std::vector<float> flat;
    for (const auto& t : scratch.local) {
      for (float d : t) flat.push_back(d * weight);
    }
    const secagg::FixedPoint fp{.clip = static_cast<float>(fed.secagg_clip), .bits = fed.secagg_bits, .ring_bits = task.config.ring_bits};
    SHARDPS_ASSIGN_OR_RETURN(std::vector<uint64_t> q,
                             secagg::Quantize(flat, fp, {.seed = run.seed, .round = task.round, .client = task.id}));
    q.push_back(nk);
    if (q.size() != task.config.vector_length) {
      return DataLoss(me + ": the round aggregates " + std::to_string(task.config.vector_length) + " elements, this client's update has " +
                      std::to_string(q.size()));
    }
    if (o.on_input) o.on_input(round + 1, task.id, q);
    std::vector<secagg::HostedClient> hosted{{.id = task.id, .input = std::move(q), .drop_before = secagg::Phase::kDone}};
    auto exchange = [&](secagg::Phase phase, std::vector<uint8_t> bundle) -> Result<std::vector<uint8_t>> {
      if (o.exit_before_phase == static_cast<int>(phase) && o.exit_round == round + 1) std::raise(SIGKILL);  // test only
      SHARDPS_RETURN_IF_ERROR(channel.Send(kFedSecAgg, bundle, Clock::now() + o.reply_timeout));
      SHARDPS_ASSIGN_OR_RETURN(Channel::Message reply, channel.Receive(Clock::now() + o.reply_timeout));
      if (reply.type == kFedBye) return Unavailable("the coordinator ended training during round " + std::to_string(round + 1) + ": " + Text(reply.payload));
      if (reply.type != kFedSecAgg) return DataLoss("expected a SECAGG reply, got message type " + std::to_string(reply.type));
      return std::move(reply.payload);
    };
    SHARDPS_ASSIGN_OR_RETURN(const secagg::OutcomeMessage outcome, secagg::RunHostedRound(task.config, hosted, rng, exchange));
    (void)outcome;  // the next TASK carries the model it led to
  }
}

}  // namespace shardps::worker
