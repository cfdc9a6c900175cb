#!/usr/bin/python3
"""The sbatch examples under a real Slurm, run by CTest (tests/slurm/CMakeLists.txt, label slurm).

    slurm_check.py --shardps build/bin/shardps --mpirun mpirun --source-dir SRC --work DIR

Starts a one-node cluster of Debian's munged, slurmctld and slurmd (as root, no systemd) from a
slurm.conf generated in a temporary directory: free ports, state, spool, logs and the munge key
and socket in that directory, the node being this machine (its hostname, and its CPUs and memory
as `slurmd -C` reports them). Then, for each of scripts/slurm/train_mpi.sbatch and
scripts/slurm/train_tcp.sbatch:

  * the same training is run once directly (mpirun, or scripts/launch_local.sh for TCP): the
    uninterrupted run, whose weights_sha256 is the reference;
  * the script is submitted with sbatch (one node, 1 server + 1 worker task), and as soon as its
    first checkpoint is committed (a v*/MANIFEST in its CKPT directory) the job is requeued with
    `scontrol requeue`; Slurm reruns it once the old run's credential has expired (cred_expire is
    10 s in the generated slurm.conf instead of the default 120 s);
  * the job must end COMPLETED with exit code 0 after exactly one restart; its first run must have
    been interrupted before training ended, its second must say "resuming from CKPT/v..." and its
    summary must hold the uninterrupted run's weights_sha256.

Everything the check started (jobs, slurmd, slurmctld, munged, and any process that carries the
generated SLURM_CONF in its environment, such as slurmstepd) is stopped at the end, pass or fail.
Every wait has a deadline. Exits 0 printing "PASS slurm", or 1 with "FAIL: ..."
(tests/pylib/shardps_check.py).
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import shardps_check as sc  # noqa: E402
from shardps_check import check, fail  # noqa: E402

DAEMON_WAIT = 60   # seconds for munged, slurmctld and slurmd to come up
JOB_WAIT = 300     # seconds for a job (both of its runs) to end
# Long enough that the first checkpoint (step 500 of 3748: the sbatch scripts checkpoint every 500
# steps) comes early in the run, short enough for CI.
TRAIN = ["--hidden", "64", "--epochs", "4", "--test-limit", "1000"]
CKPT_EVERY = "500"  # as in scripts/slurm/*.sbatch
# Lifetime (s) of a job step credential. It is also how long Slurm holds a requeued job back before
# it may start again (120 s by default): the node refuses the job while its old credential lives.
CRED_EXPIRE = 10


class Cluster:
    """A one-node Slurm cluster in a temporary directory; stop() ends everything it started."""

    def __init__(self, work):
        self.work = work
        reap_abandoned()
        self.dir = tempfile.mkdtemp(prefix=PREFIX)  # short: the munge socket path is limited
        with open(os.path.join(self.dir, "owner.pid"), "w") as f:
            f.write(str(os.getpid()))
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.env = sc.clean_env(SLURM_CONF=self.conf)
        self.daemons = {}
        self.jobs = []

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def start(self):
        for d in ("munge", "state", "spool", "log"):
            os.makedirs(self.path(d))
        # munged: its own key and socket here (the directory must be reachable by every user).
        os.chmod(self.path("munge"), 0o755)
        key = self.path("munge", "munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as f:
            f.write(os.urandom(1024))
        self.socket = self.path("munge", "munge.socket")
        self.daemon("munged", ["munged", "--foreground", "--force", f"--socket={self.socket}", f"--key-file={key}",
                               f"--log-file={self.path('log', 'munged.log')}",
                               f"--pid-file={self.path('munge', 'munged.pid')}",
                               f"--seed-file={self.path('munge', 'munged.seed')}"])
        sc.wait_until(lambda: self.alive("munged") and os.path.exists(self.socket) and
                      sc.run(["munge", "-S", self.socket, "-n"], timeout=10, expect_ok=False, quiet=True).returncode == 0,
                      DAEMON_WAIT, "munged to answer", poll=0.2)
        host = socket.gethostname().split(".")[0]
        # The node as slurmd sees it: "NodeName=H CPUs=2 Boards=1 ... RealMemory=M" on the first line.
        node = sc.run(["slurmd", "-C"], timeout=30, env=self.env, quiet=True).stdout.splitlines()[0].strip()
        check(node.startswith(f"NodeName={host} "), f"slurmd -C printed {node!r}, not this host {host!r}")
        addr = socket.gethostbyname(host)
        self.ctld_port, self.d_port = sc.free_port(), sc.free_port()
        while self.d_port == self.ctld_port:
            self.d_port = sc.free_port()
        with open(self.conf, "w") as f:
            f.write(f"""# Generated by tests/slurm/slurm_check.py: a one-node cluster for one test run.
ClusterName=shardpstest
SlurmctldHost={host}({addr})
SlurmctldPort={self.ctld_port}
SlurmdPort={self.d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire={CRED_EXPIRE}
StateSaveLocation={self.path('state')}
SlurmdSpoolDir={self.path('spool')}
SlurmctldPidFile={self.path('slurmctld.pid')}
SlurmdPidFile={self.path('slurmd.pid')}
SlurmctldLogFile={self.path('log', 'slurmctld.log')}
SlurmdLogFile={self.path('log', 'slurmd.log')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
InactiveLimit=0
KillWait=5
MinJobAge=600
{node} NodeAddr={addr} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        self.daemon("slurmctld", ["slurmctld", "-D", "-i", "-f", self.conf])
        sc.wait_until(lambda: self.alive("slurmctld") and
                      "UP" in sc.run(["scontrol", "ping"], timeout=15, env=self.env, expect_ok=False, quiet=True).stdout,
                      DAEMON_WAIT, "slurmctld to answer `scontrol ping`", poll=0.3)
        self.daemon("slurmd", ["slurmd", "-D", "-f", self.conf])
        sc.wait_until(lambda: self.alive("slurmd") and sc.run(["sinfo", "-h", "-N", "-o", "%T"], timeout=15, env=self.env,
                                                              expect_ok=False, quiet=True).stdout.strip() == "idle",
                      DAEMON_WAIT, "the node to be idle in sinfo", poll=0.3)
        print(f"cluster up in {self.dir}: node {node.split()[0]} ({' '.join(node.split()[1:3])} ...), slurmctld port "
              f"{self.ctld_port}, slurmd port {self.d_port}")

    def daemon(self, name, cmd):
        log = open(self.path("log", name + ".out"), "w")
        self.daemons[name] = sc.popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def alive(self, name):
        p = self.daemons[name]
        if p.poll() is not None:
            fail(f"{name} exited with {p.returncode}:\n{self.logs(name)}")
        return True

    def logs(self, *names):
        out = []
        for f in sorted(os.listdir(self.path("log"))):
            if names and not any(f.startswith(n) for n in names):
                continue
            with open(self.path("log", f), errors="replace") as fh:
                text = fh.read()
            out.append(f"--- {f} (last 30 lines)\n" + "\n".join(text.splitlines()[-30:]))
        return "\n".join(out)

    def slurm(self, *cmd, timeout=30, ok=True):
        return sc.run(list(cmd), timeout=timeout, env=self.env, expect_ok=ok, quiet=True)

    def job_info(self, job):
        p = self.slurm("scontrol", "show", "job", "-o", job, ok=False)
        check(p.returncode == 0, f"scontrol show job {job}: {p.stderr}")
        return dict(re.findall(r"(\w+)=(\S*)", p.stdout))

    def sbatch(self, args, script, script_args):
        p = self.slurm("sbatch", "--parsable", *args, script, *script_args)
        job = p.stdout.strip().split(";")[0]
        check(job.isdigit(), f"sbatch printed {p.stdout!r}")
        self.jobs.append(job)
        return job

    def wait_state(self, job, states, timeout, what):
        last = {}

        def reached():
            last.update(self.job_info(job))
            return last.get("JobState") in states

        try:
            sc.wait_until(reached, timeout, what, poll=0.2)
        except sc.CheckFailed as e:
            raise sc.CheckFailed(f"{e} (job {job}: JobState={last.get('JobState')} Reason={last.get('Reason')})")
        return last

    def stop(self):
        """Cancels the jobs, stops the daemons (SIGTERM, then SIGKILL) and every process started
        with this cluster's SLURM_CONF in its environment (slurmstepd, job tasks); removes the
        temporary directory (its logs are copied to the work directory first)."""
        try:
            if self.jobs and "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
                self.slurm("scancel", *self.jobs, ok=False)
                deadline = time.time() + 30
                while time.time() < deadline:
                    q = self.slurm("squeue", "-h", "-o", "%i", ok=False)
                    if q.returncode != 0 or not q.stdout.strip():
                        break
                    time.sleep(0.5)
        except sc.CheckFailed as e:
            print(f"warning: scancel: {e}")
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.daemons.get(name)
            if p is not None and p.poll() is None:
                sc.kill_group(p, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    sc.kill_group(p, signal.SIGKILL)
                    p.wait(15)
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        left = self.processes()
        if left:
            time.sleep(1)
            left = self.processes()
        shutil.rmtree(os.path.join(self.work, "cluster-logs"), ignore_errors=True)
        if os.path.isdir(self.path("log")):
            shutil.copytree(self.path("log"), os.path.join(self.work, "cluster-logs"))
        shutil.rmtree(self.dir, ignore_errors=True)
        check(not left, f"processes of the test cluster still running after the stop: {left}")

    def processes(self):
        return processes_of(self.conf)


PREFIX = "shardps-slurm-"


def processes_of(conf):
    """Pids (other than this one) whose environment holds SLURM_CONF=conf."""
    needle = ("SLURM_CONF=" + conf).encode() + b"\0"
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read() + b"\0":
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def reap_abandoned():
    """Clusters left by an earlier run of this check that was killed before it could stop them (its
    owner process is gone): their processes are killed and their directories removed."""
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        d = os.path.join(tmp, name)
        if not name.startswith(PREFIX) or not os.path.isdir(d):
            continue
        try:
            with open(os.path.join(d, "owner.pid")) as f:
                owner = int(f.read())
            os.kill(owner, 0)
            continue  # its owner still runs
        except (OSError, ValueError):
            pass
        pids = processes_of(os.path.join(d, "slurm.conf"))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        print(f"removed an abandoned test cluster {d} (killed {len(pids)} processes)")
        shutil.rmtree(d, ignore_errors=True)


def uninterrupted(a, kind, d):
    """The same training as the sbatch script's, run directly once: returns its weights_sha256."""
    cfg = os.path.join(a.source_dir, "examples", "configs", "fashion_mlp.prototxt")
    out = os.path.join(d, "out")
    train = ["train", "--config", cfg, "--servers", "1", "--out-dir", out, "--progress", "plain",
             "--checkpoint-dir", os.path.join(d, "ck"), "--checkpoint-every", CKPT_EVERY] + TRAIN
    if kind == "mpi":
        sc.run(sc.mpirun_cmd(a.mpirun, 2, [a.shardps] + train), timeout=JOB_WAIT, env=sc.clean_env())
    else:
        sc.run(["bash", os.path.join(a.source_dir, "scripts", "launch_local.sh"), "-s", "1", "-w", "1",
                "-o", os.path.join(d, "logs"), "--", a.shardps] + train, timeout=JOB_WAIT, env=sc.clean_env())
    return sc.read_summary(out, show=False)["weights_sha256"]


def requeued_job(a, cluster, kind, want_sha):
    """Submits scripts/slurm/train_<kind>.sbatch, requeues it after its first checkpoint, and checks
    that it ends COMPLETED, resumed, with the uninterrupted weights."""
    d = sc.fresh_dir(os.path.join(a.work, kind + "-job"))
    ck, run_dir, log = os.path.join(d, "ck"), os.path.join(d, "run"), os.path.join(d, "job.out")
    # The scripts default to paths under the submit directory; the test points them into its own.
    export = [f"SHARDPS={a.shardps}", f"CONFIG={os.path.join(a.source_dir, 'examples', 'configs', 'fashion_mlp.prototxt')}",
              "SERVERS=1", f"CKPT={ck}", f"OUT={run_dir}", f"RUN={run_dir}"]
    script = os.path.join(a.source_dir, "scripts", "slurm", f"train_{kind}.sbatch")
    # One node, 1 server + 1 worker task (the scripts ask for two nodes of a real cluster).
    job = cluster.sbatch(["--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=20",
                          f"--chdir={a.source_dir}", f"--output={log}", "--open-mode=append",
                          "--export=ALL," + ",".join(export)], script, TRAIN)
    print(f"  {kind}: submitted {os.path.basename(script)} as job {job}")
    cluster.wait_state(job, {"RUNNING", "COMPLETED", "FAILED", "CANCELLED"}, JOB_WAIT, f"job {job} to start")
    sc.wait_until(lambda: sc.committed_manifests(ck) or cluster.job_info(job).get("JobState") not in ("RUNNING",),
                  JOB_WAIT, f"job {job}'s first checkpoint in {ck}", poll=0.05)
    info = cluster.job_info(job)
    check(info.get("JobState") == "RUNNING" and sc.committed_manifests(ck),
          lambda: f"job {job} ended ({info.get('JobState')}) before its first checkpoint:\n{read(log)}")
    first = sorted(os.path.basename(os.path.dirname(m)) for m in sc.committed_manifests(ck))
    cluster.slurm("scontrol", "requeue", job)
    print(f"  {kind}: job {job} requeued after {', '.join(first)} was committed")
    # Slurm holds the requeued job back (pending, reason BeginTime) for CRED_EXPIRE s, then reruns it.
    info = cluster.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"},
                              JOB_WAIT, f"job {job} to end")
    text = read(log)
    check(info["JobState"] == "COMPLETED" and info.get("ExitCode") == "0:0",
          lambda: f"job {job} ended {info['JobState']} exit {info.get('ExitCode')}:\n{text}\n{cluster.logs('slurmd')}")
    check(info.get("Restarts") == "1", f"job {job} restarted {info.get('Restarts')} times, expected 1 (the requeue)")
    # The first run was interrupted: the requeue notice comes before any "done:" line.
    cut = text.find("DUE TO JOB REQUEUE")
    check(cut >= 0, lambda: f"job {job}'s output has no requeue notice:\n{text}")
    check("done:" not in text[:cut], lambda: f"job {job}'s first run finished training before the requeue:\n{text}")
    m = re.search(r"resuming from " + re.escape(ck) + r"/(v\d+) at step (\d+)", text[cut:])
    check(m, lambda: f"job {job}'s second run did not resume from {ck}:\n{text}")
    summary_dir = run_dir if kind == "mpi" else os.path.join(run_dir, "out")
    got = sc.read_summary(summary_dir, show=False)["weights_sha256"]
    check(got == want_sha, f"job {job}: weights {got} after the requeue, the uninterrupted run {want_sha}")
    print(f"  {kind}: job {job} COMPLETED after 1 restart, resumed from {m[1]} (step {m[2]}), "
          f"weights_sha256 {got[:16]}... = the uninterrupted run's")


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def slurm_check(a):
    sc.need_fashion()
    for tool in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol"):
        check(shutil.which(tool), f"{tool} not found; scripts/setup.sh installs slurm-wlm and munge")
    check(os.geteuid() == 0, "the Slurm check starts slurmd and munged itself and needs root")
    sc.fresh_dir(a.work)
    refs = {kind: uninterrupted(a, kind, sc.fresh_dir(os.path.join(a.work, kind + "-direct"))) for kind in ("mpi", "tcp")}
    print(f"uninterrupted runs: mpi {refs['mpi'][:16]}..., tcp {refs['tcp'][:16]}...")
    cluster = Cluster(a.work)
    failed = True
    try:
        cluster.start()
        for kind in ("mpi", "tcp"):
            requeued_job(a, cluster, kind, refs[kind])
        failed = False
    finally:
        if failed:
            print(cluster.logs())
        try:
            cluster.stop()
        except sc.CheckFailed as e:
            if not failed:
                raise
            print(f"also: {e}")  # the first failure is the one reported


def main():
    ap = sc.job_arguments()
    a = ap.parse_args()

    def interrupted(signum, frame):  # CTest's timeout, Ctrl-C: stop the cluster on the way out
        raise sc.CheckFailed(f"interrupted by signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    sc.main(slurm_check, "slurm", a)


if __name__ == "__main__":
    main()
