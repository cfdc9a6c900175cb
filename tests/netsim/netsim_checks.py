#!/usr/bin/python3
"""Checks of scripts/netsim.py (the simulated multi-host network), run by CTest (label netsim).

    netsim_checks.py --shardps build/bin/shardps --mpirun mpirun --source-dir SRC --work DIR CHECK

CHECK is one of
  train_matches_loopback  a 1 server + 2 workers TCP training job across 3 namespaces (each process
                          on its own host, 1 Gbit/s links) ends with the weights_sha256 of the same job
                          over loopback (scripts/launch_local.sh) and under mpirun
  topology                `netsim.py up`: the namespaces, addresses, bridge ports and tbf qdiscs on
                          both ends of every veth are there while it runs; SIGTERM removes them all
  cleanup                 a job interrupted by SIGINT mid-training, a job whose processes fail, and
                          a run killed with SIGKILL (then `netsim.py cleanup`) leave nothing behind
After every run: no namespace, interface or process of that run is left. Needs root, ip and tc (CI
runs as root; scripts/setup.sh installs iproute2). No check asserts a time.
"""
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import shardps_check as sc  # noqa: E402
from shardps_check import check, fail  # noqa: E402

ENV = sc.clean_env()
PY = "/usr/bin/python3"
SMALL = ["--epochs", "1", "--train-limit", "4096", "--test-limit", "1000", "--progress", "never"]


class Runner:
    def __init__(self, args):
        self.args = args
        self.netsim = os.path.join(args.source_dir, "scripts", "netsim.py")
        self.launch = os.path.join(args.source_dir, "scripts", "launch_local.sh")
        self.softmax = os.path.join(args.source_dir, "examples", "configs", "fashion_softmax.prototxt")
        # In every path of every process this check starts: finds leftovers (and no one else's).
        self.marker = sc.fresh_dir(os.path.join(args.work, f"run-{os.getpid()}"))
        self.count = 0
        self.tags = []  # the namespace tags of the netsim runs started

    def fresh(self, name):
        self.count += 1
        return sc.fresh_dir(os.path.join(self.marker, f"{self.count:02d}-{name}"))

    def start(self, argv, name):
        """Starts netsim.py (directly: its pid names its namespaces) with its output in files."""
        d = self.fresh(name)
        cmd = [PY, self.netsim] + argv
        print("$ " + " ".join(cmd), flush=True)
        out, err = open(os.path.join(d, "stdout"), "w+"), open(os.path.join(d, "stderr"), "w+")
        p = sc.popen(cmd, env=ENV, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        out.close()
        err.close()
        p.dir, p.tag = d, f"snet{p.pid}"
        self.tags.append(p.tag)
        return p

    def finish(self, p, timeout, what):
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            fail(f"{what}: netsim.py did not end within {timeout} s:\n{output(p)}")
        print(f"  {what}: netsim.py exit {p.returncode}", flush=True)
        return p.returncode

    def no_leftovers(self, tag, what):
        """Nothing of run `tag` is left: no namespace, no interface in the root namespace, no process."""
        ns = [n for n in netns() if n.startswith(tag + "-")]
        check(not ns, f"{what}: namespaces left behind: {ns}")
        links = root_links(tag)
        check(not links, f"{what}: interfaces left in the root namespace: {links}")
        for marker in (tag + "-", self.marker):
            procs = [p for p in sc.procs_with(marker) if p not in sc.children_of(os.getpid())]
            check(not procs, lambda: f"{what}: processes left running: {[cmdline(p) for p in procs]}")
        print(f"  {what}: no namespace, interface or process of {tag} left", flush=True)


def netns():
    return [l.split()[0] for l in sc.run(["ip", "netns", "list"], timeout=30, quiet=True).stdout.splitlines() if l.strip()]


def root_links(tag):
    """The root namespace's interfaces named like those of run `tag` (snet<PID>h<i>, p<i>, br)."""
    pat = re.compile(rf"(?<![0-9]){tag}(h[0-9]|p[0-9]|br)")
    return [l for l in sc.run(["ip", "-o", "link", "show"], timeout=30, quiet=True).stdout.splitlines() if pat.search(l)]


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"(pid {pid} gone)"


def output(p):
    text = []
    for name in ("stdout", "stderr"):
        with open(os.path.join(p.dir, name), errors="replace") as f:
            text.append(f"--- {name}\n{f.read()}")
    return "\n".join(text)


def read(p, name):
    with open(os.path.join(p.dir, name), errors="replace") as f:
        return f.read()


def root_has_subnet():
    return "10.77.0." in sc.run(["ip", "-o", "addr", "show"], timeout=30, quiet=True).stdout


def check_train_matches_loopback(r):
    a = ["--config", r.softmax] + SMALL
    # The same job on loopback (launch_local.sh) and under mpirun.
    d = r.fresh("loopback")
    key = os.path.join(d, "key")
    sc.run([r.args.shardps, "keygen", "--out", key], timeout=30, env=ENV, quiet=True)
    sc.run(["bash", r.launch, "-s", "1", "-w", "2", "-k", key, "-o", os.path.join(d, "logs"), "--", r.args.shardps,
            "train", "--out-dir", os.path.join(d, "out")] + a, timeout=300, env=ENV)
    loopback = sc.read_summary(os.path.join(d, "out"))["weights_sha256"]
    d = r.fresh("mpi")
    sc.run(sc.mpirun_cmd(r.args.mpirun, 3, [r.args.shardps, "train", "--servers", "1", "--out-dir", d] + a),
           timeout=300, env=ENV)
    mpi = sc.read_summary(d)["weights_sha256"]
    check(loopback == mpi, f"loopback TCP ({loopback}) and mpirun ({mpi}) weights differ")

    check(not root_has_subnet(), "the root namespace has a 10.77.0.x address: the placement check would prove nothing")
    out = os.path.join(r.marker, "netsim-out")
    logs = os.path.join(r.marker, "netsim-logs")
    p = r.start(["train", "--hosts", "3", "--rate", "1gbit", "--servers", "1", "--workers", "2", "--shardps",
                 r.args.shardps, "--out-dir", out, "--log-dir", logs, "--timeout", "300", "--"] + a, "netsim-train")
    rc = r.finish(p, 400, "train across 3 namespaces")
    check(rc == 0, lambda: f"netsim.py train failed (exit {rc}):\n{output(p)}")
    s = sc.read_summary(out)
    m = re.search(r"^weights_sha256 ([0-9a-f]{64})$", read(p, "stdout"), re.M)
    check(m and m[1] == s["weights_sha256"],
          lambda: f"netsim.py printed no 'weights_sha256 <hex>' matching {out}/summary.json:\n{output(p)}")
    # Each process listened on its own host's address (it exists only inside that host's namespace:
    # the job could not have run otherwise) and ran under `ip netns exec` of that host.
    where = {}
    for name in ("server-0", "worker-0", "worker-1"):
        with open(os.path.join(logs, name + ".log")) as f:
            first = f.readline()
        m = re.search(r"ip netns exec (\S+) .* --listen (10\.77\.0\.\d+)", first)
        check(m, f"{name}.log does not start with its `ip netns exec NS ... --listen ADDR` command: {first}")
        check(m[1].startswith(p.tag + "-h"), f"{name} ran in {m[1]}, not a host of {p.tag}")
        where[name] = (m[1], m[2])
    check(len({w[0] for w in where.values()}) == 3 and len({w[1] for w in where.values()}) == 3,
          f"the 3 processes did not each have their own host: {where}")
    print(f"  placement: {where}")
    check(s["weights_sha256"] == loopback,
          f"weights across the namespaces ({s['weights_sha256']}) differ from loopback and mpirun ({loopback})")
    print(f"  identical weights across 3 namespaces, on loopback and under mpirun ({loopback[:16]})", flush=True)
    r.no_leftovers(p.tag, "after the training job")


def ns_run(ns, cmd):
    return sc.run(["ip", "netns", "exec", ns] + cmd, timeout=30, quiet=True).stdout


def check_topology(r):
    p = r.start(["up", "--hosts", "3", "--rate", "10gbit", "--hold", "300"], "up")
    sc.wait_until(lambda: p.poll() is not None or "tears it all down" in read(p, "stdout"), 60,
                  "netsim.py up to print the network")
    check(p.poll() is None, lambda: f"netsim.py up ended (exit {p.returncode}) before it was stopped:\n{output(p)}")
    tag = p.tag
    br, hosts = f"{tag}-br", [f"{tag}-h{i}" for i in range(3)]
    names = set(netns())
    check({br, *hosts} <= names, f"namespaces {br}, {hosts} not all present: {sorted(names)}")
    check(not [n for n in names if n.startswith(tag + "-") and n not in {br, *hosts}],
          f"unexpected namespaces of {tag}: {sorted(names)}")
    ports = ns_run(br, ["ip", "-o", "link", "show", "master", f"{tag}br"])
    for i, ns in enumerate(hosts):
        dev, port = f"{tag}h{i}", f"{tag}p{i}"
        addr = ns_run(ns, ["ip", "-o", "-4", "addr", "show", "dev", dev])
        check(f"inet 10.77.0.{i + 1}/24" in addr, f"{ns}: {dev} lacks 10.77.0.{i + 1}/24: {addr}")
        link = ns_run(ns, ["ip", "-o", "link", "show", "dev", dev])
        check("state UP" in link and "veth" in ns_run(ns, ["ip", "-d", "-o", "link", "show", "dev", dev]),
              f"{ns}: {dev} is not an up veth: {link}")
        check(f"{port}@" in ports, f"{port} is not a port of the bridge {tag}br: {ports}")
        for where, d in ((ns, dev), (br, port)):
            q = ns_run(where, ["tc", "qdisc", "show", "dev", d])
            check(re.search(r"qdisc tbf \S+ root .*rate 10Gbit", q), f"{where}: {d} has no root tbf at 10Gbit: {q}")
    # Each host reaches the others through the bridge (a TCP connection from h2 to a listener in h0).
    probe = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10); "
             "print(s.recv(5).decode())")
    server = ("import socket,sys; l=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
              "l.bind((sys.argv[1], 29600)); l.listen(1); l.settimeout(30); c,_=l.accept(); c.sendall(b'hello')")
    srv = sc.popen(["ip", "netns", "exec", hosts[0], PY, "-c", server, "10.77.0.1"], env=ENV)
    got = ""
    deadline = time.time() + 30
    while time.time() < deadline and "hello" not in got:
        c = sc.run(["ip", "netns", "exec", hosts[2], PY, "-c", probe, "10.77.0.1", "29600"], timeout=30,
                   expect_ok=False, quiet=True, env=ENV)
        got = c.stdout
        if "hello" not in got:
            time.sleep(0.2)
    check("hello" in got, "host 2 could not connect to a listener on host 0 (10.77.0.1:29600)")
    sc.communicate(srv, 30, "the listener in host 0")
    print(f"  {tag}: 3 hosts on the bridge, addresses, tbf at 10Gbit on both ends of every veth; h2 reached h0")
    check(not root_links(tag), "an interface of the simulated network is in the root namespace")
    p.send_signal(signal.SIGTERM)
    rc = r.finish(p, 60, "up, after SIGTERM")
    check(rc == 128 + signal.SIGTERM, lambda: f"netsim.py up exited {rc} after SIGTERM, not 143:\n{output(p)}")
    r.no_leftovers(tag, "after SIGTERM to netsim.py up")


def check_cleanup(r):
    # Interrupted mid-training: SIGINT once the 3 processes run in their namespaces.
    p = r.start(["train", "--hosts", "3", "--shardps", r.args.shardps, "--out-dir", os.path.join(r.marker, "int-out"),
                 "--log-dir", os.path.join(r.marker, "int-logs"), "--", "--config", r.softmax, "--epochs", "500",
                 "--progress", "never"], "interrupted")

    def running():
        if p.poll() is not None:
            fail(f"netsim.py ended (exit {p.returncode}) before it could be interrupted:\n{output(p)}")
        pids = []
        for i in range(3):
            out = sc.run(["ip", "netns", "pids", f"{p.tag}-h{i}"], timeout=30, expect_ok=False, quiet=True).stdout
            pids += [int(x) for x in out.split()]
        return len([x for x in pids if "shardps" in cmdline(x) and " train " in cmdline(x)]) == 3

    sc.wait_until(running, 120, "3 shardps processes in the namespaces", poll=0.1)
    time.sleep(1)  # past the rendezvous, training
    check(p.poll() is None, lambda: f"the job ended before it could be interrupted:\n{output(p)}")
    p.send_signal(signal.SIGINT)
    rc = r.finish(p, 60, "train, after SIGINT")
    check(rc == 128 + signal.SIGINT, lambda: f"netsim.py exited {rc} after SIGINT, not 130:\n{output(p)}")
    r.no_leftovers(p.tag, "after SIGINT mid-training")

    # A job whose processes fail (a config that does not exist): exit 1 naming it.
    missing = os.path.join(r.marker, "no-such.prototxt")
    p = r.start(["train", "--hosts", "2", "--rate", "none", "--shardps", r.args.shardps, "--out-dir",
                 os.path.join(r.marker, "bad-out"), "--log-dir", os.path.join(r.marker, "bad-logs"), "--timeout",
                 "120", "--", "--config", missing], "failing")
    rc = r.finish(p, 200, "a job whose processes fail")
    check(rc == 1, lambda: f"netsim.py exited {rc} for a failed job, not 1:\n{output(p)}")
    check("failed" in read(p, "stderr") and "no-such.prototxt" in read(p, "stderr"),
          lambda: f"netsim.py's error does not name the failure and the missing config:\n{output(p)}")
    r.no_leftovers(p.tag, "after a failed job")

    # Bad arguments: refused before anything is made.
    p = r.start(["up", "--hosts", "9"], "bad-hosts")
    rc = r.finish(p, 60, "--hosts 9")
    check(rc == 2 and "--hosts must be 2..8" in read(p, "stderr"), lambda: f"--hosts 9 not refused:\n{output(p)}")
    r.no_leftovers(p.tag, "after --hosts 9")

    # SIGKILL leaves the namespaces behind; `netsim.py cleanup` removes those of dead runs (and not
    # those of a live one).
    live = r.start(["up", "--hosts", "2", "--rate", "none", "--hold", "300"], "live")
    dead = r.start(["up", "--hosts", "2", "--rate", "none", "--hold", "300"], "killed")
    for q in (live, dead):
        sc.wait_until(lambda: q.poll() is not None or "tears it all down" in read(q, "stdout"), 60,
                      "netsim.py up to print the network")
        check(q.poll() is None, lambda: f"netsim.py up ended (exit {q.returncode}):\n{output(q)}")
    dead.send_signal(signal.SIGKILL)
    dead.wait(30)
    left = [n for n in netns() if n.startswith(dead.tag + "-")]
    check(len(left) == 3, f"after SIGKILL, expected the 3 namespaces of {dead.tag} to remain: {left}")
    c = r.start(["cleanup"], "cleanup")
    rc = r.finish(c, 120, "cleanup")
    check(rc == 0, lambda: f"netsim.py cleanup exited {rc}:\n{output(c)}")
    r.no_leftovers(dead.tag, "after SIGKILL and netsim.py cleanup")
    kept = [n for n in netns() if n.startswith(live.tag + "-")]
    check(len(kept) == 3, f"netsim.py cleanup removed namespaces of a live run: {kept} remain of {live.tag}")
    live.send_signal(signal.SIGTERM)
    rc = r.finish(live, 60, "the live run, after SIGTERM")
    check(rc == 128 + signal.SIGTERM, lambda: f"netsim.py up exited {rc} after SIGTERM:\n{output(live)}")
    r.no_leftovers(live.tag, "after SIGTERM to the live run")


def main():
    ap = sc.job_arguments()
    ap.add_argument("check", choices=["train_matches_loopback", "topology", "cleanup"])
    args = ap.parse_args()

    def run_check():
        check(os.geteuid() == 0, "netsim checks need root (network namespaces); CI runs as root")
        for tool in ("ip", "tc"):
            check(subprocess.run(["which", tool], stdout=subprocess.DEVNULL).returncode == 0,
                  f"'{tool}' not found: scripts/setup.sh installs iproute2")
        sc.need_fashion()
        os.makedirs(args.work, exist_ok=True)
        r = Runner(args)
        try:
            globals()["check_" + args.check](r)
        finally:
            sc.stop_all()
            # Whatever happened, leave nothing: the namespaces of every run this check started.
            for ns in netns():
                if any(ns.startswith(t + "-") for t in r.tags):
                    pids = subprocess.run(["ip", "netns", "pids", ns], stdout=subprocess.PIPE, text=True,
                                          timeout=30).stdout.split()
                    for pid in pids:
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except (OSError, ValueError):
                            pass
                    subprocess.run(["ip", "netns", "delete", ns], timeout=30)

    sc.main(run_check, args.check)


if __name__ == "__main__":
    main()
