// MPI settings the shardps program chooses for itself, applied before MPI_Init at the program's
// edge (never asked of the user). A value the user already set in the environment wins.
#pragma once

#include <cstdlib>

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

}  // namespace shardps::tools
