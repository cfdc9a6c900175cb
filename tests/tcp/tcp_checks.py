#!/usr/bin/python3
"""Process-level checks of `shardps train --transport tcp`, run by CTest (tests/tcp/CMakeLists.txt).

    tcp_checks.py --shardps build/bin/shardps --mpirun mpirun --source-dir SRC --work DIR CHECK

Each CHECK starts real jobs of separately started processes on 127.0.0.1 (through
scripts/launch_local.sh, or one subprocess per process when a check kills or stops one of them),
reads their summary JSON and stderr, and exits non-zero with a message when the property does not
hold (tests/pylib/shardps_check.py). Every wait is bounded, and every process a check started is killed when it ends.
"""
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import shardps_check as sc  # noqa: E402
from shardps_check import fail, free_port, procs_with  # noqa: E402,F401

ENV = sc.clean_env()  # the launch must come from the flags below only (no SHARDPS_*/SLURM_* variables)
PEER_TIMEOUT = 2      # seconds, in the jobs where a process is killed or stopped
HANG = PEER_TIMEOUT + 30  # seconds a process may take to end after a peer was lost: a hang guard


def kill_leftovers(marker):
    """Kills any process whose command line names this check's directory (e.g. one a launcher
    started in another process group)."""
    for pid in procs_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Runner:
    def __init__(self, shardps, work, mpirun, source_dir):
        self.shardps, self.work, self.mpirun, self.src = shardps, work, mpirun, source_dir
        self.launch = os.path.join(source_dir, "scripts", "launch_local.sh")
        # In every path of every process this check starts: finds leftovers (and no one else's).
        self.marker = os.path.join(work, f"jobs-{os.getpid()}")
        for old in glob.glob(os.path.join(work, "jobs-*")):
            shutil.rmtree(old, ignore_errors=True)
        os.makedirs(self.marker)
        self.count = 0

    def config(self, name):
        return os.path.join(self.src, "examples", "configs", name)

    def fresh(self, name):
        self.count += 1
        d = os.path.join(self.marker, f"{self.count:02d}-{name}")
        os.makedirs(d)
        return d

    def keygen(self, d):
        key = os.path.join(d, "key")
        sc.run([self.shardps, "keygen", "--out", key], timeout=30, env=ENV, quiet=True)
        return key

    def mpi(self, servers, workers, args, timeout=300):
        """An mpirun job of `servers` + `workers` ranks; returns its summary."""
        out = self.fresh("mpi")
        cmd = sc.mpirun_cmd(self.mpirun, servers + workers, [self.shardps, "train", "--servers", str(servers),
                                                             "--out-dir", out, "--progress", "never"] + args)
        sc.run(cmd, timeout=timeout, env=ENV)
        return read_summary(out)

    def launch_local(self, servers, workers, args, name="launch", timeout=300, bin_=None, opts=(), env=None):
        """A job through scripts/launch_local.sh; returns (summary or None, completed process, dir)."""
        d = self.fresh(name)
        out = os.path.join(d, "out")
        cmd = ["bash", self.launch, "-s", str(servers), "-w", str(workers), "-k", self.keygen(d),
               "-o", os.path.join(d, "logs"), *opts, "--", bin_ or self.shardps, "train", "--out-dir", out,
               "--progress", "never"] + args
        p = sc.run(cmd, timeout=timeout, env=env or ENV, expect_ok=False)
        summary = read_summary(out) if p.returncode == 0 else None
        return summary, p, d

    def start(self, servers, workers, args, name, peer_timeout=PEER_TIMEOUT):
        """A TCP job started directly, one subprocess per process (server ranks first)."""
        return TcpJob(self, self.fresh(name), servers, workers, args, peer_timeout)


def read_summary(out):
    return sc.read_summary(out)


class TcpJob:
    def __init__(self, r, d, servers, workers, args, peer_timeout):
        self.dir, self.servers, self.workers = d, servers, workers
        key, port = r.keygen(d), free_port()
        self.procs = {}  # "server 0" / "worker 1" -> Popen
        for role, count in (("server", servers), ("worker", workers)):
            for i in range(count):
                cmd = [r.shardps, "train"] + args + [
                    "--progress", "never", "--transport", "tcp", "--coordinator", f"127.0.0.1:{port}",
                    "--role", role, "--rank", str(i), "--num-servers", str(servers), "--num-workers", str(workers),
                    "--secret-file", key, "--peer-timeout", str(peer_timeout), "--setup-timeout", "60"]
                if role == "worker":
                    cmd += ["--out-dir", os.path.join(d, f"out-{i}")]
                with open(self.path(f"{role} {i}", "out"), "w") as o, open(self.path(f"{role} {i}", "err"), "w") as e:
                    p = sc.popen(cmd, env=ENV, stdin=subprocess.DEVNULL, stdout=o, stderr=e)
                self.procs[f"{role} {i}"] = p
        print(f"started {servers} server(s) + {workers} worker(s) at 127.0.0.1:{port} in {d}: "
              f"{' '.join(args)}")

    def path(self, name, ext):
        return os.path.join(self.dir, f"{name.replace(' ', '-')}.{ext}")

    def stderr(self, name):
        with open(self.path(name, "err")) as f:
            return f.read()

    def describe(self, name):
        """The rank as the program names it: "rank 2 (worker 1)"."""
        role, i = name.split()
        return f"rank {int(i) + (self.servers if role == 'worker' else 0)} ({name})"

    def wait_ok(self, timeout=300):
        deadline = time.time() + timeout
        for name, p in self.procs.items():
            try:
                rc = p.wait(max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                fail(f"{name} did not finish within {timeout} s")
            if rc != 0:
                fail(f"{name} exited with {rc}:\n{self.stderr(name)}")
        return read_summary(os.path.join(self.dir, "out-0"))

    def wait_for_checkpoint(self, ck, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if glob.glob(os.path.join(ck, "v*", "MANIFEST")):
                return
            for name, p in self.procs.items():
                if p.poll() is not None:
                    fail(f"{name} exited ({p.returncode}) before the first checkpoint:\n{self.stderr(name)}")
            time.sleep(0.02)
        fail(f"no checkpoint in {ck} after {timeout} s")

    def survivors_fail(self, victim, how, needles):
        """Every process but `victim` exits non-zero within HANG s; returns {name: stderr}."""
        t0 = time.time()
        errs = {}
        for name, p in self.procs.items():
            if name == victim:
                continue
            try:
                rc = p.wait(max(1, t0 + HANG - time.time()))
            except subprocess.TimeoutExpired:
                fail(f"{name} still running {HANG} s after {victim} was {how}")
            err = errs[name] = self.stderr(name)
            print(f"  {name}: exit {rc} after {time.time() - t0:.1f} s: "
                  f"{[l for l in err.splitlines() if 'shardps train:' in l][-1:]}")
            if rc == 0:
                fail(f"{name} exited 0 after {victim} was {how}")
            for needle in needles:
                if needle not in err:
                    fail(f"{name}'s stderr does not say {needle!r} after {victim} was {how}:\n{err}")
        return errs


def check_where_to_resume(errs, ck):
    """The failure line's "last completed step N; newest checkpoint DIR/vX (step M)": consistent."""
    for name, err in errs.items():
        m = re.search(r"last completed step (\d+); newest checkpoint (\S+) \(step (\d+)\): resume with --resume (\S+)",
                      err)
        if not m:
            fail(f"{name}: no 'last completed step N; newest checkpoint DIR (step M): resume with --resume DIR':\n{err}")
        done, path, ck_step, resume = int(m[1]), m[2], int(m[3]), m[4]
        if os.path.dirname(path) != ck or resume != ck:
            fail(f"{name}: newest checkpoint {path}, resume with {resume}: not in {ck}")
        # A version of step M exists, so every process finished step M - 1 at least.
        if done < ck_step - 1:
            fail(f"{name}: says last completed step {done}, but checkpoint {path} is of step {ck_step}:\n{err}")


SMALL_SOFTMAX = ["--epochs", "1", "--test-limit", "2000"]
SMALL_MLP = ["--hidden", "256", "--epochs", "1", "--train-limit", "8192", "--test-limit", "1000"]
SMALL_MOMENTUM = ["--hidden", "64,32", "--epochs", "2", "--train-limit", "4096", "--test-limit", "1000", "--optimizer",
                  "momentum", "--lr", "0.05"]
# Long enough to be killed after the first checkpoint (step 32 of 768), short enough to rerun.
KILL_MLP = ["--hidden", "128", "--epochs", "3", "--train-limit", "16384", "--test-limit", "1000", "--batch-size", "64"]


def check_matches_mpi(r, args):
    """Same config and seed: the same weights over TCP (launch_local.sh) as under mpirun, also with a
    lossy codec."""
    for servers, workers, cfg, extra in ((1, 2, "fashion_softmax.prototxt", SMALL_SOFTMAX),
                                         (2, 1, "fashion_mlp.prototxt", SMALL_MLP),
                                         (2, 2, "fashion_mlp.prototxt", SMALL_MOMENTUM),
                                         # a lossy codec: its random draws, the servers' replicas and
                                         # the workers' residuals do not depend on the transport
                                         (2, 2, "fashion_mlp.prototxt", SMALL_MOMENTUM + ["--codec", "randomk",
                                                                                          "--codec-density", "0.1"])):
        a = ["--config", r.config(cfg)] + extra
        tcp, p, _ = r.launch_local(servers, workers, a)
        if p.returncode != 0:
            fail(f"TCP job failed:\n{p.stdout}\n{p.stderr}")
        mpi = r.mpi(servers, workers, a)
        if tcp["weights_sha256"] != mpi["weights_sha256"]:
            fail(f"{cfg}, {servers} server(s) + {workers} worker(s): TCP and MPI weights differ")
        print(f"  {cfg}, {servers} server(s) + {workers} worker(s): identical weights ({tcp['weights_sha256'][:16]})")


def check_convergence(r, args):
    """A config trained over TCP (1 server + 2 workers) reaches the accuracy the convergence tests ask
    of it under mpirun (softmax 0.84, MLP 0.88)."""
    s, p, _ = r.launch_local(1, 2, ["--config", r.config(args.config)])
    if p.returncode != 0:
        fail(f"TCP job failed:\n{p.stdout}\n{p.stderr}")
    print(f"test accuracy {s['test_accuracy']:.4f} (need >= {args.min_accuracy}), wall {s['wall_seconds']:.1f} s")
    if s["test_accuracy"] < args.min_accuracy:
        fail(f"accuracy {s['test_accuracy']} below {args.min_accuracy}")


def kill_and_resume(r, victim):
    """SIGKILL `victim` of a 1 server + 2 workers job after its first checkpoint: the others end
    non-zero naming it, the last completed step and the newest checkpoint; --resume then finishes
    with the weights of an uninterrupted run."""
    base = ["--config", r.config("fashion_mlp.prototxt")] + KILL_MLP
    full = r.mpi(1, 2, base)
    ck = os.path.join(r.marker, "ck")
    job = r.start(1, 2, base + ["--checkpoint-dir", ck, "--checkpoint-every", "32"], "killed")
    job.wait_for_checkpoint(ck)
    p = job.procs[victim]
    if p.poll() is not None:
        fail(f"{victim} ended ({p.returncode}) before it could be killed")
    p.send_signal(signal.SIGKILL)
    print(f"  killed {victim} after {', '.join(sorted(os.listdir(ck)))} appeared")
    who = job.describe(victim)
    errs = job.survivors_fail(victim, "killed", [f"{who} lost", "last completed step", "newest checkpoint"])
    check_where_to_resume(errs, ck)
    p.wait(HANG)
    resumed = r.start(1, 2, base + ["--checkpoint-dir", ck, "--resume", ck], "resumed", peer_timeout=30)
    s = resumed.wait_ok()
    if "resuming from " + ck not in resumed.stderr("worker 0"):
        fail(f"worker 0 of the resumed job did not say 'resuming from {ck}':\n{resumed.stderr('worker 0')}")
    if s["weights_sha256"] != full["weights_sha256"]:
        fail(f"after killing {victim} and resuming, the weights differ from the uninterrupted run")
    print(f"  resumed: {[l for l in resumed.stderr('worker 0').splitlines() if 'resuming from' in l][0]}; "
          f"same weights as the uninterrupted run")


def check_kill_worker(r, args):
    kill_and_resume(r, "worker 1")


def check_kill_server(r, args):
    kill_and_resume(r, "server 0")


def check_stopped_rank(r, args):
    """SIGSTOP a worker, then (in another job) a server, mid-run with a peer timeout of 2 s: the others
    end non-zero naming it and the missing heartbeat."""
    for victim in ("worker 1", "server 0"):
        ck = os.path.join(r.marker, "ck-" + victim.replace(" ", ""))
        job = r.start(1, 2, ["--config", r.config("fashion_mlp.prototxt"), "--checkpoint-dir", ck,
                             "--checkpoint-every", "32"] + KILL_MLP, "stopped")
        job.wait_for_checkpoint(ck)
        p = job.procs[victim]
        if p.poll() is not None:
            fail(f"{victim} ended ({p.returncode}) before it could be stopped")
        p.send_signal(signal.SIGSTOP)
        print(f"  stopped {victim}")
        try:
            errs = job.survivors_fail(victim, "stopped", [f"{job.describe(victim)} lost", "heartbeat",
                                                          "last completed step", "newest checkpoint"])
            check_where_to_resume(errs, ck)
        finally:
            p.send_signal(signal.SIGKILL)
            p.send_signal(signal.SIGCONT)
            p.wait(HANG)


def check_failure_reason(r, args):
    """A process that fails after training started (the lead worker cannot write its model: its
    directory became a file during training) tells the others why: each one still running exits
    non-zero naming it and its reason ("it ended the job: ...")."""
    d = r.fresh("reason")
    model_dir, ck = os.path.join(d, "model-dir"), os.path.join(d, "ck")
    os.makedirs(model_dir)
    logs = os.path.join(d, "logs")
    cmd = ["bash", r.launch, "-s", "1", "-w", "2", "-k", r.keygen(d), "-o", logs, "--", r.shardps, "train",
           "--out-dir", os.path.join(d, "out"), "--progress", "never", "--config", r.config("fashion_softmax.prototxt"),
           "--epochs", "2", "--test-limit", "500", "--checkpoint-dir", ck, "--checkpoint-every", "5",
           "--model-out", os.path.join(model_dir, "model.safetensors")]
    print("$ " + " ".join(cmd))
    p = sc.popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sc.wait_until(lambda: p.poll() is not None or sc.committed_manifests(ck), 300, f"a first checkpoint in {ck}",
                  poll=0.01)
    if p.poll() is not None:
        fail(f"the job ended (exit {p.returncode}) before its first checkpoint:\n{p.communicate()[1]}")
    shutil.rmtree(model_dir)
    with open(model_dir, "w") as f:
        f.write("a file where the model's directory was\n")
    _, se = sc.communicate(p, 120, "launch_local.sh after the model directory was replaced")
    if p.returncode == 0:
        fail("the job succeeded although the lead worker could not write its model")
    # Server 0 waits for worker 0's goodbye, so it is still running when worker 0 fails and must say
    # why. Worker 1 may have finished its own part already (then it exited 0 without a word); if it
    # reports a failure, that report must name worker 0 and its reason.
    for name, must in (("server-0.log", True), ("worker-1.log", False)):
        with open(os.path.join(logs, name)) as f:
            text = f.read()
        if not must and "shardps train:" not in text:
            print(f"  {name}: no failure reported (it had finished its part)")
            continue
        for want in ["rank 1 (worker 0) lost: it ended the job", "model-dir"]:
            if want not in text:
                fail(f"{name} lacks '{want}':\n{text}\n--- launch_local.sh\n{se}")
        print(f"  {name}: {text.strip().splitlines()[-1][:200]}")


def check_launch_local(r, args):
    """launch_local.sh: the first failure's exit status, nothing left running after a failure, and
    SIGTERM / SIGINT reach every process."""
    softmax = ["--config", r.config("fashion_softmax.prototxt")]

    def leftovers(d, what):
        time.sleep(0.2)
        left = procs_with(d)
        if left:
            fail(f"{what}: processes left running: {left}")

    # A worker that fails on its own while the others wait for it (in the job's setup) with a
    # distinctive status: launch_local stops the others after its grace and returns that status.
    wrapper = os.path.join(r.marker, "fail_worker1.sh")
    with open(wrapper, "w") as f:
        f.write('#!/bin/bash\ncase " $* " in *" --role worker --rank 1 "*) sleep 1; exit 7;; esac\n'
                f'exec {shlex.quote(r.shardps)} "$@"\n')
    os.chmod(wrapper, 0o755)
    t0 = time.time()
    _, p, d = r.launch_local(1, 2, softmax, name="exit7", timeout=60, bin_=wrapper, opts=["-g", "1"])
    if p.returncode != 7:
        fail(f"worker 1 exited 7, launch_local.sh returned {p.returncode}:\n{p.stderr}")
    if "worker 1" not in p.stderr or "status 7" not in p.stderr:
        fail(f"launch_local.sh did not name the failed worker 1 and its status 7:\n{p.stderr}")
    leftovers(d, "after worker 1 failed")
    print(f"  worker 1 failed with 7: launch_local.sh returned 7 after {time.time() - t0:.1f} s, nothing left")

    # A failure every process finds after connecting: all end by themselves with status 1.
    _, p, d = r.launch_local(1, 2, softmax + ["--resume", os.path.join(r.marker, "no-such-dir")], name="noresume",
                             timeout=60)
    if p.returncode != 1 or "no-such-dir" not in p.stderr:
        fail(f"a missing --resume directory: launch_local.sh returned {p.returncode}:\n{p.stderr}")
    leftovers(d, "after a missing --resume directory")
    print("  missing --resume directory: launch_local.sh returned 1, nothing left")

    # A signal to launch_local.sh mid-training ends every process: status 128 + signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        d = r.fresh(sig.name)
        cmd = ["bash", r.launch, "-k", r.keygen(d), "-o", os.path.join(d, "logs"), "--", r.shardps, "train",
               "--out-dir", os.path.join(d, "out"), "--progress", "never", "--epochs", "200"] + softmax
        p = sc.popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        # One reading per test: a process list read twice can differ (a process caught between
        # fork and exec does not show its command line yet).
        started = procs_with(d)
        while len(started) < 4 and time.time() < deadline and p.poll() is None:  # the script + 3
            time.sleep(0.1)
            started = procs_with(d)
        if len(started) < 4:
            fail(f"{sig.name}: the job did not start: {started}")
        time.sleep(2)  # training, past the setup
        if p.poll() is not None:
            fail(f"{sig.name}: launch_local.sh ended ({p.returncode}) before the signal:\n{p.communicate()[1]}")
        p.send_signal(sig)
        t0 = time.time()
        try:
            _, se = p.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            fail(f"launch_local.sh still running {HANG} s after {sig.name}")
        if p.returncode != 128 + sig.value:
            fail(f"launch_local.sh returned {p.returncode} after {sig.name}, not {128 + sig.value}:\n{se}")
        leftovers(d, f"after {sig.name}")
        print(f"  {sig.name}: launch_local.sh returned {p.returncode} after {time.time() - t0:.1f} s, nothing left")

    # Placement: with at least as many usable CPUs as processes, each process runs bound to a CPU
    # of its own, servers first (in the order of this process's affinity set); with -B, or with
    # too few CPUs, every process may use all of them. Each process reports the CPUs the kernel
    # lets it use (/proc/self/status) before it becomes shardps.
    probe = os.path.join(r.marker, "report_cpus.sh")
    with open(probe, "w") as f:
        f.write('#!/bin/bash\nprev=\nfor a in "$@"; do case $prev in --role) role=$a ;; --rank) rank=$a ;; esac; prev=$a; done\n'
                'grep Cpus_allowed_list /proc/self/status | cut -f2 > "$REPORT_DIR/$role-$rank"\n'
                f'exec {shlex.quote(r.shardps)} "$@"\n')
    os.chmod(probe, 0o755)
    usable = sorted(os.sched_getaffinity(0))

    def cpus_of(text):  # "0-1,3" -> [0, 1, 3]
        out = []
        for part in text.strip().split(","):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
        return out

    for opts, servers, workers in (([], 1, 1), (["-B"], 1, 1), ([], 1, len(usable))):
        report = r.fresh("cpus")
        _, p, _ = r.launch_local(servers, workers, softmax + ["--epochs", "1"], name="placement", timeout=120,
                                 bin_=probe, opts=opts, env=dict(ENV, REPORT_DIR=report))
        if p.returncode != 0:
            fail(f"launch_local.sh {' '.join(opts)} with {servers} + {workers} failed:\n{p.stderr}")
        names = [f"server-{i}" for i in range(servers)] + [f"worker-{k}" for k in range(workers)]
        got = {n: cpus_of(open(os.path.join(report, n)).read()) for n in names}
        bind = not opts and servers + workers <= len(usable)
        want = {n: [usable[j]] for j, n in enumerate(names)} if bind else {n: usable for n in names}
        if got != want:
            fail(f"launch_local.sh {' '.join(opts)} with {servers} + {workers} on CPUs {usable}: "
                 f"processes could use {got}, expected {want}:\n{p.stderr}")
        said = "bound to CPUs " + " ".join(str(c) for c in usable[:servers + workers]) if bind else "left to the kernel"
        if said not in p.stderr:
            fail(f"launch_local.sh did not say '{said}':\n{p.stderr}")
        print(f"  {' '.join(opts) or 'default'}, {servers} + {workers} processes on CPUs {usable}: {got}")


def main():
    ap = sc.job_arguments()
    ap.add_argument("--min-accuracy", type=float, default=0.84)
    ap.add_argument("--config", default="fashion_softmax.prototxt", help="convergence: the example config to train")
    ap.add_argument("check", choices=["matches_mpi", "convergence", "kill_worker", "kill_server", "stopped_rank",
                                      "launch_local", "failure_reason"])
    args = ap.parse_args()

    def run_check():
        sc.need_fashion()
        os.makedirs(args.work, exist_ok=True)
        r = Runner(args.shardps, os.path.abspath(args.work), args.mpirun, os.path.abspath(args.source_dir))
        try:
            globals()["check_" + args.check](r, args)
        finally:
            sc.stop_all()
            kill_leftovers(r.marker)

    sc.main(run_check, args.check)


if __name__ == "__main__":
    main()
