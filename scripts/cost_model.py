#!/usr/bin/python3
"""Cost model of one synchronous shardps round (every worker pushes a dense table of M bytes, then
pulls it back, as `shardps bench` measures it) on hosts joined by full-duplex links of B bit/s, and
the tools that check it against `scripts/netsim.py` measurements. docs/scaling.md explains it.

    scripts/cost_model.py predict  [--floats N] [--rate 1gbit,10gbit] [--servers 1,2,4] [--workers 1,2,4,8]
                                   [--hosts 8] [--data FILE]
    scripts/cost_model.py compare  --data FILE [--png OUT] [--markdown]
    scripts/cost_model.py calibrate --data FILE          constants from the calibration records
    scripts/cost_model.py measure  --out FILE (--calibration | --grid) [--shardps BIN] [--launches L] ...

predict: the model's round time for each cell (constants from FILE's calibration records, or the
built-in ones). compare: for every (rate, S, W) of FILE's grid records, the median over launches of
each launch's median round, the min-max of those launch medians, the prediction and the error; with
--png the plot. measure: runs netsim.py (needs root) and appends one JSON line per launch to FILE.

The model (all bytes are payload bytes; B_eff = B/8 x 1448/1514, the TCP payload share of a
1514-byte frame that tbf counts):

  link time   L = fluid(push) + fluid(pull): each phase is a set of flows, M_s bytes between every
              worker and every server s (M_s = the bytes of the chunks server s holds), over the
              up-link of the sender's host and the down-link of the receiver's host; rates are
              max-min fair (progressive filling), and a phase ends when its last flow does. Flows
              between processes on one host use no link. Pull starts when push has ended.
  CPU time    C = c_first x M x W' + c_next x M x (W - 1) + c_piece x W x chunks  [CPU seconds]
              W' = W (every worker's bytes are sent, received, and summed or applied once); c_next
              is the extra cost of a worker whose pieces are not the first of their chunk (scratch
              buffer, read aside while parked, and the add); c_piece the cost of one chunk's push
              and pull messages. Shared by `cores` cores: C / cores of wall time at best.
  round       T = max(L, C / cores) + t_fixed        (t_fixed: a round of a 1K-float table)

  bounds      ring allreduce over N = W hosts: 2 (N-1)/N x M / B_eff
              PS with perfect overlap of one worker's push with another's pull (full-duplex server
              links): max over hosts of max(bytes in, bytes out) per round, and for each worker
              (push bytes + pull bytes), over B_eff. The model assumes the workers stay in step
              (the barrier starts them together), which gives push + pull instead.
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

PAYLOAD_SHARE = 1448 / 1514  # TCP payload per Ethernet frame at MTU 1500 with timestamps; tbf counts the frame
DEFAULT_CHUNK_FLOATS = 256 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))

# Built-in constants: the values `calibrate` derives from the calibration records committed in
# docs/scaling_measurements.jsonl (see docs/scaling.md). Used when no --data is given.
DEFAULT_CONSTANTS = {
    "c_first_ns_per_byte": 1.257,
    "c_next_ns_per_byte": 0.446,
    "c_piece_us": 53.4,
    "t_fixed_ms": 0.080,
    "cores": 1.25,
}


# ---- the model ----

def parse_rate(text):
    t = text.strip().lower()
    if t == "none":
        return None
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for u, f in units.items():
        if t.endswith(u):
            return int(float(t[: -len(u)]) * f)
    raise ValueError(f"rate '{text}' is not none or <number>kbit|mbit|gbit")


def server_shares(floats, servers, chunk_floats=DEFAULT_CHUNK_FLOATS):
    """Floats each server holds: chunks of chunk_floats go, in order, to the least-loaded server
    (the lowest rank on a tie), as TableLayout::Create assigns them."""
    load = [0] * servers
    n = floats // chunk_floats + (floats % chunk_floats != 0)
    for i in range(n):
        size = min(floats, (i + 1) * chunk_floats) - i * chunk_floats
        best = min(range(servers), key=lambda s: (load[s], s))
        load[best] += size
    return load, n


def placement(servers, workers, hosts):
    """Host of every server and worker: servers first, then workers, round-robin (netsim.py)."""
    srv = [k % hosts for k in range(servers)]
    wrk = [(servers + k) % hosts for k in range(workers)]
    return srv, wrk


def fluid_time(flows, bytes_per_s):
    """Time until every flow (src host, dst host, bytes) has ended when each host has an up-link and
    a down-link of bytes_per_s and the flows share them max-min fairly. Same-host flows take no time."""
    rem = {i: float(b) for i, (s, d, b) in enumerate(flows) if s != d and b > 0}
    t = 0.0
    while rem:
        links = {}
        for i in rem:
            s, d, _ = flows[i]
            links.setdefault(("up", s), []).append(i)
            links.setdefault(("down", d), []).append(i)
        cap = {k: bytes_per_s for k in links}
        rate = {}
        unfrozen = set(rem)
        while unfrozen:
            # The most constrained link sets the fair share of its unfrozen flows.
            best, share = None, math.inf
            for k, fl in links.items():
                n = sum(1 for i in fl if i in unfrozen)
                if n and cap[k] / n < share:
                    best, share = k, cap[k] / n
            for i in [i for i in links[best] if i in unfrozen]:
                rate[i] = share
                unfrozen.discard(i)
                s, d, _ = flows[i]
                cap[("up", s)] -= share
                cap[("down", d)] -= share
        dt = min(rem[i] / rate[i] for i in rem)
        t += dt
        for i in list(rem):
            rem[i] -= rate[i] * dt
            if rem[i] <= 1e-6 * flows[i][2]:
                del rem[i]
    return t


def phase_flows(servers, workers, hosts, floats, chunk_floats):
    shares, chunks = server_shares(floats, servers, chunk_floats)
    srv, wrk = placement(servers, workers, hosts)
    push = [(wrk[w], srv[s], shares[s] * 4) for w in range(workers) for s in range(servers)]
    pull = [(d, s, b) for (s, d, b) in push]
    return push, pull, chunks, srv, wrk, shares


def predict(floats, servers, workers, rate_bits, hosts=8, chunk_floats=DEFAULT_CHUNK_FLOATS, constants=None):
    """The model's round time (seconds) and its parts, for one cell."""
    k = dict(DEFAULT_CONSTANTS)
    k.update(constants or {})
    M = floats * 4
    push, pull, chunks, srv, wrk, shares = phase_flows(servers, workers, hosts, floats, chunk_floats)
    if rate_bits:
        beff = rate_bits / 8 * PAYLOAD_SHARE
        link = fluid_time(push, beff) + fluid_time(pull, beff)
        # Lower bound if pushes of some workers overlapped pulls of others (full duplex).
        up, down = {}, {}
        for (s, d, b) in push + pull:
            if s != d:
                up[s] = up.get(s, 0) + b
                down[d] = down.get(d, 0) + b
        per_worker = [sum(b for (s, d, b) in push if s == wrk[w] and s != d) +
                      sum(b for (s, d, b) in pull if d == wrk[w] and s != d) for w in range(workers)]
        overlap = max(list(up.values()) + list(down.values()) + per_worker + [0]) / beff
        ring = 2 * (workers - 1) / workers * M / beff if workers > 1 else 0.0
        link_bound = 2 * M / beff  # one worker, its own link: push then pull
    else:
        link = overlap = ring = link_bound = 0.0
    cpu = (k["c_first_ns_per_byte"] * 1e-9 * M * workers + k["c_next_ns_per_byte"] * 1e-9 * M * (workers - 1) +
           k["c_piece_us"] * 1e-6 * workers * chunks)
    cpu_wall = cpu / k["cores"]
    t = max(link, cpu_wall) + k["t_fixed_ms"] * 1e-3
    return {"round_s": t, "link_s": link, "cpu_s": cpu, "cpu_wall_s": cpu_wall,
            "bound": "cpu" if cpu_wall > link else "link", "overlap_bound_s": overlap + k["t_fixed_ms"] * 1e-3,
            "ring_s": ring, "link_bound_1s1w_s": link_bound, "shares": shares, "chunks": chunks,
            "colocated_pairs": sum(1 for a in wrk for b in srv if a == b)}


# ---- records ----

def load_records(path):
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise SystemExit(f"cost_model: {path}:{n}: not JSON: {e}")
    return out


def calib_groups(records):
    """Calibration records grouped by name: name -> {rounds: [records]}."""
    g = {}
    for r in records:
        if r.get("kind") == "calibration":
            g.setdefault(r["calibration"], {}).setdefault(r["rounds"], []).append(r)
    return g


def cpu_per_round(group):
    """Median over launch pairs of (CPU of the long run - CPU of the short run) / extra rounds."""
    rounds = sorted(group)
    if len(rounds) != 2:
        raise SystemExit(f"cost_model: a calibration needs runs of two round counts, got {rounds}")
    short, long_ = group[rounds[0]], group[rounds[1]]
    n = min(len(short), len(long_))
    per = [(long_[i]["cpu_s"] - short[i]["cpu_s"]) / (rounds[1] - rounds[0]) for i in range(n)]
    return statistics.median(per), per


def calibrate(records, verbose=False):
    """Constants from the calibration records (never from grid records)."""
    g = calib_groups(records)
    need = ["piece_small_chunks", "piece_default_chunks", "one_worker", "four_workers", "fixed"]
    missing = [n for n in need if n not in g]
    if missing:
        raise SystemExit(f"cost_model: calibration records missing: {', '.join(missing)}")
    notes = []
    # c_piece: the same 1M-float table cut into small and default chunks.
    a, pa = cpu_per_round(g["piece_small_chunks"])
    b, pb = cpu_per_round(g["piece_default_chunks"])
    ra = next(iter(g["piece_small_chunks"].values()))[0]
    rb = next(iter(g["piece_default_chunks"].values()))[0]
    na = server_shares(ra["floats"], 1, ra["chunk_floats"])[1]
    nb = server_shares(rb["floats"], 1, rb["chunk_floats"])[1]
    c_piece = max(a - b, 0.0) / (na - nb)
    notes.append(f"CPU per round, {ra['floats']} floats in {na} chunks: {a * 1e3:.2f} ms (launches "
                 f"{', '.join(f'{x * 1e3:.2f}' for x in pa)}); in {nb} chunks: {b * 1e3:.2f} ms "
                 f"({', '.join(f'{x * 1e3:.2f}' for x in pb)}) -> c_piece = {c_piece * 1e6:.2f} us")
    # c_first: 1 server + 1 worker, 10M floats, no rate limit.
    c1, p1 = cpu_per_round(g["one_worker"])
    r1 = next(iter(g["one_worker"].values()))[0]
    n1 = server_shares(r1["floats"], 1, r1.get("chunk_floats", DEFAULT_CHUNK_FLOATS))[1]
    M = r1["floats"] * 4
    c_first = (c1 - c_piece * n1) / M
    notes.append(f"CPU per round, 1 server + 1 worker, {r1['floats']} floats: {c1 * 1e3:.1f} ms (launches "
                 f"{', '.join(f'{x * 1e3:.1f}' for x in p1)}) -> c_first = {c_first * 1e9:.3f} ns/byte")
    # c_next: 1 server + 4 workers.
    c4, p4 = cpu_per_round(g["four_workers"])
    r4 = next(iter(g["four_workers"].values()))[0]
    W = r4["workers"]
    M4 = r4["floats"] * 4
    n4 = server_shares(r4["floats"], 1, r4.get("chunk_floats", DEFAULT_CHUNK_FLOATS))[1]
    c_next = (c4 - c_first * M4 * W - c_piece * W * n4) / (M4 * (W - 1))
    notes.append(f"CPU per round, 1 server + {W} workers, {r4['floats']} floats: {c4 * 1e3:.1f} ms (launches "
                 f"{', '.join(f'{x * 1e3:.1f}' for x in p4)}) -> c_next = {c_next * 1e9:.3f} ns/byte")
    # t_fixed: the round of a tiny table.
    fixed = [r["round_ms"]["median"] for rs in g["fixed"].values() for r in rs]
    t_fixed = statistics.median(fixed)
    notes.append(f"round of {g['fixed'][max(g['fixed'])][0]['floats']} floats, 1 server + 1 worker: launch medians "
                 f"{', '.join(f'{x:.3f}' for x in fixed)} ms -> t_fixed = {t_fixed:.3f} ms")
    # cores: how many cores the unshaped 1S1W and 1S4W rounds kept busy (CPU per round over the
    # wall time of a round, per launch); the machine has 2, but a job gets what its pipeline and the
    # machine's other load leave it.
    busy = []
    for name in ("one_worker", "four_workers"):
        _, per = cpu_per_round(g[name])
        rs = g[name][max(g[name])]
        for cpu, r in zip(per, rs):
            busy.append(cpu / (r["round_ms"]["median"] * 1e-3))
        walls = ", ".join(f"{r['round_ms']['median']:.1f}" for r in rs)
        notes.append(f"{name}: unshaped round medians {walls} ms")
    cores = statistics.median(busy)
    notes.append(f"cores busy (CPU per round / round), per launch: {', '.join(f'{b:.2f}' for b in busy)} -> cores = {cores:.2f}")
    k = {"c_first_ns_per_byte": c_first * 1e9, "c_next_ns_per_byte": c_next * 1e9, "c_piece_us": c_piece * 1e6,
         "t_fixed_ms": t_fixed, "cores": cores}
    return (k, notes) if verbose else k


def constants_from(path):
    if not path:
        return dict(DEFAULT_CONSTANTS)
    return calibrate(load_records(path))


def grid_cells(records):
    cells = {}
    for r in records:
        if r.get("kind") not in ("grid", "colocated"):
            continue
        key = (r["kind"] != "grid", r["rate_bits"], r["floats"], r["servers"], r["workers"], r["hosts"])
        cells.setdefault(key, []).append(r)
    return cells


def compare_rows(records, k):
    rows = []
    for (_, bits, floats, s, w, _), rs in sorted(grid_cells(records).items()):
        meds = [r["round_ms"]["median"] for r in rs]
        hosts = rs[0]["hosts"]
        p = predict(floats, s, w, bits, hosts=hosts, chunk_floats=rs[0].get("chunk_floats", DEFAULT_CHUNK_FLOATS),
                    constants=k)
        m = statistics.median(meds)
        pred = p["round_s"] * 1e3
        rows.append({"kind": rs[0]["kind"], "rate": rs[0]["rate"], "rate_bits": bits, "floats": floats, "servers": s, "workers": w,
                     "hosts": hosts, "launches": len(meds), "measured_ms": m, "min_ms": min(meds), "max_ms": max(meds),
                     "push_ms": statistics.median(r["push_ms"]["median"] for r in rs),
                     "pull_ms": statistics.median(r["pull_ms"]["median"] for r in rs),
                     "predicted_ms": pred, "link_ms": p["link_s"] * 1e3, "cpu_wall_ms": p["cpu_wall_s"] * 1e3,
                     "bound": p["bound"], "overlap_ms": p["overlap_bound_s"] * 1e3, "ring_ms": p["ring_s"] * 1e3,
                     "error": (m - pred) / pred, "colocated_pairs": p["colocated_pairs"]})
    return rows


def print_table(rows, markdown=False):
    hdr = ["rate", "S", "W", "hosts", "shared", "predicted ms", "link ms", "CPU ms", "bound", "measured ms",
           "min-max ms", "error", "overlap bound ms", "ring ms"]
    lines = []
    if markdown:
        lines.append("| " + " | ".join(hdr) + " |")
        lines.append("|" + "---|" * len(hdr))
    else:
        lines.append("  ".join(f"{h:>10}" for h in hdr))
    for r in rows:
        ok = abs(r["error"]) <= 0.25
        vals = [r["rate"], str(r["servers"]), str(r["workers"]), str(min(r["hosts"], r["servers"] + r["workers"])),
                str(r["colocated_pairs"]) + (" (S=W=N)" if r["kind"] == "colocated" else ""), f"{r['predicted_ms']:.1f}", f"{r['link_ms']:.1f}", f"{r['cpu_wall_ms']:.1f}",
                r["bound"], f"{r['measured_ms']:.1f}", f"{r['min_ms']:.1f}-{r['max_ms']:.1f}",
                f"{r['error'] * 100:+.1f}%" + ("" if ok else " (!)"), f"{r['overlap_ms']:.1f}",
                f"{r['ring_ms']:.1f}" if r["workers"] > 1 else "-"]
        lines.append(("| " + " | ".join(vals) + " |") if markdown else "  ".join(f"{v:>10}" for v in vals))
    for kind in ("grid", "colocated"):
        sub = [r for r in rows if r["kind"] == kind]
        if sub:
            n = sum(abs(r["error"]) <= 0.25 for r in sub)
            lines.append(f"{kind}: {n} of {len(sub)} cells within 25% of the prediction")
    print("\n".join(lines))


def plot(rows, k, png, floats):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rates = sorted({r["rate_bits"] for r in rows})
    fig, axes = plt.subplots(1, len(rates), figsize=(6.2 * len(rates), 4.8), squeeze=False)
    colors = {1: "tab:blue", 2: "tab:orange", 4: "tab:green", 8: "tab:red"}
    for ax, bits in zip(axes[0], rates):
        sub = [r for r in rows if r["rate_bits"] == bits and r["kind"] == "grid"]
        colo = [r for r in rows if r["rate_bits"] == bits and r["kind"] == "colocated"]
        hosts = max(r["hosts"] for r in sub)
        for s in sorted({r["servers"] for r in sub}):
            pts = sorted((r for r in sub if r["servers"] == s), key=lambda r: r["workers"])
            ws = [r["workers"] for r in pts]
            c = colors.get(s, None)
            dense = [1, 2, 3, 4, 5, 6, 7, 8]
            ax.plot(dense, [predict(floats, s, w, bits, hosts=hosts, constants=k)["round_s"] * 1e3 for w in dense],
                    "-", color=c, label=f"S={s} model")
            ax.plot(ws, [r["predicted_ms"] for r in pts], "x", color=c, markersize=7)
            ax.plot(dense, [predict(floats, s, w, bits, hosts=hosts, constants=k)["overlap_bound_s"] * 1e3
                            for w in dense], ":", color=c, linewidth=1)
            meas = [r["measured_ms"] for r in pts]
            lo = [r["measured_ms"] - r["min_ms"] for r in pts]
            hi = [r["max_ms"] - r["measured_ms"] for r in pts]
            shift = {1: 0.96, 2: 1.0, 4: 1.04}.get(s, 1.0)  # keep the error bars of the S apart
            ax.errorbar([w * shift for w in ws], meas, yerr=[lo, hi], fmt="o", color=c, capsize=3,
                        label=f"S={s} measured")
        if colo:
            ax.errorbar([r["workers"] for r in colo], [r["measured_ms"] for r in colo],
                        yerr=[[r["measured_ms"] - r["min_ms"] for r in colo], [r["max_ms"] - r["measured_ms"] for r in colo]],
                        fmt="*", color="black", markersize=9, capsize=3, label="S=W=N, a server and a worker per host")
            ax.plot([r["workers"] for r in colo], [r["predicted_ms"] for r in colo], "+", color="black", markersize=10,
                    label="its model")
        cpu = [predict(floats, 1, w, bits, hosts=hosts, constants=k)["cpu_wall_s"] * 1e3 for w in range(1, 9)]
        ax.plot(range(1, 9), cpu, "-.", color="purple", linewidth=1, label="CPU term C/cores (any S)")
        ring = [predict(floats, 1, w, bits, hosts=hosts, constants=k)["ring_s"] * 1e3 for w in range(2, 9)]
        ax.plot(range(2, 9), ring, "--", color="gray", label="ring allreduce 2(N-1)/N M/B")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 2, 4, 8])
        ax.set_xticklabels(["1", "2", "4", "8"])
        ax.set_xlabel("workers W")
        ax.set_ylabel("round (ms)")
        ax.set_title(f"{bits / 1e9:g} Gbit/s links, {floats / 1e6:g}M floats")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle("shardps round: model (lines, x at the measured cells; dotted: bound with push/pull overlap) vs "
                 "netsim (median of launch medians, bars: min-max over launches)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


# ---- measuring (runs netsim.py; root) ----

def run_netsim(netsim, args, out, extra_fields, timeout):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    t0 = time.time()
    p = subprocess.run([sys.executable, netsim, "bench"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"cost_model: netsim.py {' '.join(args)} failed (exit {p.returncode})")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    recs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    with open(out, "a") as f:
        for r in recs:
            r.update(extra_fields)
            r["loadavg_1min_before"] = float(load)
            r["chunk_floats"] = r["bench"].get("chunk_floats", DEFAULT_CHUNK_FLOATS)
            if len(recs) == 1:
                r["cpu_s"] = cpu  # every process of the launch, plus netsim.py and its ip/tc calls
            r["wall_s"] = time.time() - t0
            f.write(json.dumps(r) + "\n")
            print(f"{r.get('kind')} {r.get('calibration', '')} {r['rate']} S{r['servers']} W{r['workers']} "
                  f"floats {r['floats']} rounds {r['rounds']}: round median {r['round_ms']['median']:.2f} ms"
                  + (f", cpu {cpu:.2f} s" if len(recs) == 1 else ""), flush=True)
    return recs


def cmd_measure(a):
    netsim = os.path.join(HERE, "netsim.py")
    import hashlib
    with open(a.shardps, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    base = ["--shardps", a.shardps]
    if a.calibration:
        # (name, hosts, servers, workers, floats, extra bench flags); each at two round counts, so
        # the difference of their CPU times is the CPU of the extra rounds alone.
        runs = [("one_worker", 2, 1, 1, 10_000_000, []),
                ("four_workers", 5, 1, 4, 10_000_000, []),
                ("piece_default_chunks", 2, 1, 1, 1_000_000, []),
                ("piece_small_chunks", 2, 1, 1, 1_000_000, ["--chunk-floats", "4096"]),
                ("fixed", 2, 1, 1, 1000, [])]
        for launch in range(a.launches):
            for name, hosts, s, w, floats, extra in runs:
                counts = [2, 202] if name == "fixed" else [2, 22]
                for rounds in counts:
                    if name == "fixed" and rounds == counts[0]:
                        continue
                    args = base + ["--hosts", str(hosts), "--rate", "none", "--servers", str(s), "--workers", str(w),
                                   "--floats", str(floats), "--rounds", str(rounds), "--warmup", "2", "--launches", "1"]
                    if extra:
                        args += ["--"] + extra
                    run_netsim(netsim, args, a.out, {"kind": "calibration", "calibration": name, "launch_set": a.first_launch + launch,
                                                     "binary_sha256": sha}, a.timeout)
    else:
        for launch in range(a.launches):
            for rate in a.rate.split(","):
                rounds, warmup = (a.rounds_1g, 1) if parse_rate(rate) <= 1e9 else (a.rounds_10g, 2)
                args = base + ["--hosts", str(a.hosts), "--rate", rate, "--servers", a.servers, "--workers", a.workers,
                               "--floats", str(a.floats), "--rounds", str(rounds), "--warmup", str(warmup),
                               "--launches", "1"]
                run_netsim(netsim, args, a.out, {"kind": a.kind, "launch_set": a.first_launch + launch,
                                                 "binary_sha256": sha}, a.timeout)
    return 0


def ints(text):
    return [int(x) for x in text.split(",")]


def main(argv):
    ap = argparse.ArgumentParser(prog="cost_model.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="the model's round time for a grid")
    p.add_argument("--floats", type=int, default=10_000_000)
    p.add_argument("--rate", default="1gbit,10gbit")
    p.add_argument("--servers", type=ints, default=[1, 2, 4])
    p.add_argument("--workers", type=ints, default=[1, 2, 4, 8])
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--chunk-floats", type=int, default=DEFAULT_CHUNK_FLOATS)
    p.add_argument("--data", help="JSON lines with calibration records (default: built-in constants)")
    c = sub.add_parser("compare", help="prediction vs netsim measurements")
    c.add_argument("--data", required=True)
    c.add_argument("--png")
    c.add_argument("--markdown", action="store_true")
    k = sub.add_parser("calibrate", help="the constants from the calibration records")
    k.add_argument("--data", required=True)
    m = sub.add_parser("measure", help="run netsim.py and append JSON lines (root)")
    m.add_argument("--out", required=True)
    g = m.add_mutually_exclusive_group(required=True)
    g.add_argument("--calibration", action="store_true")
    g.add_argument("--grid", action="store_true")
    m.add_argument("--shardps", default=os.path.join(HERE, "..", "build", "bin", "shardps"))
    m.add_argument("--launches", type=int, default=3)
    m.add_argument("--first-launch", type=int, default=0)
    m.add_argument("--kind", choices=["grid", "colocated"], default="grid",
                   help="label of the records (colocated: --hosts N --servers N --workers N, a server and a worker per host)")
    m.add_argument("--rate", default="1gbit,10gbit")
    m.add_argument("--servers", default="1,2,4")
    m.add_argument("--workers", default="1,2,4,8")
    m.add_argument("--hosts", type=int, default=8)
    m.add_argument("--floats", type=int, default=10_000_000)
    m.add_argument("--rounds-1g", type=int, default=5)
    m.add_argument("--rounds-10g", type=int, default=10)
    m.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args(argv)

    if a.command == "measure":
        a.shardps = os.path.abspath(a.shardps)
        return cmd_measure(a)
    if a.command == "calibrate":
        kk, notes = calibrate(load_records(a.data), verbose=True)
        print("\n".join(notes))
        print(json.dumps(kk, indent=1))
        return 0
    if a.command == "predict":
        kk = constants_from(a.data)
        print(f"constants: {json.dumps(kk)}")
        print(f"{'rate':>7} {'S':>2} {'W':>2} {'round ms':>10} {'link ms':>9} {'CPU ms':>8} {'bound':>5} "
              f"{'overlap ms':>10} {'ring ms':>8}")
        for rate in a.rate.split(","):
            bits = parse_rate(rate)
            for s in a.servers:
                for w in a.workers:
                    r = predict(a.floats, s, w, bits, hosts=a.hosts, chunk_floats=a.chunk_floats, constants=kk)
                    print(f"{rate:>7} {s:>2} {w:>2} {r['round_s'] * 1e3:>10.1f} {r['link_s'] * 1e3:>9.1f} "
                          f"{r['cpu_wall_s'] * 1e3:>8.1f} {r['bound']:>5} {r['overlap_bound_s'] * 1e3:>10.1f} "
                          f"{r['ring_s'] * 1e3:>8.1f}")
        return 0
    recs = load_records(a.data)
    kk = calibrate(recs)
    rows = compare_rows(recs, kk)
    if not rows:
        raise SystemExit(f"cost_model: no grid records in {a.data}")
    print(f"constants (from the calibration records): {json.dumps(kk)}")
    print_table(rows, markdown=a.markdown)
    if a.png:
        plot(rows, kk, a.png, rows[0]["floats"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
