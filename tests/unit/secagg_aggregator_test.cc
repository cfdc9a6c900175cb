// Secure aggregation through hosts (core/secagg aggregator.h, host.h): hosts relaying several
// clients each, one thread per host as in a job whose worker processes host simulated clients;
// the sum, dropouts at every phase, aborts, and every refusal of the aggregator. Randomness from
// seeded ChaCha20 sources.
#include <gtest/gtest.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "shardps/base/random.h"
#include "shardps/secagg/aggregator.h"
#include "shardps/secagg/client.h"
#include "shardps/secagg/fixed_point.h"
#include "shardps/secagg/host.h"
#include "shardps/secagg/messages.h"
#include "shardps/secagg/random_source.h"

namespace shardps::secagg {
namespace {

#define EXPECT_CONTAINS(text, part)                                              \
  do {                                                                           \
    const std::string agg_text_ = (text);                                        \
    EXPECT_NE(agg_text_.find(part), std::string::npos)                           \
        << "\"" << agg_text_ << "\" does not contain \"" << (part) << "\"";    \
  } while (0)

// The aggregator, shared by host threads: an exchange submits the host's bundle and waits until
// every host has submitted that phase.
class SharedAggregator {
 public:
  SharedAggregator(int hosts, ServerOptions options) : agg_(hosts, options), replies_(static_cast<size_t>(hosts)) {}

  Result<std::vector<uint8_t>> Exchange(int host, uint64_t round, Phase phase, std::vector<uint8_t> bundle) {
    std::unique_lock lock(mu_);
    const uint64_t my_generation = generation_;
    Status s = agg_.Submit(host, round, phase, bundle);
    if (!s.ok()) errors_.push_back(s.message());
    if (agg_.Ready()) {
      replies_ = agg_.Finish();
      ++generation_;
      cv_.notify_all();
    } else if (s.ok()) {
      cv_.wait(lock, [&] { return generation_ != my_generation; });
    }
    if (!s.ok()) return s;
    return replies_[static_cast<size_t>(host)];
  }
  Aggregator& agg() { return agg_; }
  std::vector<std::string> errors() {
    std::lock_guard lock(mu_);
    return errors_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  Aggregator agg_;
  std::vector<std::vector<uint8_t>> replies_;
  uint64_t generation_ = 0;
  std::vector<std::string> errors_;
};

struct RoundSetup {
  RoundConfig config;
  std::map<ClientId, std::vector<uint64_t>> inputs;
};

RoundSetup MakeSetup(int clients, uint32_t t, uint64_t length, uint64_t round) {
  RoundSetup s;
  s.config.round_id = round;
  s.config.threshold = t;
  for (int i = 1; i <= clients; ++i) s.config.participants.push_back(static_cast<ClientId>(i));
  s.config.vector_length = length;
  s.config.ring_bits = 20;
  for (ClientId id : s.config.participants) {
    std::vector<uint64_t> x(length);
    for (uint64_t i = 0; i < length; ++i) x[i] = SplitMix64(round * 1000 + id * 7919 + i) & RingMask(20);
    s.inputs[id] = std::move(x);
  }
  return s;
}

// Runs one round: client id goes to host (id - 1) mod hosts; drops[id] is its drop_before.
std::vector<Result<OutcomeMessage>> RunRound(SharedAggregator& shared, const RoundSetup& s, int hosts,
                                             const std::map<ClientId, Phase>& drops) {
  std::vector<Result<OutcomeMessage>> outcomes(static_cast<size_t>(hosts), Status(StatusCode::kInternal, "not run"));
  std::vector<std::thread> threads;
  for (int h = 0; h < hosts; ++h) {
    threads.emplace_back([&, h] {
      std::vector<HostedClient> mine;
      for (const auto& [id, x] : s.inputs) {
        if (static_cast<int>((id - 1) % static_cast<ClientId>(hosts)) != h) continue;
        HostedClient c{.id = id, .input = x};
        if (auto d = drops.find(id); d != drops.end()) c.drop_before = d->second;
        mine.push_back(std::move(c));
      }
      ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(100 + static_cast<uint64_t>(h));
      outcomes[static_cast<size_t>(h)] =
          RunHostedRound(s.config, mine, rng, [&](Phase phase, std::vector<uint8_t> bundle) {
            return shared.Exchange(h, s.config.round_id, phase, std::move(bundle));
          });
    });
  }
  for (auto& t : threads) t.join();
  return outcomes;
}

std::vector<uint64_t> PlainSum(const RoundSetup& s, const std::set<ClientId>& who) {
  std::vector<uint64_t> sum(s.config.vector_length, 0);
  for (ClientId id : who) {
    for (size_t i = 0; i < sum.size(); ++i) sum[i] = (sum[i] + s.inputs.at(id)[i]) & RingMask(s.config.ring_bits);
  }
  return sum;
}

TEST(SecAggAggregator, ThreeHostsOfTenClientsLearnTheExactSumAndTheServerOnlyMaskedInputs) {
  const RoundSetup s = MakeSetup(10, 7, 257, 5);
  SharedAggregator shared(3, {.retain_masked_inputs_for_testing = true});
  auto outcomes = RunRound(shared, s, 3, {});
  std::set<ClientId> all(s.config.participants.begin(), s.config.participants.end());
  for (auto& o : outcomes) {
    ASSERT_TRUE(o.ok()) << o.status().ToString();
    EXPECT_FALSE(o->aborted) << o->reason;
    EXPECT_EQ(o->survivors, s.config.participants);
    EXPECT_EQ(o->sum, PlainSum(s, all));
  }
  EXPECT_TRUE(shared.errors().empty());
  EXPECT_EQ(shared.agg().rounds_completed(), 1u);
  EXPECT_FALSE(shared.agg().open());
  const SecAggServer* server = shared.agg().server_for_testing();
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(server->masked_inputs_for_testing().size(), 10u);
  for (const auto& [id, y] : server->masked_inputs_for_testing()) {
    size_t equal = 0;
    for (size_t i = 0; i < y.size(); ++i) equal += y[i] == s.inputs.at(id)[i];
    EXPECT_LT(equal, 5u) << "client " << id << "'s masked input matches its clear input in " << equal << " places";
  }
}

TEST(SecAggAggregator, ClientsDroppingAtEachPhaseLeaveTheSurvivorsExactSum) {
  for (Phase phase : {Phase::kAdvertiseKeys, Phase::kShareKeys, Phase::kMaskedInputCollection, Phase::kUnmasking}) {
    SCOPED_TRACE(std::string(PhaseName(phase)));
    const RoundSetup s = MakeSetup(10, 6, 100, 40 + static_cast<uint64_t>(phase));
    SharedAggregator shared(3, {});
    // n - t = 4 drop: clients 2, 3, 5, 9 (on all three hosts).
    const std::map<ClientId, Phase> drops{{2, phase}, {3, phase}, {5, phase}, {9, phase}};
    auto outcomes = RunRound(shared, s, 3, drops);
    std::set<ClientId> expected(s.config.participants.begin(), s.config.participants.end());
    // A client that drops before Unmasking has its masked input in the sum already.
    if (phase != Phase::kUnmasking) {
      for (const auto& [id, p] : drops) expected.erase(id);
    }
    for (auto& o : outcomes) {
      ASSERT_TRUE(o.ok()) << o.status().ToString();
      ASSERT_FALSE(o->aborted) << o->reason;
      EXPECT_EQ(std::set<ClientId>(o->survivors.begin(), o->survivors.end()), expected);
      EXPECT_EQ(o->sum, PlainSum(s, expected));
    }
    EXPECT_TRUE(shared.errors().empty());
  }
}

TEST(SecAggAggregator, TooFewSurvivorsAbortTheRoundForEveryHostAndRevealNoSum) {
  const RoundSetup s = MakeSetup(10, 6, 64, 77);
  SharedAggregator shared(3, {});
  std::map<ClientId, Phase> drops;
  for (ClientId id : {1u, 2u, 3u, 4u, 5u}) drops[id] = Phase::kMaskedInputCollection;  // n - t + 1
  auto outcomes = RunRound(shared, s, 3, drops);
  for (auto& o : outcomes) {
    ASSERT_TRUE(o.ok()) << o.status().ToString();
    EXPECT_TRUE(o->aborted);
    EXPECT_TRUE(o->sum.empty());
    EXPECT_CONTAINS(o->reason, "6");
    EXPECT_CONTAINS(o->reason, "5");
  }
  EXPECT_EQ(shared.agg().rounds_aborted(), 1u);
  EXPECT_FALSE(shared.agg().open());
  // The next round opens afresh.
  const RoundSetup next = MakeSetup(10, 6, 64, 78);
  auto again = RunRound(shared, next, 3, {});
  std::set<ClientId> all(next.config.participants.begin(), next.config.participants.end());
  for (auto& o : again) {
    ASSERT_TRUE(o.ok()) << o.status().ToString();
    EXPECT_EQ(o->sum, PlainSum(next, all));
  }
}

TEST(SecAggAggregator, HostWithEveryClientDroppedStillClosesEachPhase) {
  const RoundSetup s = MakeSetup(6, 3, 16, 9);
  SharedAggregator shared(3, {});
  // Host 0 holds clients 1 and 4: both silent from the start.
  auto outcomes = RunRound(shared, s, 3, {{1, Phase::kAdvertiseKeys}, {4, Phase::kAdvertiseKeys}});
  for (auto& o : outcomes) {
    ASSERT_TRUE(o.ok()) << o.status().ToString();
    ASSERT_FALSE(o->aborted) << o->reason;
    EXPECT_EQ(o->sum, PlainSum(s, {2, 3, 5, 6}));
  }
}

std::vector<uint8_t> Phase0Bundle(const RoundConfig& c, const std::vector<ClientId>& ids, uint64_t seed) {
  std::vector<std::vector<uint8_t>> out{Serialize(RoundConfigMessage{c})};
  ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(seed);
  for (ClientId id : ids) {
    auto client = SecAggClient::Create(c, id);
    EXPECT_TRUE(client.ok());
    auto m = client->AdvertiseKeys(rng);
    EXPECT_TRUE(m.ok());
    out.push_back(Serialize(*m));
  }
  return SerializeBundle(out);
}

TEST(SecAggAggregator, RefusesOutOfStepDuplicateMismatchedAndForeignBundles) {
  const RoundSetup s = MakeSetup(4, 2, 8, 3);
  Aggregator agg(2);
  // No round open: a later phase is refused.
  Status st = agg.Submit(0, 3, Phase::kShareKeys, SerializeBundle({}));
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(st.message(), "no round is open");
  // Malformed bytes.
  st = agg.Submit(0, 3, Phase::kAdvertiseKeys, std::vector<uint8_t>{1, 2, 3});
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  // The config must be first.
  st = agg.Submit(0, 3, Phase::kAdvertiseKeys, SerializeBundle({}));
  EXPECT_CONTAINS(st.message(), "RoundConfig");
  ASSERT_TRUE(agg.Submit(0, 3, Phase::kAdvertiseKeys, Phase0Bundle(s.config, {1, 3}, 1)).ok());
  // A second bundle from host 0.
  st = agg.Submit(0, 3, Phase::kAdvertiseKeys, Phase0Bundle(s.config, {}, 2));
  EXPECT_CONTAINS(st.message(), "second bundle");
  // Another round, or another phase, while this one is open.
  st = agg.Submit(1, 4, Phase::kAdvertiseKeys, Phase0Bundle(s.config, {2, 4}, 3));
  EXPECT_CONTAINS(st.message(), "out of step");
  st = agg.Submit(1, 3, Phase::kShareKeys, SerializeBundle({}));
  EXPECT_CONTAINS(st.message(), "out of step");
  // A config that differs.
  RoundConfig other = s.config;
  other.threshold = 3;
  st = agg.Submit(1, 3, Phase::kAdvertiseKeys, Phase0Bundle(other, {2, 4}, 4));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(st.message(), "differs from the round's");
  EXPECT_TRUE(agg.Ready());  // the refused bundle counts as host 1's
  std::vector<std::vector<uint8_t>> keys = agg.Finish();
  ASSERT_EQ(keys.size(), 2u);
  // Phase 1: host 1 relays a ShareKeys of client 1, which host 0 advertised.
  auto kl = ParseBundle(keys[1]);
  ASSERT_TRUE(kl.ok());
  auto key_list = ParseKeyList((*kl)[0]);
  ASSERT_TRUE(key_list.ok());
  EXPECT_EQ(key_list->clients.size(), 2u);
  ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(9);
  auto c1 = SecAggClient::Create(s.config, 1);
  ASSERT_TRUE(c1.ok());
  ASSERT_TRUE(c1->AdvertiseKeys(rng).ok());
  // (c1's fresh keys differ from those advertised, so the client itself refuses the key list.)
  EXPECT_FALSE(c1->ShareKeys(*key_list, rng).ok());
  ShareKeysMessage forged{.round = 3, .from = 1, .shares = {}};
  st = agg.Submit(1, 3, Phase::kShareKeys, SerializeBundle({Serialize(forged)}));
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(st.message(), "did not advertise its keys through this host");
  // A message of another phase inside a bundle.
  st = agg.Submit(0, 3, Phase::kShareKeys, SerializeBundle({Serialize(UnmaskRequestMessage{.round = 3})}));
  EXPECT_CONTAINS(st.message(), "does not belong to this phase");
  // Both hosts answered; with no ShareKeys accepted the round aborts (U2 < t).
  ASSERT_TRUE(agg.Ready());
  auto end = agg.Finish();
  auto b = ParseBundle(end[0]);
  ASSERT_TRUE(b.ok());
  auto outcome = ParseOutcome((*b)[0]);
  ASSERT_TRUE(outcome.ok());
  EXPECT_TRUE(outcome->aborted);
  EXPECT_EQ(agg.rounds_aborted(), 1u);
  // A host index out of range.
  EXPECT_EQ(agg.Submit(2, 5, Phase::kAdvertiseKeys, Phase0Bundle(s.config, {}, 5)).code(), StatusCode::kInvalidArgument);
}

TEST(SecAggAggregator, ResetAbandonsTheOpenRound) {
  const RoundSetup s = MakeSetup(4, 2, 8, 11);
  Aggregator agg(2);
  ASSERT_TRUE(agg.Submit(0, 11, Phase::kAdvertiseKeys, Phase0Bundle(s.config, {1, 3}, 1)).ok());
  EXPECT_EQ(agg.Missing(), std::vector<int>{1});
  agg.Reset();
  EXPECT_FALSE(agg.open());
  ASSERT_TRUE(agg.Submit(1, 12, Phase::kAdvertiseKeys, Phase0Bundle(MakeSetup(4, 2, 8, 12).config, {2}, 2)).ok());
  EXPECT_EQ(agg.round(), 12u);
}

TEST(SecAggAggregator, ADroppedHostNoLongerHoldsUpAPhaseAndIsRefusedAfterwards) {
  const RoundSetup s = MakeSetup(4, 2, 8, 13);
  Aggregator agg(3);
  agg.Drop(2);  // gone before the round opened (its connection closed)
  ASSERT_TRUE(agg.Submit(0, 13, Phase::kAdvertiseKeys, Phase0Bundle(s.config, {1, 4}, 1)).ok());
  EXPECT_FALSE(agg.Ready());
  ASSERT_TRUE(agg.Submit(1, 13, Phase::kAdvertiseKeys, Phase0Bundle(s.config, {2}, 2)).ok());
  EXPECT_TRUE(agg.Ready());
  (void)agg.Finish();
  EXPECT_EQ(agg.Missing(), (std::vector<int>{0, 1}));
  agg.Drop(1);  // misses phase 1
  EXPECT_EQ(agg.Missing(), std::vector<int>{0});
  Status st = agg.Submit(2, 13, Phase::kShareKeys, SerializeBundle({}));
  EXPECT_CONTAINS(st.message(), "dropped from this round");
}

TEST(SecAggAggregator, ARestrictedHostSpeaksOnlyForItsClients) {
  const RoundSetup s = MakeSetup(4, 2, 8, 17);
  Aggregator agg(2);
  agg.RestrictHost(0, {1});
  Status st = agg.Submit(0, 17, Phase::kAdvertiseKeys, Phase0Bundle(s.config, {2}, 1));
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(st.message(), "may not speak for client 2");
  ASSERT_TRUE(agg.Submit(1, 17, Phase::kAdvertiseKeys, Phase0Bundle(s.config, {2, 3}, 2)).ok());  // host 1 is not restricted
}

TEST(SecAggMessages, RoundConfigOutcomeAndBundleRoundTripAndRefuseTruncation) {
  const RoundSetup s = MakeSetup(5, 3, 33, 21);
  const std::vector<uint8_t> cb = Serialize(RoundConfigMessage{s.config});
  auto c = ParseRoundConfig(cb);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->config.participants, s.config.participants);
  EXPECT_EQ(c->config.threshold, 3u);
  EXPECT_EQ(c->config.vector_length, 33u);
  EXPECT_EQ(c->config.ring_bits, 20);
  for (size_t n = 0; n < cb.size(); ++n) {
    EXPECT_FALSE(ParseRoundConfig(std::span<const uint8_t>(cb).first(n)).ok()) << n;
  }
  RoundConfig bad = s.config;
  bad.threshold = 1;
  EXPECT_EQ(ParseRoundConfig(Serialize(RoundConfigMessage{bad})).status().code(), StatusCode::kInvalidArgument);

  OutcomeMessage o{.round = 21, .aborted = false, .reason = {}, .survivors = {1, 4}, .ring_bits = 20,
                   .sum = s.inputs.at(2)};
  const std::vector<uint8_t> ob = Serialize(o);
  auto p = ParseOutcome(ob);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->sum, o.sum);
  EXPECT_EQ(p->survivors, o.survivors);
  for (size_t n = 0; n < ob.size(); ++n) EXPECT_FALSE(ParseOutcome(std::span<const uint8_t>(ob).first(n)).ok()) << n;
  auto a = ParseOutcome(Serialize(OutcomeMessage{.round = 21, .aborted = true, .reason = "needed 3, 2 remained"}));
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->aborted);
  EXPECT_EQ(a->reason, "needed 3, 2 remained");

  const std::vector<uint8_t> bb = SerializeBundle({cb, ob, {}});
  auto parts = ParseBundle(bb);
  ASSERT_TRUE(parts.ok());
  ASSERT_EQ(parts->size(), 3u);
  EXPECT_TRUE(std::equal((*parts)[1].begin(), (*parts)[1].end(), ob.begin(), ob.end()));
  EXPECT_TRUE((*parts)[2].empty());
  for (size_t n = 0; n < bb.size(); ++n) EXPECT_FALSE(ParseBundle(std::span<const uint8_t>(bb).first(n)).ok()) << n;
  std::vector<uint8_t> trailing = bb;
  trailing.push_back(0);
  EXPECT_CONTAINS(ParseBundle(trailing).status().message(), "trailing");
  std::vector<uint8_t> huge = SerializeBundle({});
  huge[4] = 0xff;
  huge[5] = 0xff;
  EXPECT_CONTAINS(ParseBundle(huge).status().message(), "exceed the limit");
}

}  // namespace
}  // namespace shardps::secagg
