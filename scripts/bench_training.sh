#!/usr/bin/env bash
# Training throughput: the Fashion-MNIST MLP in one process (no servers) against 2 colocated ranks
# and against 1 server + 2 workers (3 ranks on this machine's cores), same config and global
# batch, alternating launches; prints each launch's samples/s, the ratio of each pair (colocated
# against the single process launched just before it) and the median ratio, and the first
# worker's split of a step into computing and waiting (summary.json compute_seconds/wait_seconds).
#   scripts/bench_training.sh [launches] [extra shardps train flags]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"; shift || true
BIN=${SHARDPS_BIN:-build/bin/shardps}
CFG=examples/configs/fashion_mlp.prototxt
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for i in $(seq "$RUNS"); do
  "$BIN" train --config "$CFG" --servers 0 --epochs 2 --progress never --out-dir "$OUT/single$i" "$@" >/dev/null 2>&1
  mpirun -np 2 --bind-to none "$BIN" train --config "$CFG" --colocated --epochs 2 --progress never \
    --out-dir "$OUT/coloc$i" "$@" >/dev/null 2>&1
  mpirun -np 3 --oversubscribe --bind-to none "$BIN" train --config "$CFG" --servers 1 --epochs 2 --progress never \
    --out-dir "$OUT/s1w2$i" "$@" >/dev/null 2>&1
done
/usr/bin/python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def load(name):
    return [json.load(open(f"{out}/{name}{i}/summary.json")) for i in range(1, runs + 1)]
single, coloc, s1w2 = load("single"), load("coloc"), load("s1w2")
def row(label, rs):
    v = [r["samples_per_second"] for r in rs]
    print(f"{label:24s}" + "  ".join(f"{x:8.0f}" for x in v) + f"   median {statistics.median(v):8.0f} samples/s")
    return v
s = row("1 process", single)
c = row("2 colocated ranks", coloc)
t = row("1 server + 2 workers", s1w2)
for label, v in (("2 colocated ranks", c), ("1 server + 2 workers", t)):
    pairs = [b / a for a, b in zip(s, v)]
    print(f"{label}: pair ratios " + " ".join(f"{p:.2f}" for p in pairs) +
          f"; median {statistics.median(pairs):.2f}x, lowest {min(pairs):.2f}x; ratio of medians "
          f"{statistics.median(v) / statistics.median(s):.2f}x")
for label, rs in (("2 colocated ranks", coloc), ("1 server + 2 workers", s1w2)):
    steps = [r["steps"] for r in rs]
    comp = statistics.median(1e3 * r["compute_seconds"] / r["steps"] for r in rs)
    wait = statistics.median(1e3 * r["wait_seconds"] / r["steps"] for r in rs)
    print(f"{label}: per step on the first worker, median over launches: compute {comp:.3f} ms, wait {wait:.3f} ms")
PY
