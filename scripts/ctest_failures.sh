#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/sanitize.sh: keeps what each ctest run failed so the end of
# the CI log names it (a log is often read from its tail, and the stages after a failure print
# thousands of lines).
#   ctest_run STAGE BUILD_DIR [ctest args]   runs ctest in BUILD_DIR; on failure appends to the file
#                                            $SHARDPS_FAILURES (when set) each failed test's name and
#                                            the last lines of its output; returns ctest's status
#   ctest_failures_note STAGE TEXT           appends a line of TEXT (a failure with no test name)

ctest_failures_note() {
  [ -n "${SHARDPS_FAILURES:-}" ] || return 0
  echo "-- $1: $2" >>"$SHARDPS_FAILURES"
}

ctest_run() {
  local stage=$1 dir=$2 rc=0
  shift 2
  rm -f "$dir/Testing/Temporary/LastTestsFailed.log"
  (cd "$dir" && ctest "$@") || rc=$?
  [ "$rc" -ne 0 ] || return 0
  [ -n "${SHARDPS_FAILURES:-}" ] || return "$rc"
  local failed="$dir/Testing/Temporary/LastTestsFailed.log" log="$dir/Testing/Temporary/LastTest.log"
  if [ ! -s "$failed" ]; then
    ctest_failures_note "$stage" "ctest exited $rc without a failed test (no tests matched, or ctest itself failed)"
    return "$rc"
  fi
  local line name
  while IFS= read -r line; do
    name=${line#*:}
    ctest_failures_note "$stage" "FAILED $name (last lines of its output):"
    # The test's section of LastTest.log runs from "N/M Test: NAME" to its "end time" line.
    awk -v n="$name" 'index($0, " Test: " n) && $0 ~ ("^[0-9]+/[0-9]+ Test: ") && substr($0, index($0, " Test: ") + 7) == n {on = 1}
                      on {print}
                      on && index($0, "\"" n "\" end time") == 1 {exit}' "$log" 2>/dev/null |
      tail -n 50 | sed 's/^/   | /' >>"$SHARDPS_FAILURES"
  done <"$failed"
  return "$rc"
}
