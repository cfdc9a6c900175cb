"""Shared helpers of the Python check scripts that CTest runs (tests/*/*.py).

A check script imports this module (its directory is added to sys.path by the script) and ends with

    if __name__ == "__main__":
        shardps_check.main(run_checks, name="export")

Contract with CTest: the script's exit code decides. `main` runs the function, prints
"PASS <name>" and exits 0 when it returns; any failure exits 1 after printing "FAIL: <what>":
a failed `check`/`fail` (CheckFailed), a subprocess that did not end within its deadline, an
uncaught exception (its traceback is printed too), or a SystemExit with a non-zero code. Whatever
the outcome, every process started through `popen` (each in its own process group) is killed first.

Every wait here has a deadline: `run` and `popen(...).wait` take a timeout, `wait_until` polls a
condition for at most `timeout` seconds.
"""
import glob
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback

FASHION = "/usr/share/datasets/fashion-mnist"

# What mpirun needs when the suite runs as root (CI does), and oversubscription of 2-core machines.
ROOT_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                OMPI_MCA_rmaps_base_oversubscribe="1")


def clean_env(**extra):
    """ROOT_ENV without SHARDPS_* and SLURM_* variables (a launch then comes from flags only)."""
    env = {k: v for k, v in ROOT_ENV.items() if not k.startswith(("SHARDPS_", "SLURM_"))}
    env.update(extra)
    return env


class CheckFailed(Exception):
    """A property a check asserts does not hold."""


def fail(msg):
    raise CheckFailed(msg)


def check(cond, msg):
    """Raises CheckFailed(msg) unless cond holds; msg may be a callable (built only on failure)."""
    if not cond:
        raise CheckFailed(msg() if callable(msg) else msg)


# ---- processes ----

_started = []  # every Popen made by popen(), killed (with its process group) by stop_all()


def kill_group(p, sig=signal.SIGKILL):
    """Sends `sig` to the process group of `p` (started by popen: its own group), then to `p`."""
    if p.poll() is not None:
        return
    for target in (lambda: os.killpg(p.pid, sig), lambda: p.send_signal(sig)):
        try:
            target()
        except (ProcessLookupError, PermissionError, OSError):
            pass


def popen(cmd, env=None, new_group=True, **kw):
    """subprocess.Popen in its own process group (so its children can be killed with it); tracked
    so that `stop_all` (run by `main` at the end, whatever happened) kills it."""
    p = subprocess.Popen(cmd, env=ROOT_ENV if env is None else env, start_new_session=new_group, **kw)
    _started.append(p)
    return p


def stop_all():
    """Kills (SIGKILL, then SIGCONT for stopped ones) every process group started by popen."""
    for p in _started:
        if p.poll() is None:
            kill_group(p, signal.SIGKILL)
            kill_group(p, signal.SIGCONT)
    for p in _started:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            print(f"warning: pid {p.pid} did not end 10 s after SIGKILL", flush=True)
    # Grandchildren left in a group whose leader has already exited.
    for p in _started:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    _started.clear()


def communicate(p, timeout, what=None):
    """p.communicate with a deadline: on expiry the process group is killed and the check fails."""
    try:
        return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        so, se = p.communicate(timeout=30)
        fail(f"{what or p.args} did not end within {timeout} s\n--- stdout\n{so}\n--- stderr\n{se}")


# The first line of a sanitizer report (builds of scripts/sanitize.sh): a process that printed one
# fails the check even when its failure was expected.
SANITIZER_REPORT = re.compile(r"ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer|"
                              r"SUMMARY: [A-Za-z]+Sanitizer|: runtime error: ")


def run(cmd, timeout=600, expect_ok=True, env=None, quiet=False, **kw):
    """Runs `cmd` to completion (output captured as text) with a deadline; prints the command, its
    time and exit code. expect_ok: a non-zero exit fails the check (with the output shown)."""
    cmd = [str(c) for c in cmd]
    t0 = time.time()
    p = popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    so, se = communicate(p, timeout, " ".join(cmd))
    cp = subprocess.CompletedProcess(cmd, p.returncode, so, se)
    if not quiet:
        print(f"$ {' '.join(cmd)}  ({time.time() - t0:.1f} s, exit {p.returncode})", flush=True)
    if SANITIZER_REPORT.search(se) or SANITIZER_REPORT.search(so):
        fail(f"sanitizer report from {' '.join(cmd)} (exit {p.returncode}):\n--- stdout\n{so}\n--- stderr\n{se}")
    if expect_ok and p.returncode != 0:
        fail(f"command failed with exit {p.returncode}: {' '.join(cmd)}\n--- stdout\n{so}\n--- stderr\n{se}")
    return cp


def wait_until(pred, timeout, what, poll=0.05):
    """Polls pred() until it returns a true value (returned) or `timeout` seconds pass (fails,
    naming `what`)."""
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.time() >= deadline:
            fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def mpirun_cmd(mpirun, np_, cmd):
    return [mpirun, "--oversubscribe", "--bind-to", "none", "-np", str(np_)] + list(cmd)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procs_with(marker):
    """Pids of the processes (other than this one) whose command line contains `marker`."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def children_of(ppid):
    """Pids of the direct children of `ppid`."""
    kids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                        kids.append(int(pid))
            except (OSError, ValueError, IndexError):
                pass
    return kids


# ---- files ----

def fresh_dir(path):
    """An empty directory at `path` (whatever was there is removed first: a directory or a file)."""
    import shutil
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
    os.makedirs(path)
    return path


def read_json(path, what=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read {what or 'JSON'} {path}: {e}")


def read_summary(out_dir, show=True):
    s = read_json(os.path.join(out_dir, "summary.json"), "the run summary")
    if show:
        print("  ", json.dumps(s), flush=True)
    return s


def read_metrics(path):
    """A metrics file of JSON lines, as a list of dicts."""
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    except (OSError, ValueError) as e:
        fail(f"cannot read metrics {path}: {e}")


def read_safetensors_f32(path):
    """The F32 tensors of a safetensors file (numpy arrays by name); layout checks are left to
    tests/train/export_check.py."""
    import numpy as np
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(meta["shape"])
    return out


def ckpt_versions(shardps, d, timeout=60):
    """`shardps ckpt list D --json` (a list of dicts with version, step, valid, ...); [] when D
    does not exist."""
    if not os.path.isdir(d):
        return []
    p = run([shardps, "ckpt", "list", d, "--json"], timeout=timeout, quiet=True)
    try:
        return json.loads(p.stdout or "[]")
    except ValueError:
        fail(f"ckpt list {d} --json printed no JSON:\n{p.stdout}\n{p.stderr}")


def committed_manifests(d):
    return glob.glob(os.path.join(d, "v*", "MANIFEST"))


def need_fashion():
    check(os.path.exists(os.path.join(FASHION, "train-images-idx3-ubyte.gz")),
          f"Fashion-MNIST not found under {FASHION}; scripts/setup.sh installs dataset-fashion-mnist")


# ---- the entry point ----

def job_arguments(**mpirun):
    """The arguments every check script takes from CMake: --shardps, --mpirun, --source-dir and
    --work (paths made absolute). A script adds its own, then calls parse_args()."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def parse_args(self, *a, **kw):
            args = super().parse_args(*a, **kw)
            args.shardps = os.path.abspath(args.shardps)
            args.source_dir = os.path.abspath(args.source_dir)
            args.work = os.path.abspath(args.work)
            return args

    ap = Parser()
    ap.add_argument("--shardps", required=True)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--work", required=True)
    return ap


def main(fn, name, *args, **kwargs):
    """Runs fn(*args, **kwargs) and exits: 0 with "PASS <name>" when it returns, 1 with
    "FAIL: ..." on any failure. Every process started by popen is killed before the exit."""
    sys.stdout.reconfigure(line_buffering=True)  # progress survives a CTest timeout
    t0 = time.time()
    code, verdict = 1, None
    try:
        fn(*args, **kwargs)
        code, verdict = 0, f"PASS {name} ({time.time() - t0:.1f} s)"
    except CheckFailed as e:
        verdict = f"FAIL: {name}: {e}"
    except SystemExit as e:
        if e.code in (0, None):
            code, verdict = 0, f"PASS {name} ({time.time() - t0:.1f} s)"
        else:
            verdict = f"FAIL: {name}: exit {e.code}"
    except BaseException as e:  # noqa: B902 - an uncaught error (or Ctrl-C) is a failure
        traceback.print_exc()
        verdict = f"FAIL: {name}: uncaught {type(e).__name__}: {e}"
    finally:
        try:
            stop_all()
        except Exception as e:  # a failed cleanup must not hide the verdict
            print(f"warning: cleanup: {e}", flush=True)
    print(verdict, flush=True)
    sys.stdout.flush()
    sys.exit(code)
