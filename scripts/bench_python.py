#!/usr/bin/env python3
"""push_pull of a large array from Python against the C++ bench's round, over several launches.

    /usr/bin/python3 scripts/bench_python.py --shardps build/bin/shardps --pythonpath build/python \
        [--floats 10000000] [--rounds 30] [--warmup 5] [--launches 5] [--json-out FILE]

Each launch runs, one after the other, `mpirun -np 2 shardps bench --servers 1 --no-allreduce`
(1 server + 1 worker; a round is a Push then a Pull of the whole table, each waited for) and the
same job written in Python (`shardps.push_pull` of a float32 NumPy array of the same size: one
PushPull round trip, in place). It prints the median round of each, their ratio per launch, and
the median and min-max of that ratio across launches. Run by itself (--job) it is the Python
side of a launch.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def job(a):
    import numpy as np
    import shardps
    shardps.init(servers=1)
    shardps.declare("bench", shape=(a.floats,))
    if not shardps.start():
        return
    x = np.ones(a.floats, dtype=np.float32)
    shardps.barrier()
    times = []
    for r in range(a.warmup + a.rounds):
        x.fill(1.0)
        t0 = time.perf_counter()
        shardps.push_pull(x, "bench", average=False)
        t1 = time.perf_counter()
        if r >= a.warmup:
            times.append((t1 - t0) * 1e3)
    if x[0] != shardps.num_workers() or x[-1] != shardps.num_workers():
        raise SystemExit(f"bench: push_pull answered {x[0]}, expected {shardps.num_workers()}")
    if shardps.worker_index() == 0:
        with open(a.json_out, "w") as f:
            json.dump({"round_ms": {"min": min(times), "median": statistics.median(times), "max": max(times)}}, f)
    shardps.shutdown()


def mpirun(n, cmd):
    return ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(n), "-x", "PYTHONPATH"] + cmd


def driver(a):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.path.abspath(a.pythonpath))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for launch in range(a.launches):
            cpp_json, py_json = os.path.join(d, "cpp.json"), os.path.join(d, "py.json")
            cpp = [a.shardps, "bench", "--servers", "1", "--no-allreduce", "--floats", str(a.floats),
                   "--rounds", str(a.rounds), "--warmup", str(a.warmup), "--json-out", cpp_json]
            py = ["/usr/bin/python3", os.path.abspath(__file__), "--job", "--floats", str(a.floats),
                  "--rounds", str(a.rounds), "--warmup", str(a.warmup), "--json-out", py_json]
            for cmd in (cpp, py):
                p = subprocess.run(mpirun(2, cmd), env=env, capture_output=True, text=True, timeout=600)
                if p.returncode != 0:
                    raise SystemExit(f"bench_python: {' '.join(cmd[:2])} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
            with open(cpp_json) as f:
                c = json.load(f)["round_ms"]["median"]
            with open(py_json) as f:
                p_ms = json.load(f)["round_ms"]["median"]
            rows.append({"launch": launch, "cpp_round_ms": c, "python_round_ms": p_ms, "ratio": p_ms / c})
            print(f"launch {launch}: C++ bench round {c:.2f} ms, Python push_pull {p_ms:.2f} ms, ratio {p_ms / c:.3f}",
                  flush=True)
    ratios = [r["ratio"] for r in rows]
    summary = {"floats": a.floats, "rounds": a.rounds, "launches": rows,
               "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
               "cpp_round_ms_median": statistics.median(r["cpp_round_ms"] for r in rows),
               "python_round_ms_median": statistics.median(r["python_round_ms"] for r in rows)}
    print(f"Python / C++ round over {a.launches} launches: median {summary['ratio']['median']:.3f} "
          f"(min {summary['ratio']['min']:.3f}, max {summary['ratio']['max']:.3f})")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(summary, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shardps", default="build/bin/shardps")
    ap.add_argument("--pythonpath", default="build/python")
    ap.add_argument("--floats", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--launches", type=int, default=5)
    ap.add_argument("--json-out")
    a = ap.parse_args()
    if a.job:
        job(a)
    else:
        driver(a)


if __name__ == "__main__":
    sys.exit(main())
