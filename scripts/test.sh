#!/usr/bin/env bash
# Sets up the machine, builds, runs the fuzzers for a short bounded time, the whole CTest suite,
# then a build without MPI (SHARDPS_WITH_MPI=OFF, build-tcp/: the libraries and the shardps
# program, which is what a build without MPI changes: the transports' factories, the TCP launch,
# the installed package) with its tests of the labels tcp and install (not the convergence runs,
# which the normal suite already ran over TCP, nor the unit and multirank tests, whose code does
# not depend on MPI and which the normal suite and both sanitizer stages run), then the sanitizer
# stages (scripts/sanitize.sh: ASan+UBSan, then TSan, each in its own build directory).
# Non-zero exit if any stage fails; every stage runs even when an earlier one failed.
#   scripts/test.sh                 # everything
#   scripts/test.sh -L multirank    # extra args go to the normal suite's ctest (labels: unit, multirank, mpi, ...)
# SHARDPS_FUZZ_SECONDS (default 10) bounds each fuzzer's run; 0 skips fuzzing.
# SHARDPS_SANITIZERS=0 skips the TCP-only build and the sanitizer stages, =1 runs them. Default: run
# them under CI (CI=true) and when no ctest arguments are given; skip them when extra arguments
# narrow the normal suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SHARDPS_SANITIZERS:-}" ]; then
  if [ "${CI:-}" = "true" ] || [ "$#" -eq 0 ]; then SHARDPS_SANITIZERS=1; else SHARDPS_SANITIZERS=0; fi
fi
case "$SHARDPS_SANITIZERS" in 0|1) ;; *) echo "test.sh: SHARDPS_SANITIZERS must be 0 or 1, not '$SHARDPS_SANITIZERS'" >&2; exit 2;; esac
bash scripts/setup.sh
bash scripts/build.sh -DSHARDPS_BUILD_TESTS=ON
FUZZ_SECONDS="${SHARDPS_FUZZ_SECONDS:-10}"
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  for target in frame_fuzzer server_fuzzer codec_fuzzer secagg_fuzzer; do
    echo "== fuzzing $target for $FUZZ_SECONDS s =="
    bash scripts/fuzz.sh "$target" "$FUZZ_SECONDS"
  done
fi
# mpirun as root (CI runs as root) and with more ranks than cores: the tests set what they need
# themselves; nothing is asked of the user here.
status=0
t0=$SECONDS
(cd "${SHARDPS_BUILD_DIR:-build}" && ctest --output-on-failure --timeout 900 -j1 "$@") || status=1
echo "== normal suite: $((SECONDS - t0)) s, exit $status =="
if [ "$SHARDPS_SANITIZERS" = "1" ]; then
  echo "== TCP-only build (SHARDPS_WITH_MPI=OFF) =="
  t0=$SECONDS
  tcp_status=0
  SHARDPS_BUILD_DIR=build-tcp SHARDPS_BUILD_TARGETS=shardps_cli bash scripts/build.sh -DSHARDPS_BUILD_TESTS=ON -DSHARDPS_WITH_MPI=OFF &&
    (cd build-tcp && ctest --output-on-failure --timeout 900 -j1 -L '^(tcp|install)$' -LE '^convergence$') || tcp_status=1
  echo "== TCP-only build and its tests: $((SECONDS - t0)) s, exit $tcp_status =="
  [ "$tcp_status" = 0 ] || status=1
  for stage in asan tsan; do
    echo "== sanitizer stage $stage =="
    bash scripts/sanitize.sh "$stage" || status=1
  done
fi
exit "$status"
