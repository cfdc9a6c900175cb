#!/usr/bin/env python3
"""Training throughput of examples/python/train_cnn.py: 2 workers + 1 server under mpirun against
one plain PyTorch process (--single), the same global batches, torch limited to --threads per
process, over several launches.

    /usr/bin/python3 scripts/bench_cnn.py --pythonpath build/python [--steps 300] [--batch-size 64]
        [--launches 5] [--threads 1] [--server-optimizer] [--json-out FILE]

Each launch runs the two, one after the other (alternating which goes first), for --steps steps
of the full training set's first epoch (no evaluation in the measured time: the example's
samples_per_second counts training samples per second of training), and prints both and their
ratio; at the end the median and min-max of each across launches.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "examples", "python", "train_cnn.py")
PY = "/usr/bin/python3"


def final_json(out, what):
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if len(lines) != 1:
        raise SystemExit(f"bench_cnn.py: {what}: no final JSON line in its output:\n{out}")
    return json.loads(lines[0])


def run(cmd, env, what, timeout):
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"bench_cnn.py: {what} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    r = final_json(p.stdout, what)
    r["seconds"] = time.time() - t0
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pythonpath", required=True, help="the build tree's python directory")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--launches", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--server-optimizer", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    if a.steps < 1 or a.launches < 1 or a.threads < 1:
        ap.error("--steps, --launches and --threads must be >= 1")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(a.pythonpath), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS=str(a.threads))
    common = ["--max-steps", str(a.steps), "--epochs", "1", "--batch-size", str(a.batch_size), "--threads",
              str(a.threads), "--test-limit", "1000", "--log-every", "0"]
    single = [PY, SCRIPT, "--single", *common]
    dist = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "3", "-x", "PYTHONPATH", "-x", "OMP_NUM_THREADS",
            PY, SCRIPT, "--servers", "1", *common] + (["--server-optimizer"] if a.server_optimizer else [])
    rows = []
    for k in range(a.launches):
        order = [("single", single), ("2 workers + 1 server", dist)]
        if k % 2:
            order.reverse()
        got = {name: run(cmd, env, name, a.timeout)["samples_per_second"] for name, cmd in order}
        s, d = got["single"], got["2 workers + 1 server"]
        rows.append({"single": s, "distributed": d, "ratio": d / s})
        print(f"launch {k}: one process {s:.0f} samples/s, 2 workers + 1 server {d:.0f} samples/s, ratio {d / s:.3f}",
              flush=True)

    def summary(key):
        v = [r[key] for r in rows]
        return statistics.median(v), min(v), max(v)
    for key, label in (("single", "one process, samples/s"), ("distributed", "2 workers + 1 server, samples/s"),
                       ("ratio", "ratio")):
        m, lo, hi = summary(key)
        print(f"{label}: median {m:.3f} (min {lo:.3f}, max {hi:.3f}) over {len(rows)} launches")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"launches": rows, "steps": a.steps, "batch_size": a.batch_size, "threads": a.threads,
                       "server_optimizer": a.server_optimizer}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
