#!/usr/bin/env bash
# Sets up the machine, builds, and runs the main job: the Fashion-MNIST MLP trained for a few
# epochs by 1 parameter server + 2 workers under mpirun. Prints the test accuracy and where the
# metrics CSV and its plot are.
#   scripts/demo.sh [extra shardps train flags, e.g. --epochs 12]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
# Root may run mpirun here because this script is the launcher (containers run as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=build/demo
rm -rf "$OUT"
echo "shardps demo: Fashion-MNIST MLP (784-256-10, Adam), 1 server + 2 workers, 3 epochs"
mpirun -np 3 --oversubscribe --bind-to none build/bin/shardps train \
  --config examples/configs/fashion_mlp.prototxt --servers 1 --epochs 3 --out-dir "$OUT" "$@"
/usr/bin/python3 scripts/plot_metrics.py "$OUT/metrics.csv" -o "$OUT/metrics.png" >/dev/null
/usr/bin/python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
s = json.load(open(f"{out}/summary.json"))
print(f"\ntest accuracy {s['test_accuracy']:.4f} after {s['epochs']} epochs ({s['steps']} steps, "
      f"{s['samples_per_second']:.0f} samples/s, {s['wall_seconds']:.1f} s)")
print(f"metrics CSV: {out}/metrics.csv")
print(f"plot:        {out}/metrics.png")
print(f"model:       {out}/final_model.safetensors")
PY
