#!/usr/bin/python3
"""Training throughput of two builds of shardps, A and B, in alternating launches (A, B, A, B, ...),
so that the shared machine's load falls on both alike: per build the samples/s of every launch,
their median, the first worker's split of a step (summary.json compute_seconds / wait_seconds per
step), weights_sha256, and per pair the ratio B / A with its median and range.

    scripts/bench_ab.py A_BIN B_BIN [--launches N] [--where colocated|netsim]
                        [--rate 10gbit] [--epochs E] [--config C]

colocated: `mpirun -np 2 --bind-to none BIN train --config C --colocated` on this machine.
netsim:    `scripts/netsim.py train --hosts 2 --rate R --servers 1 --workers 1` (1 server and 1
           worker on two simulated hosts joined by links of rate R; needs root).
Build A from an earlier commit with e.g.
    git worktree add /tmp/a <commit> && cmake -S /tmp/a -B /tmp/a/build -DCMAKE_BUILD_TYPE=Release \
        && cmake --build /tmp/a/build --target shardps_cli
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(binary, where, args, out_dir):
    train = ["--config", args.config, "--epochs", str(args.epochs), "--progress", "never"]
    if where == "colocated":
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        cmd = ["mpirun", "-np", "2", "--bind-to", "none", binary, "train", *train, "--colocated", "--out-dir", out_dir]
    else:
        env = dict(os.environ)
        cmd = [sys.executable, os.path.join(ROOT, "scripts", "netsim.py"), "train", "--hosts", "2", "--rate",
               args.rate, "--servers", "1", "--workers", "1", "--shardps", binary, "--out-dir", out_dir, "--", *train]
    r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       timeout=1800)
    if r.returncode != 0:
        sys.exit(f"bench_ab: {' '.join(cmd)} failed with exit status {r.returncode}:\n{r.stderr[-2000:]}")
    with open(os.path.join(out_dir, "summary.json")) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--launches", type=int, default=6)
    ap.add_argument("--where", choices=["colocated", "netsim"], default="colocated")
    ap.add_argument("--rate", default="10gbit", help="netsim link rate (default 10gbit)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--config", default="examples/configs/fashion_mlp.prototxt")
    args = ap.parse_args()
    for b in (args.a, args.b):
        if not os.access(b, os.X_OK):
            sys.exit(f"bench_ab: {b} is not an executable")
    if args.launches < 1:
        sys.exit("bench_ab: --launches must be at least 1")
    runs = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="bench_ab.") as tmp:
        for i in range(args.launches):
            for name, binary in (("A", args.a), ("B", args.b)):
                runs[name].append(launch(os.path.abspath(binary), args.where, args, os.path.join(tmp, f"{name}{i}")))
    where = args.where + (f" at {args.rate}" if args.where == "netsim" else "")
    print(f"{where}, {args.launches} alternating launches, {args.config}, {args.epochs} epoch(s)")
    for name, binary in (("A", args.a), ("B", args.b)):
        rs = runs[name]
        sps = [r["samples_per_second"] for r in rs]
        comp = statistics.median(1e3 * r["compute_seconds"] / r["steps"] for r in rs)
        wait = statistics.median(1e3 * r["wait_seconds"] / r["steps"] for r in rs)
        shas = sorted({r["weights_sha256"] for r in rs})
        print(f"{name} {binary}: samples/s " + " ".join(f"{x:.0f}" for x in sps) +
              f"; median {statistics.median(sps):.0f}; per step compute {comp:.3f} ms, wait {wait:.3f} ms;"
              f" weights_sha256 {', '.join(s[:16] for s in shas)}")
    ratios = [b["samples_per_second"] / a["samples_per_second"] for a, b in zip(runs["A"], runs["B"])]
    print("B/A per pair: " + " ".join(f"{x:.2f}" for x in ratios) +
          f"; median {statistics.median(ratios):.3f}x, range {min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
