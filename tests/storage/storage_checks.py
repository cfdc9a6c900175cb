#!/usr/bin/python3
"""End-to-end checks of checkpoint and output storage through the `shardps` CLI, run by CTest
(tests/storage/CMakeLists.txt), one CHECK per test:

    storage_checks.py --shardps build/bin/shardps --mpirun mpirun --source-dir . --work DIR CHECK

  resume_auto       --resume auto on a missing, an empty and an only-incomplete directory starts
                    fresh (saying which), then resumes; explicit --resume stays strict; '@' in the
                    directory name; a changed --train-limit or other training data is refused
  second_writer     a second job on the same --checkpoint-dir is refused naming the holder; the lock
                    of a killed job is taken over
  gc_during_job     `shardps ckpt gc/tag/untag` run again and again while a job applies --keep-last:
                    every command and the job succeed, and the job's weights are unchanged
  device_outputs    --model-out, --summary-json, --metrics-csv and ckpt export --out naming /dev/null
                    or /dev/full are refused before training; the devices stay devices
  readonly_outputs  read-only or missing output and checkpoint locations are refused before training
  ckpt_copy         `shardps ckpt copy SRC@TAG DST --with-tags` of a trained run's registry: byte-identical
                    files, `ckpt verify DST` and the tag pass, a resume from the copy ends with the
                    source's weights; again: "already present"; --all; a flipped byte in the source,
                    another checkpoint under the same number and a job's lock on DST are refused (exit 1,
                    naming the path), DST unchanged; usage errors exit 2

The script's exit code decides (tests/pylib/shardps_check.py).
"""
import fcntl
import filecmp
import os
import signal
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import shardps_check as sc  # noqa: E402
from shardps_check import check, fail  # noqa: E402

SMALL = ["--hidden", "32", "--train-limit", "4096", "--test-limit", "1000", "--batch-size", "64",
         "--optimizer", "sgd", "--lr", "0.1", "--progress", "plain"]


class Runner:
    def __init__(self, a):
        self.shardps, self.mpirun, self.src, self.work = a.shardps, a.mpirun, a.source_dir, a.work
        self.count = 0

    def cmd(self, args, out=None):
        self.count += 1
        out = out or os.path.join(self.work, f"run{self.count}")
        cfg = os.path.join(self.src, "examples", "configs", "fashion_mlp.prototxt")
        small = list(SMALL)
        if "--train-limit" in args:  # the caller's limit instead of the default one
            i = small.index("--train-limit")
            del small[i:i + 2]
        return sc.mpirun_cmd(self.mpirun, 2, [self.shardps, "train", "--config", cfg, "--servers", "1",
                                              "--out-dir", out] + small + list(args)), out

    def train(self, args, expect_ok=True, timeout=600):
        """Runs a 2-process job (1 server, 1 worker); returns (completed process, out dir)."""
        cmd, out = self.cmd(args)
        p = sc.run(cmd, timeout=timeout, expect_ok=expect_ok)
        return p, out

    def refused(self, args, text, timeout=300):
        """The job must fail, say `text`, and not have trained (no metrics file was started)."""
        p, out = self.train(args, expect_ok=False, timeout=timeout)
        check(p.returncode != 0, f"the job did not fail:\n{p.stdout}\n{p.stderr}")
        check(text in p.stderr, f"expected {text!r} in the error:\n{p.stderr}")
        check(not os.path.exists(os.path.join(out, "metrics.csv")) and not os.path.exists(os.path.join(out, "summary.json")),
              f"the job started training before refusing: {out} has outputs")
        print(f"   refused: {[l for l in p.stderr.splitlines() if text in l][0]}")
        return p


def sha(out):
    return sc.read_summary(out, show=False)["weights_sha256"]


def check_resume_auto(r, a):
    sc.need_fashion()
    ref, ref_out = r.train(["--epochs", "1"])
    want = sha(ref_out)

    # A missing directory: a fresh start that says so.
    ck = os.path.join(r.work, "missing", "ck")
    p, out = r.train(["--epochs", "1", "--checkpoint-dir", ck, "--resume", "auto"])
    check("did not exist" in p.stderr and "starting fresh" in p.stderr, f"no fresh-start notice:\n{p.stderr}")
    check(sha(out) == want, "a fresh start with --resume auto gave other weights than a plain run")
    # The identical command line again: now it resumes (and, at its last step already, only finishes).
    p, out = r.train(["--epochs", "2", "--checkpoint-dir", ck, "--resume", "auto"])
    check("resuming from" in p.stderr, f"the second run did not resume:\n{p.stderr}")

    # An empty directory.
    ck = sc.fresh_dir(os.path.join(r.work, "empty"))
    p, out = r.train(["--epochs", "1", "--checkpoint-dir", ck, "--resume", "auto"])
    check("holds no checkpoint" in p.stderr and "starting fresh" in p.stderr, f"no fresh-start notice:\n{p.stderr}")
    check(sha(out) == want, "fresh start in an empty directory: other weights")

    # Only an incomplete first version: the job was killed before its first MANIFEST was renamed
    # into place. Its writer lock is then the record of a dead process, taken over.
    ck = sc.fresh_dir(os.path.join(r.work, "incomplete"))
    p, _ = r.train(["--epochs", "1", "--checkpoint-dir", ck, "--checkpoint-every", "10",
                    "--test-crash-at", "before-rename:MANIFEST@1"], expect_ok=False)
    check(p.returncode != 0, "the crash hook did not end the job")
    check(os.path.isdir(os.path.join(ck, "v00000001")) and not sc.committed_manifests(ck),
          f"expected an incomplete v00000001 in {ck}: {os.listdir(ck)}")
    p, out = r.train(["--epochs", "1", "--checkpoint-dir", ck, "--resume", "auto"])
    check("only incomplete versions (v00000001" in p.stderr and "starting fresh" in p.stderr,
          f"no fresh-start notice naming the incomplete version:\n{p.stderr}")
    check("took over the lock" in p.stderr, f"the killed job's lock was not reported as taken over:\n{p.stderr}")
    check(sha(out) == want, "fresh start after an incomplete version: other weights")

    # An explicit --resume stays strict.
    empty = sc.fresh_dir(os.path.join(r.work, "strict"))
    p, _ = r.train(["--epochs", "1", "--resume", empty], expect_ok=False)
    check(p.returncode != 0 and "no valid checkpoint" in p.stderr, f"explicit --resume of an empty dir:\n{p.stderr}")

    # '@' in the directory name: DIR, DIR@VERSION and --resume auto all work.
    ck = os.path.join(r.work, "ck@run2")
    r.train(["--epochs", "1", "--checkpoint-dir", ck, "--checkpoint-every", "32"])
    p, out = r.train(["--epochs", "2", "--resume", ck])
    check("resuming from " + os.path.join(ck, "v00000002") in p.stderr, f"--resume DIR with '@':\n{p.stderr}")
    p, out = r.train(["--epochs", "2", "--resume", ck + "@1"])
    check("resuming from " + os.path.join(ck, "v00000001") in p.stderr, f"--resume DIR@1 with '@' in DIR:\n{p.stderr}")
    both = sha(out)
    p, out = r.train(["--epochs", "2", "--checkpoint-dir", ck, "--resume", "auto"])
    check(sha(out) == both, "--resume auto and --resume DIR@1 ended with other weights")

    # Another data position: a changed --train-limit is refused, naming both counts.
    p = r.refused(["--epochs", "3", "--checkpoint-dir", ck, "--resume", "auto", "--train-limit", "2048"],
                  "was taken training on 4096 samples; this run has 2048")
    # The same number of samples from another file (the test split as training data) is refused too.
    other = ["--set", f"data.train={sc.FASHION}/t10k-images-idx3-ubyte.gz",
             "--set", f"data.train_labels={sc.FASHION}/t10k-labels-idx1-ubyte.gz"]
    r.refused(other + ["--epochs", "3", "--checkpoint-dir", ck, "--resume", "auto"], "was taken on other training data")


def wait_for_lock_holder(ck, timeout=180):
    lock = os.path.join(ck, "LOCK")

    def held():
        try:
            with open(lock) as f:
                return f.read().strip()
        except OSError:
            return ""
    return sc.wait_until(held, timeout, f"a job to take {lock}")


def check_second_writer(r, a):
    sc.need_fashion()
    ck = sc.fresh_dir(os.path.join(r.work, "ck"))
    # It writes no checkpoint before it is killed (only the final one), so the next job's fresh
    # start does not depend on how far it got.
    cmd, _ = r.cmd(["--epochs", "100000", "--checkpoint-dir", ck, "--checkpoint-every", "100000000"])
    first = sc.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    holder = wait_for_lock_holder(ck)
    print(f"   the first job holds the lock: {holder}")
    check(first.poll() is None, "the first job ended early")
    pid = holder.split()[1]
    p = r.refused(["--epochs", "1", "--checkpoint-dir", ck], "is in use by another writer")
    check(f"pid {pid} on host" in p.stderr and "since" in p.stderr, f"the holder is not named:\n{p.stderr}")
    check(first.poll() is None, "the refused second job disturbed the first")
    # The lock holder (the first job's lead worker) dies without releasing anything; mpirun ends
    # the rest of that job; the next job takes the lock over.
    os.kill(int(pid), signal.SIGKILL)
    sc.communicate(first, 120, "the first job after its lead worker was killed")
    p, _ = r.train(["--epochs", "1", "--checkpoint-dir", ck, "--resume", "auto"])
    check("starting fresh" in p.stderr, f"expected a fresh start:\n{p.stderr}")
    check("took over the lock" in p.stderr and f"pid {pid}" in p.stderr,
          f"the dead job's lock was not taken over naming it:\n{p.stderr}")


def check_gc_during_job(r, a):
    sc.need_fashion()
    args = ["--epochs", "40"]
    _, ref_out = r.train(args)
    ck = sc.fresh_dir(os.path.join(r.work, "ck"))
    cmd, out = r.cmd(args + ["--checkpoint-dir", ck, "--checkpoint-every", "3", "--keep-last", "2"])
    log = open(os.path.join(r.work, "job.stderr"), "w+")
    job = sc.popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    wait_for_lock_holder(ck)
    runs = {"gc": 0, "tag": 0, "untag": 0}
    deadline = time.time() + 600
    while job.poll() is None:
        check(time.time() < deadline, "the job did not end within 600 s")
        p = sc.run([r.shardps, "ckpt", "gc", ck, "--keep-last", "1", "--wait", "120"], timeout=180, expect_ok=False,
                   quiet=True)
        check(p.returncode == 0, f"ckpt gc failed during the job:\n{p.stdout}\n{p.stderr}")
        runs["gc"] += 1
        valid = [v for v in sc.ckpt_versions(r.shardps, ck) if v["valid"]]
        if valid and job.poll() is None:
            v = str(valid[-1]["version"])
            p = sc.run([r.shardps, "ckpt", "tag", ck, v, "mark", "--wait", "120"], timeout=180, expect_ok=False, quiet=True)
            # The version may be deleted by the job's retention between the listing and the tag.
            check(p.returncode == 0 or "does not exist" in p.stderr, f"ckpt tag failed during the job:\n{p.stderr}")
            runs["tag"] += p.returncode == 0
            if p.returncode == 0:
                p = sc.run([r.shardps, "ckpt", "untag", ck, "mark", "--wait", "120"], timeout=180, expect_ok=False,
                           quiet=True)
                check(p.returncode == 0, f"ckpt untag failed during the job:\n{p.stderr}")
                runs["untag"] += 1
    sc.communicate(job, 600)
    log.seek(0)
    se = log.read()
    print(f"   operator commands while the job ran: {runs}")
    check(job.returncode == 0, f"the job failed while operators worked on its directory:\n{se}")
    check(runs["gc"] >= 3, f"only {runs['gc']} gc runs overlapped the job: the check did not test anything")
    check(sha(out) == sha(ref_out), "the job's weights differ from the same run without checkpoints")
    valid = [v for v in sc.ckpt_versions(r.shardps, ck) if v["valid"]]
    check(1 <= len(valid) <= 2, f"retention left {len(valid)} valid versions, expected 1 or 2")


def check_device_outputs(r, a):
    sc.need_fashion()
    devices = [d for d in ("/dev/null", "/dev/full") if os.path.exists(d)]
    check(devices, "no /dev/null or /dev/full to test with")
    before = {d: os.stat(d) for d in devices}
    for d in devices:
        for flag, what in (("--model-out", "final model"), ("--summary-json", "summary JSON"), ("--metrics-csv", "metrics CSV")):
            r.refused(["--epochs", "1", flag, d], f"refusing to write {what}")
    # ckpt export --out: a real checkpoint, exported to a device.
    ck = sc.fresh_dir(os.path.join(r.work, "ck"))
    r.train(["--epochs", "1", "--checkpoint-dir", ck])
    for d in devices:
        p = sc.run([r.shardps, "ckpt", "export", ck, "--out", d], expect_ok=False, timeout=120)
        check(p.returncode != 0 and "not a regular file" in p.stderr, f"ckpt export --out {d}:\n{p.stdout}\n{p.stderr}")
    good = os.path.join(r.work, "model.safetensors")
    sc.run([r.shardps, "ckpt", "export", ck, "--out", good], timeout=120)
    check(os.path.isfile(good), "ckpt export to a regular file wrote nothing")
    for d in devices:
        st = os.stat(d)
        check(stat.S_ISCHR(st.st_mode) and st.st_rdev == before[d].st_rdev, f"{d} is no longer the same device")


def check_readonly_outputs(r, a):
    sc.need_fashion()
    ro = sc.fresh_dir(os.path.join(r.work, "ro"))
    os.makedirs(os.path.join(ro, "sub"))
    mounted = False
    if os.geteuid() == 0:
        # root writes through file modes: a read-only file system is the real thing.
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro], capture_output=True, text=True,
                           timeout=60)
        check(p.returncode == 0, f"cannot mount a read-only tmpfs at {ro} as root: {p.stderr}")
        mounted = True
    else:
        os.chmod(ro, 0o555)
    try:
        probe = os.path.join(ro, "probe")
        try:
            open(probe, "w").close()
            fail(f"{ro} is writable: the check would test nothing")
        except OSError:
            pass
        text = "Read-only file system" if mounted else "Permission denied"
        r.refused(["--epochs", "1", "--model-out", os.path.join(ro, "model.safetensors")], text)
        r.refused(["--epochs", "1", "--summary-json", os.path.join(ro, "summary.json")], text)
        r.refused(["--epochs", "1", "--checkpoint-dir", os.path.join(ro, "ck")], "checkpoint directory")
        cmd, out = r.cmd(["--epochs", "1"], out=os.path.join(ro, "out"))
        p = sc.run(cmd, expect_ok=False, timeout=300)
        check(p.returncode != 0 and "output directory" in p.stderr, f"--out-dir on a read-only file system:\n{p.stderr}")
        missing = os.path.join(r.work, "no", "such", "dir")
        r.refused(["--epochs", "1", "--model-out", os.path.join(missing, "model.safetensors")], "No such file or directory")
        plain = os.path.join(r.work, "plain")
        open(plain, "w").close()
        r.refused(["--epochs", "1", "--checkpoint-dir", os.path.join(plain, "ck")], "is not a directory")
    finally:
        if mounted:
            subprocess.run(["umount", ro], check=False, timeout=60)
        else:
            os.chmod(ro, 0o755)


def tree(d):
    """Every path under d with its size (files) or None (directories); {} when d does not exist."""
    out = {}
    for root, dirs, files in os.walk(d):
        for n in dirs:
            out[os.path.relpath(os.path.join(root, n), d)] = None
        for n in files:
            out[os.path.relpath(os.path.join(root, n), d)] = os.path.getsize(os.path.join(root, n))
    return out


def check_ckpt_copy(r, a):
    sc.need_fashion()
    shardps = r.shardps

    def ckpt(*args, expect_ok=True):
        return sc.run([shardps, "ckpt"] + [str(x) for x in args], timeout=300, expect_ok=expect_ok)

    def refused(args, texts, code=1):
        p = ckpt(*args, expect_ok=False)
        check(p.returncode == code, f"ckpt {' '.join(map(str, args))}: exit {p.returncode}, expected {code}:\n{p.stdout}\n{p.stderr}")
        for t in texts:
            check(t in p.stderr, f"expected {t!r} in the error of ckpt {' '.join(map(str, args))}:\n{p.stderr}")
        if code == 1:
            check(p.stderr.startswith("shardps ckpt copy: "), f"the error does not start 'shardps ckpt copy: ':\n{p.stderr}")
        print(f"   refused: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else '(usage)'}")
        return p

    # A trained run's registry: versions 1 (step 32) and 2 (the final one), version 1 tagged.
    src = sc.fresh_dir(os.path.join(r.work, "src"))
    r.train(["--epochs", "1", "--checkpoint-dir", src, "--checkpoint-every", "32"])
    valid = [v["version"] for v in sc.ckpt_versions(shardps, src) if v["valid"]]
    check(valid == [1, 2], f"the run left versions {valid}, expected [1, 2]")
    ckpt("tag", src, 1, "best")

    # Copy by tag into a registry that does not exist yet, with the tag.
    dst = os.path.join(r.work, "backup", "dst")
    p = ckpt("copy", src + "@best", dst, "--with-tags")
    check("copied v1 (" in p.stdout and "tagged v1 'best'" in p.stdout, f"unexpected output:\n{p.stdout}")
    v1s, v1d = os.path.join(src, "v00000001"), os.path.join(dst, "v00000001")
    names = sorted(os.listdir(v1s))
    check(sorted(os.listdir(v1d)) == names, f"{v1d} holds {sorted(os.listdir(v1d))}, the source {names}")
    _, mismatch, errors = filecmp.cmpfiles(v1s, v1d, names, shallow=False)
    check(not mismatch and not errors, f"copied files differ from the source: {mismatch} {errors}")
    check(not [n for n in os.listdir(dst) if n.startswith(".copy-")], f"a staging directory was left: {os.listdir(dst)}")
    p = ckpt("verify", dst)
    check(f"{v1d}: OK" in p.stdout, f"ckpt verify {dst}:\n{p.stdout}")
    ckpt("verify", dst, "best")
    check([v["version"] for v in sc.ckpt_versions(shardps, dst)] == [1], f"{dst} holds other versions than v1")
    # Restored: a resume from the copy ends with the weights of a resume from the source.
    _, out_src = r.train(["--epochs", "2", "--resume", src + "@best"])
    p, out_dst = r.train(["--epochs", "2", "--resume", dst + "@best"])
    check("resuming from " + v1d in p.stderr, f"the resume did not use the copy:\n{p.stderr}")
    check(sha(out_dst) == sha(out_src), "resuming from the copy gave other weights than from the source")

    # Again: already present, nothing changes.
    before = tree(dst)
    p = ckpt("copy", src + "@best", dst, "--with-tags")
    check("v1 already present" in p.stdout, f"a second copy did not say 'already present':\n{p.stdout}")
    after = tree(dst)
    check({k: v for k, v in after.items() if "LOCK" not in k} == {k: v for k, v in before.items() if "LOCK" not in k},
          f"a second copy changed {dst}")

    # --all: every valid version.
    every = os.path.join(r.work, "every")
    p = ckpt("copy", src, every, "--all", "--with-tags")
    check("copied v1 (" in p.stdout and "copied v2 (" in p.stdout and "tagged v1 'best'" in p.stdout, f"--all:\n{p.stdout}")
    ckpt("verify", every)

    # Usage errors: exit 2.
    refused(["copy", src + "@1", os.path.join(r.work, "u"), "--all"], [], code=2)
    refused(["copy", src], [], code=2)
    refused(["copy", src, os.path.join(r.work, "u"), "--bogus"], [], code=2)
    check(not os.path.exists(os.path.join(r.work, "u")), "a usage error created the destination")

    # A job's writer lock on the destination (held here as a job holds it): refused, not waited out.
    locked = sc.fresh_dir(os.path.join(r.work, "locked"))
    with open(os.path.join(locked, "LOCK"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write("pid 4242 on host node3, since 2026-12-01 22:50:01 UTC (shardps train)\n")
        f.flush()
        refused(["copy", src + "@1", locked, "--wait", "0"], ["while a job writes checkpoints there", "pid 4242 on host node3"])
    check(not [n for n in os.listdir(locked) if n.startswith("v")], f"a version was copied into a locked directory")

    # Another checkpoint under the same number: refused naming both paths, nothing replaced.
    other = os.path.join(r.work, "other")
    ckpt("copy", src + "@2", other)
    os.rename(os.path.join(other, "v00000002"), os.path.join(other, "v00000001"))
    before = tree(other)
    refused(["copy", src + "@1", other], [os.path.join(other, "v00000001"), v1s, "already exists"])
    check(tree(other) == before, f"a refused copy changed {other}")

    # A flipped byte in a source shard: refused naming the file; the destination untouched.
    shard = os.path.join(src, "v00000002", "shard-00000.bin")
    with open(shard, "r+b") as f:
        f.seek(17)
        b = f.read(1)
        f.seek(17)
        f.write(bytes([b[0] ^ 0x10]))
    fresh = os.path.join(r.work, "fresh")
    refused(["copy", src + "@2", fresh], [shard, "CRC32C"])
    check(not os.path.exists(fresh), f"a refused copy created {fresh}")
    before = tree(dst)
    refused(["copy", src + "@2", dst], [shard, "CRC32C"])
    check(tree(dst) == before, f"a refused copy changed {dst}")
    # --all skips it (named), copies the rest, and exits 1.
    partial = os.path.join(r.work, "partial")
    p = refused(["copy", src, partial, "--all"], ["skipping v2", shard, "skipped 1 invalid version"])
    check("copied v1 (" in p.stdout, f"--all did not copy the valid version:\n{p.stdout}")
    check([v["version"] for v in sc.ckpt_versions(shardps, partial)] == [1], f"{partial} holds other versions than v1")


CHECKS = {
    "resume_auto": check_resume_auto,
    "second_writer": check_second_writer,
    "gc_during_job": check_gc_during_job,
    "device_outputs": check_device_outputs,
    "readonly_outputs": check_readonly_outputs,
    "ckpt_copy": check_ckpt_copy,
}


def main():
    ap = sc.job_arguments()
    ap.add_argument("check", choices=sorted(CHECKS))
    a = ap.parse_args()
    sc.fresh_dir(a.work)
    os.environ.update(sc.ROOT_ENV)
    sc.main(CHECKS[a.check], a.check, Runner(a), a)


if __name__ == "__main__":
    main()
