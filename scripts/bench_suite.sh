#!/usr/bin/env bash
# The push+pull benchmark across separate launches (median of launch medians and the slowest
# launch per configuration); see scripts/bench_suite.py for the configurations and outputs.
#   scripts/bench_suite.sh N [--sizes 1000,1000000,10000000,40000000] [--out DIR] [--no-tcp] [--no-mpi]
#                          [--compare-placement]
set -euo pipefail
exec /usr/bin/python3 "$(dirname "$0")/bench_suite.py" "$@"
