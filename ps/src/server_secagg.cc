// SECAGG requests (wire.proto): server index 0 runs the job's secure-aggregation rounds with a
// secagg::Aggregator whose hosts are the worker ranks. Each worker sends one request per phase
// carrying the bundle of the clients it hosts; the request is held until every worker's bundle of
// that phase has arrived (or its deadline passes), then each worker gets the bundle for its
// clients. The server sees only what the aggregator sees: keys, encrypted shares, masked inputs,
// and the sum.
#include <algorithm>
#include <string>

#include "server_internal.h"

namespace shardps::ps {

void Server::HandleSecAgg(IncomingFrame& in, Frame& f) {
  const wire::Header& h = f.header;
  if (!secagg_) {
    return Reject(in, h, InvalidArgument("secure aggregation is run by server rank " +
                                         std::to_string(cluster_.server_rank(0)) + ", not " + Self()));
  }
  if (h.secagg_phase() > static_cast<uint32_t>(secagg::Phase::kUnmasking)) {
    return Reject(in, h, InvalidArgument("SECAGG phase " + std::to_string(h.secagg_phase()) + " is not in [0, 3]"));
  }
  if (in.payload_bytes == 0) return Reject(in, h, InvalidArgument("a SECAGG request carries its bundle; this one is empty"));
  HeldPtr held = Hold(in, f);
  auto bytes = std::make_shared<std::vector<uint8_t>>(held->in.payload_bytes);
  Status s = endpoint_.transport().ReceivePayload(held->in, *bytes, [this, held, bytes](Status st) {
    held->in.payload_bytes = 0;  // consumed
    if (st.ok()) st = VerifyPayload(held->frame, *bytes);
    if (!st.ok()) {
      endpoint_.SendError(held->in.source, held->h(), st.WithContext(Self() + ": SECAGG bundle"));
      return;
    }
    SubmitSecAgg(held, *bytes);
  });
  if (!s.ok()) Reject(held->in, held->h(), s.WithContext(Self() + ": SECAGG bundle"));
}

void Server::SubmitSecAgg(const HeldPtr& request, std::span<const uint8_t> bundle) {
  SecAggState& st = *secagg_;
  const wire::Header& h = request->h();
  const int w = request->worker;
  const Status s =
      st.aggregator.Submit(w, h.step(), static_cast<secagg::Phase>(h.secagg_phase()), bundle);
  if (!s.ok()) {
    endpoint_.SendError(request->in.source, h, s.WithContext(Self() + ", worker rank " + std::to_string(request->in.source)));
  } else {
    st.held[static_cast<size_t>(w)] = request;
    next_expiry_ = std::min(next_expiry_, request->deadline);
  }
  if (!st.aggregator.Ready()) return;
  std::vector<std::vector<uint8_t>> replies = st.aggregator.Finish();
  for (size_t i = 0; i < st.held.size(); ++i) {
    HeldPtr req = std::move(st.held[i]);
    st.held[i] = nullptr;
    if (!req) continue;  // its bundle was refused: it has its error
    wire::Header r;
    r.set_op(wire::RESPONSE);
    r.set_reply_to(wire::SECAGG);
    r.set_request_id(req->h().request_id());
    r.set_step(req->h().step());
    r.set_secagg_phase(req->h().secagg_phase());
    auto payload = std::make_shared<std::vector<uint8_t>>(std::move(replies[i]));
    endpoint_.Send(req->in.source, std::move(r), *payload, [payload](Status) {});
  }
}

Clock::time_point Server::ExpireSecAgg(Clock::time_point now) {
  Clock::time_point next = Clock::time_point::max();
  if (!secagg_) return next;
  SecAggState& st = *secagg_;
  bool expired = false;
  for (const HeldPtr& r : st.held) {
    if (!r) continue;
    if (r->deadline <= now) expired = true;
    next = std::min(next, r->deadline);
  }
  if (!expired) return next;
  std::vector<int> missing;
  for (int w : st.aggregator.Missing()) missing.push_back(cluster_.worker_rank(w));
  const std::string phase(secagg::PhaseName(st.aggregator.phase()));
  const uint64_t round = st.aggregator.round();
  for (HeldPtr& r : st.held) {
    if (!r) continue;
    endpoint_.SendError(r->in.source, r->h(),
                        DeadlineExceeded("secure aggregation round " + std::to_string(round) + ", phase " + phase +
                                         ", timed out after " +
                                         std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - r->arrived).count()) +
                                         " ms on " + Self() + ": worker ranks " + FormatRanks(missing) +
                                         " never sent their bundle; the round is abandoned"));
    r = nullptr;
  }
  st.aggregator.Reset();
  return Clock::time_point::max();
}

}  // namespace shardps::ps
