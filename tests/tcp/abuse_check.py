#!/usr/bin/python3
"""Abuse of the TCP rendezvous listener, run by CTest (tests/tcp/CMakeLists.txt).

    abuse_check.py --shardps BIN --mpirun MPIRUN --source-dir SRC --work DIR

Starts server 0 of a real 1-server 2-worker TCP job (--peer-timeout 2, so the handshake timeout
is 2 s; at most 16 connections pending) and, while its rendezvous is open, attacks
127.0.0.1:PORT from Python. First twelve connections at once (under the 16 pending, so none is
evicted), each of which must be closed by the server and reported in its stderr as
"refused a connection from 127.0.0.1:PORT: REASON" (matched by the attacking socket's port,
exactly one line each), REASON matching:

  garbage          64 KiB of random bytes starting with 0x00:
                   'expected a HELLO (magic "SPSA"), got other bytes (not a shardps peer?)'
  truncated        the first 20 bytes of a HELLO, then end of stream: 'authentication: End of file'
  envelope_held    a 16-byte envelope claiming a 2^63-byte payload and a 0xFFFFFFFF-byte frame,
                   kept open: 'did not complete the handshake within 2000 ms', closed 1.5-7 s later
  envelope_flow    the same envelope followed by 64 KiB: the HELLO magic message
  wrong_secret     a complete handshake (auth.cc, in Python) with a wrong secret: 'authentication
                   failed: rank 1 does not know the shared secret'; the client must receive exactly
                   the 4 bytes "SPSX" and then end of stream
  bad_proof_magic  a valid HELLO, then 36 bytes that do not start with "SPSP":
                   'expected a proof (magic "SPSP"), got other bytes'; the client may receive
                   "SPSX" (a rejected proof) and nothing else before end of stream
  replay           a handshake with the right secret whose server PROOF must verify, kept open
                   unregistered ('authenticated_unregistered': 'authenticated as rank 2 but did
                   not register within 2000 ms', 1.5-7 s later); then its HELLO and PROOF bytes
                   replayed on a new connection, which must get a fresh server nonce, exactly
                   "SPSX" and 'does not know the shared secret (or replayed an old handshake)'
  bad_reg_len      the right secret, then a registration whose address length byte is 255:
                   'registration of rank 1: address length 255 outside 1..64'
  bad_rank         the right secret claiming rank 0xFFFFFFFF, then a valid registration:
                   'claimed rank -1 in a world of 3'
  silent           connects and sends nothing: the handshake deadline message, 1.5-7 s later
  slowloris        a HELLO one byte per second: the handshake deadline message, 1.5-7 s later

Then the flood: 100 silent connections opened at once (after every earlier one is gone). A 17th
pending connection evicts the oldest, so the first 84 must be closed (end of stream, no byte
sent) within 1 s of the last connect, and exactly the newest 16 must stay open until the 2 s
handshake deadline (closed 1.5-7 s after being opened). The log is rate-limited (the first 50
refusals, then one per 1000): the 12 attacks above plus the first 38 flood connections make 50
lines, so the flood's logged lines must be the first 38 flood sockets in the order they were
opened, each 'evicted: 16 connections pending, this one the oldest unauthenticated', and the
50th line must announce 'further refusals are logged once per 1000'. A handshake with the right
secret after the flood must complete (server PROOF verified) within 2 s, and, being the 113th
refusal, must not be logged.

Then the squatter, the attack that matters most: a thread keeps 20 silent connections open,
reopening each one the server closes (a connect reset on the way is counted and dialled
again), so the server always has 16 idle connections pending and evicts one per arrival. Once
it has seen 60 evictions the two real workers are started beside it; dialers closed before an
answer dial again with backoff, so they must still join. The squatter stops dialling when it is
refused and stops altogether once the workers have exited (at the latest 70 s after it started).
Every process must exit 0 (a worker that fails fails the check at once) and worker 0's
weights_sha256 must equal that of the same run under mpirun. If the squatter is refused while
the server still runs (its listener closed once the mesh was up), every squatter socket must
have been closed by the server within 1 s; the main loop also checks that a connection to the
coordinator port is refused once /proc/net/tcp shows no listener there (when the job runs long
enough to observe it). --squatter-processes N (default 2) adds N squatters, each in its own
process (not slowed by this interpreter's lock), so the door is really kept crowded.

Throughout: the server never sends a byte to a silent connection (flood, squatter); after the
attacks the log holds exactly their 12 refusal lines; every "refused a connection" line names an
IPv4 address and a port; there are at most 50 + (connections opened to the coordinator + 200) /
1000 + 1 of them (the 200 for the workers' own retries), and every one past the 50th carries
"(N refused so far)" with N a multiple of 1000, increasing. The server's socket
descriptors (sampled from /proc/PID/fd every 20 ms) exceed their baseline by at most 17
(16 pending and the one being accepted) during the attacks and the flood, and by at most 19
(plus the two workers) while the squatter runs. Its peak memory (VmHWM, sampled from
/proc/PID/status) may grow by at most 32 MiB during the attacks and the flood, and by at most
64 MiB over the whole run. Its total time is printed, not asserted (every wait has its own
deadline; a slower machine must not fail it).
"""
import concurrent.futures
import errno
import hashlib
import hmac
import json
import multiprocessing
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import shardps_check as sc  # noqa: E402
from shardps_check import fail, free_port  # noqa: E402,F401

ENV = sc.ROOT_ENV
TRAIN = ["--epochs", "1", "--train-limit", "6000", "--test-limit", "1000", "--progress", "plain"]
HANDSHAKE_S = 2          # --peer-timeout 2 => handshake timeout min(10 s, 2 s)
HANDSHAKE_MS = HANDSHAKE_S * 1000
MAX_PENDING = 16         # TcpOptions::max_pending_connections
LOGGED = 50              # refusals logged before the log is rate-limited (then one per 1000)
FLOOD = 100
SQUATTERS = 20           # silent connections the squatter keeps open
SQUAT_WARMUP = 60        # evictions the squatter must see before the workers start
SQUAT_LIMIT_S = 70
WORLD = 3                # 1 server + 2 workers
# The attacks may raise the server's peak memory by this much at most. Every attack is bounded
# by fixed-size reads (56-byte HELLO, 36-byte PROOF, <= 67-byte registration) and at most 16
# pending connections; honouring a 2^63 or 4 GiB length field would show up as gigabytes (or
# an abort), so 32 MiB leaves room for allocator noise and nothing else.
ATTACK_GROWTH_MIB = 32
# Over the whole run (the softmax model is 784 x 10 floats, the server holds it, its optimizer
# state and a few messages of it), peak memory stays within baseline + 64 MiB.
TOTAL_GROWTH_MIB = 64
# Under AddressSanitizer (--sanitized) freed memory is held in a quarantine (256 MiB by default)
# to catch uses after free, so churning thousands of connections raises the peak by up to that
# much without any of it being live: both limits grow by it. A field honoured as an allocation
# size would still show as gigabytes (or ASan's allocation-size abort).
ASAN_QUARANTINE_MIB = 256

HELLO_MAGIC, PROOF_MAGIC, REJECTED = b"SPSA", b"SPSP", b"SPSX"
HELLO_BYTES, PROOF_BYTES = 56, 36
# A stranger does not know the job's configuration, so its HELLO carries no job tag (all zero):
# its wrong proof is ignored instead of ending the job (auth.h).
STRANGER_TAG = bytes(16)
REFUSED = re.compile(r"refused a connection from ([0-9.]+):(\d+): (.*)")
DEADLINE = rf"did not complete the handshake within {HANDSHAKE_MS} ms"
BAD_HELLO = r'authentication: expected a HELLO \(magic "SPSA"\), got other bytes \(not a shardps peer\?\)'
EVICTED = rf"evicted: {MAX_PENDING} connections pending, this one the oldest unauthenticated"
LIMIT_NOTICE = "(further refusals are logged once per 1000)"
SO_FAR = re.compile(r"\((\d+) refused so far\)$")


# ---- The handshake of core/net/src/auth.cc, initiator side ----

def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def hello(rank, nonce):
    return HELLO_MAGIC + u32(rank) + nonce + STRANGER_TAG


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


def read_to_close(s, timeout):
    """Reads until the server closes: returns (bytes received, how, seconds) with how None on a timeout."""
    s.settimeout(timeout)
    got, how, t0 = b"", None, time.time()
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
    return got, how, time.time() - t0


def authenticate(port, secret, rank):
    """Runs the initiator's side with `secret`; returns (socket, our HELLO, our PROOF, server nonce, server rank)."""
    s = connect(port)
    nonce = os.urandom(32)
    mine = hello(rank, nonce)
    s.sendall(mine)
    theirs = recv_exact(s, HELLO_BYTES)
    if theirs[:4] != HELLO_MAGIC:
        fail(f"the server's HELLO starts with {theirs[:4]!r}")
    server_rank = struct.unpack("<I", theirs[4:8])[0]
    server_nonce = theirs[8:40]
    my_proof = proof(secret, b"I", nonce, server_nonce, rank, server_rank)
    s.sendall(my_proof)
    return s, mine, my_proof, server_nonce, server_rank


# ---- Attacks: each returns {name, ports, closed, seconds, note, expect[, deadline]} ----

def result(name, s, how, secs, expect, note="", deadline=False):
    return {"name": name, "ports": [s.getsockname()[1]], "closed": how, "seconds": secs, "expect": expect,
            "note": note, "deadline": deadline}


def send_and_wait(port, name, data, what):
    """Sends `data` (the server may cut the write short), then waits for the server to close."""
    s = connect(port)
    note = what + " written"
    try:
        s.sendall(data)
    except (ConnectionResetError, BrokenPipeError) as e:
        note = f"write cut short ({e.__class__.__name__})"
    how, secs = wait_closed(s, 10)
    r = result(name, s, how, secs, BAD_HELLO, note)
    s.close()
    return r


def attack_garbage(port, secret):
    # Cannot start with the HELLO magic.
    return send_and_wait(port, "garbage", b"\x00" + os.urandom(64 * 1024 - 1), "all 64 KiB")


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
    r = result("envelope_held", s, how, secs, DEADLINE, deadline=True)
    s.close()
    return r


def attack_envelope_flow(port, secret):
    return send_and_wait(port, "envelope_flow", ENVELOPE + b"\xff" * (64 * 1024), "envelope + 64 KiB")


def attack_wrong_secret(port, secret):
    s, _, _, _, _ = authenticate(port, os.urandom(32), rank=1)
    got, how, secs = read_to_close(s, 10)
    if got != REJECTED or how != "eof":
        fail(f"wrong_secret: the server answered a wrong proof with {got!r} then {how or 'nothing'}, "
             f"expected {REJECTED!r} then end of stream")
    r = result("wrong_secret", s, how, secs, r"authentication failed: rank 1 does not know the shared secret",
               f"received {got!r} then end of stream")
    s.close()
    return r


def attack_bad_proof_magic(port, secret):
    s = connect(port)
    s.sendall(hello(1, os.urandom(32)))
    theirs = recv_exact(s, HELLO_BYTES)
    if theirs[:4] != HELLO_MAGIC:
        fail(f"bad_proof_magic: the server's HELLO starts with {theirs[:4]!r}")
    s.sendall(b"SPSQ" + os.urandom(32))
    got, how, secs = read_to_close(s, 10)
    if got not in (b"", REJECTED):
        fail(f"bad_proof_magic: the server answered a proof with a wrong magic with {got!r}")
    r = result("bad_proof_magic", s, how, secs, r'authentication: expected a proof \(magic "SPSP"\), got other bytes',
               f"received {got!r} then end of stream")
    s.close()
    return r


def attack_replay(port, secret):
    # A: the right secret, rank 2; the server's PROOF must verify; no registration (held open).
    a, my_hello, my_proof, nonce_a, server_rank = authenticate(port, secret, rank=2)
    a.settimeout(5)
    server_proof = recv_exact(a, PROOF_BYTES)
    if server_proof != proof(secret, b"A", nonce_a, my_hello[8:40], server_rank, 2):
        fail("replay: the server's PROOF does not verify with the shared secret")
    # B: the same HELLO and PROOF bytes against a fresh server nonce.
    b = connect(port)
    b.sendall(my_hello)
    theirs = recv_exact(b, HELLO_BYTES)
    if theirs[8:40] == nonce_a:
        fail("replay: the server reused its nonce")
    b.sendall(my_proof)
    got, how_b, secs_b = read_to_close(b, 10)
    if got != REJECTED or how_b != "eof":
        fail(f"replay: the server answered a replayed proof with {got!r} then {how_b or 'nothing'}, "
             f"expected {REJECTED!r} then end of stream")
    rb = result("replay", b, how_b, secs_b,
                r"authentication failed: rank 2 does not know the shared secret \(or replayed an old handshake\)",
                f"fresh server nonce; replayed PROOF answered {got!r}")
    b.close()
    how_a, secs_a = wait_closed(a, 15)
    ra = result("authenticated_unregistered", a, how_a, secs_a,
                rf"authenticated as rank 2 but did not register within {HANDSHAKE_MS} ms",
                "right secret, server PROOF verified, never registered", deadline=True)
    a.close()
    return [ra, rb]


def attack_bad_reg_len(port, secret):
    s, _, _, _, _ = authenticate(port, secret, rank=1)
    s.settimeout(5)
    recv_exact(s, PROOF_BYTES)
    s.sendall(b"\xff" + b"A" * 255 + b"\x00\x01")
    how, secs = wait_closed(s, 10)
    r = result("bad_reg_len", s, how, secs, r"registration of rank 1: address length 255 outside 1\.\.64")
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
    r = result("silent", s, how, secs, DEADLINE, deadline=True)
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
            "expect": DEADLINE, "deadline": True}


ATTACKS = [attack_garbage, attack_truncated, attack_envelope_held, attack_envelope_flow, attack_wrong_secret,
           attack_bad_proof_magic, attack_replay, attack_bad_reg_len, attack_bad_rank, attack_silent,
           attack_slowloris]
ATTACK_CONNECTIONS = len(ATTACKS) + 1  # the replay opens two


def peer_closed(s):
    """For a non-blocking socket: True once the server closed it (end of stream or reset)."""
    try:
        if s.recv(1, socket.MSG_PEEK):
            fail("the server sent something to a silent connection")
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def flood(port):
    """Opens FLOOD silent connections at once and watches the server close them."""
    socks, opened_at = [], []
    for _ in range(FLOOD):
        socks.append(connect(port))
        opened_at.append(time.time())
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.setblocking(False)  # a socket with a timeout would wait for the data
    t_last = time.time()
    closed_at = [None] * FLOOD
    # Until the newest 16 only are left (evictions), then until those are gone too (deadline).
    while time.time() - t_last < HANDSHAKE_S + 8:
        now = time.time()
        for i, s in enumerate(socks):
            if closed_at[i] is None and peer_closed(s):
                closed_at[i] = now
        if all(c is not None for c in closed_at):
            break
        time.sleep(0.02)
    for s in socks:
        s.close()
    return ports, opened_at, closed_at, t_last


# ---- The squatter: keeps SQUATTERS idle connections open, reopening each one the server closes ----

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Squatter(threading.Thread):
    def __init__(self, port, server_pid):
        super().__init__(daemon=True)
        self.port, self.server_pid = port, server_pid
        self.opened = self.closed = self.refused = self.max_open = 0
        self.listener_closed_at = None  # first refused connect while the server still ran
        self.all_closed_at = None       # when none of its sockets was open any more, after that
        self.open_at_end = 0
        self.left_behind = []   # (local port, kernel view) of connections open when it stopped
        self.connect_errors = {}  # errno name -> count, other than a refusal
        self.error = None
        self.stop = threading.Event()
        self.t0 = self.t1 = None

    def run(self):
        socks = []
        self.t0 = time.time()
        try:
            while not self.stop.is_set() and time.time() - self.t0 < SQUAT_LIMIT_S:
                while len(socks) < SQUATTERS and self.listener_closed_at is None:
                    s = socket.socket()
                    s.settimeout(2)
                    try:
                        s.connect(("127.0.0.1", self.port))
                    except ConnectionRefusedError:
                        s.close()
                        self.refused += 1
                        if alive(self.server_pid):
                            self.listener_closed_at = time.time()
                        else:
                            time.sleep(0.01)
                        break
                    except OSError as e:  # e.g. reset while connecting: counted, dialled again
                        s.close()
                        name = errno.errorcode.get(e.errno, str(e))
                        self.connect_errors[name] = self.connect_errors.get(name, 0) + 1
                        continue
                    s.setblocking(False)
                    socks.append(s)
                    self.opened += 1
                self.max_open = max(self.max_open, len(socks))
                if not socks:
                    if self.listener_closed_at is not None and self.all_closed_at is None:
                        self.all_closed_at = time.time()
                    time.sleep(0.01)
                    continue
                ready, _, _ = select.select(socks, [], [], 0.05)
                for s in ready:
                    try:
                        data = s.recv(1)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        data = b""
                    if data:
                        self.error = f"the server sent {data!r} to a silent connection"
                    s.close()
                    socks.remove(s)
                    self.closed += 1
        except Exception as e:  # reported by the main thread
            self.error = f"{e.__class__.__name__}: {e}"
        finally:
            self.open_at_end = len(socks)
            # For a failure report: what the kernel says about both ends of each connection left.
            self.left_behind = []
            for s in socks:
                try:
                    self.left_behind.append((s.getsockname()[1], tcp_entries(s.getsockname()[1])))
                except OSError:
                    pass
            for s in socks:
                s.close()
            self.t1 = time.time()


def squat_in_process(port, server_pid, stop, opened):
    """--squatter-processes: one more squatter in its own process (no interpreter lock shared with the test)."""
    sq = Squatter(port, server_pid)
    sq.start()
    t0 = time.time()
    while not stop.wait(0.01) and sq.is_alive() and time.time() - t0 < SQUAT_LIMIT_S:
        opened.value = sq.opened
    sq.stop.set()
    sq.join(5)
    opened.value = sq.opened
    if sq.error:
        sys.exit(f"squatter process: {sq.error}")


# ---- The job ----

def socket_fds(pid):
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                pass
    except OSError:
        return None
    return n


class MemorySampler(threading.Thread):
    """Samples VmRSS / VmHWM (kB) and the number of socket descriptors of `pid` every 20 ms while it lives."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.rss, self.hwm, self.samples = pid, 0, 0, 0
        self.max_sockets = 0
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

    def take_max_sockets(self):
        m, self.max_sockets = self.max_sockets, 0
        return m

    def run(self):
        while not self.stop:
            v = self.read()
            if v is None:
                return
            n = socket_fds(self.pid)
            if n is not None:
                self.max_sockets = max(self.max_sockets, n)
            self.rss, self.hwm = v
            self.samples += 1
            time.sleep(0.02)


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def tcp_entries(port):
    """The kernel's IPv4 TCP sockets with `port` at either end: 'local -> remote STATE rx/tx queues'."""
    want, out = f":{port:04X}", []
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[1].endswith(want) or cols[2].endswith(want):
                    lp, rp = int(cols[1].split(":")[1], 16), int(cols[2].split(":")[1], 16)
                    out.append(f"{lp} -> {rp} {TCP_STATES.get(cols[3], cols[3])} queues {cols[4]}")
    except OSError:
        pass
    return out


def listening(port):
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and cols[1].endswith(want):
                        return True
        except OSError:
            pass
    return False


def refusal_lines(log_path):
    """Every line with "refused a connection", in order, as (line, port or None, reason or None)."""
    with open(log_path, errors="replace") as f:
        text = f.read()
    out = []
    for line in text.splitlines():
        if "refused a connection" not in line:
            continue
        m = REFUSED.search(line)
        out.append((line, int(m.group(2)) if m else None, m.group(3) if m else None))
    return text, out


def abuse(args):
    sc.need_fashion()
    t_start = time.time()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    cfg = os.path.join(args.source_dir, "examples", "configs", "fashion_softmax.prototxt")
    extra_mib = ASAN_QUARANTINE_MIB if args.sanitized else 0
    attack_growth_mib, total_growth_mib = ATTACK_GROWTH_MIB + extra_mib, TOTAL_GROWTH_MIB + extra_mib

    # The expected weights: the same run under mpirun.
    ref = os.path.join(work, "ref")
    sc.run(sc.mpirun_cmd(args.mpirun, 3, [args.shardps, "train", "--config", cfg, "--servers", "1", "--out-dir", ref] +
                         TRAIN), timeout=120)
    want_sha = sc.read_summary(ref, show=False)["weights_sha256"]
    print(f"reference (mpirun) weights_sha256 {want_sha}")

    key = os.path.join(work, "job.key")
    sc.run([args.shardps, "keygen", "--out", key], timeout=30)
    with open(key, "rb") as f:
        secret = f.read()

    port = free_port()
    common = [args.shardps, "train", "--config", cfg] + TRAIN + [
        "--transport", "tcp", "--coordinator", f"127.0.0.1:{port}", "--num-servers", "1", "--num-workers", "2",
        "--secret-file", key, "--peer-timeout", str(HANDSHAKE_S), "--setup-timeout", "60"]
    procs = {}
    logs = {}
    squatter = None
    extra, extra_stop = [], None

    def start(name, role, rank):
        out = os.path.join(work, name)
        logs[name] = os.path.join(work, name + ".log")
        with open(logs[name], "w") as log:
            procs[name] = sc.popen(common + ["--role", role, "--rank", str(rank), "--out-dir", out],
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
        base_sockets = socket_fds(server.pid)
        if base is None or base_sockets is None:
            fail("cannot read the server's /proc status or descriptors")
        mem.start()
        print(f"server 0 (pid {server.pid}) listening on 127.0.0.1:{port} after {time.time() - t0:.2f} s; "
              f"baseline VmRSS {base[0] / 1024:.1f} MiB, VmHWM {base[1] / 1024:.1f} MiB, {base_sockets} sockets")

        # The attacks, concurrently (12 connections: under the 16 pending, so none is evicted).
        results = []
        t_att = time.time()
        with concurrent.futures.ThreadPoolExecutor(len(ATTACKS)) as ex:
            for fut in [ex.submit(a, port, secret) for a in ATTACKS]:
                r = fut.result(timeout=60)
                results.extend(r if isinstance(r, list) else [r])
        print(f"attacks done in {time.time() - t_att:.1f} s")
        if server.poll() is not None:
            fail(f"server 0 exited ({server.returncode}) during the attacks:\n{log_of('server0')}")
        for r in results:
            if r["closed"] is None:
                fail(f"{r['name']}: the server did not close the connection within {r['seconds']:.1f} s")
            if r["deadline"] and not HANDSHAKE_S - 0.5 <= r["seconds"] <= HANDSHAKE_S + 5:
                fail(f"{r['name']}: closed after {r['seconds']:.2f} s, not at the {HANDSHAKE_S} s handshake deadline")
        attack_ports = {p_ for r in results for p_ in r["ports"]}
        if len(attack_ports) != ATTACK_CONNECTIONS:
            fail(f"expected {ATTACK_CONNECTIONS} attack connections, got {len(attack_ports)}")
        t_log = time.time()
        while True:
            text, lines = refusal_lines(logs["server0"])
            by_port = {}
            for _, p_, why in lines:
                by_port.setdefault(p_, []).append(why)
            missing = [r["name"] for r in results if not all(p_ in by_port for p_ in r["ports"])]
            if not missing or time.time() - t_log > 10:
                break
            time.sleep(0.1)
        if missing:
            fail(f"not reported as refused by the server: {missing}\n{text}")
        print(f"{'attack':28} {'closed':7} {'after':>7}  server's reason")
        for r in results:
            reasons = by_port[r["ports"][0]]
            if len(reasons) != 1 or not re.search(r["expect"], reasons[0]):
                fail(f"{r['name']}: refused with {reasons}, expected /{r['expect']}/")
            print(f"{r['name']:28} {r['closed']:7} {r['seconds']:6.2f}s  {reasons[0]}" +
                  (f"  [{r['note']}]" if r.get("note") else ""))
        if len(lines) != ATTACK_CONNECTIONS:
            fail(f"{len(lines)} refusal lines after the attacks, expected {ATTACK_CONNECTIONS}:\n{text}")

        # The flood, once every other attack's connection is gone.
        ports, opened_at, closed_at, t_last = flood(port)
        kept = MAX_PENDING
        evicted = FLOOD - kept
        late = [i for i in range(evicted) if closed_at[i] is None or closed_at[i] - t_last > 1.0]
        never = [i for i in range(FLOOD) if closed_at[i] is None]
        if never:
            fail(f"flood: {len(never)} connections never closed by the server (first: #{never[0]})")
        if late:
            fail(f"flood: {len(late)} of the oldest {evicted} connections not closed within 1 s of the last connect "
                 f"(first: #{late[0]}, after {closed_at[late[0]] - t_last:.2f} s)")
        held = [i for i in range(FLOOD) if closed_at[i] - t_last > 1.0]
        if held != list(range(evicted, FLOOD)):
            fail(f"flood: the connections held past 1 s are {held}, expected the newest {kept} "
                 f"(#{evicted}..#{FLOOD - 1})")
        held_for = [closed_at[i] - opened_at[i] for i in held]
        if not all(HANDSHAKE_S - 0.5 <= h <= HANDSHAKE_S + 5 for h in held_for):
            fail(f"flood: the held connections were closed after {min(held_for):.2f}-{max(held_for):.2f} s, "
                 f"not at the {HANDSHAKE_S} s handshake deadline")
        evict_secs = max(closed_at[i] - t_last for i in range(evicted))
        print(f"flood: {FLOOD} silent connections; the oldest {evicted} closed within {max(0, evict_secs):.2f} s "
              f"of the last connect, the newest {kept} held {min(held_for):.2f}-{max(held_for):.2f} s")

        # Still responsive: a handshake with the right secret completes at once (not registered).
        t_probe = time.time()
        s, my_hello, _, nonce, srank = authenticate(port, secret, rank=1)
        s.settimeout(5)
        sp = recv_exact(s, PROOF_BYTES)
        if sp != proof(secret, b"A", nonce, my_hello[8:40], srank, 1):
            fail("probe after the flood: the server's PROOF does not verify")
        probe_secs = time.time() - t_probe
        probe_port = s.getsockname()[1]
        s.close()
        print(f"after the flood a handshake with the right secret completed in {probe_secs * 1000:.0f} ms")
        if probe_secs > 2:
            fail(f"the server took {probe_secs:.1f} s to answer a handshake after the flood")

        # The log: the first LOGGED refusals, the flood's in the order opened; then nothing.
        time.sleep(0.3)
        text, lines = refusal_lines(logs["server0"])
        logged_flood = LOGGED - ATTACK_CONNECTIONS
        got_flood = [p_ for _, p_, _ in lines[ATTACK_CONNECTIONS:]]
        if len(lines) != LOGGED or got_flood != ports[:logged_flood]:
            fail(f"{len(lines)} refusal lines after the flood (expected {LOGGED}: the {ATTACK_CONNECTIONS} attacks, "
                 f"then flood connections #0..#{logged_flood - 1} in order); flood ports logged: {got_flood}, "
                 f"opened: {ports[:logged_flood]}")
        for line, _, why in lines[ATTACK_CONNECTIONS:]:
            if not why.startswith(EVICTED):
                fail(f"flood: a logged flood refusal is not an eviction: {line}")
        if not lines[-1][0].endswith(LIMIT_NOTICE) or any(LIMIT_NOTICE in ln for ln, _, _ in lines[:-1]):
            fail(f"the {LOGGED}th refusal line does not (alone) announce the rate limit: {lines[-1][0]}")
        if any(p_ == probe_port for _, p_, _ in lines):
            fail("the probe, refusal 113, was logged although only the first 50 are")
        print(f"{'flood':28} {'eof':7}          {logged_flood} x '{EVICTED}' logged in the order opened, the "
              f"{LOGGED}th ending '{LIMIT_NOTICE}'; the other {FLOOD - logged_flood} and the probe not logged")
        time.sleep(0.1)
        hwm_attacks = mem.hwm
        sockets_attacks = mem.take_max_sockets() - base_sockets
        print(f"server after the attacks: VmRSS {mem.rss / 1024:.1f} MiB, VmHWM {hwm_attacks / 1024:.1f} MiB "
              f"(baseline {base[1] / 1024:.1f} MiB, {mem.samples} samples), at most {base_sockets} + "
              f"{sockets_attacks} sockets")
        if hwm_attacks - base[1] > attack_growth_mib * 1024:
            fail(f"the server's peak memory grew by {(hwm_attacks - base[1]) / 1024:.1f} MiB during the attacks "
                 f"(limit {attack_growth_mib} MiB)")
        if sockets_attacks > MAX_PENDING + 1:
            fail(f"the server held {sockets_attacks} sockets beyond its baseline (limit {MAX_PENDING} pending + 1)")

        # The squatter holds the pending slots; the real workers must join beside it.
        squatter = Squatter(port, server.pid)
        squatter.start()
        mp = multiprocessing.get_context("spawn")
        extra_stop = mp.Event()
        for _ in range(args.squatter_processes):
            opened = mp.Value("q", 0)
            extra.append((mp.Process(target=squat_in_process, args=(port, server.pid, extra_stop, opened)), opened))
            extra[-1][0].start()
        t_sq = time.time()
        while squatter.closed < SQUAT_WARMUP or any(v.value < SQUATTERS for _, v in extra):
            if squatter.error or not squatter.is_alive():
                fail(f"squatter: {squatter.error or 'stopped'}")
            if time.time() - t_sq > 10:
                fail(f"squatter: only {squatter.closed} of its connections closed by the server in 10 s "
                     f"({squatter.opened} opened; squatter processes: {[v.value for _, v in extra]} opened): "
                     f"the server does not evict the oldest pending connection")
            time.sleep(0.005)
        print(f"squatter: {SQUATTERS} idle connections kept open; {squatter.closed} evicted in "
              f"{time.time() - t_sq:.2f} s before the workers start")
        start("worker0", "worker", 0)
        start("worker1", "worker", 1)
        listener_closed = None
        t_job = time.time()
        workers = [procs["worker0"], procs["worker1"]]
        next_listen_check = 0
        while any(p.poll() is None for p in procs.values()):
            if time.time() - t_job > 60:
                fail("the job did not finish within 60 s:\n" + "\n".join(f"--- {n}\n{log_of(n)}" for n in procs))
            if any(p.poll() not in (None, 0) for p in workers):
                fail("a worker failed beside the squatter:\n" + "\n".join(f"--- {n}\n{log_of(n)}" for n in procs))
            if all(p.poll() is not None for p in workers):
                squatter.stop.set()
                extra_stop.set()
            if listener_closed is None and time.time() >= next_listen_check and server.poll() is None:
                next_listen_check = time.time() + 0.05  # /proc/net/tcp is long while the squatter churns
                if not listening(port):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=2).close()
                        fail("a connection to the coordinator port succeeded after its listener closed")
                    except ConnectionRefusedError:
                        if server.poll() is None:
                            listener_closed = time.time() - t_job
            time.sleep(0.01)
        squatter.stop.set()
        squatter.join(10)
        extra_stop.set()
        for proc, _ in extra:
            proc.join(10)
        extra_opened = sum(v.value for _, v in extra)
        mem.stop = True
        mem.join(5)
        job_secs = time.time() - t_job
        sockets_job = mem.take_max_sockets() - base_sockets
        if squatter.is_alive() or any(proc.is_alive() or proc.exitcode for proc, _ in extra):
            fail("a squatter did not stop (or failed)")
        if squatter.error:
            fail(f"squatter: {squatter.error}")
        for n, p in procs.items():
            if p.returncode != 0:
                fail(f"{n} exited {p.returncode}:\n" + "\n".join(f"--- {m}\n{log_of(m)}" for m in procs))
        with open(os.path.join(work, "worker0", "summary.json")) as f:
            got_sha = json.load(f)["weights_sha256"]
        sq_secs = (squatter.listener_closed_at or squatter.t1) - squatter.t0  # it stops dialling when refused
        print(f"squatter: {squatter.opened} connections opened in {sq_secs:.2f} s "
              f"({squatter.opened / max(sq_secs, 1e-3):.0f}/s), {squatter.closed} closed by the server, at most "
              f"{squatter.max_open} open at once, {squatter.refused} refused"
              + (f", connect errors {squatter.connect_errors}" if squatter.connect_errors else "")
              + (f"; {len(extra)} squatter processes opened {extra_opened} more" if extra else ""))
        print(f"job finished {job_secs:.1f} s after the workers started beside the squatter; "
              f"worker 0 weights_sha256 {got_sha}")
        if got_sha != want_sha:
            fail(f"TCP job beside the squatter gave weights {got_sha}, mpirun gave {want_sha}")
        if squatter.listener_closed_at is not None:
            left = squatter.all_closed_at - squatter.listener_closed_at if squatter.all_closed_at else None
            print(f"squatter refused (listener closed) {squatter.listener_closed_at - t_job:.2f} s after the workers "
                  f"started; its sockets all closed by the server "
                  + (f"{left * 1000:.0f} ms later" if left is not None else "never"))
            if left is None or left > 1.0:
                fail(f"{squatter.open_at_end} squatter connections still open over 1 s after the listener closed; "
                     f"the kernel's view of each (local port: sockets with that port): {squatter.left_behind}")
        else:
            print("squatter not refused before the job ended (the listener closing was not observed by it)")
        if listener_closed is not None:
            print(f"listener closed (connection refused) {listener_closed:.2f} s after the workers started, "
                  f"server still running")
        else:
            print("listener closing not observed by the main loop (the job finished first)")
        if sockets_job > MAX_PENDING + 1 + (WORLD - 1):
            fail(f"the server held {sockets_job} sockets beyond its baseline beside the squatter "
                 f"(limit {MAX_PENDING} pending + 1 + {WORLD - 1} peers)")

        # The log stays bounded: 50 lines, then one per 1000 refusals.
        text, lines = refusal_lines(logs["server0"])
        unnamed = [ln for ln, p_, _ in lines if p_ is None]
        if unnamed:
            fail(f"refusal lines without an address: {unnamed[:3]}")
        connections = ATTACK_CONNECTIONS + FLOOD + 1 + squatter.opened + extra_opened
        limit = LOGGED + (connections + 200) // 1000 + 1
        counts = [int(m.group(1)) for ln, _, _ in lines[LOGGED:] for m in [SO_FAR.search(ln)] if m]
        if len(lines) > limit:
            fail(f"{len(lines)} refusal lines for {connections} connections opened (limit {limit})")
        if len(counts) != len(lines) - LOGGED or any(c % 1000 for c in counts) or counts != sorted(set(counts)):
            fail(f"refusal lines past the {LOGGED}th do not each carry a '(N refused so far)' count, N a multiple of "
                 f"1000: {[ln for ln, _, _ in lines[LOGGED:]][:5]}")
        print(f"server log: {len(lines)} refusal lines for {connections} connections opened by the attacks "
              f"(limit {limit}); counts past the {LOGGED}th: {counts}")
        print(f"server peak memory: VmHWM {mem.hwm / 1024:.1f} MiB at the last sample before exit "
              f"(baseline {base[1] / 1024:.1f} MiB, +{(mem.hwm - base[1]) / 1024:.1f} MiB; "
              f"limit +{total_growth_mib} MiB); at most {base_sockets} + {sockets_job} sockets beside the squatter")
        if mem.hwm - base[1] > total_growth_mib * 1024:
            fail(f"the server's peak memory grew by {(mem.hwm - base[1]) / 1024:.1f} MiB (limit {total_growth_mib} MiB)")
        total = time.time() - t_start
        print(f"total {total:.1f} s")
    finally:
        if squatter is not None:
            squatter.stop.set()
            squatter.join(5)
        if extra_stop is not None:
            extra_stop.set()
        for proc, _ in extra:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        for p in procs.values():
            if p.poll() is None:
                sc.kill_group(p)
                p.wait(30)


def main():
    ap = sc.job_arguments()
    ap.add_argument("--sanitized", action="store_true",
                    help="the binaries are built with AddressSanitizer: the memory limits include its quarantine")
    ap.add_argument("--squatter-processes", type=int, default=2,
                    help="run this many more squatters, each in its own process (default 2)")
    sc.main(abuse, "abuse", ap.parse_args())


if __name__ == "__main__":
    main()
