// MPI settings the shardps program chooses for itself, applied before MPI_Init at the program's
// edge (never asked of the user). A value the user already set in the environment wins.
#pragma once

#include <mpi.h>

#include <cstdlib>
#include <iostream>
#include <string>

namespace shardps::tools {

// What the ranks of the job mostly do, which decides how shared memory should move large
// messages (docs/benchmarks.md, "Open MPI settings the program chooses").
enum class MpiWorkload {
  // Training: every core runs a compute thread, so the copy path that costs the least CPU per
  // byte wins: Open MPI's single-copy mechanism (CMA, the receiver copies straight out of the
  // sender's memory). Measured on the colocated MLP: 0.9 -> 0.55 ms of waiting per step.
  kTraining,
  // Communication only (shardps bench): cores are otherwise idle, so the two-copy pipeline
  // through shared buffers, where sender and receiver each copy while the other does, moves a
  // 1 MiB chunk faster than one thread copying it alone (10M-float round 19 against 27 ms).
  kCommunicationOnly,
};

inline void ApplyMpiDefaults(MpiWorkload workload) {
  if (workload == MpiWorkload::kCommunicationOnly) {
    setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", /*overwrite=*/0);
  }
  // Messages up to 128 KiB (a training chunk of 32768 floats) go eagerly: the sender's copy into
  // shared memory completes the send at once, so a transfer never stalls waiting for the sending
  // rank's communication thread to be scheduled again while its training thread computes.
  setenv("OMPI_MCA_btl_vader_eager_limit", "131072", /*overwrite=*/0);
  setenv("OMPI_MCA_btl_vader_max_send_size", "131072", /*overwrite=*/0);
}

// MPI_Init_thread with the settings above and MPI_THREAD_SERIALIZED (one thread at a time calls
// MPI: the main thread before the communication thread starts and after it stops). Returns false,
// after printing why on rank 0 and finalizing, when the library cannot provide that level.
inline bool InitMpi(int* argc, char*** argv, const char* program, int* rank, int* size, MpiWorkload workload) {
  ApplyMpiDefaults(workload);
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, rank);
  MPI_Comm_size(MPI_COMM_WORLD, size);
  if (provided < MPI_THREAD_SERIALIZED) {
    if (*rank == 0) std::cerr << program << ": the MPI library does not provide MPI_THREAD_SERIALIZED\n";
    MPI_Finalize();
    return false;
  }
  return true;
}

}  // namespace shardps::tools
