#!/usr/bin/env bash
# Sets up the machine, builds, and runs the main job: an mpirun job with 2 servers and 2 workers
# that creates a 1M-float table and runs 100 timed synchronous push/pull steps (after 5 warm-up
# steps), printing throughput.
#   scripts/demo.sh [extra shardps bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
# Root is allowed to run mpirun here because this script is the launcher (containers run as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "shardps demo: 2 servers + 2 workers, 1M-float table, 100 synchronous push/pull steps"
mpirun -np 4 --oversubscribe --bind-to none build/bin/shardps bench \
  --servers 2 --floats 1000000 --rounds 100 --warmup 5 "$@" | tee build/demo.json
/usr/bin/python3 - build/demo.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"round median {r['round_ms']['median']:.2f} ms  ({r['gbps_per_worker']:.2f} GB/s pushed+pulled per worker), "
      f"MPI_Allreduce of the same floats {r['allreduce_ms']['median']:.2f} ms")
PY
