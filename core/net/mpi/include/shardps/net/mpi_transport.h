// MPI transport: non-blocking point-to-point over a private duplicate of the given communicator.
//
//   MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);   // at the program's edge
//   SHARDPS_ASSIGN_OR_RETURN(auto transport, CreateMpiTransport(MPI_COMM_WORLD));
//
// Each message is two MPI messages: an envelope (payload length, payload tag, frame bytes) on a
// fixed tag, then the payload on a tag from a per-destination counter (unique among a pair's
// messages in flight; it wraps after MPI_TAG_UB of them), sent with
// MPI_Isend from the caller's buffer and received with MPI_Irecv into the buffer the receiver
// picks after reading the envelope. Frames are matched with MPI_Improbe/MPI_Mrecv so their size
// is checked before any allocation; oversized envelopes are consumed into a fixed 16-byte buffer.
// The communicator uses MPI_ERRORS_RETURN: an MPI error becomes a Status, never an abort.
//
// Threading: one thread calls the transport (the Endpoint's); MPI_THREAD_SERIALIZED suffices when
// the application itself only calls MPI before the Endpoint starts or after it stops.
// Polling: MPI has no blocking wait on "a message or a local wake-up", so Poll() polls. While a
// compute thread of the process is busy (Transport::SetComputeBusy) it polls once per
// `busy_nap`, sleeping in between unless woken, so the compute thread keeps its core. Otherwise:
// a short spin, then sched_yield() between polls while traffic is recent, then naps of
// `idle_sleep` when the rank has been idle for a while (docs/benchmarks.md has the measurements).
#pragma once

#include <mpi.h>

#include <chrono>
#include <memory>

#include "shardps/net/transport.h"

namespace shardps {

struct MpiTransportOptions {
  uint64_t max_frame_bytes = 64 * 1024;
  uint64_t max_payload_bytes = 0x7FFFFFFF;  // one MPI message; chunks are far smaller
  // Idle polling: spin this many polls, then sched_yield() between polls while the last message
  // was less than `yield_for` ago, then sleep `idle_sleep` between polls.
  int spin_polls = 100;
  std::chrono::microseconds yield_for{20000};
  std::chrono::microseconds idle_sleep{200};
  // While a compute thread is busy: the pause between polls (a Wake() ends it early); 0 polls
  // as when no one computes.
  std::chrono::microseconds busy_nap{100};
};

Result<std::unique_ptr<Transport>> CreateMpiTransport(MPI_Comm comm, const MpiTransportOptions& options = {});

// "MPI_ERR_TRUNCATE: message truncated" for an MPI error code.
std::string MpiErrorString(int code);

}  // namespace shardps
