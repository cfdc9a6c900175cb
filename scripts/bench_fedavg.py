#!/usr/bin/python3
"""Federated averaging measured (docs/benchmarks.md#federated-averaging, docs/federated.md).

    scripts/bench_fedavg.py [--runs NAME,..] [--shardps build/bin/shardps] [--out results.jsonl]

Each run is `mpirun -np 3 shardps train --config examples/configs/fashion_fedavg.prototxt
--servers 1 [flags]` (the 784-256-10 MLP, 100 clients, 1 server + 2 worker processes hosting
50 clients each), one launch per setting: training is deterministic, a second launch gives the
same weights. From the metrics CSV: the test accuracy after every evaluated round, the first
round reaching each threshold, the final accuracy and the seconds per round.

Runs (NAME: flags):
  iid             C 0.1, E 5, B 10, 50 rounds                     (target: >= 0.87 within 50)
  shards          2 label-sorted shards per client, E 5, B 10     (rounds to 0.80)
  dirichlet       Dirichlet(0.5) over labels, E 5, B 10           (rounds to 0.80)
  shards-fedsgd   the same clients, FedSGD: E 1, B 0 (whole partition), its own learning rate
  dirichlet-fedsgd
  dp-clip, dp-z0.5, dp-z1.0   DP-FedAvg, IID, 50 rounds: clipping to 1.0 alone, then noise
                  multiplier 0.5 and 1.0 (not in the default --runs)
  secagg          iid with secure aggregation (16-bit updates, clip 1), 50 rounds; compare with iid
  secagg-drop3    the same, 3 of each round's 10 clients drop after sharing their keys (t = 7)
                  (neither in the default --runs)
FedAvg should reach 0.80 in >= 5x fewer rounds than FedSGD.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
FEDSGD = ["--local-epochs", "1", "--local-batch", "0", "--lr", "0.2", "--set", "federated.eval_every_rounds=10"]
RUNS = {
    "iid": ["--rounds", "50"],
    "shards": ["--partitioner", "shards", "--rounds", "200", "--set", "federated.eval_every_rounds=5"],
    "dirichlet": ["--partitioner", "dirichlet", "--dirichlet-alpha", "0.5", "--rounds", "200",
                  "--set", "federated.eval_every_rounds=5"],
    "shards-fedsgd": ["--partitioner", "shards", "--rounds", "1500"] + FEDSGD,
    "dirichlet-fedsgd": ["--partitioner", "dirichlet", "--dirichlet-alpha", "0.5", "--rounds", "1500"] + FEDSGD,
    # DP-FedAvg (IID, 50 rounds): clipping alone, then noise multipliers 0.5 and 1.0.
    "dp-clip": ["--rounds", "50", "--clip-norm", "1"],
    "dp-z0.5": ["--rounds", "50", "--clip-norm", "1", "--noise-multiplier", "0.5"],
    "dp-z1.0": ["--rounds", "50", "--clip-norm", "1", "--noise-multiplier", "1.0"],
    # Secure aggregation (IID, 50 rounds): no dropouts, then 3 of 10 dropping after ShareKeys.
    "secagg": ["--rounds", "50", "--secure-aggregation"],
    "secagg-drop3": ["--rounds", "50", "--secure-aggregation", "--secagg-dropouts", "3", "--secagg-drop-phase", "2"],
}


def first_round(rows, threshold):
    for r in rows:
        if r["test_accuracy"] and float(r["test_accuracy"]) >= threshold:
            return int(r["step"])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shardps", default=os.path.join(ROOT, "build", "bin", "shardps"))
    ap.add_argument("--runs", default=",".join(r for r in RUNS if not r.startswith(("dp-", "secagg"))))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()
    print("| run | rounds | final accuracy | first round >= 0.80 | first round >= 0.87 | best accuracy | s/round | epsilon (delta 1e-5) | clipped | secagg: updates in the sums / aborted rounds / clipped values |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.runs.split(","):
            out = os.path.join(tmp, name)
            cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "3", a.shardps, "train", "--config",
                   os.path.join(ROOT, "examples", "configs", "fashion_fedavg.prototxt"), "--servers", "1",
                   "--progress", "never", "--seed", str(a.seed), "--out-dir", out] + RUNS[name]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, env=ENV)
            if p.returncode != 0:
                sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
            with open(os.path.join(out, "summary.json")) as f:
                s = json.load(f)
            with open(os.path.join(out, "metrics.csv")) as f:
                rows = list(csv.DictReader(f))
            accs = [float(r["test_accuracy"]) for r in rows if r["test_accuracy"]]
            per_round = s["wall_seconds"] / max(1, s["steps"])
            r80, r87 = first_round(rows, 0.80), first_round(rows, 0.87)
            dp = s.get("dp", {})
            eps = "-" if not dp else ("inf" if dp["epsilon"] is None else f"{dp['epsilon']:.3g}")
            clipped = f"{dp['clipped']}/{dp['client_updates']}" if dp else "-"
            sa = s.get("secagg")
            sa_text = f"{sa['client_updates']} / {sa['aborted_rounds']} / {sa['clipped_values']}" if sa else "-"
            print(f"| {name} | {s['steps']} | {s['test_accuracy']:.4f} | {r80 or '-'} | {r87 or '-'} | {max(accs):.4f} | "
                  f"{per_round:.2f} | {eps} | {clipped} | {sa_text} |", flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps({"run": name, "seed": a.seed, "rounds_to_0.80": r80, "rounds_to_0.87": r87,
                                        "accuracy_by_row": [(int(r["step"]), float(r["test_accuracy"])) for r in rows
                                                            if r["test_accuracy"]], **s}) + "\n")


if __name__ == "__main__":
    main()
