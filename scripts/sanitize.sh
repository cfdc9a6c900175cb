#!/usr/bin/env bash
# Builds shardps with sanitizers and runs the tests that matter under them; non-zero exit on any
# failed test or any sanitizer report. scripts/test.sh runs both stages after the normal suite.
#   scripts/sanitize.sh asan [ctest args]   # AddressSanitizer + UndefinedBehaviorSanitizer + LeakSanitizer (build-asan)
#   scripts/sanitize.sh tsan [ctest args]   # ThreadSanitizer (build-tsan)
# Extra args narrow the stage's tests (e.g. -R NAME). SHARDPS_ASAN_BUILD_DIR / SHARDPS_TSAN_BUILD_DIR
# select other build directories.
#
#   asan: the labels unit, multirank and tcp (without the convergence runs, which exercise no failure
#         path and take minutes when instrumented, nor tcp_matches_mpi's comparisons of weights,
#         whose paths tcp_launch_local and the kill checks run instrumented), plus the train and mpi tests of failure paths:
#         crashes during checkpoint writes, a rank failing mid-job, bad input files, a silent worker.
#   tsan: the labels unit and multirank (every rank a thread of one process: where races can live),
#         built without MPI and without the shardps program, which those tests do not use.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
# shellcheck source=scripts/ctest_failures.sh
source scripts/ctest_failures.sh
STAGE="${1:?usage: scripts/sanitize.sh asan|tsan [ctest args]}"
shift

# Any report ends the process at once with exit code 86 (halt_on_error; UBSan is built with
# -fno-sanitize-recover=all), so the test that started it fails. A report in a process the test
# expected to fail anyway is caught by the scan of the test output below.
EXTRA=()
case "$STAGE" in
  asan)
    BUILD="${SHARDPS_ASAN_BUILD_DIR:-build-asan}"
    SANITIZE=address,undefined
    # Leak checking stays on for every process started directly (unit and multirank tests, the TCP
    # jobs' processes, shardps tools). It is off in ranks started by mpirun (Open MPI passes
    # mca_base_env_list to them): Open MPI does not free what MPI_Init and its components allocate,
    # and unloads those components before the leak check, so their leaks cannot be attributed (and
    # LeakSanitizer's stop-the-world tracer was seen to crash at the exit of an Open MPI rank). The
    # same training, server and checkpoint code runs leak-checked in the TCP tests.
    ASAN_COMMON="halt_on_error=1:exitcode=86:check_initialization_order=1:strict_init_order=1"
    export ASAN_OPTIONS="$ASAN_COMMON:detect_leaks=1"
    export OMPI_MCA_mca_base_env_list="ASAN_OPTIONS=$ASAN_COMMON:detect_leaks=0"
    export UBSAN_OPTIONS="halt_on_error=1:exitcode=86:print_stacktrace=1"
    RUN1=(-L '^(unit|multirank|tcp)$' -LE '^(convergence|determinism)$')
    RUN2=(-R '^(train_(crash|failure_ends_job|bad_input)|mpi_(sync_2servers_2workers|silent_worker_is_named|bench_colocated))$')
    RUNS=(RUN1 RUN2)
    ;;
  tsan)
    BUILD="${SHARDPS_TSAN_BUILD_DIR:-build-tsan}"
    SANITIZE=thread
    export TSAN_OPTIONS="halt_on_error=1:exitcode=86:second_deadlock_stack=1:suppressions=$ROOT/tests/sanitize/tsan.supp"
    RUN1=(-L '^(unit|multirank)$')
    RUNS=(RUN1)
    # The unit and multirank tests need neither MPI nor the shardps program: this build leaves
    # both out (a quicker build, and a second compile of the libraries without MPI).
    EXTRA=(-DSHARDPS_WITH_MPI=OFF -DSHARDPS_BUILD_TOOLS=OFF)
    ;;
  *) echo "sanitize.sh: unknown stage '$STAGE' (asan or tsan)" >&2; exit 2;;
esac

t0=$SECONDS
# -O1 and line tables (-g1): every report frame has its file and line, asserts stay on, and the
# instrumented build takes about a third of the time -O2 -g would. No examples, no fuzzers.
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DSHARDPS_SANITIZE="$SANITIZE" -DSHARDPS_BUILD_TESTS=ON -DSHARDPS_BUILD_EXAMPLES=OFF \
  -DSHARDPS_BUILD_FUZZERS=OFF "${EXTRA[@]}" >/dev/null
cmake --build "$BUILD" -j"$(nproc)"
build_s=$((SECONDS - t0))

# A report's first line, whatever the sanitizer.
REPORT='ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer|SUMMARY: [A-Za-z]+Sanitizer|: runtime error: '
status=0
t1=$SECONDS
cd "$BUILD"
for run in "${RUNS[@]}"; do
  declare -n sel="$run"
  touch .sanitize-stamp
  if ! ctest_run "$STAGE" . --output-on-failure --no-tests=error --timeout 900 -j"${SHARDPS_CTEST_JOBS:-2}" "${sel[@]}" "$@"; then
    status=1
  fi
  # Every test's output (passing ones too) and the files the checks wrote their processes' output
  # to: a report there is a sanitizer firing in a process whose failure the test expected anyway.
  mapfile -t reports < <(find Testing/Temporary/LastTest.log tests -type f -newer .sanitize-stamp -print0 |
                         xargs -0 -r grep -EIl "$REPORT" 2>/dev/null || true)
  if [ "${#reports[@]}" -gt 0 ]; then
    echo "== $STAGE: sanitizer reports in ${reports[*]}" >&2
    grep -EIh -B2 -A40 "$REPORT" "${reports[@]}" | head -n 300 >&2 || true
    ctest_failures_note "$STAGE" "sanitizer reports in ${reports[*]}"
    grep -EIh -A12 "$REPORT" "${reports[@]}" 2>/dev/null | head -n 40 | sed 's/^/   | /' >>"${SHARDPS_FAILURES:-/dev/null}" || true
    status=1
  fi
  unset -n sel
done
echo "== $STAGE stage: build $build_s s, tests $((SECONDS - t1)) s, exit $status =="
exit "$status"
