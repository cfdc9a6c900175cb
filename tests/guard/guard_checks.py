#!/usr/bin/python3
"""Checks that `shardps train` fails before training when it cannot train meaningfully, and that a
failed job names the real cause. Run by CTest (tests/guard/CMakeLists.txt), one check per test:

    guard_checks.py --shardps BIN --mpirun MPIRUN --source-dir SRC --work DIR CHECK

  bad_values         --lr inf, --lr nan, --set optimizer.epsilon=0 (adam), weight_decay nan in a
                     config file, beta2 1: each refused (exit 2) naming the key and the value, before
                     any output is written
  diverged           a config that is accepted but diverges (an MLP with learning rate 1e30): the
                     job exits non-zero naming the step, alone and under mpirun (1 server, 2
                     workers), and writes no summary
  too_big            --hidden 500000 under RLIMIT_AS 4 GB: a RESOURCE_EXHAUSTED error naming the
                     model, exit 1 (not an abort by an uncaught bad_alloc), before any training
  tcp_batch_mismatch one TCP worker with another --batch-size: refused at the job agreement, server
                     0 naming batch_size, both values and the ranks holding each
  tcp_limit_mismatch one TCP worker with another --train-limit: refused naming data.train_limit
                     and the training samples loaded
  mpi_batch_mismatch the same under mpirun (one rank started with another --batch-size, MPMD)
  tcp_world_mismatch --num-workers differing between the coordinator and its worker, both ways:
                     both fail naming both job sizes, without waiting for the setup timeout
                     (120 s here; the check's deadline is shorter)
  tcp_wrong_secret   a worker with another secret file (and this job's configuration, so its
                     HELLO carries the job tag): it stops at once, and the coordinator ends the
                     rendezvous at once (the refused address named, and that it is one of its own
                     job's processes), the worker that did join told why; again with the
                     misconfigured worker started first
  mpi_stopped_worker under mpirun a SIGSTOPped worker: the job fails naming the stopped worker
                     (worker ranks [2]) as the one the server waits for, not a silent server

Every process has a deadline; the exit code decides (0 PASS, 1 FAIL).
"""
import os
import re
import resource
import signal
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import shardps_check as sc  # noqa: E402
from shardps_check import check, fail  # noqa: E402

# A small, fast run: 2000 training samples (31 steps of 64), 200 test samples, one epoch.
SMALL = ["--train-limit", "2000", "--test-limit", "200", "--epochs", "1", "--progress", "never"]


class Runner:
    def __init__(self, a):
        self.shardps, self.mpirun, self.src, self.work = a.shardps, a.mpirun, a.source_dir, a.work
        self.count = 0

    def config(self, name):
        return os.path.join(self.src, "examples", "configs", name)

    def out(self, name):
        self.count += 1
        d = os.path.join(self.work, f"{self.count}_{name}")
        sc.fresh_dir(d)
        return d

    def train(self, args, np_=0, timeout=300, name="run", **kw):
        out = self.out(name)
        cmd = [self.shardps, "train", "--out-dir", os.path.join(out, "o")] + args
        if np_ > 0:
            cmd = sc.mpirun_cmd(self.mpirun, np_, cmd)
        return sc.run(cmd, timeout=timeout, expect_ok=False, **kw), os.path.join(out, "o")


def expect_refusal(p, needles, code=None, what=""):
    """A clean failure (non-zero exit, not a signal or an abort) whose output contains every needle."""
    shown = f"\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
    check(p.returncode != 0, f"{what}: exit 0, expected a refusal{shown}")
    check(p.returncode > 0 and p.returncode not in (134, 137, 139), f"{what}: exit {p.returncode}: killed or aborted, not a clean error{shown}")
    if code is not None:
        check(p.returncode == code, f"{what}: exit {p.returncode}, expected {code}{shown}")
    for n in needles:
        check(n in p.stdout + p.stderr, f"{what}: the output does not say {n!r}{shown}")


def check_bad_values(r):
    soft = r.config("fashion_softmax.prototxt")
    cases = [
        (["--lr", "inf"], ["optimizer.learning_rate", "inf", "not a finite number"]),
        (["--lr", "nan"], ["optimizer.learning_rate", "nan"]),
        (["--lr", "0"], ["optimizer.learning_rate", "must be a positive"]),
        (["--optimizer", "adam", "--set", "optimizer.epsilon=0"], ["optimizer.epsilon", "= 0", "must be positive"]),
        (["--optimizer", "adam", "--set", "optimizer.beta2=1"], ["optimizer.beta2", "= 1", "[0, 1)"]),
        (["--optimizer", "momentum", "--set", "optimizer.momentum=-0.5"], ["optimizer.momentum", "-0.5"]),
    ]
    for args, needles in cases:
        p, out = r.train(["--config", soft, "--servers", "0"] + SMALL + args, timeout=120, name="bad")
        expect_refusal(p, needles, code=2, what=" ".join(args))
        check(not os.path.exists(out), f"{' '.join(args)}: the output directory {out} was created: refused too late")
    # A NaN in the config file itself, and the same refusal under mpirun (before MPI starts a job).
    text = open(soft).read().replace('learning_rate: 0.001', 'learning_rate: 0.001\n  weight_decay: nan')
    check("weight_decay: nan" in text, "could not make the NaN config")
    path = os.path.join(r.work, "nan_decay.prototxt")
    with open(path, "w") as f:
        f.write(text)
    p, out = r.train(["--config", path, "--servers", "0"] + SMALL, timeout=120, name="nan_file")
    expect_refusal(p, ["optimizer.weight_decay", "nan"], code=2, what="weight_decay: nan in the config file")
    p, out = r.train(["--config", soft, "--servers", "1", "--lr", "inf"] + SMALL, np_=3, timeout=180, name="mpi_inf")
    expect_refusal(p, ["optimizer.learning_rate", "inf"], what="mpirun --lr inf")
    check(not os.path.exists(os.path.join(out, "summary.json")), "mpirun --lr inf wrote a summary")


def check_diverged(r):
    mlp = r.config("fashion_mlp.prototxt")
    args = ["--config", mlp, "--optimizer", "sgd", "--lr", "1e30"] + SMALL
    step = re.compile(r"step \d+")
    for np_, extra, what in ((0, ["--servers", "0"], "single process"), (3, ["--servers", "1"], "mpirun, 1 server 2 workers")):
        p, out = r.train(args + extra, np_=np_, timeout=300, name="diverged")
        expect_refusal(p, ["diverged", "learning rate 1e+30"], what=what)
        check(step.search(p.stderr), f"{what}: the error does not name the step\n{p.stderr}")
        check(not os.path.exists(os.path.join(out, "summary.json")), f"{what}: a diverged run wrote a summary (reported success)")
    # The same config with a sane learning rate trains: the check above is about divergence.
    p, out = r.train(["--config", mlp, "--optimizer", "sgd", "--lr", "0.05", "--servers", "0"] + SMALL, timeout=300, name="sane")
    check(p.returncode == 0, f"the same MLP with lr 0.05 failed: exit {p.returncode}\n{p.stderr}")


def check_too_big(r):
    limit = 4 << 30

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    mlp = r.config("fashion_mlp.prototxt")
    p, out = r.train(["--config", mlp, "--servers", "0", "--hidden", "500000"] + SMALL, timeout=300, name="too_big",
                     preexec_fn=cap)
    expect_refusal(p, ["RESOURCE_EXHAUSTED", "hidden 500000", "parameters"], code=1, what="--hidden 500000 under 4 GB")
    check(not os.path.exists(os.path.join(out, "metrics.csv")) or
          len(open(os.path.join(out, "metrics.csv")).read().splitlines()) <= 1,
          "--hidden 500000: training started before the refusal")
    # A model that fits under the same cap trains (the refusal is about size, not the cap).
    p, out = r.train(["--config", mlp, "--servers", "0", "--hidden", "64"] + SMALL, timeout=300, name="fits", preexec_fn=cap)
    check(p.returncode == 0, f"--hidden 64 under 4 GB failed: exit {p.returncode}\n{p.stderr}")


class TcpJob:
    """One TCP job, each process started on its own with its own flags; logs in DIR/NAME.err."""

    def __init__(self, r, name, setup_timeout=120):
        self.r, self.dir = r, r.out(name)
        self.port = sc.free_port()
        self.key = os.path.join(self.dir, "key")
        sc.run([r.shardps, "keygen", "--out", self.key], timeout=60, quiet=True)
        self.base = ["train", "--config", r.config("fashion_softmax.prototxt"), "--transport", "tcp",
                     "--coordinator", f"127.0.0.1:{self.port}", "--num-servers", "1",
                     "--setup-timeout", str(setup_timeout)] + SMALL
        self.procs = {}

    def start(self, name, role, rank, workers, extra=(), key=None):
        """extra: flags and values, replacing those of the base command line (a flag is given once)."""
        base = list(self.base)
        extra = list(extra)
        for i in range(0, len(extra), 2):
            if extra[i] in base:
                k = base.index(extra[i])
                del base[k:k + 2]
        cmd = [self.r.shardps] + base + ["--role", role, "--rank", str(rank), "--num-workers", str(workers),
                                              "--secret-file", key or self.key, "--out-dir",
                                              os.path.join(self.dir, name)] + list(extra)
        with open(os.path.join(self.dir, name + ".err"), "w") as e, open(os.path.join(self.dir, name + ".out"), "w") as o:
            self.procs[name] = sc.popen(cmd, env=sc.clean_env(), stdin=subprocess.DEVNULL, stdout=o, stderr=e)

    def wait(self, name, timeout):
        """Exit code of NAME; fails the check if it does not end within `timeout` s."""
        p = self.procs[name]
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            sc.kill_group(p)
            fail(f"{name} did not end within {timeout} s (setup timeout is 120 s: the failure was not caught early)"
                 f"\n{self.log(name)}")

    def log(self, name):
        return open(os.path.join(self.dir, name + ".err")).read()

    def all_fail(self, timeout):
        for name in self.procs:
            code = self.wait(name, timeout)
            check(code != 0, f"{name} exited 0 although the job could not run\n{self.log(name)}")
            check(code > 0, f"{name} was killed by signal {-code}\n{self.log(name)}")


def check_tcp_mismatch(r, flag, value, needles):
    j = TcpJob(r, "mismatch")
    j.start("server0", "server", 0, 2)
    j.start("worker0", "worker", 0, 2)
    j.start("worker1", "worker", 1, 2, extra=[flag, value])
    # Without the agreement's comparison the job hangs until a request timeout (120 s) blames a
    # server; the deadline below is shorter, and the message is what is checked.
    j.all_fail(100)
    log = j.log("server0")
    for n in needles:
        check(n in log, f"server 0 does not name {n!r}\n{log}")
    for name in ("worker0", "worker1"):
        check("another process failed to start" in j.log(name), f"{name} does not say why it stops\n{j.log(name)}")


def check_tcp_batch_mismatch(r):
    check_tcp_mismatch(r, "--batch-size", "32",
                       ["different configurations", "batch_size: 64 on rank 0 (server 0), rank 1 (worker 0); 32 on rank 2 (worker 1)"])


def check_tcp_limit_mismatch(r):
    check_tcp_mismatch(r, "--train-limit", "1000",
                       ["data.train_limit: 2000 on rank 0 (server 0), rank 1 (worker 0); 1000 on rank 2 (worker 1)",
                        "training samples loaded: 2000 on rank 1 (worker 0); 1000 on rank 2 (worker 1)"])


def check_mpi_batch_mismatch(r):
    # mpirun's MPMD form: ranks 0 and 1 (server 0, worker 0) with the config's batch size, rank 2
    # (worker 1) with another.
    out = os.path.join(r.out("mpi_mismatch"), "o")
    cmd = [r.shardps, "train", "--config", r.config("fashion_softmax.prototxt"), "--servers", "1", "--out-dir", out] + SMALL
    full = [r.mpirun, "--oversubscribe", "--bind-to", "none", "-np", "2"] + cmd + [":", "-np", "1"] + cmd + ["--batch-size", "32"]
    p = sc.run(full, timeout=100, expect_ok=False)
    expect_refusal(p, ["different configurations", "batch_size: 64 on rank 0 (server 0), rank 1 (worker 0); 32 on rank 2 (worker 1)"],
                   what="mpirun with one rank's --batch-size 32")
    check(not os.path.exists(os.path.join(out, "summary.json")), "the mismatched mpirun job wrote a summary")


def check_tcp_world_mismatch(r):
    # One worker each, so that no correctly started process dials after the coordinator has gone
    # (such a latecomer could only wait for it until its own setup timeout).
    for name, server_workers, worker_workers, want in (
            ("world_bigger", 1, 2, "was started for a job of 3 processes, rank 0 for 2"),
            ("world_smaller", 2, 1, "was started for a job of 2 processes, rank 0 for 3")):
        j = TcpJob(r, name)
        j.start("server0", "server", 0, server_workers)
        j.start("worker0", "worker", 0, worker_workers)
        j.all_fail(100)  # the setup timeout is 120 s: both must fail at the mismatch, not then
        for p in ("server0", "worker0"):
            check(want in j.log(p), f"{name}: {p} does not name both job sizes ({want!r})\n{j.log(p)}")


SAME_JOB = "although it was started with this job's configuration"


def check_tcp_wrong_secret(r):
    j = TcpJob(r, "wrong_secret")
    other = os.path.join(j.dir, "other_key")
    sc.run([r.shardps, "keygen", "--out", other], timeout=60, quiet=True)
    j.start("server0", "server", 0, 2)
    j.start("worker0", "worker", 0, 2)
    j.start("worker1", "worker", 1, 2, key=other)
    code = j.wait("worker1", 60)
    check(code > 0, f"the worker with the wrong secret exited {code}\n{j.log('worker1')}")
    check("rejected our proof" in j.log("worker1"), f"the worker with the wrong secret does not say why\n{j.log('worker1')}")
    j.all_fail(100)  # setup timeout 120 s: the coordinator must end the rendezvous well before it
    log = j.log("server0")
    refused = re.search(r"a connection from (127\.0\.0\.1:\d+) claiming rank 2 was refused", log)
    check(refused, f"server 0 does not name the refused connection\n{log}")
    check("refused a connection from " + refused.group(1) in log, f"the refused address is not the one logged at refusal\n{log}")
    check("did not verify" in log and "--secret-file" in log, f"server 0 does not say the proof was wrong\n{log}")
    check("ended the rendezvous" in j.log("worker0") and "claiming rank 2" in j.log("worker0"),
          f"worker 0 (which joined) is not told why the job ends\n{j.log('worker0')}")
    # Its HELLO carried the job tag, so the coordinator ended the rendezvous at once rather than
    # after the grace period it gives a stranger's wrong proof (whose message lacks this clause).
    check(SAME_JOB in log, f"server 0 did not recognise the refused process as one of its own job's\n{log}")

    # The misconfigured worker first, before any process that knows the secret joined: a
    # stranger's wrong proof would wait out half the setup timeout here (60 s); this one ends the
    # rendezvous at once.
    j = TcpJob(r, "wrong_secret_first")
    other = os.path.join(j.dir, "other_key")
    sc.run([r.shardps, "keygen", "--out", other], timeout=60, quiet=True)
    j.start("server0", "server", 0, 1)
    j.start("worker0", "worker", 0, 1, key=other)
    j.all_fail(100)
    check("rejected our proof" in j.log("worker0"), f"the worker with the wrong secret does not say why\n{j.log('worker0')}")
    check(SAME_JOB in j.log("server0") and "claiming rank 1" in j.log("server0"),
          f"server 0 does not end the rendezvous naming the refused process of its own job\n{j.log('server0')}")


def ompi_rank(pid):
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    for kv in env:
        if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
            return int(kv.split(b"=", 1)[1])
    return None


def check_mpi_stopped_worker(r):
    d = r.out("stopped")
    out = os.path.join(d, "o")
    metrics = os.path.join(out, "metrics.csv")
    # A long run (15 epochs of all 60000 samples); a 4 s request timeout, rows every 10 steps.
    cmd = sc.mpirun_cmd(r.mpirun, 3, [r.shardps, "train", "--config", r.config("fashion_softmax.prototxt"),
                                      "--servers", "1", "--out-dir", out, "--progress", "never",
                                      "--set", "timeout_ms=4000", "--set", "log_every_steps=10"])
    with open(os.path.join(d, "job.out"), "w") as o, open(os.path.join(d, "job.err"), "w") as e:
        job = sc.popen(cmd, stdin=subprocess.DEVNULL, stdout=o, stderr=e)
    # Training is under way once the lead worker logged a row.
    sc.wait_until(lambda: os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 2 or job.poll() is not None,
                  240, "the first metrics row")
    check(job.poll() is None, f"the job ended before it could be stopped\n{open(os.path.join(d, 'job.err')).read()}")
    victim = None
    for pid in sc.procs_with(out):  # mpirun and the ranks have OUT in their command line
        if ompi_rank(pid) == 2:
            victim = pid
    check(victim, "no process of rank 2 (worker 1) found")
    os.kill(victim, signal.SIGSTOP)
    try:
        code = job.wait(timeout=120)
    except subprocess.TimeoutExpired:
        fail("the job did not end within 120 s of stopping worker 1 (request timeout 4 s)")
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except OSError:
            pass
    so = open(os.path.join(d, "job.out")).read()
    se = open(os.path.join(d, "job.err")).read()
    shown = f"\n--- stdout\n{so}\n--- stderr\n{se}"
    check(code != 0, f"the job exited 0 with a stopped worker{shown}")
    check("missing pushes from worker ranks [2]" in se, f"the failure does not name the stopped worker (rank 2){shown}")
    check("no reply within" not in se, f"a worker gave up on the server before the server named the stopped worker{shown}")


CHECKS = {
    "bad_values": check_bad_values,
    "diverged": check_diverged,
    "too_big": check_too_big,
    "tcp_batch_mismatch": check_tcp_batch_mismatch,
    "tcp_limit_mismatch": check_tcp_limit_mismatch,
    "tcp_world_mismatch": check_tcp_world_mismatch,
    "mpi_batch_mismatch": check_mpi_batch_mismatch,
    "tcp_wrong_secret": check_tcp_wrong_secret,
    "mpi_stopped_worker": check_mpi_stopped_worker,
}


def main():
    ap = sc.job_arguments()
    ap.add_argument("check", choices=sorted(CHECKS))
    a = ap.parse_args()

    sc.need_fashion()
    sc.fresh_dir(a.work)
    CHECKS[a.check](Runner(a))


if __name__ == "__main__":
    sc.main(main, name="guard_" + sys.argv[-1])
