#!/usr/bin/env bash
# Checkpoint write throughput against the disk's sequential write speed, in one run, and how much
# training slows down while checkpoints are taken.
#   scripts/bench_checkpoint.sh [DIR]   (DIR: where to write, default a new directory under build/)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/bin/shardps
DIR="${1:-build/bench_ckpt}"
rm -rf "$DIR"; mkdir -p "$DIR"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "== disk: sequential write with fsync (dd): 40 MiB (one checkpoint's size) three times, then 1 GiB =="
for i in 1 2 3; do dd if=/dev/zero of="$DIR/dd.bin" bs=4M count=10 conv=fsync 2>&1 | tail -1; done
dd if=/dev/zero of="$DIR/dd.bin" bs=4M count=256 conv=fsync 2>&1 | tail -1
rm -f "$DIR/dd.bin"
# A wide MLP (784-4096-10, Adam): 3.26M weights + 2 Adam slots = 39 MB per checkpoint.
ARGS=(--config examples/configs/fashion_mlp.prototxt --hidden 4096 --train-limit 8192 --epochs 1
      --progress never --servers 1)
echo "== training without checkpoints =="
mpirun -np 3 --oversubscribe --bind-to none "$BIN" train "${ARGS[@]}" --out-dir "$DIR/run0" 2>/dev/null \
  | grep -o '"samples_per_second":[0-9.]*'
echo "== training with a checkpoint every 16 steps =="
mpirun -np 3 --oversubscribe --bind-to none "$BIN" train "${ARGS[@]}" --out-dir "$DIR/run1" \
  --checkpoint-dir "$DIR/ckpt" --checkpoint-every 16 2>&1 | grep -E "samples_per_second|checkpoints in" \
  | sed -e 's/.*\("samples_per_second":[0-9.]*\).*/\1/'
"$BIN" ckpt list "$DIR/ckpt"
