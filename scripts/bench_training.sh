#!/usr/bin/env bash
# Training throughput: the Fashion-MNIST MLP in one process (no servers) against 2 colocated ranks,
# same config and global batch, alternating runs; prints each run's samples/s and the median ratio.
#   scripts/bench_training.sh [runs] [extra shardps train flags]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"; shift || true
BIN=build/bin/shardps
CFG=examples/configs/fashion_mlp.prototxt
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=$(mktemp -d)
for i in $(seq "$RUNS"); do
  "$BIN" train --config "$CFG" --servers 0 --epochs 2 --progress never --out-dir "$OUT/single$i" "$@" >/dev/null
  mpirun -np 2 --bind-to none "$BIN" train --config "$CFG" --colocated --epochs 2 --progress never \
    --out-dir "$OUT/coloc$i" "$@" >/dev/null
done
/usr/bin/python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
single = [json.load(open(f"{out}/single{i}/summary.json"))["samples_per_second"] for i in range(1, runs + 1)]
coloc = [json.load(open(f"{out}/coloc{i}/summary.json"))["samples_per_second"] for i in range(1, runs + 1)]
print("1 process:        " + "  ".join(f"{v:8.0f}" for v in single) + f"   median {statistics.median(single):8.0f} samples/s")
print("2 colocated ranks:" + "  ".join(f"{v:8.0f}" for v in coloc) + f"   median {statistics.median(coloc):8.0f} samples/s")
print(f"ratio of medians: {statistics.median(coloc) / statistics.median(single):.2f}x")
PY
rm -rf "$OUT"
