#!/usr/bin/env bash
# Consistency policies against a straggler: 1 server + 2 workers (mpirun -np 3) train the
# Fashion-MNIST MLP for a few epochs with worker 1 slowed 2x by the test-only hook
# (--test-slow-worker 1:2: it sleeps as long as it computed), under bsp, ssp with s = 1, 2, 4 and
# asp; bsp without the slowdown is the reference of a job with no straggler. The -any rows slow a
# different worker from step to step instead (--test-slow-worker any:2: a hash of the step picks
# it), a straggler that moves. Each launch round runs every configuration once, in that order, so
# that the machine's load drifts over all of them alike.
# Prints, per policy, the median and the range (min-max) over the launches of: the job's wall time
# (the mpirun command, start-up included), the training wall time of worker 0 (summary.json
# wall_seconds), the final test loss and test accuracy (the last evaluation in metrics.csv); then
# each policy's wall time and test loss against bsp's (ratios of medians, and the range of the
# ratios of the runs launched in the same round).
#   scripts/bench_ssp.sh [launches (default 3)] [epochs (default 2)] [extra shardps train flags]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"; shift || true
EPOCHS="${1:-2}"; shift || true
BIN=${SHARDPS_BIN:-build/bin/shardps}
CFG=${SHARDPS_BENCH_CONFIG:-examples/configs/fashion_mlp.prototxt}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
POLICIES=("bsp-noslow" "bsp" "ssp1" "ssp2" "ssp4" "asp" "bsp-any" "ssp2-any" "ssp4-any")
flags_of() {
  local slow="1:2" p="$1"
  case "$p" in *-any) slow="any:2"; p="${p%-any}" ;; esac
  case "$p" in
    bsp-noslow) echo "--consistency bsp" ;;
    bsp) echo "--consistency bsp --test-slow-worker $slow" ;;
    ssp*) echo "--consistency ssp --staleness ${p#ssp} --test-slow-worker $slow" ;;
    asp) echo "--consistency asp --test-slow-worker $slow" ;;
  esac
}
echo "config $CFG, $EPOCHS epochs, $RUNS launches per policy, 1 server + 2 workers, worker 1 slowed 2x" \
  "(bsp-noslow: none; -any: one worker per step, picked by the step)"
for i in $(seq "$RUNS"); do
  for p in "${POLICIES[@]}"; do
    dir="$OUT/$p.$i"
    t0=$(date +%s.%N)
    # shellcheck disable=SC2046  # the policy's flags are split into words on purpose
    mpirun -np 3 --oversubscribe --bind-to none "$BIN" train --config "$CFG" --servers 1 --epochs "$EPOCHS" \
      --progress never --out-dir "$dir" $(flags_of "$p") "$@" >"$OUT/$p.$i.log" 2>&1 ||
      { echo "launch $i of $p failed:"; cat "$OUT/$p.$i.log"; exit 1; }
    t1=$(date +%s.%N)
    echo "$t0 $t1" | awk '{printf "%.3f\n", $2 - $1}' >"$dir/job_seconds"
    echo "round $i $p: $(cat "$dir/job_seconds") s" >&2
  done
done
/usr/bin/python3 - "$OUT" "$RUNS" "${POLICIES[@]}" <<'PY'
import csv, json, statistics, sys
out, runs, policies = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def one(p, i):
    d = f"{out}/{p}.{i}"
    s = json.load(open(f"{d}/summary.json"))
    evals = [r for r in csv.DictReader(open(f"{d}/metrics.csv")) if r["test_loss"]]
    return {"job": float(open(f"{d}/job_seconds").read()), "train": s["wall_seconds"],
            "loss": float(evals[-1]["test_loss"]), "acc": float(evals[-1]["test_accuracy"])}

runs_of = {p: [one(p, i) for i in range(1, runs + 1)] for p in policies}

def med(p, k):
    return statistics.median(r[k] for r in runs_of[p])

def rng(p, k, fmt):
    v = [r[k] for r in runs_of[p]]
    return f"{fmt % min(v)}-{fmt % max(v)}"

print(f"\n{'policy':11s} {'job s (median, range)':>24s} {'train s (median, range)':>26s} "
      f"{'test loss (median, range)':>28s} {'accuracy':>9s}")
for p in policies:
    print(f"{p:11s} {med(p, 'job'):8.2f} ({rng(p, 'job', '%.2f'):>13s}) {med(p, 'train'):9.2f} ({rng(p, 'train', '%.2f'):>13s}) "
          f"{med(p, 'loss'):9.4f} ({rng(p, 'loss', '%.4f'):>15s}) {med(p, 'acc'):9.4f}")
print("\nagainst bsp with the same straggler (ratio of medians; range of same-round ratios):")
for p in policies:
    base = "bsp-any" if p.endswith("-any") else "bsp"
    if p == base:
        continue
    speed = [b["train"] / r["train"] for b, r in zip(runs_of[base], runs_of[p])]
    loss = [r["loss"] / b["loss"] - 1 for b, r in zip(runs_of[base], runs_of[p])]
    print(f"{p:11s} vs {base:8s} train time {med(base, 'train') / med(p, 'train'):5.2f}x less "
          f"({min(speed):.2f}-{max(speed):.2f}), job time {med(base, 'job') / med(p, 'job'):5.2f}x less, "
          f"test loss {100 * (med(p, 'loss') / med(base, 'loss') - 1):+6.2f}% ({100 * min(loss):+.2f}% to {100 * max(loss):+.2f}%)")
PY
