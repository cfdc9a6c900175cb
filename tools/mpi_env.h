// MPI settings the shardps program chooses for itself, applied before MPI_Init at the program's
// edge (never asked of the user). A value the user already set in the environment wins.
#pragma once

#include <mpi.h>

#include <cstdlib>
#include <iostream>
#include <string>

namespace shardps::tools {

inline void ApplyMpiDefaults() {
  // Open MPI's shared-memory transport moves large messages with a single-copy mechanism (CMA)
  // that is slow and erratic on virtual machines; the two-copy path through shared buffers is
  // faster and steadier there. See docs/benchmarks.md for the measurement.
  setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", /*overwrite=*/0);
  // Messages up to 128 KiB (a training chunk of 32768 floats) go eagerly: the sender's copy into
  // shared memory completes the send at once, so a transfer never stalls waiting for the sending
  // rank's communication thread to be scheduled again while its training thread computes.
  setenv("OMPI_MCA_btl_vader_eager_limit", "131072", /*overwrite=*/0);
  setenv("OMPI_MCA_btl_vader_max_send_size", "131072", /*overwrite=*/0);
}

// MPI_Init_thread with the settings above and MPI_THREAD_SERIALIZED (one thread at a time calls
// MPI: the main thread before the communication thread starts and after it stops). Returns false,
// after printing why on rank 0 and finalizing, when the library cannot provide that level.
inline bool InitMpi(int* argc, char*** argv, const char* program, int* rank, int* size) {
  ApplyMpiDefaults();
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
