// shardps secagg-bench: what one round of secure aggregation (core/secagg, Bonawitz et al. 2017)
// costs, in time and in bytes, for n clients each holding a vector of V floats.
//
// What runs. Each of --rounds rounds is a fresh round (its own round id, fresh keys, fresh update
// vectors) of the whole protocol of round.h, in this one process, without threads: n SecAggClient
// and one SecAggServer, every message serialized to bytes and parsed back, as a network would carry
// them (a broadcast message is serialized once and parsed by every recipient). --dropouts clients
// drop after ShareKeys (they sent their shares, never their masked input), so the server recovers
// their pairwise masks from the shares of their s_sk: the costly case of the unmasking.
//
// What is measured (std::chrono::steady_clock):
//   client, per phase: (0) Create + AdvertiseKeys + serialize; (1) parse the key list + ShareKeys
//     + serialize; (2) parse the routed shares + Quantize (fixed_point.h) + MaskInput + serialize;
//     (3) parse the unmask request + Unmask + serialize. Reported as the sum over the clients
//     (what n clients spend together: median over rounds) and per client (median over every
//     client of every round).
//   server, per phase: parse and accept each client's message (the On* calls) + the phase's Finish
//     + serializing what it sends; the last phase, unmasking, is the reconstruction of the dropped
//     clients' s_sk and the survivors' b from their shares and the removal of every mask from the
//     sum. Dequantizing the sum is its own line.
//   round: every timed piece above, added up; that is the round's wall time in this process, where
//     the clients run one after another. What it would take with every client on its own machine
//     is estimated as the sum over the phases of (the slowest client + the server); the network's
//     own latency and bandwidth are not modelled.
//   Not timed: drawing the clients' update vectors (the stand-in for training) and the check.
//   bytes: every byte each client uploads (AdvertiseKeys + ShareKeys + MaskedInput +
//     UnmaskResponse) and downloads (KeyList + RoutedShares + UnmaskRequest), for a client that
//     stays to the end, next to the clear quantized vector (ceil(V x bits / 8) bytes) and to float32
//     (V x 4 bytes).
//
// The check, every round: the unmasked sum must equal the plain sum mod 2^m of the survivors'
// quantized vectors exactly, and its dequantized floats must lie within k steps (k = survivors,
// step = clip / (2^(bits-1) - 1)) of the sum of their float vectors; otherwise the command fails.
//
// Randomness. The update vectors are floats in [-clip, clip) from SplitMix64 (base/random.h), keyed
// by (seed, round, client). Keys and self-mask seeds come from ChaCha20RandomSource::FromSeed (the
// tests' deterministic source, so a run is reproducible) unless --system-random asks for
// SystemRandomSource (OpenSSL's RAND_bytes), which production uses.
#include <algorithm>
#include <array>
#include <boost/program_options.hpp>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <limits>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "shardps/base/random.h"
#include "shardps/base/status.h"
#include "shardps/secagg/client.h"
#include "shardps/secagg/fixed_point.h"
#include "shardps/secagg/messages.h"
#include "shardps/secagg/random_source.h"
#include "shardps/secagg/round.h"
#include "shardps/secagg/server.h"

namespace shardps::tools {
namespace {

namespace po = boost::program_options;
using secagg::ClientId;
using secagg::MessageType;
using Clock = std::chrono::steady_clock;

// ---- Flags -----------------------------------------------------------------------------------

struct SecAggBenchFlags {
  int64_t clients = 10;
  int64_t threshold = 0;  // 0: floor(2n/3) + 1, at least 2
  int64_t values = 203530;  // the 784-256-10 MLP's parameters
  int64_t bits = 16;
  double clip = 1.0;
  int64_t dropouts = 0;
  int64_t rounds = 5;
  uint64_t seed = 1;
  bool system_random = false;
};

// The flags, checked before any work; OUT_OF_RANGE carries the help text for --help.
Result<SecAggBenchFlags> ParseSecAggBenchFlags(int argc, char** argv) {
  SecAggBenchFlags f;
  std::string seed = std::to_string(f.seed);
  po::options_description desc(
      "usage: shardps secagg-bench [flags]\n"
      "times one secure-aggregation round (core/secagg) in one process, every message through its bytes,\n"
      "counts each client's bytes, and checks that the unmasked sum is exact\nflags");
  desc.add_options()("help,h", "this text")                                                              //
      ("clients", po::value(&f.clients)->default_value(f.clients), "n: clients in the round, in [2, 255]")  //
      ("threshold", po::value(&f.threshold), "t: the Shamir threshold, in [2, n] (default floor(2n/3) + 1)")  //
      ("values", po::value(&f.values)->default_value(f.values), "V: floats per client (203530: the 784-256-10 MLP)")  //
      ("bits", po::value(&f.bits)->default_value(f.bits), "quantization bits, in [2, 32]; the ring has bits + ceil(log2 n)")  //
      ("clip", po::value(&f.clip)->default_value(f.clip, "1.0"), "c: values are drawn in [-c, c) and clipped there")  //
      ("dropouts", po::value(&f.dropouts)->default_value(f.dropouts),
       "clients that drop after ShareKeys (their masks are recovered from shares), at most n - t")  //
      ("rounds", po::value(&f.rounds)->default_value(f.rounds), "rounds, each with fresh keys")        //
      ("seed", po::value(&seed)->default_value(seed), "seed of the update vectors and the deterministic keys")  //
      ("system-random", po::bool_switch(&f.system_random), "draw keys from SystemRandomSource (production's)");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    return InvalidArgument(std::string(e.what()) + " (shardps secagg-bench --help lists the flags)");
  }
  if (vm.count("help")) {
    std::ostringstream s;
    s << desc;
    return OutOfRange(s.str());
  }
  {
    // Digits only: the option parser would wrap "-1" around to 2^64 - 1.
    const auto [p, ec] = std::from_chars(seed.data(), seed.data() + seed.size(), f.seed);
    if (seed.empty() || seed.front() == '-' || seed.front() == '+' || ec != std::errc() || p != seed.data() + seed.size()) {
      return InvalidArgument("--seed must be an integer in [0, 2^64 - 1], got '" + seed + "'");
    }
  }
  auto got = [](auto v) { return ", got " + std::to_string(v); };
  if (f.clients < 2 || f.clients > static_cast<int64_t>(secagg::kMaxClients)) {
    return InvalidArgument("--clients must be in [2, " + std::to_string(secagg::kMaxClients) + "]" + got(f.clients));
  }
  if (!vm.count("threshold")) f.threshold = std::max<int64_t>(2, 2 * f.clients / 3 + 1);
  if (f.threshold < 2 || f.threshold > f.clients) {
    return InvalidArgument("--threshold must be in [2, --clients = " + std::to_string(f.clients) + "]" + got(f.threshold));
  }
  if (f.dropouts < 0 || f.dropouts > f.clients - f.threshold) {
    return InvalidArgument("--dropouts must be in [0, clients - threshold = " + std::to_string(f.clients - f.threshold) +
                           "] (more would abort the round)" + got(f.dropouts));
  }
  if (f.bits < secagg::kMinQuantizationBits || f.bits > secagg::kMaxQuantizationBits) {
    return InvalidArgument("--bits must be in [" + std::to_string(secagg::kMinQuantizationBits) + ", " +
                           std::to_string(secagg::kMaxQuantizationBits) + "] (fixed_point.h)" + got(f.bits));
  }
  const int bits = static_cast<int>(f.bits);
  if (Status s = secagg::CheckRing(f.clients, bits, secagg::RingBits(f.clients, bits)); !s.ok()) {
    return InvalidArgument("--bits " + std::to_string(f.bits) + ": " + s.message());
  }
  if (f.values < 1 || static_cast<uint64_t>(f.values) > secagg::kMaxVectorLength) {
    return InvalidArgument("--values must be in [1, " + std::to_string(secagg::kMaxVectorLength) + "]" + got(f.values));
  }
  if (!std::isfinite(f.clip) || f.clip <= 0 || f.clip > std::numeric_limits<float>::max()) {
    std::ostringstream clip;
    clip << f.clip;
    return InvalidArgument("--clip must be a positive finite float, got " + clip.str());
  }
  if (f.rounds < 1 || f.rounds > 1'000'000) return InvalidArgument("--rounds must be in [1, 1000000]" + got(f.rounds));
  return f;
}

// ---- One round -------------------------------------------------------------------------------

constexpr int kPhases = 4;  // AdvertiseKeys, ShareKeys, MaskedInputCollection, Unmasking
constexpr const char* kPhaseLabels[kPhases] = {"(0) advertise keys", "(1) share keys", "(2) quantize + mask",
                                               "(3) unmask"};

// Message types index these; 0 is unused.
using ByteCounts = std::array<uint64_t, 8>;
constexpr MessageType kUploads[] = {MessageType::kAdvertiseKeys, MessageType::kShareKeys, MessageType::kMaskedInput,
                                    MessageType::kUnmaskResponse};
constexpr MessageType kDownloads[] = {MessageType::kKeyList, MessageType::kRoutedShares, MessageType::kUnmaskRequest};

uint64_t Total(const ByteCounts& b, std::span<const MessageType> types) {
  uint64_t sum = 0;
  for (MessageType t : types) sum += b[static_cast<size_t>(t)];
  return sum;
}

// What one round measured.
struct RoundResult {
  std::array<std::vector<double>, kPhases> client;  // seconds, one entry per client that did the phase
  std::array<double, kPhases> server{};             // seconds
  double dequantize = 0;                            // seconds, server side
  double round = 0;                                 // every timed piece, added up
  double parallel = 0;                              // sum over phases of (slowest client + server)
  ByteCounts survivor_bytes{};                      // by message type, a client that stayed to the end
  uint64_t server_received = 0, server_sent = 0;    // every byte, every client
  size_t survivors = 0;
  double worst_error_steps = 0;                     // of the dequantized sum, in quantization steps
  double bound_steps = 0;                           // what the check allows, in steps
};

// Times the pieces of a round and adds each to the phase and actor it belongs to.
class PhaseTimer {
 public:
  explicit PhaseTimer(RoundResult* r) : r_(r) {}
  // Runs `f` and charges its time to client phase `phase` (one entry per call) or to the server.
  template <typename F>
  auto Client(int phase, F&& f) {
    const auto t0 = Clock::now();
    auto out = f();
    r_->client[phase].push_back(Seconds(t0));
    return out;
  }
  template <typename F>
  auto Server(int phase, F&& f) {
    const auto t0 = Clock::now();
    auto out = f();
    r_->server[phase] += Seconds(t0);
    return out;
  }

 private:
  static double Seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
  RoundResult* r_;
};

// Client `id`'s update vector of round `round`: V floats in [-clip, clip), counter-based so any
// client's vector can be drawn alone and again.
std::vector<float> UpdateVector(uint64_t seed, uint64_t round, ClientId id, uint64_t n, float clip) {
  const uint64_t key = SplitMix64(SplitMix64(SplitMix64(seed ^ 0x7365636167672d62ull) ^ round) ^ id);
  std::vector<float> out(n);
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t r = SplitMix64(key + i * 0x9E3779B97F4A7C15ull) >> 40;  // 24 bits: exact in a float
    out[i] = clip * (static_cast<float>(r) * (2.0f / 16777216.0f) - 1.0f);
  }
  return out;
}

// The `count` clients that drop after ShareKeys: a seeded shuffle of 1..n, the same every round.
std::vector<ClientId> PickDropouts(uint64_t n, uint64_t count, uint64_t seed) {
  std::vector<ClientId> ids(n);
  for (uint64_t i = 0; i < n; ++i) ids[i] = static_cast<ClientId>(i + 1);
  uint64_t state = SplitMix64(seed ^ 0x64726f706f757473ull);  // "dropouts"
  for (uint64_t i = n - 1; i > 0; --i) {
    state = SplitMix64(state);
    std::swap(ids[i], ids[state % (i + 1)]);
  }
  ids.resize(count);
  std::sort(ids.begin(), ids.end());
  return ids;
}

// Bytes as the server would receive them: the header names the expected type, then the parser.
template <typename T>
Result<T> Receive(const std::vector<uint8_t>& bytes, MessageType expected, Result<T> (*parse)(std::span<const uint8_t>)) {
  SHARDPS_ASSIGN_OR_RETURN(MessageType type, secagg::PeekMessageType(bytes));
  if (type != expected) {
    return DataLoss("expected a " + std::string(secagg::MessageTypeName(expected)) + " message, got a " +
                    std::string(secagg::MessageTypeName(type)));
  }
  return parse(bytes);
}

Status RunRound(const SecAggBenchFlags& f, uint64_t round_id, const std::vector<ClientId>& dropouts, RoundResult* out) {
  const uint64_t n = static_cast<uint64_t>(f.clients), len = static_cast<uint64_t>(f.values);
  const int bits = static_cast<int>(f.bits);
  secagg::RoundConfig config;
  config.round_id = round_id;
  config.threshold = static_cast<uint32_t>(f.threshold);
  for (ClientId id = 1; id <= n; ++id) config.participants.push_back(id);
  config.vector_length = len;
  config.ring_bits = secagg::RingBits(n, bits);
  const secagg::FixedPoint fp{.clip = static_cast<float>(f.clip), .bits = bits, .ring_bits = config.ring_bits};
  const uint64_t ring_mask = secagg::RingMask(config.ring_bits);
  auto dropped = [&](ClientId id) { return std::binary_search(dropouts.begin(), dropouts.end(), id); };

  PhaseTimer time(out);
  std::vector<ByteCounts> bytes(n + 1);  // by client id
  auto uploaded = [&](ClientId id, MessageType t, const std::vector<uint8_t>& b) {
    bytes[id][static_cast<size_t>(t)] += b.size();
    out->server_received += b.size();
  };
  auto downloaded = [&](ClientId id, MessageType t, const std::vector<uint8_t>& b) {
    bytes[id][static_cast<size_t>(t)] += b.size();
    out->server_sent += b.size();
  };

  // Keys and self-mask seeds: each client its own source (RandomSource is not thread-safe, and a
  // real client draws from its own machine).
  std::vector<std::unique_ptr<secagg::RandomSource>> rng(n + 1);
  for (ClientId id = 1; id <= n; ++id) {
    if (f.system_random) {
      rng[id] = std::make_unique<secagg::SystemRandomSource>();
    } else {
      rng[id] = std::make_unique<secagg::ChaCha20RandomSource>(
          secagg::ChaCha20RandomSource::FromSeed(SplitMix64(SplitMix64(f.seed) ^ (round_id << 8 | id))));
    }
  }

  // (0) AdvertiseKeys: each client draws its key pairs; the server broadcasts U1's keys.
  auto server = time.Server(0, [&] { return secagg::SecAggServer::Create(config); });
  SHARDPS_RETURN_IF_ERROR(server.status());
  std::vector<std::unique_ptr<secagg::SecAggClient>> clients(n + 1);
  for (ClientId id = 1; id <= n; ++id) {
    auto sent = time.Client(0, [&]() -> Result<std::vector<uint8_t>> {
      SHARDPS_ASSIGN_OR_RETURN(secagg::SecAggClient c, secagg::SecAggClient::Create(config, id));
      clients[id] = std::make_unique<secagg::SecAggClient>(std::move(c));
      SHARDPS_ASSIGN_OR_RETURN(secagg::AdvertiseKeysMessage m, clients[id]->AdvertiseKeys(*rng[id]));
      return secagg::Serialize(m);
    });
    SHARDPS_RETURN_IF_ERROR(sent.status());
    uploaded(id, MessageType::kAdvertiseKeys, *sent);
    SHARDPS_RETURN_IF_ERROR(time.Server(0, [&] {
      auto m = Receive(*sent, MessageType::kAdvertiseKeys, secagg::ParseAdvertiseKeys);
      return m.ok() ? server->OnAdvertiseKeys(*m) : m.status();
    }));
  }
  auto key_list = time.Server(0, [&]() -> Result<std::vector<uint8_t>> {
    SHARDPS_ASSIGN_OR_RETURN(secagg::KeyListMessage m, server->FinishAdvertiseKeys());
    return secagg::Serialize(m);
  });
  SHARDPS_RETURN_IF_ERROR(key_list.status());

  // (1) ShareKeys: every client shares s_sk and b_u among U1; the server routes the ciphertexts.
  for (ClientId id = 1; id <= n; ++id) {
    downloaded(id, MessageType::kKeyList, *key_list);
    auto sent = time.Client(1, [&]() -> Result<std::vector<uint8_t>> {
      SHARDPS_ASSIGN_OR_RETURN(secagg::KeyListMessage keys, secagg::ParseKeyList(*key_list));
      SHARDPS_ASSIGN_OR_RETURN(secagg::ShareKeysMessage m, clients[id]->ShareKeys(keys, *rng[id]));
      return secagg::Serialize(m);
    });
    SHARDPS_RETURN_IF_ERROR(sent.status());
    uploaded(id, MessageType::kShareKeys, *sent);
    SHARDPS_RETURN_IF_ERROR(time.Server(1, [&] {
      auto m = Receive(*sent, MessageType::kShareKeys, secagg::ParseShareKeys);
      return m.ok() ? server->OnShareKeys(*m) : m.status();
    }));
  }
  auto routed = time.Server(1, [&]() -> Result<std::vector<std::vector<uint8_t>>> {
    SHARDPS_ASSIGN_OR_RETURN(std::vector<secagg::RoutedSharesMessage> r, server->FinishShareKeys());
    std::vector<std::vector<uint8_t>> wire(n + 1);
    for (const secagg::RoutedSharesMessage& m : r) wire[m.to] = secagg::Serialize(m);
    return wire;
  });
  SHARDPS_RETURN_IF_ERROR(routed.status());

  // (2) MaskedInputCollection: the clients that stay quantize and mask their update; the server
  // adds each masked input into its sum. Next to it, untimed, the plain sums the check needs.
  std::vector<uint64_t> plain(len, 0);
  std::vector<double> float_sum(len, 0.0);
  std::vector<ClientId> survivors;
  for (ClientId id = 1; id <= n; ++id) {
    if (dropped(id)) continue;  // sent its shares, never its masked input
    survivors.push_back(id);
    const std::vector<uint8_t>& shares = (*routed)[id];
    downloaded(id, MessageType::kRoutedShares, shares);
    const std::vector<float> x = UpdateVector(f.seed, round_id, id, len, fp.clip);  // "training": untimed
    std::vector<uint64_t> q;
    auto sent = time.Client(2, [&]() -> Result<std::vector<uint8_t>> {
      SHARDPS_ASSIGN_OR_RETURN(secagg::RoutedSharesMessage r, secagg::ParseRoutedShares(shares));
      SHARDPS_ASSIGN_OR_RETURN(q, secagg::Quantize(x, fp, {.seed = f.seed, .round = round_id, .client = id}));
      SHARDPS_ASSIGN_OR_RETURN(secagg::MaskedInputMessage m, clients[id]->MaskInput(r, q));
      return secagg::Serialize(m);
    });
    SHARDPS_RETURN_IF_ERROR(sent.status());
    for (uint64_t i = 0; i < len; ++i) {
      plain[i] = (plain[i] + q[i]) & ring_mask;
      float_sum[i] += x[i];  // x is within [-clip, clip): clipping leaves it as it is
    }
    uploaded(id, MessageType::kMaskedInput, *sent);
    SHARDPS_RETURN_IF_ERROR(time.Server(2, [&] {
      auto m = Receive(*sent, MessageType::kMaskedInput, secagg::ParseMaskedInput);
      return m.ok() ? server->OnMaskedInput(*m) : m.status();
    }));
  }
  auto request = time.Server(2, [&]() -> Result<std::vector<uint8_t>> {
    SHARDPS_ASSIGN_OR_RETURN(secagg::UnmaskRequestMessage m, server->FinishMaskedInput());
    return secagg::Serialize(m);
  });
  SHARDPS_RETURN_IF_ERROR(request.status());

  // (3) Unmasking: each survivor reveals its shares of the survivors' b and the dropped clients'
  // s_sk; the server reconstructs them and removes every mask from the sum.
  for (ClientId id : survivors) {
    downloaded(id, MessageType::kUnmaskRequest, *request);
    auto sent = time.Client(3, [&]() -> Result<std::vector<uint8_t>> {
      SHARDPS_ASSIGN_OR_RETURN(secagg::UnmaskRequestMessage q, secagg::ParseUnmaskRequest(*request));
      SHARDPS_ASSIGN_OR_RETURN(secagg::UnmaskResponseMessage m, clients[id]->Unmask(q));
      return secagg::Serialize(m);
    });
    SHARDPS_RETURN_IF_ERROR(sent.status());
    uploaded(id, MessageType::kUnmaskResponse, *sent);
    SHARDPS_RETURN_IF_ERROR(time.Server(3, [&] {
      auto m = Receive(*sent, MessageType::kUnmaskResponse, secagg::ParseUnmaskResponse);
      return m.ok() ? server->OnUnmaskResponse(*m) : m.status();
    }));
  }
  auto sum = time.Server(3, [&] { return server->FinishUnmasking(); });
  SHARDPS_RETURN_IF_ERROR(sum.status());
  const auto t0 = Clock::now();
  auto floats = secagg::Dequantize(*sum, survivors.size(), fp);
  out->dequantize = std::chrono::duration<double>(Clock::now() - t0).count();
  SHARDPS_RETURN_IF_ERROR(floats.status());

  // The round's totals.
  out->round = out->dequantize;
  for (int p = 0; p < kPhases; ++p) {
    double slowest = 0;
    for (double s : out->client[p]) {
      out->round += s;
      slowest = std::max(slowest, s);
    }
    out->round += out->server[p];
    out->parallel += slowest + out->server[p];
  }
  out->parallel += out->dequantize;
  out->survivors = survivors.size();
  out->survivor_bytes = bytes[survivors.front()];
  for (ClientId id : survivors) {
    if (Total(bytes[id], kUploads) > Total(out->survivor_bytes, kUploads)) out->survivor_bytes = bytes[id];
  }

  // The check: exactly the plain sum of the survivors' quantized vectors, and within k steps of
  // their floats' sum.
  const std::string where = "round " + std::to_string(round_id) + ": ";
  if (server->survivors() != survivors) {
    return DataLoss(where + "the server summed " + std::to_string(server->survivors().size()) +
                    " clients' inputs, but " + std::to_string(survivors.size()) + " sent one");
  }
  for (uint64_t i = 0; i < len; ++i) {
    if ((*sum)[i] != plain[i]) {
      return DataLoss(where + "the unmasked sum is not the plain sum of the survivors' quantized vectors: element " +
                      std::to_string(i) + " is " + std::to_string((*sum)[i]) + ", expected " + std::to_string(plain[i]) +
                      " (mod 2^" + std::to_string(config.ring_bits) + ")");
    }
  }
  const double clip = fp.clip;  // as the fixed point sees it (a float)
  const double step = clip / static_cast<double>((uint64_t{1} << (bits - 1)) - 1);
  const double k = static_cast<double>(survivors.size());
  // < k steps from the stochastic rounding, plus the float result's own rounding (at most 2^-24
  // of |sum| <= k x clip; twice that for the double arithmetic on both sides). With bits above
  // ~20 the float's rounding, not the quantization, dominates.
  const double bound = k * step + k * clip * std::ldexp(1.0, -23);
  out->bound_steps = bound / step;
  for (uint64_t i = 0; i < len; ++i) {
    const double err = std::abs(static_cast<double>((*floats)[i]) - float_sum[i]);
    out->worst_error_steps = std::max(out->worst_error_steps, err / step);
    if (!(err <= bound)) {
      return DataLoss(where + "the dequantized sum is off by more than " + std::to_string(survivors.size()) +
                      " steps: element " + std::to_string(i) + " is " + std::to_string((*floats)[i]) + ", the float sum " +
                      std::to_string(float_sum[i]) + " (step " + std::to_string(step) + ")");
    }
  }
  return Status::Ok();
}

// ---- Report ----------------------------------------------------------------------------------

struct Spread {
  double median = 0, min = 0, max = 0;
};

Spread SpreadOf(std::vector<double> v) {
  Spread s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.min = v.front();
  s.max = v.back();
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return s;
}

double Sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

}  // namespace

int SecAggBenchMain(int argc, char** argv) {
  Result<SecAggBenchFlags> parsed = ParseSecAggBenchFlags(argc, argv);
  if (!parsed.ok()) {
    if (parsed.status().code() == StatusCode::kOutOfRange) {  // --help
      std::cout << parsed.status().message();
      return 0;
    }
    std::cerr << "shardps secagg-bench: " << parsed.status().message() << "\n";
    return 2;
  }
  const SecAggBenchFlags& f = *parsed;
  const uint64_t n = static_cast<uint64_t>(f.clients), len = static_cast<uint64_t>(f.values);
  const int bits = static_cast<int>(f.bits);
  const int ring_bits = secagg::RingBits(n, bits);
  const std::vector<ClientId> dropouts = PickDropouts(n, static_cast<uint64_t>(f.dropouts), f.seed);

  std::printf("shardps secagg-bench: %llu clients, threshold %lld, %llu values of %d bits (ring Z_2^%d), clip %g, "
              "%lld dropouts, %lld rounds, seed %llu\n",
              static_cast<unsigned long long>(n), static_cast<long long>(f.threshold),
              static_cast<unsigned long long>(len), bits, ring_bits, f.clip, static_cast<long long>(f.dropouts),
              static_cast<long long>(f.rounds), static_cast<unsigned long long>(f.seed));
  if (!dropouts.empty()) {
    std::string ids;
    for (ClientId id : dropouts) ids += (ids.empty() ? "" : ", ") + std::to_string(id);
    std::printf("dropping after ShareKeys (masks recovered from s_sk shares): clients %s\n", ids.c_str());
  }
  if (f.system_random) {
    std::printf("keys and self-mask seeds: SystemRandomSource (OpenSSL RAND_bytes), as in production\n");
  } else {
    std::printf("keys and self-mask seeds: ChaCha20RandomSource::FromSeed, deterministic (tests only) for reproducible\n"
                "  timing; production uses SystemRandomSource (--system-random times that)\n");
  }
  std::printf("one process, clients one after another, every message serialized and parsed back\n\n");
  std::fflush(stdout);

  std::vector<RoundResult> results(static_cast<size_t>(f.rounds));
  for (int64_t r = 0; r < f.rounds; ++r) {
    Status s = RunRound(f, static_cast<uint64_t>(r) + 1, dropouts, &results[r]);
    if (!s.ok()) {
      std::cerr << "shardps secagg-bench: " << s.ToString() << "\n";
      return 1;
    }
  }

  // Times: per phase, the clients' sum (median over rounds), one client (median over every client
  // of every round) and the server (median over rounds).
  auto over_rounds = [&](auto get) {
    std::vector<double> v;
    for (const RoundResult& r : results) v.push_back(get(r));
    return SpreadOf(std::move(v));
  };
  std::array<Spread, kPhases> client_sum, client_one, server;
  for (int p = 0; p < kPhases; ++p) {
    client_sum[p] = over_rounds([p](const RoundResult& r) { return Sum(r.client[p]); });
    std::vector<double> all;
    for (const RoundResult& r : results) all.insert(all.end(), r.client[p].begin(), r.client[p].end());
    client_one[p] = SpreadOf(std::move(all));
    server[p] = over_rounds([p](const RoundResult& r) { return r.server[p]; });
  }
  const Spread dequantize = over_rounds([](const RoundResult& r) { return r.dequantize; });
  const Spread round = over_rounds([](const RoundResult& r) { return r.round; });
  const Spread parallel = over_rounds([](const RoundResult& r) { return r.parallel; });
  double worst_steps = 0;
  for (const RoundResult& r : results) worst_steps = std::max(worst_steps, r.worst_error_steps);

  const double ms = 1e3;
  const std::string title = "time, ms (median of " + std::to_string(f.rounds) + (f.rounds == 1 ? " round)" : " rounds)");
  std::printf("%-36s %12s %12s %12s\n", title.c_str(), "all clients", "one client", "server");
  for (int p = 0; p < kPhases; ++p) {
    std::printf("  %-34s %12.3f %12.3f %12.3f\n", kPhaseLabels[p], client_sum[p].median * ms, client_one[p].median * ms,
                server[p].median * ms);
  }
  std::printf("  %-34s %12s %12s %12.3f\n", "dequantize the sum", "", "", dequantize.median * ms);
  std::printf("  %-34s %12.3f   (min %.3f, max %.3f)\n", "round, in this process", round.median * ms, round.min * ms,
              round.max * ms);
  std::printf("  %-34s %12.3f   (sum over phases of the slowest client + the server)\n",
              "round, clients in parallel (est.)", parallel.median * ms);
  std::printf("  server unmask/reconstruction: %.3f ms (min %.3f, max %.3f), %llu b and %lld s_sk secrets recovered\n\n",
              server[3].median * ms, server[3].min * ms, server[3].max * ms,
              static_cast<unsigned long long>(results.front().survivors), static_cast<long long>(f.dropouts));

  // Bytes of a client that stays to the end (they do not change from round to round).
  const ByteCounts& b = results.front().survivor_bytes;
  auto at = [&b](MessageType t) { return static_cast<unsigned long long>(b[static_cast<size_t>(t)]); };
  const uint64_t upload = Total(b, kUploads), download = Total(b, kDownloads);
  const uint64_t clear = secagg::PackedBytes(len, bits);
  const double float32 = static_cast<double>(len) * 4;
  const double ratio_clear = static_cast<double>(upload) / static_cast<double>(clear);
  std::printf("bytes, one client that stays to the end:\n");
  std::printf("  upload    %12llu = advertise keys %llu + share keys %llu + masked input %llu + unmask response %llu\n",
              static_cast<unsigned long long>(upload), at(MessageType::kAdvertiseKeys), at(MessageType::kShareKeys),
              at(MessageType::kMaskedInput), at(MessageType::kUnmaskResponse));
  std::printf("  download  %12llu = key list %llu + routed shares %llu + unmask request %llu\n",
              static_cast<unsigned long long>(download), at(MessageType::kKeyList), at(MessageType::kRoutedShares),
              at(MessageType::kUnmaskRequest));
  std::printf("  clear quantized vector (V x %d bits / 8): %llu; upload / clear = %.4f\n", bits,
              static_cast<unsigned long long>(clear), ratio_clear);
  std::printf("  float32 vector (V x 4): %.0f; upload / float32 = %.4f\n", float32, static_cast<double>(upload) / float32);
  std::printf("  server, every client together: received %llu, sent %llu\n\n",
              static_cast<unsigned long long>(results.front().server_received),
              static_cast<unsigned long long>(results.front().server_sent));
  std::printf("check: in every round the unmasked sum of the %llu survivors equals the plain sum mod 2^%d of their\n"
              "  quantized vectors exactly; dequantized, it is within %.3f steps of their float sum (allowed: %llu\n"
              "  steps + the float32 result's rounding = %.3f steps; step = clip / (2^(bits-1) - 1))\n",
              static_cast<unsigned long long>(results.front().survivors), ring_bits, worst_steps,
              static_cast<unsigned long long>(results.front().survivors), results.front().bound_steps);

  std::printf("{\"clients\":%llu,\"threshold\":%lld,\"values\":%llu,\"bits\":%d,\"ring_bits\":%d,\"dropouts\":%lld,"
              "\"rounds\":%lld,\"round_seconds_median\":%.6f,\"round_seconds_min\":%.6f,\"round_seconds_max\":%.6f,"
              "\"client_mask_seconds_median\":%.6f,\"server_unmask_seconds_median\":%.6f,"
              "\"upload_bytes_per_client\":%llu,\"clear_quantized_bytes\":%llu,\"upload_ratio_to_clear\":%.4f,"
              "\"system_random\":%s,\"exact\":true}\n",
              static_cast<unsigned long long>(n), static_cast<long long>(f.threshold),
              static_cast<unsigned long long>(len), bits, ring_bits, static_cast<long long>(f.dropouts),
              static_cast<long long>(f.rounds), round.median, round.min, round.max, client_one[2].median,
              server[3].median, static_cast<unsigned long long>(upload), static_cast<unsigned long long>(clear),
              ratio_clear, f.system_random ? "true" : "false");
  return 0;
}

}  // namespace shardps::tools
