#!/usr/bin/env bash
# Sets up the machine, builds, runs the fuzzers for a short bounded time, then the whole CTest
# suite. Non-zero exit on any failure.
#   scripts/test.sh                 # everything
#   scripts/test.sh -L multirank    # extra args go to ctest (labels: unit, multirank, mpi, ...)
# SHARDPS_FUZZ_SECONDS (default 20) bounds each fuzzer's run; 0 skips fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh -DSHARDPS_BUILD_TESTS=ON
FUZZ_SECONDS="${SHARDPS_FUZZ_SECONDS:-20}"
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  for target in frame_fuzzer server_fuzzer; do
    echo "== fuzzing $target for $FUZZ_SECONDS s =="
    bash scripts/fuzz.sh "$target" "$FUZZ_SECONDS"
  done
fi
# mpirun as root (CI runs as root) and with more ranks than cores: the tests set what they need
# themselves; nothing is asked of the user here.
cd "${SHARDPS_BUILD_DIR:-build}"
ctest --output-on-failure --timeout 900 -j1 "$@"
