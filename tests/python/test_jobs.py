"""The shardps Python package's jobs (CTest label `python`; tests/python/CMakeLists.txt runs each
test here as one CTest test, with PYTHONPATH at the build tree's python/ directory):
rank_push_pull.py under mpirun (1 server + 2 workers) and over TCP (3 processes started here on
127.0.0.1, a free port and a mode-600 secret), a server killed over TCP while a push_pull is
pending, and init()'s argument checks. Every process is bounded by a timeout and killed with its
process group whatever happens (tests/pylib/shardps_check.py)."""
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
import shardps_check as sc  # noqa: E402

import shardps  # noqa: E402

PY = "/usr/bin/python3"
JOB_TIMEOUT = 240  # seconds for a whole job


@pytest.fixture(autouse=True)
def _stop_processes():
    yield
    sc.stop_all()


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "job.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    return str(path)


def job_env(**extra):
    env = sc.clean_env(**extra)
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    env.pop("OMPI_COMM_WORLD_SIZE", None)
    return env


def tcp_env(port, secret, role, rank):
    return job_env(SHARDPS_TRANSPORT="tcp", SHARDPS_COORDINATOR=f"127.0.0.1:{port}", SHARDPS_NUM_SERVERS="1",
                   SHARDPS_NUM_WORKERS="2", SHARDPS_ROLE=role, SHARDPS_RANK=str(rank), SHARDPS_SECRET_FILE=secret,
                   SHARDPS_PEER_TIMEOUT="10")


PYTEST = [PY, "-m", "pytest", "-q", "-x", "--color=no", "-p", "no:cacheprovider", os.path.join(HERE, "rank_push_pull.py")]
ROLES = [("server", 0), ("worker", 0), ("worker", 1)]


def run_mpi_job(ranks, argv, what, env=None, timeout=JOB_TIMEOUT):
    """`argv` under mpirun with `ranks` ranks, within `timeout` s; asserts exit 0; returns stdout."""
    t0 = time.time()
    p = sc.popen(sc.mpirun_cmd("mpirun", ranks, argv), env=env or job_env(), stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True)
    so, se = sc.communicate(p, timeout, what)
    print(f"--- {what}: {time.time() - t0:.1f} s, exit {p.returncode}\n{so}", flush=True)
    assert p.returncode == 0, f"{what}: mpirun exited {p.returncode}\n--- stdout\n{so}\n--- stderr\n{se}"
    return so


def run_tcp_job(argv_of, env_of, what, roles=ROLES, timeout=JOB_TIMEOUT):
    """One process per (role, rank) of `roles` over TCP on a free port of 127.0.0.1: argv_of(role,
    rank) with the environment env_of(role, rank, port); one deadline for all. Asserts every exit
    status is 0; returns each process's stdout by "role rank"."""
    t0 = time.time()
    port = sc.free_port()
    procs = {f"{role} {rank}": sc.popen(argv_of(role, rank), env=env_of(role, rank, port), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
             for role, rank in roles}
    deadline = time.time() + timeout
    outputs = {name: (p, *sc.communicate(p, max(1, deadline - time.time()), f"{what}: {name}")) for name, p in procs.items()}
    print(f"--- {what}: {time.time() - t0:.1f} s")
    for name, (p, so, se) in outputs.items():
        assert p.returncode == 0, f"{what}: {name} exited {p.returncode}\n--- stdout\n{so}\n--- stderr\n{se}"
    return {name: so for name, (_, so, _) in outputs.items()}


def assert_passed(text):
    """Each of the 3 processes' pytest summary: the server passes 2 tests, each worker all 11."""
    passed = sorted(int(n) for n in re.findall(r"(\d+) passed", text))
    assert passed == [2, 11, 11], f"pytest summaries {passed}, expected [2, 11, 11]:\n{text}"


@pytest.mark.skipif(not shardps._core.with_mpi, reason="built without MPI (SHARDPS_WITH_MPI=OFF)")
def test_mpi_job():
    assert_passed(run_mpi_job(3, PYTEST, "mpirun job"))


def test_tcp_job(secret):
    outputs = run_tcp_job(lambda role, rank: PYTEST, lambda role, rank, port: tcp_env(port, secret, role, rank), "tcp job")
    print("\n".join(f"--- {n}\n{so}" for n, so in outputs.items()))
    assert_passed("".join(outputs.values()))


def _lines(p):
    """A queue fed with p's stdout lines by a thread (None at EOF), so reads can have deadlines."""
    q = queue.Queue()

    def pump():
        for line in p.stdout:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _expect_line(q, prefix, timeout, seen):
    deadline = time.time() + timeout
    while True:
        try:
            line = q.get(timeout=max(0.01, deadline - time.time()))
        except queue.Empty:
            pytest.fail(f"no line starting with {prefix!r} within {timeout} s; got {seen}")
        if line is None:
            pytest.fail(f"output ended before a line starting with {prefix!r}; got {seen}")
        seen.append(line)
        if line.startswith(prefix):
            return line


def test_lost_server_fails_pending_push_pull(secret):
    port = sc.free_port()
    script = os.path.join(HERE, "lost_server_job.py")
    procs = {}
    for role, rank in ROLES:
        procs[(role, rank)] = sc.popen([PY, script], env=tcp_env(port, secret, role, rank), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server, w0, w1 = (procs[r] for r in ROLES)
    q0, q1 = _lines(w0), _lines(w1)
    seen0, seen1 = [], []
    _expect_line(q0, "PENDING", 60, seen0)
    _expect_line(q1, "READY", 60, seen1)
    time.sleep(0.5)  # the push is at the server, which holds it for worker 1's
    t_kill = time.monotonic()
    sc.kill_group(server, signal.SIGKILL)
    line = _expect_line(q0, ("ERROR", "TIMEOUT", "UNEXPECTED"), 20, seen0)
    elapsed = time.monotonic() - t_kill
    assert line.startswith("ERROR "), f"worker 0: {line}"
    assert elapsed < 10, f"worker 0 saw the lost server only after {elapsed:.1f} s: {line}"
    assert "rank 0" in line, line
    w1.stdin.write("go\n")
    w1.stdin.flush()
    line1 = _expect_line(q1, ("ERROR", "TIMEOUT", "UNEXPECTED", "NO-GO"), 20, seen1)
    assert line1.startswith("ERROR "), f"worker 1: {line1}"
    assert float(line1.split()[1]) < 5, line1
    for name, p in (("worker 0", w0), ("worker 1", w1)):
        try:
            code = p.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not exit within 30 s of the failure")
        assert code == 0, f"{name} exited {code}; stderr:\n{p.stderr.read()}"
    print("worker 0:", "".join(seen0), "worker 1:", "".join(seen1))


def test_init_argument_checks():
    with pytest.raises(shardps.Error, match=r"declare\('x'\): shardps is not initialised"):
        shardps.declare("x", shape=(3,))
    with pytest.raises(shardps.Error, match=r"rank: shardps is not initialised"):
        shardps.rank()
    with pytest.raises(ValueError, match=r"tcp needs role='server' or 'worker'"):
        shardps.init(coordinator="127.0.0.1:1", role="boss", rank=0, num_workers=1, insecure=True)
    with pytest.raises(ValueError, match=r"rank 2 outside 0..1 for a worker"):
        shardps.init(coordinator="127.0.0.1:1", role="worker", rank=2, num_workers=2, insecure=True)
    with pytest.raises(ValueError, match=r"secret_file"):
        shardps.init(transport="tcp", coordinator="127.0.0.1:1", role="worker", rank=0, num_workers=2)
    with pytest.raises(ValueError, match=r"transport must be 'mpi' or 'tcp'"):
        shardps.init(transport="udp")
    with pytest.raises(TypeError, match=r"shape must be a tuple of ints"):
        shardps.declare("x", shape=None)
