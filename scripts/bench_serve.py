#!/usr/bin/python3
"""The model server measured (`shardps serve`, docs/serving.md) with `shardps serve-bench`.

    scripts/bench_serve.py [--launches 3] [--shardps build/bin/shardps] [--out results.json] [--work DIR]

Models: the shipped MLP (examples/configs/fashion_mlp.prototxt, 784-256-10, ~0.8 MB of weights)
trained for one epoch by `mpirun -np 2 shardps train --servers 1` with a checkpoint every 75
steps (13 versions), and a wide one (--hidden 4096, 784-4096-10, ~13 MB) trained for 10 steps
with a checkpoint every 2 (5 versions) for the memory part, where the MLP's 0.8 MB would be lost
in allocator noise. Both use the config's Adam, so a version's shard files hold the weights and
two optimizer slots (3x the weights; the server reads only the weights). Then, each launch with
fresh `shardps serve --threads 2` processes:

  latency     4 clients, open loop at 200 req/s, 20 s (2 s warmup), single-row infer:
              p50 <= 1 ms, p99 <= 5 ms (latency from each request's scheduled send time)
  throughput  8 keep-alive clients, closed loop, 15 s: >= 3000 req/s; with the CPU seconds the
              server and the load generator each spent per request
  swaps       two servers on one registry, both under load for 30 s (4 clients at 100 req/s
              each, 200 req/s in all): server A serves latest, server B --version tag:prod; every
              2.5 s either a version is copied in (`shardps ckpt copy TRAINED@V SERVED`: A swaps)
              or the tag moves to it (`shardps ckpt tag SERVED V prod`: B swaps), 5 of each. Each
              event also changes the registry the other server watches, so it re-resolves and
              re-verifies without swapping: 10 events for each. Failed requests (target 0), every
              client's versions in order, and the p99 of the requests scheduled during an event
              (from the command until the swap is seen in /v2/health/ready plus 250 ms) against
              the p99 of the rest (target <= 2x), both servers' samples pooled.
  memory      one server on `--version tag:mem` under light load (2 clients, 100 req/s) while the
              tag moves 20 times through the versions: VmRSS before the first swap (baseline),
              the peak during each swap (VmHWM after `echo 5 > /proc/PID/clear_refs` reset it
              just before; also VmRSS sampled every 10 ms) and VmRSS after each swap, against the
              model's weight bytes (shardps_serve_model_bytes in /metrics). Targets: peak <=
              baseline + 1.1 x model bytes; VmRSS after swap 20 within 5% of after swap 1.

Machine noise: a 2-core shared machine. The servers' 2 I/O threads, the load generator's client
threads (and during swaps the `shardps ckpt` commands) all share the same 2 cores, so the client
costs CPU the server would otherwise have; medians and min-max across launches are reported.
Before each part the machine must be quiet (under --quiet-cores of CPU busy over 1 s, waiting up
to --quiet-wait-s, then going on and saying so), and during each part the CPU used by other
processes (the machine's busy time from /proc/stat minus this script's processes') is recorded
with the 1-minute load average before it: a part measured while something else ran shows it.
The markdown table goes to stdout, everything (per launch) to --out as JSON.
"""
import argparse
import csv
import http.client
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
CONFIG = os.path.join(ROOT, "examples", "configs", "fashion_mlp.prototxt")
MLP_TRAIN = ["--epochs", "1", "--checkpoint-every", "75"]                     # 937 steps: 13 versions
BIG_TRAIN = ["--epochs", "1", "--hidden", "4096", "--train-limit", "640", "--checkpoint-every", "2"]  # 10 steps: 5 versions
CLK_TCK = os.sysconf("SC_CLK_TCK")


def run(cmd, timeout=600, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}{p.stderr[-3000:]}")
    return p.stdout


def train(a, ckpt_dir, flags):
    out = ckpt_dir + "_out"
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "2", a.shardps, "train", "--config", CONFIG,
           "--servers", "1", "--progress", "never", "--checkpoint-dir", ckpt_dir, "--out-dir", out] + flags
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    run(cmd, timeout=3600, env=ENV)
    versions = [v["version"] for v in json.loads(run([a.shardps, "ckpt", "list", ckpt_dir, "--json"])) if v["valid"]]
    return versions


def cpu_jiffies():
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    total = sum(v[:8])  # guest time is already counted in user
    return total - idle, total


def our_cpu_seconds():
    ch, me = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return ch.ru_utime + ch.ru_stime + me.ru_utime + me.ru_stime


def wait_quiet(a):
    """Waits until the machine's busy CPU over 1 s is under a.quiet_cores: seconds waited, and whether it was."""
    t0 = time.time()
    while True:
        b0, _ = cpu_jiffies()
        time.sleep(1.0)
        b1, _ = cpu_jiffies()
        busy = (b1 - b0) / CLK_TCK
        if busy < a.quiet_cores:
            return {"waited_s": round(time.time() - t0, 1), "quiet": True, "busy_cores_last_second": round(busy, 2)}
        if time.time() - t0 > a.quiet_wait_s:
            print(f"  the machine is still busy ({busy:.2f} cores) after {a.quiet_wait_s} s: measuring anyway",
                  file=sys.stderr, flush=True)
            return {"waited_s": round(time.time() - t0, 1), "quiet": False, "busy_cores_last_second": round(busy, 2)}


class Noise:
    """Waits for a quiet machine, then records the CPU others used while the part ran (every child
    of this script is reaped inside the part, so its CPU is in RUSAGE_CHILDREN at the end)."""

    def __init__(self, a, record):
        self.a, self.record = a, record

    def __enter__(self):
        self.record.update(wait_quiet(self.a))
        with open("/proc/loadavg") as f:
            self.record["loadavg_1min_before"] = float(f.read().split()[0])
        self.t0, self.ours0, (self.busy0, _) = time.time(), our_cpu_seconds(), cpu_jiffies()
        return self

    def __exit__(self, *exc):
        wall = time.time() - self.t0
        busy = (cpu_jiffies()[0] - self.busy0) / CLK_TCK
        ours = our_cpu_seconds() - self.ours0
        self.record.update({"wall_s": round(wall, 2), "busy_cores": round(busy / wall, 3), "our_cores": round(ours / wall, 3),
                            "foreign_cores": round(max(0.0, busy - ours) / wall, 3)})
        return False


def proc_status(pid):
    """VmRSS and VmHWM of `pid` in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class Server:
    """A `shardps serve --threads 2` process on a free port."""

    def __init__(self, a, registry, work, extra=()):
        self.port_file = os.path.join(work, f"port_{time.time_ns()}")
        self.log_path = os.path.join(work, f"serve_{time.time_ns()}.log")
        self.log = open(self.log_path, "w")
        cmd = [a.shardps, "serve", "--registry", registry, "--model", "mlp", "--listen", "127.0.0.1:0", "--threads", "2",
               "--port-file", self.port_file] + list(extra)
        self.p = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not os.path.exists(self.port_file):
            if self.p.poll() is not None or time.time() > deadline:
                sys.exit(f"shardps serve did not start ({' '.join(cmd)}):\n{open(self.log_path).read()[-3000:]}")
            time.sleep(0.02)
        with open(self.port_file) as f:
            self.port = int(f.read())
        self.pid = self.p.pid
        self.conn = None

    def get(self, path):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                return r.status, r.read().decode()
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise
        return None

    def version(self):
        status, body = self.get("/v2/health/ready")
        doc = json.loads(body)
        return int(doc["models"][0]["version"]) if doc.get("models") else None

    def metric(self, name):
        _, text = self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.split()[-1])
        return None

    def wait_version(self, v, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.version() == v:
                return time.time()
            time.sleep(0.02)
        sys.exit(f"server on port {self.port} did not serve version {v} within {timeout} s:\n{open(self.log_path).read()[-3000:]}")

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


def bench_cmd(a, port, clients, rate, duration, warmup, samples=None):
    cmd = [a.shardps, "serve-bench", "--url", f"http://127.0.0.1:{port}", "--model", "mlp", "--clients", str(clients),
           "--rate", str(rate), "--duration-s", str(duration), "--warmup-s", str(warmup), "--json", "--timeline"]
    if samples:
        cmd += ["--samples", samples]
    return cmd


def bench(a, port, clients, rate, duration, warmup, samples=None):
    """Runs serve-bench to completion: its JSON and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = run(bench_cmd(a, port, clients, rate, duration, warmup, samples), timeout=duration + warmup + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    doc = json.loads(out)
    doc["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return doc


def bench_start(a, port, clients, rate, duration, warmup, samples=None):
    return subprocess.Popen(bench_cmd(a, port, clients, rate, duration, warmup, samples), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def bench_finish(p, timeout):
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        sys.exit(f"serve-bench failed ({p.returncode}): {err[-3000:]}{out[-2000:]}")
    return json.loads(out)


def percentile(sorted_values, q):
    """Nearest rank, as serve-bench computes it."""
    if not sorted_values:
        return None
    k = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values))))
    return sorted_values[k - 1]


def read_samples(path, start_unix):
    """(unix scheduled time, latency ms, ok) of every measured request."""
    with open(path) as f:
        return [(start_unix + float(r["sched_s"]), float(r["latency_ms"]), r["status"] == "200" and r["version"] != "0")
                for r in csv.DictReader(f)]


# ---- the parts ----

def part_latency_throughput(a, trained, work):
    noise_lat, noise_thr = {}, {}
    with Noise(a, noise_lat):
        srv = Server(a, trained, work)
        try:
            lat = bench(a, srv.port, clients=4, rate=200, duration=20, warmup=2)
        finally:
            srv.stop()
    with Noise(a, noise_thr):
        srv = Server(a, trained, work)
        try:
            cpu0 = proc_cpu_seconds(srv.pid)
            thr = bench(a, srv.port, clients=8, rate=0, duration=15, warmup=2)
            server_cpu = proc_cpu_seconds(srv.pid) - cpu0
        finally:
            srv.stop()
    total = thr["ok"] + thr["warmup_requests"]
    return {
        "latency": {"p50_ms": lat["latency_ms"]["p50"], "p90_ms": lat["latency_ms"]["p90"], "p99_ms": lat["latency_ms"]["p99"],
                    "max_ms": lat["latency_ms"]["max"], "failures": lat["failures"], "achieved_rps": lat["achieved_rps"],
                    "late_sends": lat["late_sends"], "max_send_lag_ms": lat["max_send_lag_ms"], "first_failures": lat["first_failures"],
                    "timeline": lat["timeline"], "noise": noise_lat},
        "throughput": {"rps": thr["achieved_rps"], "p50_ms": thr["latency_ms"]["p50"], "p99_ms": thr["latency_ms"]["p99"],
                       "failures": thr["failures"], "first_failures": thr["first_failures"],
                       # Over the warmup and the measured seconds both (the CPU counters cannot split them).
                       "server_cpu_us_per_req": 1e6 * server_cpu / max(1, total),
                       "client_cpu_us_per_req": 1e6 * thr["client_cpu_s"] / max(1, total),
                       "cpu_cores_used": (server_cpu + thr["client_cpu_s"]) / (thr["duration_s"] + thr["warmup_s"]),
                       "noise": noise_thr},
    }


def part_swaps(a, trained, versions, work):
    served = os.path.join(work, "served")
    shutil.rmtree(served, ignore_errors=True)
    os.makedirs(served)
    seq = versions[:6]  # v0 served first, then 5 more: copied in for A, the tag moved to them for B
    run([a.shardps, "ckpt", "copy", f"{trained}@{seq[0]}", served])
    run([a.shardps, "ckpt", "tag", served, str(seq[0]), "prod"])
    noise = {}
    part = Noise(a, noise)
    part.__enter__()
    A = Server(a, served, work)
    B = Server(a, served, work, ["--version", "tag:prod"])
    duration, warmup, every = 30, 2, 2.5
    sa, sb = os.path.join(work, "swap_a.csv"), os.path.join(work, "swap_b.csv")
    events = []
    try:
        A.wait_version(seq[0])
        B.wait_version(seq[0])
        t_launch = time.time()
        pa = bench_start(a, A.port, 4, 100, duration, warmup, sa)
        pb = bench_start(a, B.port, 4, 100, duration, warmup, sb)
        t_measure = t_launch + 0.1 + warmup  # about when the measured window begins (exact: start_unix below)
        for i in range(10):
            v = seq[1 + i // 2]
            target = t_measure + every * (i + 1)
            time.sleep(max(0.0, target - time.time()))
            t0 = time.time()
            if i % 2 == 0:
                run([a.shardps, "ckpt", "copy", f"{trained}@{v}", served])
                t_served = A.wait_version(v)
            else:
                run([a.shardps, "ckpt", "tag", served, str(v), "prod"])
                t_served = B.wait_version(v)
            events.append({"kind": "copy" if i % 2 == 0 else "tag", "version": v, "t_cmd": t0, "t_served": t_served,
                           "seconds_to_serve": t_served - t0})
        ja = bench_finish(pa, duration + warmup + 120)
        jb = bench_finish(pb, duration + warmup + 120)
        swaps_a, swaps_b = A.metric("shardps_serve_swaps_total"), B.metric("shardps_serve_swaps_total")
    finally:
        A.stop()
        B.stop()
    part.__exit__(None, None, None)
    samples = read_samples(sa, ja["start_unix"]) + read_samples(sb, jb["start_unix"])
    windows = [(e["t_cmd"], e["t_served"] + 0.25) for e in events]
    in_swap = lambda t: any(lo <= t <= hi for lo, hi in windows)  # noqa: E731
    swap_lat = sorted(l for t, l, ok in samples if ok and in_swap(t))
    steady_lat = sorted(l for t, l, ok in samples if ok and not in_swap(t))
    # Per-second buckets (serve-bench --timeline): the seconds an event touched against the others.
    per_second = {"swap": [], "steady": []}
    for j in (ja, jb):
        for b in j["timeline"]:
            lo, hi = j["start_unix"] + b["t"], j["start_unix"] + b["t"] + 1
            touched = any(w_lo < hi and w_hi > lo for w_lo, w_hi in windows)
            per_second["swap" if touched else "steady"].append(b["p99_ms"])
    clients = [{"server": name, "versions": c["versions"], "in_order": c["in_order"], "failures": c["failures"]}
               for name, j in (("A latest", ja), ("B tag:prod", jb)) for c in j["per_client"]]
    steady_p99, swap_p99 = percentile(steady_lat, 0.99), percentile(swap_lat, 0.99)
    return {
        "failures": ja["failures"] + jb["failures"],
        "requests": ja["requests"] + jb["requests"],
        "first_failures": ja["first_failures"] + jb["first_failures"],
        "in_order": all(c["in_order"] for c in clients),
        "all_versions_seen": all(c["versions"] == seq for c in clients),
        "clients": clients,
        "swaps_counted": {"A": swaps_a, "B": swaps_b},  # the first load included: 6 each
        "events": events,
        "swap_samples": len(swap_lat),
        "steady_samples": len(steady_lat),
        "steady_p99_ms": steady_p99,
        "swap_p99_ms": swap_p99,
        "p99_ratio": swap_p99 / steady_p99 if steady_p99 else None,
        "steady_p50_ms": percentile(steady_lat, 0.5),
        "swap_p50_ms": percentile(swap_lat, 0.5),
        "swap_max_ms": swap_lat[-1] if swap_lat else None,
        "noise": noise,
        "bench": {name: {k: j[k] for k in ("start_unix", "requests", "failures", "latency_ms", "late_sends", "max_send_lag_ms", "timeline")}
                  for name, j in (("A", ja), ("B", jb))},
        "per_second_p99_ms": {"swap_seconds_max": max(per_second["swap"], default=None),
                              "swap_seconds_median": statistics.median(per_second["swap"]) if per_second["swap"] else None,
                              "steady_seconds_median": statistics.median(per_second["steady"]) if per_second["steady"] else None},
    }


class RssSampler(threading.Thread):
    """VmRSS of `pid` every 10 ms; peak() since the last reset()."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.max, self.lock, self.done = pid, 0, threading.Lock(), threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                rss = proc_status(self.pid)["VmRSS"]
            except (OSError, KeyError):
                return
            with self.lock:
                self.max = max(self.max, rss)
            time.sleep(0.01)

    def reset(self):
        with self.lock:
            self.max = 0

    def peak(self):
        with self.lock:
            return self.max


def part_memory(a, trained, versions, work, name, swaps=20):
    reg = os.path.join(work, f"mem_{name}")
    shutil.rmtree(reg, ignore_errors=True)
    os.makedirs(reg)
    run([a.shardps, "ckpt", "copy", trained, reg, "--all"])
    run([a.shardps, "ckpt", "tag", reg, str(versions[0]), "mem"])
    noise = {}
    part = Noise(a, noise)
    part.__enter__()
    srv = Server(a, reg, work, ["--version", "tag:mem"])
    every = 1.0
    moves = [versions[(i + 1) % len(versions)] for i in range(swaps)]
    try:
        srv.wait_version(versions[0])
        load = bench_start(a, srv.port, 2, 100, swaps * every + 6, 2)
        time.sleep(2.1 + 2)  # the warmup and 2 s of measured load before the first swap
        model_bytes = srv.metric("shardps_serve_model_bytes")
        baseline = proc_status(srv.pid)["VmRSS"]
        sampler = RssSampler(srv.pid)
        sampler.start()
        rows = []
        for i, v in enumerate(moves):
            t_next = time.time() + every
            with open(f"/proc/{srv.pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current VmRSS
            before = proc_status(srv.pid)
            sampler.reset()
            run([a.shardps, "ckpt", "tag", reg, str(v), "mem"])
            srv.wait_version(v)
            time.sleep(0.3)  # in-flight requests drop the old version; it is freed
            after = proc_status(srv.pid)
            rows.append({"version": v, "rss_before": before["VmRSS"], "hwm_reset_to": before["VmHWM"], "peak_hwm": after["VmHWM"],
                         "peak_sampled": sampler.peak(), "rss_after": after["VmRSS"]})
            time.sleep(max(0.0, t_next - time.time()))
        sampler.done.set()
        jl = bench_finish(load, swaps * every + 6 + 2 + 120)
        swaps_counted = srv.metric("shardps_serve_swaps_total")
    finally:
        srv.stop()
    part.__exit__(None, None, None)
    peak = max(max(r["peak_hwm"], r["peak_sampled"]) for r in rows)
    per_swap = max(max(r["peak_hwm"], r["peak_sampled"]) - r["rss_before"] for r in rows)
    return {
        "model_bytes": model_bytes,
        "baseline_rss": baseline,
        "peak": peak,
        "peak_over_baseline_in_models": (peak - baseline) / model_bytes,
        "max_swap_rise_in_models": per_swap / model_bytes,
        "rss_after_first": rows[0]["rss_after"],
        "rss_after_last": rows[-1]["rss_after"],
        "growth_pct": 100.0 * (rows[-1]["rss_after"] - rows[0]["rss_after"]) / rows[0]["rss_after"],
        "swaps": len(rows),
        "swaps_counted": swaps_counted,
        "load_failures": jl["failures"],
        "noise": noise,
        "per_swap": rows,
    }


# ---- report ----

def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def fmt(v, digits):
    return "-" if v is None else f"{v:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shardps", default=os.path.join(ROOT, "build", "bin", "shardps"))
    ap.add_argument("--launches", type=int, default=3)
    ap.add_argument("--out", help="write the results (every launch) as JSON here")
    ap.add_argument("--work", help="working directory (default: a temporary one, removed)")
    ap.add_argument("--quiet-cores", type=float, default=0.3, help="busy CPU (cores) under which the machine counts as quiet")
    ap.add_argument("--quiet-wait-s", type=float, default=600, help="longest wait for a quiet machine before each part")
    a = ap.parse_args()
    a.shardps = os.path.abspath(a.shardps)
    tmp = None
    if a.work:
        work = os.path.abspath(a.work)
        os.makedirs(work, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        work = tmp.name
    try:
        trained = os.path.join(work, "trained")
        big = os.path.join(work, "trained_big")
        for d in (trained, big, trained + "_out", big + "_out"):
            shutil.rmtree(d, ignore_errors=True)
        versions = train(a, trained, MLP_TRAIN)
        big_versions = train(a, big, BIG_TRAIN)
        if len(versions) < 12 or len(big_versions) < 2:
            sys.exit(f"training wrote {len(versions)} MLP versions and {len(big_versions)} wide ones; 12 and 2 are needed")
        launches = []
        for i in range(a.launches):
            print(f"launch {i + 1}/{a.launches}", file=sys.stderr, flush=True)
            r = part_latency_throughput(a, trained, work)
            r["swaps"] = part_swaps(a, trained, versions, work)
            r["memory_mlp"] = part_memory(a, trained, versions, work, "mlp")
            r["memory_big"] = part_memory(a, big, big_versions, work, "big")
            launches.append(r)
            print(json.dumps({"launch": i + 1, "latency": r["latency"], "throughput": r["throughput"],
                              "swaps": {k: r["swaps"][k] for k in ("failures", "in_order", "steady_p99_ms", "swap_p99_ms", "p99_ratio")},
                              "memory_mlp": {k: r["memory_mlp"][k] for k in ("model_bytes", "baseline_rss", "peak", "growth_pct")},
                              "memory_big": {k: r["memory_big"][k] for k in ("model_bytes", "baseline_rss", "peak", "growth_pct")}}),
                  file=sys.stderr, flush=True)
    finally:
        if tmp:
            tmp.cleanup()

    MB = 1e6
    rows = [
        # (what, values, digits, target text, check)
        ("latency p50 (ms), 4 clients, 200 req/s open loop", [r["latency"]["p50_ms"] for r in launches], 3, "<= 1", lambda m: m <= 1),
        ("latency p99 (ms)", [r["latency"]["p99_ms"] for r in launches], 3, "<= 5", lambda m: m <= 5),
        ("latency: failed requests", [r["latency"]["failures"] for r in launches], 0, "0", lambda m: m == 0),
        ("throughput (req/s), 8 clients closed loop", [r["throughput"]["rps"] for r in launches], 0, ">= 3000", lambda m: m >= 3000),
        ("throughput: p50 / p99 (ms) at saturation", None, None, "", None),
        ("throughput: server CPU per request (us)", [r["throughput"]["server_cpu_us_per_req"] for r in launches], 0, "", None),
        ("throughput: load generator CPU per request (us)", [r["throughput"]["client_cpu_us_per_req"] for r in launches], 0, "", None),
        ("swaps: failed requests (of ~6000)", [r["swaps"]["failures"] for r in launches], 0, "0", lambda m: m == 0),
        ("swaps: clients in order (of 8)", [sum(c["in_order"] for c in r["swaps"]["clients"]) for r in launches], 0, "8", lambda m: m == 8),
        ("swaps: steady p99 (ms)", [r["swaps"]["steady_p99_ms"] for r in launches], 3, "", None),
        ("swaps: p99 during swaps (ms)", [r["swaps"]["swap_p99_ms"] for r in launches], 3, "", None),
        ("swaps: p99 during swaps / steady p99", [r["swaps"]["p99_ratio"] for r in launches], 2, "<= 2", lambda m: m <= 2),
        ("swaps: seconds from command to served", [statistics.median(e["seconds_to_serve"] for e in r["swaps"]["events"]) for r in launches],
         3, "", None),
    ]
    rows += [
        ("other processes' CPU (cores) during latency", [r["latency"]["noise"]["foreign_cores"] for r in launches], 2, "", None),
        ("other processes' CPU (cores) during throughput", [r["throughput"]["noise"]["foreign_cores"] for r in launches], 2, "", None),
        ("other processes' CPU (cores) during swaps", [r["swaps"]["noise"]["foreign_cores"] for r in launches], 2, "", None),
    ]
    for key, label in (("memory_mlp", "MLP 784-256-10"), ("memory_big", "wide 784-4096-10")):
        rows += [
            (f"memory {label}: model weights (MB)", [r[key]["model_bytes"] / MB for r in launches], 2, "", None),
            (f"memory {label}: VmRSS before the first swap (MB)", [r[key]["baseline_rss"] / MB for r in launches], 1, "", None),
            (f"memory {label}: peak during swaps (MB)", [r[key]["peak"] / MB for r in launches], 1, "", None),
            (f"memory {label}: (peak - baseline) / model", [r[key]["peak_over_baseline_in_models"] for r in launches], 2, "<= 1.1",
             lambda m: m <= 1.1),
            (f"memory {label}: largest rise in one swap / model", [r[key]["max_swap_rise_in_models"] for r in launches], 2, "", None),
            (f"memory {label}: VmRSS after swap 1 (MB)", [r[key]["rss_after_first"] / MB for r in launches], 1, "", None),
            (f"memory {label}: VmRSS after swap 20 (MB)", [r[key]["rss_after_last"] / MB for r in launches], 1, "", None),
            (f"memory {label}: growth swap 1 -> 20 (%)", [r[key]["growth_pct"] for r in launches], 2, "< 5", lambda m: m < 5),
        ]
    print(f"`shardps serve --threads 2` on {os.cpu_count()} cores shared with the load generator; {len(launches)} launches")
    print()
    print("| measure | median | min - max | target | met |")
    print("|---|---|---|---|---|")
    summary = {}
    for what, values, digits, target, ok in rows:
        if values is None:
            p50 = spread([r["throughput"]["p50_ms"] for r in launches])
            p99 = spread([r["throughput"]["p99_ms"] for r in launches])
            print(f"| {what} | {fmt(p50[0], 3)} / {fmt(p99[0], 3)} | {fmt(p50[1], 3)}-{fmt(p50[2], 3)} / {fmt(p99[1], 3)}-{fmt(p99[2], 3)} | | |")
            continue
        med, lo, hi = spread(values)
        met = "" if ok is None or med is None else ("yes" if ok(med) else "NO")
        summary[what] = {"median": med, "min": lo, "max": hi, "target": target, "met": met or None}
        print(f"| {what} | {fmt(med, digits)} | {fmt(lo, digits)} - {fmt(hi, digits)} | {target} | {met} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"cores": os.cpu_count(), "launches": launches, "summary": summary, "mlp_versions": versions,
                       "big_versions": big_versions}, f, indent=1)


if __name__ == "__main__":
    main()
