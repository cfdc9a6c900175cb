#!/usr/bin/python3
"""Simulated multi-host network on one Linux machine: H "hosts" as network namespaces joined by veth
pairs through a bridge, each host's link rate-limited with tc tbf, and shardps TCP jobs whose servers
and workers run on different hosts. Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), ip and tc.

    scripts/netsim.py bench [NET] [JOB] [--floats N[,N..]] [--rounds R] [--warmup K] [--launches L]
                            [--json-out FILE] [-- EXTRA BENCH FLAGS]
    scripts/netsim.py train [NET] [JOB] --out-dir DIR -- TRAIN FLAGS (e.g. --config C --epochs 1)
    scripts/netsim.py up    [NET] [--hold SEC]     build the network, print it, wait for Ctrl-C
    scripts/netsim.py cleanup [--all]              remove what dead runs left (--all: every run's)

NET:  --hosts H (2..8, default 4)   --rate 1gbit|10gbit|none|<N>mbit|<N>gbit (default 1gbit;
      bench takes a comma list, e.g. 1gbit,10gbit)   --cleanup-stale
JOB:  --shardps BIN (default build/bin/shardps)  --servers S  --workers W (bench: comma lists)
      --log-dir DIR (default: a new directory under $TMPDIR, named on stderr)  --timeout SEC
      (deadline of one job, default 600)  --grace SEC (others' time to report after a failure, 3)

Topology: namespace snet<PID>-br holds the bridge snet<PID>br; host i is namespace snet<PID>-h<i> with
one veth end snet<PID>h<i> at 10.77.0.<i+1>/24, whose peer snet<PID>p<i> is a port of the bridge. Every
interface is created inside those namespaces: the root namespace's interfaces, addresses and routes
are never touched, and concurrent runs (different PIDs) never collide. With a rate, both ends of
every veth get a root tbf qdisc (host egress = upload, bridge-port egress = download), so each host
has a full-duplex link of that rate into a non-blocking switch. tbf settings: burst = 1 ms of the
rate, at least 64 KiB (a whole GSO packet fits in the bucket); latency 10 ms (the queue in front of
the bucket: rate x 10 ms + burst bytes, deep enough that TCP keeps the link busy without drops).

Placement: the job's processes, servers first then workers, go round-robin over the hosts (process k
on host k mod H), so with S + W <= H every process has its own host. Server 0 is the coordinator
(port 29500 on its host's address); every process listens on its own host's address.

bench: one `shardps bench --transport tcp` launch per (rate, floats, servers, workers, launch); each
launch gives one JSON record (a line on stdout and in --json-out): hosts, rate, tbf settings,
servers, workers, floats, rounds, warmup, launch, placement, and round_ms / push_ms / pull_ms
({min, median, max}, worker 0's view) and the rest of bench's own JSON under "bench".
train: prints "weights_sha256 <hex>" of worker 0's DIR/summary.json (workers k > 0 write to
LOGDIR/worker-k).

Whatever happens (a failed process, an exception, SIGINT/SIGTERM/SIGHUP), every process it started
is killed and every namespace it made (with its interfaces) is deleted before it exits. Exit status:
0 on success, 1 on a failed job or error, 2 on bad arguments, 128+N after signal N. A run killed
with SIGKILL leaves its namespaces behind: `netsim.py cleanup` (or --cleanup-stale) removes those of
runs whose process is gone.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

TAG_RE = re.compile(r"^snet(\d+)-")
SUBNET = "10.77.0"
PORT = 29500
CMD_TIMEOUT = 30  # seconds for one ip/tc command
TBF_LATENCY_MS = 10
TBF_BURST_MS = 1.0
TBF_MIN_BURST = 64 * 1024


class Failure(Exception):
    """Something the user must hear about (exit 1)."""


class Interrupted(BaseException):
    """A signal asked us to stop (exit 128 + signum)."""

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = signum


def log(msg):
    print(f"netsim: {msg}", file=sys.stderr, flush=True)


def sh(cmd, check=True, timeout=CMD_TIMEOUT):
    """Runs a command (an ip/tc call) with a deadline; returns its stdout."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Failure(f"`{' '.join(cmd)}` did not end within {timeout} s")
    except OSError as e:
        raise Failure(f"cannot run `{' '.join(cmd)}`: {e}")
    if check and p.returncode != 0:
        raise Failure(f"`{' '.join(cmd)}` failed (exit {p.returncode}): {p.stderr.strip()}")
    return p.stdout


# ---- rates ----

def parse_rate(text):
    """'1gbit' -> bits per second; 'none' -> None."""
    t = text.strip().lower()
    if t == "none":
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(k|m|g)?bit", t)
    if not m:
        raise argparse.ArgumentTypeError(f"rate '{text}' is not none or <number>kbit|mbit|gbit (e.g. 1gbit)")
    bits = float(m[1]) * {None: 1, "k": 1e3, "m": 1e6, "g": 1e9}[m[2]]
    if bits < 1e6 or bits > 100e9:
        raise argparse.ArgumentTypeError(f"rate '{text}' outside 1mbit..100gbit")
    return int(bits)


def tbf_settings(bits):
    """(burst bytes, latency ms) of a tbf at `bits` per second."""
    burst = max(int(bits / 8 * TBF_BURST_MS / 1000), TBF_MIN_BURST)
    return burst, TBF_LATENCY_MS


# ---- namespaces ----

def list_netns():
    out = sh(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def kill_netns_procs(ns):
    """SIGKILLs every process inside namespace `ns` (so deleting it really frees it)."""
    for _ in range(3):
        pids = [int(x) for x in sh(["ip", "netns", "pids", ns], check=False).split() if x.isdigit()]
        pids = [p for p in pids if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)


def delete_netns(ns):
    kill_netns_procs(ns)
    sh(["ip", "netns", "delete", ns], check=False)


def run_alive(pid):
    """Whether `pid` is a live netsim run (not a recycled pid of another program)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"netsim" in f.read()
    except OSError:
        return False


def cleanup_stale(everything=False):
    """Deletes the namespaces of runs whose process is gone (everything: of every run but ours)."""
    removed = []
    for ns in list_netns():
        m = TAG_RE.match(ns)
        if not m or int(m[1]) == os.getpid():
            continue
        if everything or not run_alive(int(m[1])):
            delete_netns(ns)
            removed.append(ns)
    for ns in removed:
        log(f"removed namespace {ns}")
    return removed


class Network:
    def __init__(self, hosts):
        self.tag = f"snet{os.getpid()}"
        self.bridge_ns = f"{self.tag}-br"
        self.bridge = f"{self.tag}br"
        self.hosts = [f"{self.tag}-h{i}" for i in range(hosts)]
        self.host_if = [f"{self.tag}h{i}" for i in range(hosts)]
        self.port_if = [f"{self.tag}p{i}" for i in range(hosts)]
        self.addr = [f"{SUBNET}.{i + 1}" for i in range(hosts)]
        self.made = []  # namespaces, recorded before they are created
        self.rate = None

    def up(self):
        for ns in list_netns():  # a run with our pid died before: its leftovers are ours now
            if ns.startswith(self.tag + "-"):
                delete_netns(ns)
        self._add_ns(self.bridge_ns)
        b = ["ip", "-n", self.bridge_ns]
        sh(b + ["link", "set", "lo", "up"])
        sh(b + ["link", "add", self.bridge, "type", "bridge"])
        sh(b + ["link", "set", self.bridge, "up"])
        for i, ns in enumerate(self.hosts):
            self._add_ns(ns)
            h = ["ip", "-n", ns]
            sh(h + ["link", "set", "lo", "up"])
            # Made inside the bridge's namespace with its peer put straight into the host's.
            sh(b + ["link", "add", self.port_if[i], "type", "veth", "peer", "name", self.host_if[i], "netns", ns])
            sh(b + ["link", "set", self.port_if[i], "master", self.bridge])
            sh(b + ["link", "set", self.port_if[i], "up"])
            sh(h + ["addr", "add", f"{self.addr[i]}/24", "dev", self.host_if[i]])
            sh(h + ["link", "set", self.host_if[i], "up"])
        self.wait_forwarding()

    def _add_ns(self, ns):
        self.made.append(ns)
        sh(["ip", "netns", "add", ns])

    def wait_forwarding(self, timeout=30):
        """Until every bridge port forwards and every host link is up."""
        deadline = time.time() + timeout
        while True:
            out = sh(["ip", "-n", self.bridge_ns, "-d", "link", "show", "master", self.bridge])
            states = re.findall(r"state (\w+) priority", out)
            ups = all("state UP" in sh(["ip", "-n", ns, "link", "show", dev])
                      for ns, dev in zip(self.hosts, self.host_if))
            if len(states) == len(self.hosts) and all(s == "forwarding" for s in states) and ups:
                return
            if time.time() >= deadline:
                raise Failure(f"bridge ports not forwarding after {timeout} s: {states}")
            time.sleep(0.1)

    def shape(self, bits):
        """A tbf of `bits`/s on both ends of every veth (None: no qdisc)."""
        self.rate = bits
        for i, ns in enumerate(self.hosts):
            for where, dev in ((ns, self.host_if[i]), (self.bridge_ns, self.port_if[i])):
                if bits is None:
                    sh(["tc", "-n", where, "qdisc", "del", "dev", dev, "root"], check=False)
                    continue
                burst, latency = tbf_settings(bits)
                sh(["tc", "-n", where, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{bits}bit",
                    "burst", str(burst), "latency", f"{latency}ms"])

    def down(self):
        """Deletes every namespace this run made (and any other with its tag), killing what runs in
        them first; interfaces go with their namespaces. Returns what could not be removed."""
        names = list(dict.fromkeys(list(reversed(self.made)) +
                                   [ns for ns in list_netns() if ns.startswith(self.tag + "-")]))
        for ns in names:
            delete_netns(ns)
        left = [ns for ns in list_netns() if ns.startswith(self.tag + "-")]
        return left

    def describe(self):
        lines = [f"bridge {self.bridge} in namespace {self.bridge_ns}"]
        for i, ns in enumerate(self.hosts):
            lines.append(f"host {i}: namespace {ns}, {self.host_if[i]} {self.addr[i]}/24 <-> {self.port_if[i]}")
        if self.rate:
            burst, latency = tbf_settings(self.rate)
            lines.append(f"tbf on both ends of every veth: rate {self.rate} bit/s, burst {burst} B, latency {latency} ms")
        else:
            lines.append("no rate limit")
        return "\n".join(lines)


# ---- jobs ----

class Job:
    """One shardps job: S servers and W workers started in the namespaces, round-robin."""

    def __init__(self, net, args, subcommand, servers, workers, extra, logdir, worker0_out=None,
                 worker0_json=None):
        self.net, self.logdir = net, logdir
        self.procs = {}  # name -> (Popen, log path)
        self.placement = {}
        os.makedirs(logdir, exist_ok=True)
        key = os.path.join(logdir, "secret")
        if not os.path.exists(key):
            sh([args.shardps, "keygen", "--out", key])
        coord = f"{net.addr[0]}:{PORT}"
        names = [("server", i) for i in range(servers)] + [("worker", i) for i in range(workers)]
        for k, (role, rank) in enumerate(names):
            h = k % len(net.hosts)
            name = f"{role} {rank}"
            self.placement[name] = h
            cmd = ["ip", "netns", "exec", net.hosts[h], args.shardps, subcommand] + list(extra) + [
                "--transport", "tcp", "--coordinator", coord, "--role", role, "--rank", str(rank),
                "--num-servers", str(servers), "--num-workers", str(workers), "--listen", net.addr[h],
                "--secret-file", key]
            if subcommand == "train" and role == "worker":
                cmd += ["--out-dir", worker0_out if rank == 0 else os.path.join(logdir, f"worker-{rank}")]
            if subcommand == "bench" and role == "worker" and rank == 0 and worker0_json:
                cmd += ["--json-out", worker0_json]
            path = os.path.join(logdir, f"{role}-{rank}.log")
            with open(path, "w") as f:
                f.write("$ " + " ".join(cmd) + "\n")
                f.flush()
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            self.procs[name] = (p, path)
            if k == 0:
                # Server 0 listens on the coordinator address; the others retry until it does.
                time.sleep(0.05)

    def wait(self, timeout, grace):
        """Waits for every process; on the first failure gives the others `grace` s, then SIGTERM,
        then SIGKILL 5 s later. Raises Failure naming the first failure (or the deadline)."""
        deadline = time.time() + timeout
        first = None
        term_at = kill_at = None
        while True:
            running = [n for n, (p, _) in self.procs.items() if p.poll() is None]
            for n, (p, path) in self.procs.items():
                if p.returncode not in (None, 0) and first is None:
                    first = (n, p.returncode, path)
                    term_at = time.time() + grace
                    kill_at = term_at + 5
            if not running:
                break
            now = time.time()
            if first is None and now >= deadline:
                first = ("the job", f"deadline of {timeout} s passed", None)
                term_at, kill_at = now, now + 5
            if term_at is not None and now >= term_at:
                for n in running:
                    self._signal(n, signal.SIGTERM)
                term_at = float("inf")
            if kill_at is not None and now >= kill_at:
                for n in running:
                    self._signal(n, signal.SIGKILL)
                kill_at = float("inf")
            time.sleep(0.05)
        if first:
            name, rc, path = first
            tail = ""
            if path:
                with open(path, errors="replace") as f:
                    tail = "".join(f.readlines()[-5:])
            raise Failure(f"{name} failed ({'exit ' + str(rc) if isinstance(rc, int) else rc}); logs in "
                          f"{self.logdir}" + (f"; the end of {path}:\n{tail}" if tail else ""))

    def _signal(self, name, sig):
        p = self.procs[name][0]
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except OSError:
                pass

    def kill(self):
        for name, (p, _) in self.procs.items():
            self._signal(name, signal.SIGKILL)
        for p, _ in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                log(f"pid {p.pid} did not end 10 s after SIGKILL")

    def placement_text(self):
        return {n: self.net.hosts[h] for n, h in self.placement.items()}


# ---- subcommands ----

def int_list(text):
    try:
        vals = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers")
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"'{text}': every value must be at least 1")
    return vals


def rate_list(text):
    return [(r.strip().lower(), parse_rate(r)) for r in text.split(",")]


def median_of(rec, key):
    v = rec.get(key)
    return v.get("median") if isinstance(v, dict) else None


def cmd_bench(args, state):
    rows = []
    out = open(args.json_out, "w") if args.json_out else None
    state["files"].append(out)
    n = 0
    for rate_name, bits in args.rate:
        state["net"].shape(bits)
        log(f"rate {rate_name}")
        for floats in args.floats:
            for s in args.servers:
                for w in args.workers:
                    medians = []
                    for launch in range(args.launches):
                        n += 1
                        d = os.path.join(state["logdir"], f"{n:03d}-{rate_name}-f{floats}-s{s}-w{w}-l{launch}")
                        jpath = os.path.join(d, "bench.json")
                        extra = ["--floats", str(floats), "--rounds", str(args.rounds), "--warmup",
                                 str(args.warmup)] + args.extra
                        job = Job(state["net"], args, "bench", s, w, extra, d, worker0_json=jpath)
                        state["job"] = job
                        job.wait(args.timeout, args.grace)
                        state["job"] = None
                        try:
                            with open(jpath) as f:
                                raw = json.loads(f.read())
                        except (OSError, ValueError) as e:
                            raise Failure(f"worker 0 wrote no bench JSON to {jpath}: {e}")
                        burst, latency = tbf_settings(bits) if bits else (None, None)
                        rec = {"hosts": len(state["net"].hosts), "rate": rate_name, "rate_bits": bits,
                               "tbf_burst_bytes": burst, "tbf_latency_ms": latency, "servers": s, "workers": w,
                               "floats": floats, "rounds": args.rounds, "warmup": args.warmup, "launch": launch,
                               "placement": job.placement_text(), "round_ms": raw.get("round_ms"),
                               "push_ms": raw.get("push_ms"), "pull_ms": raw.get("pull_ms"), "bench": raw}
                        line = json.dumps(rec)
                        print(line, flush=True)
                        if out:
                            out.write(line + "\n")
                            out.flush()
                        medians.append(median_of(rec, "round_ms"))
                        log(f"{rate_name} floats {floats} S{s} W{w} launch {launch}: round median "
                            f"{medians[-1]:.3f} ms")
                    rows.append((rate_name, floats, s, w, statistics.median(medians), max(medians)))
    log("rate      floats  S  W  median of launch medians (ms)  slowest launch (ms)")
    for r in rows:
        log(f"{r[0]:>7} {r[1]:>9} {r[2]:>2} {r[3]:>2}  {r[4]:>12.3f}  {r[5]:>12.3f}")
    return 0


def cmd_train(args, state):
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    s, w = args.servers[0], args.workers[0]
    job = Job(state["net"], args, "train", s, w, args.extra, state["logdir"], worker0_out=out_dir)
    state["job"] = job
    log("placement: " + ", ".join(f"{n} on {h}" for n, h in job.placement_text().items()))
    job.wait(args.timeout, args.grace)
    state["job"] = None
    try:
        with open(os.path.join(out_dir, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        raise Failure(f"no summary from worker 0 in {out_dir}: {e}")
    print(f"weights_sha256 {summary.get('weights_sha256')}", flush=True)
    return 0


def cmd_up(args, state):
    net = state["net"]
    print(net.describe(), flush=True)
    print(f"e.g.: ip netns exec {net.hosts[0]} ping {net.addr[-1]}   (Ctrl-C tears it all down)", flush=True)
    deadline = None if args.hold is None else time.time() + args.hold
    while deadline is None or time.time() < deadline:
        time.sleep(0.2)
    return 0


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="netsim.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    net = argparse.ArgumentParser(add_help=False)
    net.add_argument("--hosts", type=int, default=4, help="hosts (network namespaces), 2..8 (default 4)")
    net.add_argument("--cleanup-stale", action="store_true", help="first remove what dead runs left behind")
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--shardps", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build",
                                                       "bin", "shardps"))
    job.add_argument("--log-dir", help="per-process logs (default: a new directory under $TMPDIR)")
    job.add_argument("--timeout", type=float, default=600, help="deadline of one job in seconds (default 600)")
    job.add_argument("--grace", type=float, default=3, help="seconds the others get after a failure (default 3)")

    b = sub.add_parser("bench", parents=[net, job], help="shardps bench over TCP; JSON per launch")
    b.add_argument("--rate", type=rate_list, default=rate_list("1gbit"), help="comma list, e.g. 1gbit,10gbit")
    b.add_argument("--servers", type=int_list, default=[1], help="comma list (default 1)")
    b.add_argument("--workers", type=int_list, default=[1], help="comma list (default 1)")
    b.add_argument("--floats", type=int_list, default=[1_000_000], help="comma list (default 1000000)")
    b.add_argument("--rounds", type=int, default=20)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--launches", type=int, default=1, help="separate launches per configuration (default 1)")
    b.add_argument("--json-out", help="also write the records here (JSON lines)")
    b.add_argument("extra", nargs="*", help="after --: more `shardps bench` flags (e.g. --chunk-floats N)")

    t = sub.add_parser("train", parents=[net, job], help="shardps train over TCP; prints weights_sha256")
    t.add_argument("--rate", type=lambda x: [(x.lower(), parse_rate(x))], default=[("1gbit", parse_rate("1gbit"))])
    t.add_argument("--servers", type=lambda x: [int(x)], default=[1])
    t.add_argument("--workers", type=lambda x: [int(x)], default=[2])
    t.add_argument("--out-dir", required=True, help="worker 0's --out-dir (summary.json, metrics, model)")
    t.add_argument("extra", nargs="*", help="after --: `shardps train` flags (--config C ...)")

    u = sub.add_parser("up", parents=[net], help="build the network and wait for Ctrl-C (or --hold SEC)")
    u.add_argument("--rate", type=lambda x: [(x.lower(), parse_rate(x))], default=[("1gbit", parse_rate("1gbit"))])
    u.add_argument("--hold", type=float, help="tear down after this many seconds (default: at a signal)")

    c = sub.add_parser("cleanup", help="remove the namespaces (and processes in them) of dead runs")
    c.add_argument("--all", action="store_true", help="also those of live runs")

    args = ap.parse_args(argv)
    if args.command in ("bench", "train", "up"):
        if not 2 <= args.hosts <= 8:
            ap.error("--hosts must be 2..8")
    if args.command in ("bench", "train"):
        args.shardps = os.path.abspath(args.shardps)
        if not os.access(args.shardps, os.X_OK):
            ap.error(f"--shardps {args.shardps} is not an executable (build first, or give --shardps)")
        if args.timeout <= 0 or args.grace < 0:
            ap.error("--timeout must be positive and --grace not negative")
        if min(args.servers + args.workers) < 1:
            ap.error("--servers and --workers must be at least 1")
        flags = set(re.sub(r"=.*", "", a) for a in args.extra)
        mine = {"--transport", "--coordinator", "--role", "--rank", "--num-servers", "--num-workers", "--listen",
                "--secret-file", "--insecure", "--json-out"} | ({"--out-dir"} if args.command == "train" else set())
        if flags & mine:
            ap.error(f"{', '.join(sorted(flags & mine))}: set by netsim.py; leave it out")
    if args.command == "bench" and (args.rounds < 1 or args.warmup < 0 or args.launches < 1):
        ap.error("--rounds and --launches must be at least 1, --warmup not negative")
    return args


def main(argv):
    args = parse_args(argv)
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            log(f"'{tool}' not found (Debian package iproute2; scripts/setup.sh installs it)")
            return 1
    if os.geteuid() != 0:
        log("needs root (network namespaces, veth pairs and qdiscs need CAP_NET_ADMIN and CAP_SYS_ADMIN)")
        return 1

    def on_signal(signum, _frame):
        raise Interrupted(signum)

    state = {"net": None, "job": None, "files": [], "logdir": None}
    rc = 1
    try:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, on_signal)
        if args.command == "cleanup":
            removed = cleanup_stale(everything=args.all)
            log(f"removed {len(removed)} namespace(s)")
            return 0
        if args.cleanup_stale:
            cleanup_stale()
        if args.command != "up":
            state["logdir"] = os.path.abspath(args.log_dir) if args.log_dir else tempfile.mkdtemp(prefix="shardps-netsim.")
            os.makedirs(state["logdir"], exist_ok=True)
            log(f"logs in {state['logdir']}")
        net = state["net"] = Network(args.hosts)
        log(f"building {args.hosts} hosts, namespaces {net.tag}-*")
        net.up()
        net.shape(args.rate[0][1])
        log(net.describe().replace("\n", "\nnetsim: "))
        rc = {"bench": cmd_bench, "train": cmd_train, "up": cmd_up}[args.command](args, state)
    except Failure as e:
        log(f"error: {e}")
        rc = 1
    except Interrupted as e:
        log(f"stopped by signal {e.signum}; cleaning up")
        rc = 128 + e.signum
    except Exception:  # noqa: BLE001 - still clean up, then say what broke
        import traceback
        traceback.print_exc()
        rc = 1
    finally:
        # No signal may cut the cleanup short.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        rc = teardown(state, rc)
    return rc


def teardown(state, rc):
    for f in state["files"]:
        if f:
            f.close()
    if state["job"]:
        state["job"].kill()
    if state["net"]:
        try:
            left = state["net"].down()
        except Failure as e:
            left = [str(e)]
        if left:
            log(f"error: could not remove {left} (try `netsim.py cleanup --all`)")
            return rc or 1
        log(f"removed every namespace of {state['net'].tag}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
