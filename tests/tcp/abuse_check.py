#!/usr/bin/python3
"""Abuse of the TCP rendezvous listener, run by CTest (tests/tcp/CMakeLists.txt).

    abuse_check.py --shardps BIN --mpirun MPIRUN --source-dir SRC --work DIR

Starts server 0 of a real 1-server 2-worker TCP job (--peer-timeout 2, so the handshake timeout
is 2 s) and, while its rendezvous is open, attacks 127.0.0.1:PORT from Python:

  garbage        64 KiB of random bytes
  truncated      the first 20 bytes of a HELLO, then end of stream
  envelope_held  a 16-byte envelope claiming a 2^63-byte payload and a 0xFFFFFFFF-byte frame, kept open
  envelope_flow  the same envelope followed by 64 KiB, as if the payload came next
  wrong_secret   a complete handshake (auth.cc, in Python) with a wrong secret
  replay         a handshake with the right secret, not registered (kept open), then its HELLO and
                 PROOF bytes replayed on a new connection (the server's nonce differs)
  bad_reg_len    the right secret, then a registration record whose address length byte is 255
  bad_rank       the right secret claiming rank 0xFFFFFFFF, then a valid registration
  silent         connects and sends nothing
  slowloris      a HELLO one byte per second
  flood          100 connections at once that send nothing (at most 16 unauthenticated are kept)

Each attack must be closed by the server and named in its stderr ("refused a connection from
127.0.0.1:PORT: REASON", matched by the attacking socket's port); silent and slow clients must be
cut at the handshake deadline. Then the two real workers join: every process must exit 0 and
worker 0's weights_sha256 must equal that of the same run under mpirun. The server's peak memory
(VmHWM, sampled from /proc while it runs) must stay near its baseline, and its listener must be
closed once the mesh is up (checked when the job runs long enough to observe it).
"""
import argparse
import concurrent.futures
import hashlib
import hmac
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

FASHION = "/usr/share/datasets/fashion-mnist"
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
TRAIN = ["--epochs", "1", "--train-limit", "6000", "--test-limit", "1000", "--progress", "plain"]
HANDSHAKE_S = 2          # --peer-timeout 2 => handshake timeout min(10 s, 2 s)
MAX_PENDING = 16         # TcpOptions::max_pending_connections
FLOOD = 100
WORLD = 3                # 1 server + 2 workers
# The attacks may raise the server's peak memory by this much at most. Every attack is bounded
# by fixed-size reads (40-byte HELLO, 36-byte PROOF, <= 67-byte registration) and at most 16
# pending connections; honouring a 2^63 or 4 GiB length field would show up as gigabytes (or
# an abort), so 32 MiB leaves room for allocator noise and nothing else.
ATTACK_GROWTH_MIB = 32
# Over the whole run (the softmax model is 784 x 10 floats, the server holds it, its optimizer
# state and a few messages of it), peak memory stays within baseline + 64 MiB.
TOTAL_GROWTH_MIB = 64

HELLO_MAGIC, PROOF_MAGIC = b"SPSA", b"SPSP"
HELLO_BYTES, PROOF_BYTES = 40, 36
REFUSED = re.compile(r"refused a connection from ([0-9.]+):(\d+): (.*)")
FULL = "unauthenticated connections pending"


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


# ---- The handshake of core/src/auth.cc, initiator side ----

def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def hello(rank, nonce):
    return HELLO_MAGIC + u32(rank) + nonce


def proof(secret, label, prover_nonce, verifier_nonce, prover_rank, verifier_rank):
    """PROOF = magic | HMAC-SHA256(secret, label | prover nonce | verifier nonce | prover rank | verifier rank)."""
    msg = label + prover_nonce + verifier_nonce + u32(prover_rank) + u32(verifier_rank)
    return PROOF_MAGIC + hmac.new(secret, msg, hashlib.sha256).digest()


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def wait_closed(s, timeout):
    """Reads (and drops) until the server closes: returns (how, seconds waited) or (None, timeout)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        s.settimeout(max(0.05, timeout - (time.time() - t0)))
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        except (ConnectionResetError, BrokenPipeError):
            return "reset", time.time() - t0
        if not data:
            return "eof", time.time() - t0
    return None, time.time() - t0


def authenticate(port, secret, rank):
    """Runs the initiator's side with `secret`; returns (socket, our HELLO, our PROOF, server nonce, server proof ok)."""
    s = connect(port)
    nonce = os.urandom(32)
    mine = hello(rank, nonce)
    s.sendall(mine)
    theirs = recv_exact(s, HELLO_BYTES)
    if theirs[:4] != HELLO_MAGIC:
        fail(f"the server's HELLO starts with {theirs[:4]!r}")
    server_rank = struct.unpack("<I", theirs[4:8])[0]
    server_nonce = theirs[8:]
    my_proof = proof(secret, b"I", nonce, server_nonce, rank, server_rank)
    s.sendall(my_proof)
    return s, mine, my_proof, server_nonce, server_rank


# ---- Attacks: each returns {name, ports, closed, seconds, note, expect} ----

def result(name, s, how, secs, expect, note=""):
    return {"name": name, "ports": [s.getsockname()[1]], "closed": how, "seconds": secs, "expect": expect, "note": note}


def attack_garbage(port, secret):
    s = connect(port)
    me = s.getsockname()[1]
    data = b"\x00" + os.urandom(64 * 1024 - 1)  # cannot start with the HELLO magic
    note = "all 64 KiB written"
    try:
        s.sendall(data)
    except (ConnectionResetError, BrokenPipeError) as e:
        note = f"write cut short ({e.__class__.__name__})"
    how, secs = wait_closed(s, 10)
    s.close()
    return {"name": "garbage", "ports": [me], "closed": how, "seconds": secs, "note": note,
            "expect": r"expected a 40-byte HELLO"}


def attack_truncated(port, secret):
    s = connect(port)
    s.sendall(hello(1, os.urandom(32))[:20])
    s.shutdown(socket.SHUT_WR)
    how, secs = wait_closed(s, 10)
    r = result("truncated", s, how, secs, r"authentication: (End of file|.*eof)")
    s.close()
    return r


ENVELOPE = struct.pack("<QII", 1 << 63, 0xFFFFFFFF, 0)


def attack_envelope_held(port, secret):
    s = connect(port)
    s.sendall(ENVELOPE)
    how, secs = wait_closed(s, 15)
    r = result("envelope_held", s, how, secs, rf"did not authenticate within {HANDSHAKE_S * 1000} ms")
    s.close()
    return r


def attack_envelope_flow(port, secret):
    s = connect(port)
    me = s.getsockname()[1]
    note = "envelope + 64 KiB written"
    try:
        s.sendall(ENVELOPE + b"\xff" * (64 * 1024))
    except (ConnectionResetError, BrokenPipeError) as e:
        note = f"write cut short ({e.__class__.__name__})"
    how, secs = wait_closed(s, 10)
    s.close()
    return {"name": "envelope_flow", "ports": [me], "closed": how, "seconds": secs, "note": note,
            "expect": r"expected a 40-byte HELLO"}


def attack_wrong_secret(port, secret):
    s, _, _, _, _ = authenticate(port, os.urandom(32), rank=1)
    s.settimeout(10)
    got = b""
    how, t0 = None, time.time()
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                how = "eof"
                break
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        how = "reset"
    except socket.timeout:
        pass
    if got:
        fail(f"wrong_secret: the server answered a wrong proof with {len(got)} bytes")
    r = result("wrong_secret", s, how, time.time() - t0,
               r"authentication failed: rank 1 does not know the shared secret", "no server PROOF received")
    s.close()
    return r


def attack_replay(port, secret):
    # A: the right secret, rank 2; the server's PROOF must verify; no registration (held open).
    a, my_hello, my_proof, nonce_a, server_rank = authenticate(port, secret, rank=2)
    a.settimeout(5)
    server_proof = recv_exact(a, PROOF_BYTES)
    if server_proof != proof(secret, b"A", nonce_a, my_hello[8:], server_rank, 2):
        fail("replay: the server's PROOF does not verify with the shared secret")
    # B: the same HELLO and PROOF bytes against a fresh server nonce.
    b = connect(port)
    b.sendall(my_hello)
    theirs = recv_exact(b, HELLO_BYTES)
    if theirs[8:] == nonce_a:
        fail("replay: the server reused its nonce")
    b.sendall(my_proof)
    how_b, secs_b = wait_closed(b, 10)
    rb = {"name": "replay", "ports": [b.getsockname()[1]], "closed": how_b, "seconds": secs_b,
          "expect": r"authentication failed: rank 2 does not know the shared secret \(or replayed an old handshake\)",
          "note": "fresh server nonce; replayed PROOF refused"}
    b.close()
    how_a, secs_a = wait_closed(a, 15)
    ra = result("authenticated_unregistered", a, how_a, secs_a, rf"did not authenticate within {HANDSHAKE_S * 1000} ms",
                "right secret, server PROOF verified, never registered")
    a.close()
    return [ra, rb]


def attack_bad_reg_len(port, secret):
    s, _, _, _, _ = authenticate(port, secret, rank=1)
    s.settimeout(5)
    recv_exact(s, PROOF_BYTES)
    s.sendall(b"\xff" + b"A" * 255 + b"\x00\x01")
    how, secs = wait_closed(s, 10)
    r = result("bad_reg_len", s, how, secs, r"registration: bad address length")
    s.close()
    return r


def attack_bad_rank(port, secret):
    s, _, _, _, _ = authenticate(port, secret, rank=0xFFFFFFFF)
    s.settimeout(5)
    recv_exact(s, PROOF_BYTES)
    s.sendall(b"\x09127.0.0.1" + struct.pack("<H", 1))
    how, secs = wait_closed(s, 10)
    r = result("bad_rank", s, how, secs, rf"claimed rank -1 in a world of {WORLD}")
    s.close()
    return r


def attack_silent(port, secret):
    s = connect(port)
    how, secs = wait_closed(s, 15)
    r = result("silent", s, how, secs, rf"did not authenticate within {HANDSHAKE_S * 1000} ms")
    s.close()
    return r


def attack_slowloris(port, secret):
    s = connect(port)
    me = s.getsockname()[1]
    data = hello(1, os.urandom(32))
    how, t0, sent = None, time.time(), 0
    for i in range(20):
        try:
            s.send(data[i:i + 1])
            sent += 1
        except (ConnectionResetError, BrokenPipeError):
            how = "reset"
            break
        r, _, _ = select.select([s], [], [], 1.0)
        if r:
            how, _ = wait_closed(s, 1)
            if how:
                break
    secs = time.time() - t0
    s.close()
    return {"name": "slowloris", "ports": [me], "closed": how, "seconds": secs, "note": f"{sent} bytes sent",
            "expect": rf"did not authenticate within {HANDSHAKE_S * 1000} ms"}


def flood(port):
    """Opens FLOOD silent connections at once; returns (closed at once, held, seconds until all closed, ports)."""
    socks = []
    for _ in range(FLOOD):
        socks.append(connect(port))
    for s in socks:
        s.setblocking(False)  # a socket with a timeout would wait for the data
    # Those beyond the limit are closed as soon as accepted; the held ones only at the handshake
    # deadline, so until then the two are told apart by whether the server closed them.
    t0 = time.time()
    while True:
        time.sleep(0.1)
        open_ = []
        for s in socks:
            try:
                if s.recv(1, socket.MSG_PEEK):
                    fail("flood: the server sent something to a silent connection")
            except BlockingIOError:
                open_.append(s)
            except ConnectionResetError:
                pass
        if len(open_) <= MAX_PENDING or time.time() - t0 > HANDSHAKE_S / 2:
            break
    closed_now = FLOOD - len(open_)
    held = len(open_)
    t0 = time.time()
    still = list(open_)
    while still and time.time() - t0 < 15:
        r, _, _ = select.select(still, [], [], 0.5)
        for s in r:
            still.remove(s)
    secs = time.time() - t0
    held_ports = [s.getsockname()[1] for s in open_]
    for s in socks:
        s.close()
    return closed_now, held, len(still), secs, held_ports


# ---- The job ----

class MemorySampler(threading.Thread):
    """Samples VmRSS / VmHWM (kB) of `pid` every 20 ms while it lives."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.rss, self.hwm, self.samples = pid, 0, 0, 0
        self.stop = False

    def read(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                text = f.read()
        except OSError:
            return None
        vals = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M))
        if "VmHWM" not in vals:
            return None  # a zombie
        return int(vals["VmRSS"]), int(vals["VmHWM"])

    def run(self):
        while not self.stop:
            v = self.read()
            if v is None:
                return
            self.rss, self.hwm = v
            self.samples += 1
            time.sleep(0.02)


def listening(port):
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if cols[1].endswith(want) and cols[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refusals(log_path):
    with open(log_path, errors="replace") as f:
        text = f.read()
    by_port = {}
    for m in REFUSED.finditer(text):
        by_port.setdefault(int(m.group(2)), []).append(m.group(3))
    return text, by_port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardps", required=True)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(FASHION, "train-images-idx3-ubyte.gz")):
        fail(f"Fashion-MNIST not found under {FASHION}; scripts/setup.sh installs dataset-fashion-mnist")
    t_start = time.time()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    cfg = os.path.join(args.source_dir, "examples", "configs", "fashion_softmax.prototxt")

    # The expected weights: the same run under mpirun.
    ref = os.path.join(work, "ref")
    cmd = [args.mpirun, "--oversubscribe", "--bind-to", "none", "-np", "3", args.shardps, "train", "--config", cfg,
           "--servers", "1", "--out-dir", ref] + TRAIN
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        fail(f"reference run failed:\n{p.stdout}\n{p.stderr}")
    with open(os.path.join(ref, "summary.json")) as f:
        want_sha = json.load(f)["weights_sha256"]
    print(f"reference (mpirun) weights_sha256 {want_sha}")

    key = os.path.join(work, "job.key")
    p = subprocess.run([args.shardps, "keygen", "--out", key], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        fail(f"keygen failed:\n{p.stdout}\n{p.stderr}")
    with open(key, "rb") as f:
        secret = f.read()

    port = free_port()
    common = [args.shardps, "train", "--config", cfg] + TRAIN + [
        "--transport", "tcp", "--coordinator", f"127.0.0.1:{port}", "--num-servers", "1", "--num-workers", "2",
        "--secret-file", key, "--peer-timeout", str(HANDSHAKE_S), "--setup-timeout", "60"]
    procs = {}
    logs = {}

    def start(name, role, rank):
        out = os.path.join(work, name)
        logs[name] = os.path.join(work, name + ".log")
        with open(logs[name], "w") as log:
            procs[name] = subprocess.Popen(common + ["--role", role, "--rank", str(rank), "--out-dir", out],
                                           stdout=log, stderr=subprocess.STDOUT, env=ENV)

    def log_of(name):
        with open(logs[name], errors="replace") as f:
            return f.read()

    try:
        start("server0", "server", 0)
        server = procs["server0"]
        t0 = time.time()
        while not listening(port):
            if server.poll() is not None:
                fail(f"server 0 exited ({server.returncode}) before listening:\n{log_of('server0')}")
            if time.time() - t0 > 30:
                fail(f"server 0 is not listening on 127.0.0.1:{port} after 30 s")
            time.sleep(0.05)
        mem = MemorySampler(server.pid)
        base = mem.read()
        if base is None:
            fail("cannot read the server's /proc status")
        mem.start()
        print(f"server 0 (pid {server.pid}) listening on 127.0.0.1:{port} after {time.time() - t0:.2f} s; "
              f"baseline VmRSS {base[0] / 1024:.1f} MiB, VmHWM {base[1] / 1024:.1f} MiB")

        # Attacks 1-7, concurrently (11 connections: under the 16 pending).
        attacks = [attack_garbage, attack_truncated, attack_envelope_held, attack_envelope_flow, attack_wrong_secret,
                   attack_replay, attack_bad_reg_len, attack_bad_rank, attack_silent, attack_slowloris]
        results = []
        t_att = time.time()
        with concurrent.futures.ThreadPoolExecutor(len(attacks)) as ex:
            for fut in [ex.submit(a, port, secret) for a in attacks]:
                r = fut.result(timeout=60)
                results.extend(r if isinstance(r, list) else [r])
        print(f"attacks done in {time.time() - t_att:.1f} s")
        if server.poll() is not None:
            fail(f"server 0 exited ({server.returncode}) during the attacks:\n{log_of('server0')}")
        for r in results:
            if r["closed"] is None:
                fail(f"{r['name']}: the server did not close the connection within {r['seconds']:.1f} s")
        for name in ("silent", "slowloris", "envelope_held", "authenticated_unregistered"):
            r = next(x for x in results if x["name"] == name)
            if not HANDSHAKE_S - 0.5 <= r["seconds"] <= HANDSHAKE_S + 5:
                fail(f"{name}: closed after {r['seconds']:.2f} s, not at the {HANDSHAKE_S} s handshake deadline")

        # Attack 8: the flood, once every other attack's connection is gone.
        n_full_before = log_of("server0").count(FULL)
        closed_now, held, never, secs, held_ports = flood(port)
        print(f"flood: {FLOOD} connections, {closed_now} closed at once, {held} held; those dropped after "
              f"{secs:.1f} s more ({never} never)")
        if held > MAX_PENDING or closed_now < FLOOD - MAX_PENDING:
            fail(f"flood: {held} of {FLOOD} silent connections kept (limit {MAX_PENDING})")
        if never:
            fail(f"flood: {never} held connections not dropped at the handshake deadline")
        # Still responsive: a handshake with the right secret completes at once (not registered).
        t_probe = time.time()
        s, my_hello, _, nonce, srank = authenticate(port, secret, rank=1)
        s.settimeout(5)
        sp = recv_exact(s, PROOF_BYTES)
        if sp != proof(secret, b"A", nonce, my_hello[8:], srank, 1):
            fail("probe after the flood: the server's PROOF does not verify")
        probe_secs = time.time() - t_probe
        probe_port = s.getsockname()[1]
        s.close()
        print(f"after the flood a handshake with the right secret completed in {probe_secs * 1000:.0f} ms")
        if probe_secs > 2:
            fail(f"the server took {probe_secs:.1f} s to answer a handshake after the flood")

        # The server's log names every attack (by the attacking socket's port).
        t_log = time.time()
        while True:
            text, by_port = refusals(logs["server0"])
            missing = [r for r in results if not all(p in by_port for p in r["ports"])]
            if probe_port not in by_port:
                missing.append({"name": "probe"})
            if not missing or time.time() - t_log > 10:
                break
            time.sleep(0.1)
        if missing:
            fail(f"not reported as refused by the server: {[r['name'] for r in missing]}\n{text}")
        print(f"{'attack':28} {'closed':7} {'after':>7}  server's reason")
        for r in results:
            reasons = by_port[r["ports"][0]]
            if len(reasons) != 1 or not re.search(r["expect"], reasons[0]):
                fail(f"{r['name']}: refused with {reasons}, expected /{r['expect']}/")
            print(f"{r['name']:28} {r['closed']:7} {r['seconds']:6.2f}s  {reasons[0]}" +
                  (f"  [{r['note']}]" if r.get("note") else ""))
        full = text.count(FULL) - n_full_before
        if full != closed_now:
            fail(f"flood: {closed_now} connections closed at once but {full} '{FULL}' warnings")
        for p_ in held_ports:
            if p_ not in by_port or not re.search(rf"did not authenticate within {HANDSHAKE_S * 1000} ms", by_port[p_][0]):
                fail(f"flood: held connection {p_} refused with {by_port.get(p_)}")
        print(f"{'flood':28} {'eof':7}          {full} x 'refused a connection: already {MAX_PENDING} {FULL}', "
              f"{held} x 'did not authenticate within {HANDSHAKE_S * 1000} ms'")
        print(f"{'probe (right secret)':28} {'-':7}          {by_port[probe_port][0]}")
        total_refused = sum(len(v) for v in by_port.values()) + full
        time.sleep(0.1)
        hwm_attacks = mem.hwm
        print(f"server after the attacks: VmRSS {mem.rss / 1024:.1f} MiB, VmHWM {hwm_attacks / 1024:.1f} MiB "
              f"(baseline {base[1] / 1024:.1f} MiB, {mem.samples} samples); {total_refused} connections refused")
        if hwm_attacks - base[1] > ATTACK_GROWTH_MIB * 1024:
            fail(f"the server's peak memory grew by {(hwm_attacks - base[1]) / 1024:.1f} MiB during the attacks "
                 f"(limit {ATTACK_GROWTH_MIB} MiB)")

        # The real workers join; the job must finish as under mpirun.
        start("worker0", "worker", 0)
        start("worker1", "worker", 1)
        listener_closed = None
        t_job = time.time()
        while any(p.poll() is None for p in procs.values()):
            if time.time() - t_job > 60:
                fail("the job did not finish within 60 s:\n" + "\n".join(f"--- {n}\n{log_of(n)}" for n in procs))
            if listener_closed is None and server.poll() is None and not listening(port):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    fail("a connection to the coordinator port succeeded after its listener closed")
                except ConnectionRefusedError:
                    if server.poll() is None:
                        listener_closed = time.time() - t_job
            time.sleep(0.01)
        mem.stop = True
        mem.join(5)
        job_secs = time.time() - t_job
        for n, p in procs.items():
            if p.returncode != 0:
                fail(f"{n} exited {p.returncode}:\n" + "\n".join(f"--- {m}\n{log_of(m)}" for m in procs))
        with open(os.path.join(work, "worker0", "summary.json")) as f:
            got_sha = json.load(f)["weights_sha256"]
        print(f"job finished {job_secs:.1f} s after the workers started; worker 0 weights_sha256 {got_sha}")
        if got_sha != want_sha:
            fail(f"TCP job after the attacks gave weights {got_sha}, mpirun gave {want_sha}")
        if listener_closed is not None:
            print(f"listener closed (connection refused) {listener_closed:.2f} s after the workers started, "
                  f"server still running")
        else:
            print("listener closing not observed (the job finished first)")
        print(f"server peak memory: VmHWM {mem.hwm / 1024:.1f} MiB at the last sample before exit "
              f"(baseline {base[1] / 1024:.1f} MiB, +{(mem.hwm - base[1]) / 1024:.1f} MiB; "
              f"limit +{TOTAL_GROWTH_MIB} MiB)")
        if mem.hwm - base[1] > TOTAL_GROWTH_MIB * 1024:
            fail(f"the server's peak memory grew by {(mem.hwm - base[1]) / 1024:.1f} MiB (limit {TOTAL_GROWTH_MIB} MiB)")
        print(f"total {time.time() - t_start:.1f} s")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    print("PASS abuse")


if __name__ == "__main__":
    main()
