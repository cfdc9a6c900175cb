#!/usr/bin/env bash
# Builds a libFuzzer target with clang and AddressSanitizer + UndefinedBehaviorSanitizer (and
# LeakSanitizer) and runs it for a bounded time. Exits non-zero on any crash, leak or report.
# The build also runs clang's thread-safety analysis as an error (SHARDPS_THREAD_SAFETY=ON) over
# every library layer the fuzzers link, so a broken locking contract fails here (and in test.sh).
#   scripts/fuzz.sh frame_fuzzer|server_fuzzer|codec_fuzzer|secagg_fuzzer SECONDS
# SHARDPS_FUZZ_BUILD_DIR (default build-fuzz) is the build directory.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${1:?usage: scripts/fuzz.sh frame_fuzzer|server_fuzzer|codec_fuzzer|secagg_fuzzer SECONDS}"
SECONDS_TO_RUN="${2:?usage: scripts/fuzz.sh TARGET SECONDS}"
case "$TARGET" in frame_fuzzer|server_fuzzer|codec_fuzzer|secagg_fuzzer) ;; *) echo "fuzz.sh: unknown target '$TARGET'" >&2; exit 2;; esac
bash scripts/setup.sh
BUILD="${SHARDPS_FUZZ_BUILD_DIR:-build-fuzz}"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
# -O1 and line tables, as in scripts/sanitize.sh: every report frame has its file and line, and the
# build takes less time than -O2 -g; a fuzzing run is bounded in time anyway.
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_CXX_FLAGS="$SAN -fsanitize=fuzzer-no-link" -DCMAKE_EXE_LINKER_FLAGS="$SAN" \
  -DSHARDPS_BUILD_FUZZERS=ON -DSHARDPS_THREAD_SAFETY=ON -DSHARDPS_BUILD_TESTS=OFF -DSHARDPS_BUILD_EXAMPLES=OFF -DSHARDPS_BUILD_TOOLS=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target "$TARGET" >/dev/null
CORPUS="$BUILD/corpus/$TARGET"
mkdir -p "$CORPUS"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
"$BUILD/bin/$TARGET" -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "$CORPUS" \
  2>&1 | tail -n 15
exit "${PIPESTATUS[0]}"
