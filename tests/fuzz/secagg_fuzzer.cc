// libFuzzer target: the secure-aggregation messages (core/secagg messages.h) as a remote peer
// sends them. The input's first byte picks what it is parsed as; the rest is the message's bytes.
//   - Parse must not crash and either succeed or return DATA_LOSS; a message it accepts serializes
//     back to exactly the same bytes (parsing is strict: one encoding per message).
//   - An accepted client message goes to a server of a 3-client round in the phase that takes it
//     (AdvertiseKeys, ShareKeys after every client advertised, ...): its handler must return a
//     status, never crash. An accepted KeyList or RoutedShares goes to a client of that round.
//   - RoundConfig, Outcome and bundles likewise (a RoundConfig may also be refused as
//     INVALID_ARGUMENT by the config check); any bytes as a host's bundle of any phase go to an
//     Aggregator, which must answer with a status.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "shardps/secagg/aggregator.h"
#include "shardps/secagg/client.h"
#include "shardps/secagg/messages.h"
#include "shardps/secagg/random_source.h"
#include "shardps/secagg/server.h"

namespace {

using namespace shardps;
using namespace shardps::secagg;

void Check(bool ok) {
  if (!ok) std::abort();
}

RoundConfig Config() {
  return RoundConfig{.round_id = 7, .threshold = 2, .participants = {1, 2, 3}, .vector_length = 16, .ring_bits = 20};
}

template <typename M>
void RoundTrip(const Result<M>& m, std::span<const uint8_t> bytes) {
  if (!m.ok()) {
    Check(m.status().code() == StatusCode::kDataLoss && !m.status().message().empty());
    return;
  }
  const std::vector<uint8_t> again = Serialize(*m);
  Check(again.size() == bytes.size() && std::equal(again.begin(), again.end(), bytes.begin()));
}

// A server of Config() after every client advertised real keys (phase ShareKeys), and the clients.
struct Advertised {
  std::vector<SecAggClient> clients;
  SecAggServer server;
  KeyListMessage keys;
};

Advertised AdvertiseAll() {
  ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(1);
  auto server = SecAggServer::Create(Config());
  Check(server.ok());
  std::vector<SecAggClient> clients;
  for (ClientId id : Config().participants) {
    auto c = SecAggClient::Create(Config(), id);
    Check(c.ok());
    auto m = c->AdvertiseKeys(rng);
    Check(m.ok() && server->OnAdvertiseKeys(*m).ok());
    clients.push_back(std::move(*c));
  }
  auto keys = server->FinishAdvertiseKeys();
  Check(keys.ok());
  return Advertised{std::move(clients), std::move(*server), std::move(*keys)};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::span<const uint8_t> bytes(data + 1, size - 1);
  switch (data[0] % 10) {
    case 0: {
      auto m = ParseAdvertiseKeys(bytes);
      RoundTrip(m, bytes);
      if (m.ok()) {
        auto server = SecAggServer::Create(Config());
        Check(server.ok());
        (void)server->OnAdvertiseKeys(*m);
      }
      break;
    }
    case 1: {
      auto m = ParseKeyList(bytes);
      RoundTrip(m, bytes);
      if (m.ok()) {
        ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(2);
        auto c = SecAggClient::Create(Config(), 1);
        Check(c.ok() && c->AdvertiseKeys(rng).ok());
        (void)c->ShareKeys(*m, rng);
      }
      break;
    }
    case 2: {
      auto m = ParseShareKeys(bytes);
      RoundTrip(m, bytes);
      if (m.ok()) {
        Advertised a = AdvertiseAll();
        (void)a.server.OnShareKeys(*m);
      }
      break;
    }
    case 3: {
      auto m = ParseRoutedShares(bytes);
      RoundTrip(m, bytes);
      if (m.ok()) {
        Advertised a = AdvertiseAll();
        ChaCha20RandomSource rng = ChaCha20RandomSource::FromSeed(3);
        Check(a.clients[0].ShareKeys(a.keys, rng).ok());
        const std::vector<uint64_t> x(16, 1);
        (void)a.clients[0].MaskInput(*m, x);
      }
      break;
    }
    case 4: {
      auto m = ParseMaskedInput(bytes);
      RoundTrip(m, bytes);
      break;
    }
    case 5: {
      auto m = ParseUnmaskRequest(bytes);
      RoundTrip(m, bytes);
      break;
    }
    case 6: {
      auto m = ParseUnmaskResponse(bytes);
      RoundTrip(m, bytes);
      break;
    }
    case 7: {
      auto m = ParseRoundConfig(bytes);
      if (!m.ok() && m.status().code() == StatusCode::kInvalidArgument) break;  // parsed, then refused by the config check
      RoundTrip(m, bytes);
      break;
    }
    case 8: {
      auto m = ParseOutcome(bytes);
      RoundTrip(m, bytes);
      break;
    }
    default: {
      auto parts = ParseBundle(bytes);
      if (!parts.ok()) {
        Check(parts.status().code() == StatusCode::kDataLoss);
      } else {
        std::vector<std::vector<uint8_t>> copies;
        for (auto p : *parts) copies.emplace_back(p.begin(), p.end());
        const std::vector<uint8_t> again = SerializeBundle(copies);
        Check(again.size() == bytes.size() && std::equal(again.begin(), again.end(), bytes.begin()));
      }
      // Any bytes as host 0's bundle of phase 0 of a fresh aggregator, then of phase 1 after a
      // valid opening by host 1.
      Aggregator agg(2);
      (void)agg.Submit(0, 7, Phase::kAdvertiseKeys, bytes);
      Aggregator opened(2);
      Check(opened.Submit(1, 7, Phase::kAdvertiseKeys, SerializeBundle({Serialize(RoundConfigMessage{Config()})})).ok());
      (void)opened.Submit(0, 7, Phase::kAdvertiseKeys, bytes);
      if (opened.Ready()) {
        (void)opened.Finish();
        (void)opened.Submit(0, 7, Phase::kShareKeys, bytes);
      }
      break;
    }
  }
  return 0;
}
