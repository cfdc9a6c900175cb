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
# SHARDPS_CTEST_JOBS (default 2) tests run at once in every stage (here and in scripts/sanitize.sh):
# many tests mostly wait (deadlines, timeouts, Slurm, a job's other processes), and every test must
# pass on a loaded machine anyway.
# SHARDPS_SANITIZERS=0 skips the TCP-only build and the sanitizer stages, =1 runs them. Default: run
# them under CI (CI=true) and when no ctest arguments are given; skip them when extra arguments
# narrow the normal suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/ctest_failures.sh
source scripts/ctest_failures.sh
# Every stage's failed tests, with the end of their output, are printed again at the very end.
SHARDPS_FAILURES=$(mktemp)
export SHARDPS_FAILURES
trap 'rm -f "$SHARDPS_FAILURES"' EXIT
STAGES=()
if [ -z "${SHARDPS_SANITIZERS:-}" ]; then
  if [ "${CI:-}" = "true" ] || [ "$#" -eq 0 ]; then SHARDPS_SANITIZERS=1; else SHARDPS_SANITIZERS=0; fi
fi
case "$SHARDPS_SANITIZERS" in 0|1) ;; *) echo "test.sh: SHARDPS_SANITIZERS must be 0 or 1, not '$SHARDPS_SANITIZERS'" >&2; exit 2;; esac
bash scripts/setup.sh
# ccache (installed by setup.sh) lets the TCP-only build below reuse the normal build's objects:
# only the shardps program's sources differ without MPI. Paths under the checkout are hashed
# relative to it, so build/ and build-tcp/ produce the same compiler commands. The cache lives in
# .ccache/ of the checkout (SHARDPS_CCACHE_DIR elsewhere), so a developer's next run reuses it too.
LAUNCHER=()
if command -v ccache >/dev/null 2>&1; then
  export CCACHE_DIR="${SHARDPS_CCACHE_DIR:-$PWD/.ccache}" CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=true
  LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
bash scripts/build.sh -DSHARDPS_BUILD_TESTS=ON "${LAUNCHER[@]}"
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
export SHARDPS_CTEST_JOBS="${SHARDPS_CTEST_JOBS:-2}"
case "$SHARDPS_CTEST_JOBS" in ''|*[!0-9]*|0) echo "test.sh: SHARDPS_CTEST_JOBS must be a positive number, not '$SHARDPS_CTEST_JOBS'" >&2; exit 2;; esac
t0=$SECONDS
# Under CI the normal suite leaves out the label `extended`: long runs whose claim other tests
# already check (a developer's scripts/test.sh without CI=true runs them).
CTEST_SELECT=()
if [ "${CI:-}" = "true" ]; then CTEST_SELECT=(-LE '^extended$'); fi
ctest_run "normal suite" "${SHARDPS_BUILD_DIR:-build}" --output-on-failure --timeout 900 -j"$SHARDPS_CTEST_JOBS" "${CTEST_SELECT[@]}" "$@" || status=1
STAGES+=("normal suite: $((SECONDS - t0)) s, exit $status")
echo "== ${STAGES[-1]} =="
if [ "$SHARDPS_SANITIZERS" = "1" ]; then
  echo "== TCP-only build (SHARDPS_WITH_MPI=OFF) =="
  t0=$SECONDS
  tcp_status=0
  if SHARDPS_BUILD_DIR=build-tcp SHARDPS_BUILD_TARGETS=shardps_cli bash scripts/build.sh -DSHARDPS_BUILD_TESTS=ON -DSHARDPS_WITH_MPI=OFF "${LAUNCHER[@]}"; then
    ctest_run "TCP-only" build-tcp --output-on-failure --timeout 900 -j"$SHARDPS_CTEST_JOBS" -L '^(tcp|install)$' -LE '^convergence$' || tcp_status=1
  else
    tcp_status=1; ctest_failures_note "TCP-only" "the build failed"
  fi
  STAGES+=("TCP-only build and its tests: $((SECONDS - t0)) s, exit $tcp_status")
  echo "== ${STAGES[-1]} =="
  [ "$tcp_status" = 0 ] || status=1
  for stage in asan tsan; do
    echo "== sanitizer stage $stage =="
    t0=$SECONDS
    stage_status=0
    bash scripts/sanitize.sh "$stage" || stage_status=1
    STAGES+=("$stage stage: $((SECONDS - t0)) s, exit $stage_status")
    [ "$stage_status" = 0 ] || status=1
  done
fi
echo "== summary: $SECONDS s in all, exit $status =="
printf '   %s\n' "${STAGES[@]}"
if [ -s "$SHARDPS_FAILURES" ]; then
  echo "== what failed =="
  cat "$SHARDPS_FAILURES"
fi
exit "$status"
