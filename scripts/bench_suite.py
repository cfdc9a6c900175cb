#!/usr/bin/python3
"""The push+pull benchmark across separate launches: a launch's median hides what decides a round
at start-up (placement, first touch, who wins the cores), so each configuration is launched N
times, interleaved with every other one, and reported as the median of the launch medians and the
slowest launch.

    scripts/bench_suite.sh N [--sizes 1000,1000000,10000000,40000000] [--out DIR] [--no-tcp] [--no-mpi]
                           [--compare-placement]

Configurations, for each size:
  mpi 1S1W       mpirun -np 2: 1 server + 1 worker, with MPI_Allreduce of the same floats on the
                 same 2 ranks timed in the same launch
  mpi colocated  mpirun -np 2 --colocated: both ranks serve and work (and the same Allreduce)
  mpi 1S2W       mpirun -np 3 --oversubscribe: 1 server + 2 workers (Allreduce on 3 ranks)
  tcp 1S1W       separate processes over TCP loopback (authenticated), 1 server + 1 worker, each
                 bound to a CPU of its own when there are enough (cpu_binding, as launch_local.sh)
  tcp 1S2W       the same with 2 workers
  tcp ... unbound  with --compare-placement: the TCP ones again, placement left to the kernel
Writes DIR/launches.jsonl (one record per launch, with the bench's own JSON) and DIR/suite.json
(per configuration: launch medians, median of medians, slowest launch, the Allreduce of the same
launches); prints a table. scripts/plot_bench.py DIR/suite.json draws the spread.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = {1000: 2000, 1000000: 100, 10000000: 30, 40000000: 10}
LAUNCH_TIMEOUT_S = 300


def rounds_for(floats):
    for size in sorted(ROUNDS):
        if floats <= size:
            return ROUNDS[size]
    return 10


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_binding(processes):
    """The CPU each of `processes` processes on this host gets: one CPU of this process's affinity
    set each, in order, when there are enough of them; None (the kernel places them) otherwise.
    Two busy processes left to the kernel on a 2-core machine often share one core while the other
    idles (the receiver of a loopback transfer is woken onto the sender's core): docs/benchmarks.md.
    scripts/launch_local.sh applies the same rule."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[:processes] if processes <= len(cpus) else None


def bound(cmd, cpu):
    """`cmd` run on `cpu` only (unchanged when cpu is None)."""
    return cmd if cpu is None else ["taskset", "-c", str(cpu)] + cmd


def last_json(text, what):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{what}: no JSON result in its output:\n{text[-2000:]}")


def run_mpi(binary, mpirun, kind, floats, rounds):
    np_, extra = {"1S1W": (2, ["--servers", "1"]), "colocated": (2, ["--colocated"]),
                  "1S2W": (3, ["--servers", "1"])}[kind]
    cmd = [mpirun, "--oversubscribe", "-np", str(np_), binary, "bench", "--floats", str(floats), "--rounds",
           str(rounds)] + extra
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-2000:]}")
    return last_json(p.stdout, " ".join(cmd))


def run_tcp(binary, key, workers, floats, rounds, bind=True, extra=()):
    port = free_port()
    common = [binary, "bench", "--transport", "tcp", "--coordinator", f"127.0.0.1:{port}", "--num-servers", "1",
              "--num-workers", str(workers), "--floats", str(floats), "--rounds", str(rounds), "--setup-timeout", "60",
              "--secret-file", key] + list(extra)
    cpus = cpu_binding(1 + workers) if bind else None
    cpu = (lambda k: None) if cpus is None else (lambda k: cpus[k])
    procs = [subprocess.Popen(bound(common + ["--role", "server", "--rank", "0"], cpu(0)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)]
    for w in range(workers):
        procs.append(subprocess.Popen(bound(common + ["--role", "worker", "--rank", str(w)], cpu(1 + w)),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    deadline = time.time() + LAUNCH_TIMEOUT_S
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1, deadline - time.time()))
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for code, out, err in outs:
        if code != 0:
            raise RuntimeError(f"TCP bench ({workers} workers, {floats} floats) exited {code}:\n{err[-2000:]}")
    return last_json(outs[1][1], "TCP worker 0")  # worker 0 reports the round


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("launches", type=int, help="launches of each configuration")
    ap.add_argument("--sizes", default="1000,1000000,10000000,40000000")
    ap.add_argument("--out", default=None, help="directory for launches.jsonl and suite.json (default: a new temp dir)")
    ap.add_argument("--no-tcp", action="store_true")
    ap.add_argument("--no-mpi", action="store_true")
    ap.add_argument("--compare-placement", action="store_true",
                    help="TCP configurations also with placement left to the kernel ('1S1W unbound'), launched "
                         "right after the bound ones")
    ap.add_argument("--shardps", default=os.environ.get("SHARDPS_BIN", os.path.join(ROOT, "build", "bin", "shardps")))
    ap.add_argument("--mpirun", default="mpirun")
    args = ap.parse_args()
    if args.launches < 1:
        sys.exit("bench_suite: launches must be at least 1")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        sys.exit(f"bench_suite: --sizes '{args.sizes}' is not a comma-separated list of integers")
    if not os.access(args.shardps, os.X_OK):
        sys.exit(f"bench_suite: {args.shardps} is not an executable (build first, or pass --shardps)")
    out = args.out or tempfile.mkdtemp(prefix="shardps_suite_")
    os.makedirs(out, exist_ok=True)
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    key = os.path.join(out, "job.key")
    if not os.path.exists(key):
        subprocess.run([args.shardps, "keygen", "--out", key], check=True, capture_output=True, timeout=60)

    configs = [] if args.no_mpi else [("mpi", k) for k in ("1S1W", "colocated", "1S2W")]
    if not args.no_tcp:
        for k in ("1S1W", "1S2W"):
            configs += [("tcp", k)] + ([("tcp", k + " unbound")] if args.compare_placement else [])
    if not configs:
        sys.exit("bench_suite: --no-mpi and --no-tcp leave nothing to run")
    records = []
    started = time.time()
    with open(os.path.join(out, "launches.jsonl"), "w") as log:
        for launch in range(1, args.launches + 1):
            # Interleaved: every configuration once per pass, so slow phases of a noisy machine
            # spread over all of them instead of landing on one.
            for floats in sizes:
                rounds = rounds_for(floats)
                for transport, kind in configs:
                    if transport == "mpi":
                        r = run_mpi(args.shardps, args.mpirun, kind, floats, rounds)
                    else:
                        r = run_tcp(args.shardps, key, 2 if kind.startswith("1S2W") else 1, floats, rounds,
                                    bind=not kind.endswith("unbound"))
                    rec = {"launch": launch, "transport": transport, "config": kind, "floats": floats,
                           "round_ms": r["round_ms"]["median"], "push_ms": r["push_ms"]["median"],
                           "pull_ms": r["pull_ms"]["median"],
                           "allreduce_ms": r["allreduce_ms"]["median"] if "allreduce_ms" in r else None, "bench": r}
                    records.append(rec)
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
            print(f"bench_suite: pass {launch}/{args.launches} done after {time.time() - started:.0f} s",
                  file=sys.stderr)

    summary = []
    for floats in sizes:
        for transport, kind in configs:
            rs = [r for r in records if r["floats"] == floats and r["transport"] == transport and r["config"] == kind]
            med = [r["round_ms"] for r in rs]
            ar = [r["allreduce_ms"] for r in rs if r["allreduce_ms"] is not None]
            m = statistics.median(med)
            summary.append({"transport": transport, "config": kind, "floats": floats, "launch_medians_ms": med,
                            "median_of_medians_ms": m, "slowest_launch_ms": max(med), "fastest_launch_ms": min(med),
                            "slowest_over_median": max(med) / m if m > 0 else None,
                            "push_median_ms": statistics.median(r["push_ms"] for r in rs),
                            "pull_median_ms": statistics.median(r["pull_ms"] for r in rs),
                            "allreduce_launch_medians_ms": ar,
                            "allreduce_median_of_medians_ms": statistics.median(ar) if ar else None})
    doc = {"launches": args.launches, "sizes": sizes, "host": socket.gethostname(), "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": round(time.time() - started),
           "configs": summary}
    with open(os.path.join(out, "suite.json"), "w") as f:
        json.dump(doc, f, indent=1)
    print(f"{'transport':9s} {'config':9s} {'floats':>9s} {'median':>10s} {'slowest':>10s} {'ratio':>6s} "
          f"{'allreduce':>10s} {'ps/ar':>6s}   launch medians (ms)")
    for s in summary:
        ar = s["allreduce_median_of_medians_ms"]
        m = s["median_of_medians_ms"]
        ar_text = f"{ar:10.4f} {m / ar:6.2f}" if ar else f"{'-':>10s} {'-':>6s}"
        print(f"{s['transport']:9s} {s['config']:9s} {s['floats']:9d} {m:10.4f} "
              f"{s['slowest_launch_ms']:10.4f} {s['slowest_over_median']:6.2f} {ar_text}   "
              + " ".join(f"{v:.3f}" for v in s["launch_medians_ms"]))
    print(f"bench_suite: {os.path.join(out, 'suite.json')}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
        sys.exit(f"bench_suite: {e}")
