#!/usr/bin/python3
"""shardps over TCP side by side with ps-lite on the same machine, alternating launches: a
push-then-pull round of a dense table (1K, 1M, 10M floats) with 1 server and 1 or 2 workers,
SGD on the server, worker 0's median round per launch (as `shardps bench` over TCP reports it).
Both get the same placement on CPUs (bench_suite.cpu_binding: a CPU of its own per process when
there are enough).

ps-lite is not part of shardps: build its benchmark outside the repository first (the steps are in
the benchmark's README, e.g. ../shared/bench/pslite/README.md), then

    scripts/bench_vs_pslite.py N --run-pslite PATH/run_pslite.sh [--pslite-bench /tmp/pslite/bench_pslite]

Prints a table of the median (min-max) over N launches of each, and the ratio of the medians.

With --sparse: the round is a push then a pull of 1M keys of one float each (`shardps bench
--sparse 1000000`; ps-lite with BENCH_KEYS=1000000 BENCH_VPK=1), 1 server and 1 or 2 workers, for
shardps over TCP and under mpirun, each launch's median round (under mpirun the slowest rank's
round; over TCP and for ps-lite worker 0's).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_suite as bs  # noqa: E402

CELLS = [(1000, 1, 2000), (1000000, 1, 100), (10000000, 1, 30), (1000, 2, 2000), (1000000, 2, 100), (10000000, 2, 30)]
SPARSE_KEYS = 1000000


def run_mpi_sparse(shardps, workers, rounds):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run(["mpirun", "-np", str(1 + workers), "--oversubscribe", shardps, "bench", "--sparse",
                        str(SPARSE_KEYS), "--rounds", str(rounds), "--servers", "1"],
                       capture_output=True, text=True, timeout=300, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"mpirun shardps bench --sparse exited {p.returncode}:\n{p.stderr[-2000:]}")
    return bs.last_json(p.stdout, "mpirun shardps bench --sparse")


def sparse_main(args, key, wrapped, work):
    res = {}
    for i in range(args.launches):
        for w in (1, 2):
            r = bs.run_tcp(args.shardps, key, w, SPARSE_KEYS, 20, extra=["--sparse", str(SPARSE_KEYS)])
            res.setdefault((w, "tcp"), []).append(r["round_ms"]["median"])
            r = run_mpi_sparse(args.shardps, w, 20)
            res.setdefault((w, "mpi"), []).append(r["round_ms"]["median"])
            p = subprocess.run([args.run_pslite, "1", str(w), str(SPARSE_KEYS), "1", "20", "5", str(bs.free_port()),
                                os.path.join(work, f"log{i}_{w}")], capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, PSLITE_BENCH=wrapped[w]))
            lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
            zero = [x for x in lines if x.get("rank") == 0]
            if not zero:
                print(f"ps-lite launch {i + 1} ({w} workers) failed (exit {p.returncode}); skipped", file=sys.stderr)
                continue
            res.setdefault((w, "pslite"), []).append(zero[0]["round_ms"]["median"])
        print(f"bench_vs_pslite --sparse: pass {i + 1}/{args.launches} done", file=sys.stderr, flush=True)
    print("| 1M keys, workers | ps-lite median (min-max) ms | shardps MPI | ps-lite / MPI | shardps TCP | ps-lite / TCP |")
    print("|---:|---:|---:|---:|---:|---:|")
    med = statistics.median
    for w in (1, 2):
        a, m, t = res.get((w, "pslite"), []), res.get((w, "mpi"), []), res.get((w, "tcp"), [])
        if a and m and t:
            print(f"| {w} | {med(a):.4g} ({min(a):.4g}-{max(a):.4g}) | {med(m):.4g} ({min(m):.4g}-{max(m):.4g}) | "
                  f"{med(a) / med(m):.2f}x | {med(t):.4g} ({min(t):.4g}-{max(t):.4g}) | {med(a) / med(t):.2f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("launches", type=int)
    ap.add_argument("--run-pslite", required=True, help="the ps-lite benchmark's run_pslite.sh")
    ap.add_argument("--pslite-bench", default="/tmp/pslite/bench_pslite")
    ap.add_argument("--shardps", default=os.path.join(bs.ROOT, "build", "bin", "shardps"))
    ap.add_argument("--sparse", action="store_true", help="1M keys of one float each instead of the dense cells")
    args = ap.parse_args()
    for path in (args.run_pslite, args.pslite_bench, args.shardps):
        if not os.access(path, os.X_OK):
            sys.exit(f"bench_vs_pslite: {path} is not an executable")
    work = tempfile.mkdtemp(prefix="shardps_vs_pslite_")
    key = os.path.join(work, "job.key")
    subprocess.run([args.shardps, "keygen", "--out", key], check=True, capture_output=True, timeout=60)
    # Both sides get the same placement (bench_suite.cpu_binding): with a CPU per busy process,
    # the server on the first and each worker on its own; ps-lite's scheduler, idle once the job
    # has started, is left to the kernel. The wrapper binds ps-lite's processes by their role.
    wrapped = {}
    for w in sorted({w for _, w, _ in CELLS}):
        cpus = bs.cpu_binding(1 + w)
        if cpus is None or w != 1:  # ps-lite does not number its workers: bind only a single one
            wrapped[w] = args.pslite_bench
            continue
        path = os.path.join(work, f"pslite_bound_{w}.sh")
        with open(path, "w") as f:
            f.write(f"#!/bin/bash\ncase $DMLC_ROLE in\n  server) exec taskset -c {cpus[0]} {args.pslite_bench} ;;\n"
                    f"  worker) exec taskset -c {cpus[1]} {args.pslite_bench} ;;\n  *) exec {args.pslite_bench} ;;\nesac\n")
        os.chmod(path, 0o755)
        wrapped[w] = path
    if args.sparse:
        return sparse_main(args, key, wrapped, work)
    res = {}
    for i in range(args.launches):
        for floats, w, rounds in CELLS:
            r = bs.run_tcp(args.shardps, key, w, floats, rounds)
            res.setdefault((floats, w, "shardps"), []).append(r["round_ms"]["median"])
            p = subprocess.run([args.run_pslite, "1", str(w), "1", str(floats), str(rounds), "5", str(bs.free_port()),
                                os.path.join(work, f"log{i}")], capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, PSLITE_BENCH=wrapped[w]))
            lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
            zero = [x for x in lines if x.get("rank") == 0]
            if not zero:  # ps-lite's known start-up race: the launch is skipped, and said so
                print(f"ps-lite launch {i + 1} ({floats} floats, {w} workers) failed (exit {p.returncode}); skipped",
                      file=sys.stderr)
                continue
            res.setdefault((floats, w, "pslite"), []).append(zero[0]["round_ms"]["median"])
        print(f"bench_vs_pslite: pass {i + 1}/{args.launches} done", file=sys.stderr, flush=True)
    print("| floats | workers | ps-lite median (min-max) ms | shardps TCP median (min-max) ms | ps-lite / shardps |")
    print("|---:|---:|---:|---:|---:|")
    for floats, w, _ in CELLS:
        a, b = res.get((floats, w, "pslite"), []), res.get((floats, w, "shardps"), [])
        if a and b:
            print(f"| {floats:,} | {w} | {statistics.median(a):.4g} ({min(a):.4g}-{max(a):.4g}) | "
                  f"{statistics.median(b):.4g} ({min(b):.4g}-{max(b):.4g}) | {statistics.median(a) / statistics.median(b):.2f}x |")


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, subprocess.SubprocessError) as e:
        sys.exit(f"bench_vs_pslite: {e}")
