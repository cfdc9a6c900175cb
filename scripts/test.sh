#!/usr/bin/env bash
# Sets up the machine, builds, and runs the whole CTest suite. Non-zero exit on any failure.
#   scripts/test.sh                 # everything
#   scripts/test.sh -L multirank    # extra args go to ctest (labels: unit, multirank, mpi, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh -DSHARDPS_BUILD_TESTS=ON
# mpirun as root (CI runs as root) and with more ranks than cores: the tests set what they need
# themselves; nothing is asked of the user here.
cd "${SHARDPS_BUILD_DIR:-build}"
ctest --output-on-failure --timeout 900 -j1 "$@"
