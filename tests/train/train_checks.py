#!/usr/bin/python3
"""End-to-end checks of `shardps train`, run by CTest (tests/train/CMakeLists.txt).

    train_checks.py --shardps build/bin/shardps --work DIR CHECK

Each CHECK launches real jobs (mpirun or a single process), reads their summary JSON and final
safetensors model, and exits non-zero with a message when the property does not hold.
"""
import glob
import gzip
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import shardps_check as sc  # noqa: E402
from shardps_check import check, fail  # noqa: E402,F401


class Runner:
    def __init__(self, shardps, work, mpirun, source_dir):
        self.shardps, self.work, self.mpirun, self.src = shardps, work, mpirun, source_dir
        self.count = 0

    def config(self, name):
        return os.path.join(self.src, "examples", "configs", name)

    def train(self, np_, args, expect_ok=True, timeout=600):
        """Runs one job; returns (summary dict or None, run dir, completed process)."""
        self.count += 1
        out = os.path.join(self.work, f"run{self.count}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [self.shardps, "train", "--out-dir", out, "--progress", "plain"] + args
        if np_ > 0:
            cmd = sc.mpirun_cmd(self.mpirun, np_, cmd)
        p = sc.run(cmd, timeout=timeout, expect_ok=expect_ok)
        summary = sc.read_summary(out) if p.returncode == 0 else None
        return summary, out, p

    def ckpt(self, *a, ok=True, timeout=120):
        """`shardps ckpt ...`; ok: it must succeed."""
        return sc.run([self.shardps, "ckpt", *a], timeout=timeout, expect_ok=ok, quiet=True)

    @staticmethod
    def model(run_dir):
        return sc.read_safetensors_f32(os.path.join(run_dir, "final_model.safetensors"))


def rel_diff(m1, m2):
    num = sum(float(np.sum((m1[k].astype(np.float64) - m2[k]) ** 2)) for k in m1)
    den = sum(float(np.sum(m1[k].astype(np.float64) ** 2)) for k in m1)
    return (num / den) ** 0.5


SMALL = ["--hidden", "32", "--train-limit", "4096", "--test-limit", "1000", "--epochs", "1",
         "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.1"]


def check_convergence(r, args):
    cfg = r.config(args.config)
    s, _, _ = r.train(3, ["--config", cfg, "--servers", "1"])
    print(f"test accuracy {s['test_accuracy']:.4f} (need >= {args.min_accuracy}), wall {s['wall_seconds']:.1f} s")
    if s["test_accuracy"] < args.min_accuracy:
        fail(f"accuracy {s['test_accuracy']} below {args.min_accuracy}")


def check_repeat(r, args):
    cfg = r.config("fashion_mlp.prototxt")
    a, _, _ = r.train(3, ["--config", cfg, "--servers", "1"] + SMALL)
    b, _, _ = r.train(3, ["--config", cfg, "--servers", "1"] + SMALL)
    if a["weights_sha256"] != b["weights_sha256"]:
        fail("same run twice gave different weights")


def check_servers(r, args):
    cfg = r.config("fashion_mlp.prototxt")
    adam = SMALL[:-4] + ["--optimizer", "adam", "--lr", "0.001"]
    a, _, _ = r.train(3, ["--config", cfg, "--servers", "1"] + adam)
    b, _, _ = r.train(4, ["--config", cfg, "--servers", "2"] + adam)
    c, _, _ = r.train(2, ["--config", cfg, "--colocated"] + adam)
    if not (a["weights_sha256"] == b["weights_sha256"] == c["weights_sha256"]):
        fail("1 server, 2 servers and 2 colocated ranks gave different weights")


def check_codec(r, args):
    """--codec fp16: the same weights on 1 and 2 servers and on every run (the codec is a pure
    function of the values), and other weights than float32 (the codec is really applied)."""
    cfg = r.config("fashion_mlp.prototxt")
    a, _, _ = r.train(3, ["--config", cfg, "--servers", "1", "--codec", "fp16"] + SMALL)
    b, _, _ = r.train(4, ["--config", cfg, "--servers", "2", "--codec", "fp16"] + SMALL)
    c, _, _ = r.train(3, ["--config", cfg, "--servers", "1", "--codec", "fp16"] + SMALL)
    f32, _, _ = r.train(3, ["--config", cfg, "--servers", "1"] + SMALL)
    print(f"fp16 {a['weights_sha256']} / {b['weights_sha256']} / {c['weights_sha256']}, float32 {f32['weights_sha256']}")
    if not (a["weights_sha256"] == b["weights_sha256"] == c["weights_sha256"]):
        fail("fp16 runs on 1 and 2 servers, or two runs, gave different weights")
    if a["weights_sha256"] == f32["weights_sha256"]:
        fail("fp16 gave the weights of float32: the codec was not applied")
    if a["test_accuracy"] < f32["test_accuracy"] - 0.02:
        fail(f"fp16 accuracy {a['test_accuracy']} far below float32's {f32['test_accuracy']}")


def check_single_process(r, args):
    cfg = r.config("fashion_mlp.prototxt")
    a, _, _ = r.train(2, ["--config", cfg, "--servers", "1"] + SMALL)
    b, _, _ = r.train(0, ["--config", cfg, "--servers", "0"] + SMALL)
    if a["weights_sha256"] != b["weights_sha256"]:
        fail("1 server + 1 worker differs from the single-process path")


def check_workers(r, args):
    cfg = r.config("fashion_mlp.prototxt")
    _, d1, _ = r.train(2, ["--config", cfg, "--servers", "1"] + SMALL)
    _, d2, _ = r.train(3, ["--config", cfg, "--servers", "1"] + SMALL)
    d = rel_diff(r.model(d1), r.model(d2))
    print(f"relative difference 1 vs 2 workers: {d:.3g}")
    if d > 1e-5:
        fail(f"1 and 2 workers differ by {d} relative (limit 1e-5)")


def check_local_sgd(r, args):
    cfg = r.config("fashion_mlp.prototxt")
    _, d1, _ = r.train(3, ["--config", cfg, "--servers", "1"] + SMALL)
    _, d2, _ = r.train(3, ["--config", cfg, "--servers", "1", "--mode", "local_sgd", "--local-steps", "1"] + SMALL)
    d = rel_diff(r.model(d1), r.model(d2))
    print(f"relative difference sync vs local_sgd K=1: {d:.3g}")
    if d > 1e-4:
        fail(f"local_sgd K=1 differs from sync SGD by {d} relative")
    s, _, _ = r.train(3, ["--config", cfg, "--servers", "1", "--mode", "local_sgd", "--local-steps", "0"] + SMALL)
    if not s["test_accuracy"] > 0.5:
        fail(f"one-shot averaging gave accuracy {s['test_accuracy']}")


CKPT = ["--config", None, "--hidden", "32", "--test-limit", "1000", "--batch-size", "64"]


def ckpt_defaults(a):
    """Adds the checkpoint tests' defaults for flags not given."""
    for flag, value in (("--train-limit", "4096"), ("--optimizer", "adam"), ("--lr", "0.001")):
        if flag not in a:
            a += [flag, value]
    return a


def ckpt_args(r, *extra):
    a = list(CKPT)
    a[1] = r.config("fashion_mlp.prototxt")
    return ckpt_defaults(a + list(extra))


def check_resume(r, args):
    """2N steps uninterrupted == N steps, stop, resume for N more; also across server counts, from a
    mid-epoch version, and (within rounding) with another number of workers."""
    ck1, ck2 = os.path.join(r.work, "ck1"), os.path.join(r.work, "ck2")
    for d in (ck1, ck2):
        shutil.rmtree(d, ignore_errors=True)
    full, dfull, _ = r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "2"))
    r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "1", "--checkpoint-dir", ck1, "--checkpoint-every", "24"))
    r.train(4, ckpt_args(r, "--servers", "2", "--epochs", "1", "--checkpoint-dir", ck2))
    cases = [("1 -> 3 servers, newest version", 5, ["--servers", "3", "--resume", ck1]),
             ("1 -> 1 server, mid-epoch version 2 (step 48)", 3, ["--servers", "1", "--resume", ck1 + "@2"]),
             ("2 -> 1 servers", 3, ["--servers", "1", "--resume", ck2]),
             ("1 -> 2 colocated ranks", 2, ["--colocated", "--resume", ck1])]
    for name, np_, extra in cases:
        s, _, p = r.train(np_, ckpt_args(r, "--epochs", "2", *extra))
        if s["weights_sha256"] != full["weights_sha256"]:
            fail(f"{name}: resumed weights differ from the uninterrupted run")
        print(f"  {name}: identical weights ({s['weights_sha256'][:16]})")
    _, d1w, _ = r.train(2, ckpt_args(r, "--servers", "1", "--epochs", "2", "--resume", ck1))
    d = rel_diff(r.model(dfull), r.model(d1w))
    print(f"  2 -> 1 workers: relative difference {d:.3g}")
    if d > 1e-5:
        fail(f"resuming with 1 worker differs by {d} relative")
    # ftrl keeps two state floats per weight like adam, but other ones: refused by name.
    _, _, p = r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "2", "--resume", ck1, "--optimizer", "ftrl"),
                      expect_ok=False)
    if p.returncode == 0 or "optimizer 'adam'" not in p.stderr or "'ftrl'" not in p.stderr:
        fail(f"resuming an adam checkpoint with ftrl was not refused by name:\n{p.stderr}")
    print("  adam -> ftrl (same slot count): refused")
    versions = sc.ckpt_versions(r.shardps, ck1)
    if [v["step"] for v in versions] != [24, 48, 64] or not all(v["valid"] for v in versions):
        fail(f"ckpt list: {versions}")
    # Training ends one step after a checkpoint was requested: that one completes, then the final.
    ck3 = os.path.join(r.work, "ck3")
    shutil.rmtree(ck3, ignore_errors=True)
    r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "1", "--checkpoint-dir", ck3, "--checkpoint-every", "63"))
    steps = [v["step"] for v in sc.ckpt_versions(r.shardps, ck3) if v["valid"]]
    if steps != [63, 64]:
        fail(f"a checkpoint one step before the end: valid versions at steps {steps}")


def check_corruption(r, args):
    """Each corruption is found by `ckpt verify` and skipped by --resume (with a warning naming the
    version); an explicit bad @VERSION is an error."""
    base = os.path.join(r.work, "base")
    shutil.rmtree(base, ignore_errors=True)
    full, _, _ = r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "2"))
    r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "1", "--checkpoint-dir", base, "--checkpoint-every", "32"))
    # versions: 1 (step 32), 2 (step 64, final)

    def flip(d):
        p = os.path.join(d, "v00000002", "shard-00000.bin")
        with open(p, "r+b") as f:
            f.seek(1000)
            b = f.read(1)
            f.seek(1000)
            f.write(bytes([b[0] ^ 0x40]))

    def truncate(d):
        p = os.path.join(d, "v00000002", "shard-00000.bin")
        os.truncate(p, os.path.getsize(p) - 100)

    def no_manifest(d):
        os.remove(os.path.join(d, "v00000002", "MANIFEST"))

    def other_step(d):
        # The shard of step 32 under the manifest of step 64.
        for ext in ("bin", "info"):
            shutil.copy(os.path.join(d, "v00000001", f"shard-00000.{ext}"), os.path.join(d, "v00000002", f"shard-00000.{ext}"))

    for name, corrupt in (("flipped byte", flip), ("truncated shard", truncate), ("missing manifest", no_manifest),
                          ("shard of another step", other_step)):
        d = os.path.join(r.work, "c_" + name.replace(" ", "_"))
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(base, d)
        corrupt(d)
        p = r.ckpt("verify", d, ok=False)
        if p.returncode == 0 or "v00000002: BAD" not in p.stdout:
            fail(f"{name}: verify did not report it:\n{p.stdout}{p.stderr}")
        print(f"  {name}: verify: {[l for l in p.stdout.splitlines() if 'BAD' in l][0]}")
        s, _, p = r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "2", "--resume", d))
        if "skipping checkpoint" not in p.stderr or "v00000002" not in p.stderr or "resuming from " + d + "/v00000001" not in p.stderr:
            fail(f"{name}: resume did not fall back to version 1 with a warning:\n{p.stderr}")
        if s["weights_sha256"] != full["weights_sha256"]:
            fail(f"{name}: resuming from the previous version did not give the uninterrupted weights")
        _, _, p = r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "2", "--resume", d + "@2"), expect_ok=False)
        if p.returncode == 0 or "version 2" not in p.stderr:
            fail(f"{name}: explicit @2 was not refused:\n{p.stderr}")


def check_registry(r, args):
    """tag, @TAG, rollback, gc with each retention rule, retention during training, list --json."""
    d = os.path.join(r.work, "reg")
    shutil.rmtree(d, ignore_errors=True)

    def ckpt(*a, ok=True):
        p = r.ckpt(*a, ok=ok)
        print(f"  $ shardps ckpt {' '.join(a)} -> {p.returncode}: {(p.stdout + p.stderr).strip()[:150]}")
        return p

    def versions():
        return [v["version"] for v in json.loads(ckpt("list", d, "--json").stdout)]

    r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "1", "--checkpoint-dir", d, "--checkpoint-every", "16"))
    if versions() != [1, 2, 3, 4]:
        fail(f"versions {versions()}")
    ckpt("tag", d, "2", "best")
    if ckpt("tag", d, "9", "nope", ok=False).returncode == 0:
        fail("tagging a missing version succeeded")
    s, _, p = r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "2", "--resume", d + "@best"))
    if "v00000002" not in p.stderr:
        fail("@best did not resume version 2")
    ckpt("rollback", d, "best")
    _, _, p = r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "2", "--resume", d, "--checkpoint-dir", d))
    if "resuming from " + d + "/v00000002" not in p.stderr:
        fail("after rollback a plain --resume did not pick version 2:\n" + p.stderr)
    if versions() != [1, 2, 3, 4, 5] or os.path.exists(os.path.join(d, "HEAD")):
        fail("the new checkpoint did not become the newest and clear the rollback")
    _, _, p = r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "3", "--resume", d))
    if "resuming from " + d + "/v00000005" not in p.stderr:
        fail("a plain --resume did not pick the newest version after a new checkpoint")
    ckpt("gc", d, "--keep-last", "2")
    if versions() != [2, 4, 5]:
        fail(f"gc --keep-last 2 left {versions()} (expected the tagged 2 and the newest two)")
    ckpt("gc", d, "--max-bytes", "1")
    if versions() != [2, 5]:
        fail(f"gc --max-bytes 1 left {versions()} (expected the tagged 2 and the newest 5)")
    ckpt("untag", d, "best")
    ckpt("gc", d, "--keep-last", "1")
    if versions() != [5]:
        fail(f"after untag, gc --keep-last 1 left {versions()}")
    d2 = os.path.join(r.work, "reg2")
    shutil.rmtree(d2, ignore_errors=True)
    r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "1", "--checkpoint-dir", d2, "--checkpoint-every", "16",
                         "--keep-last", "2"))
    kept = [v["step"] for v in json.loads(ckpt("list", d2, "--json").stdout)]
    if kept != [48, 64]:
        fail(f"retention during training kept steps {kept}")


def check_crash(r, args):
    """A process killed at each phase of a checkpoint write leaves the previous version usable, and
    --resume finishes with the uninterrupted run's weights."""
    full, _, _ = r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "2"))
    # Checkpoints every 24 steps of the 64 in an epoch: versions 1 (step 24), 2 (48), 3 (64).
    for phase, servers, resumes_from in (("shard-written", "1", 1), ("shard-written", "2", 1),
                                         ("before-rename:shard-00000.bin", "1", 1),
                                         ("before-rename:MANIFEST", "1", 1), ("before-dir-fsync:MANIFEST", "1", 2)):
        d = os.path.join(r.work, "crash_" + phase.replace(":", "_") + "_" + servers)
        shutil.rmtree(d, ignore_errors=True)
        np_ = 2 + int(servers)
        _, _, p = r.train(np_, ckpt_args(r, "--servers", servers, "--epochs", "1", "--checkpoint-dir", d,
                                         "--checkpoint-every", "24", "--test-crash-at", phase + "@2"), expect_ok=False)
        if p.returncode == 0 or "killing this process" not in p.stderr:
            fail(f"{phase}: the fault hook did not fire:\n{p.stderr}")
        s, _, p = r.train(np_, ckpt_args(r, "--servers", servers, "--epochs", "2", "--resume", d))
        want = f"resuming from {d}/v{resumes_from:08d}"
        if want not in p.stderr:
            fail(f"{phase}: expected '{want}':\n{p.stderr}")
        if s["weights_sha256"] != full["weights_sha256"]:
            fail(f"{phase}: resumed weights differ from the uninterrupted run")
        print(f"  killed at {phase} of version 2 ({servers} servers): resumed from version {resumes_from}, same weights")


KILL_LOOP_RESUMES = 3     # killed runs that had resumed from a checkpoint, at least
KILL_LOOP_MAX_RUNS = 14   # a bound on the loop: it ends earlier once both goals are met
KILL_LOOP_WAIT = 180      # seconds: every wait of the loop (a checkpoint, the end of a killed job)


def version_dirs(d):
    """{version number: whether its MANIFEST exists} of the version directories in d."""
    out = {}
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for n in names:
        if re.fullmatch(r"v\d{8}", n):
            out[int(n[1:])] = os.path.exists(os.path.join(d, n, "MANIFEST"))
    return out


def interrupted_writes(d):
    """Version directories without a MANIFEST (a write that never committed) and leftover *.tmp files."""
    incomplete = {v for v, committed in version_dirs(d).items() if not committed}
    return incomplete, glob.glob(os.path.join(d, "v*", "*.tmp"))


def check_kill_loop(r, args):
    """A bounded loop of SIGKILLs of a random rank of a real mpirun job that checkpoints every 4 steps.
    No kill before the first committed checkpoint: each run is first allowed to commit a version of
    its own (so every later run really resumes); then it is killed either after a random delay or
    the moment a version directory without a MANIFEST (a checkpoint being written) appears. A kill
    "landed during a checkpoint write" when, with every process dead, a version directory that was
    not there before is left without a MANIFEST (or a .tmp file is left). The loop goes on until at
    least three killed runs had resumed and at least one kill landed during a write; then a last
    run resumes to the end and must have the uninterrupted run's weights."""
    rng = random.Random(20261201)
    base = ckpt_args(r, "--servers", "1", "--epochs", "3", "--train-limit", "16384")
    full, _, _ = r.train(3, base)
    d = os.path.join(r.work, "kill_loop")
    shutil.rmtree(d, ignore_errors=True)
    job_args = base + ["--checkpoint-dir", d, "--checkpoint-every", "4", "--keep-last", "4"]
    resumed_kills, write_kills, final, history = 0, 0, None, []
    for i in range(KILL_LOOP_MAX_RUNS):
        if resumed_kills >= KILL_LOOP_RESUMES and write_kills >= 1:
            break
        valid = [v for v in sc.ckpt_versions(r.shardps, d) if v["valid"]]
        resuming = bool(valid)
        check(resuming or i == 0, f"run {i}: no valid checkpoint to resume from after the kills:\n{history}")
        before = version_dirs(d)
        incomplete_before, _ = interrupted_writes(d)
        out = os.path.join(r.work, f"kill{i}")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        cmd = sc.mpirun_cmd(r.mpirun, 3, [r.shardps, "train", "--out-dir", out, "--progress", "never"] + job_args +
                            (["--resume", d] if resuming else []))
        with open(os.path.join(out, "stdout"), "w") as so, open(os.path.join(out, "stderr"), "w") as se:
            p = sc.popen(cmd, stdout=so, stderr=se, stdin=subprocess.DEVNULL)

        def stderr():
            with open(os.path.join(out, "stderr")) as f:
                return f.read()

        # The first committed checkpoint of this run (a version newer than any before it).
        newest_before = max(before, default=0)
        sc.wait_until(lambda: p.poll() is not None or
                                  any(v > newest_before and ok for v, ok in version_dirs(d).items()),
                                  KILL_LOOP_WAIT, f"run {i}'s first checkpoint in {d}", poll=0.01)
        if p.poll() is not None:
            check(p.returncode == 0, lambda: f"run {i} failed (exit {p.returncode}) before its first checkpoint:\n"
                                             f"{stderr()}")
            final = sc.read_summary(out)
            history.append(f"run {i}: finished before it could be killed")
            break
        # Where to kill: the moment a new version is being written (every other run), or at random.
        mode = "during a write" if i % 2 == 1 or (write_kills == 0 and i >= 4) else "at random"
        if mode == "at random":
            time.sleep(rng.uniform(0.0, 0.8))
        else:
            known = set(version_dirs(d))
            deadline = time.time() + 30
            while time.time() < deadline and p.poll() is None:
                if any(not ok for v, ok in version_dirs(d).items() if v not in known):
                    break
                time.sleep(0.001)
        ranks = sc.children_of(p.pid)
        if p.poll() is None and ranks:
            victim = rng.choice(ranks)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                victim = None
        else:
            victim = None
        sc.communicate(p, KILL_LOOP_WAIT, f"run {i} after rank pid {victim} was killed")
        err = stderr()
        did_resume = "resuming from " + d in err
        check(did_resume == resuming, lambda: f"run {i}: --resume given: {resuming}, 'resuming from' said: "
                                              f"{did_resume}:\n{err}")
        if p.returncode == 0:
            final = sc.read_summary(out)
            history.append(f"run {i}: finished before the kill landed")
            break
        check(victim is not None, lambda: f"run {i} failed by itself (exit {p.returncode}):\n{err}")
        incomplete, tmps = interrupted_writes(d)
        torn = sorted(incomplete - incomplete_before) + tmps
        resumed_kills += int(resuming)
        write_kills += int(bool(torn))
        line = (f"run {i}: {'resumed' if resuming else 'fresh'}, committed a version, then killed {mode} "
                f"(pid {victim}); exit {p.returncode}; "
                f"{'interrupted write: ' + ', '.join(map(str, torn)) if torn else 'no write in progress'}")
        history.append(line)
        print("  " + line)
    check(resumed_kills >= KILL_LOOP_RESUMES,
          lambda: f"only {resumed_kills} killed runs had resumed (need {KILL_LOOP_RESUMES}):\n" + "\n".join(history))
    check(write_kills >= 1, lambda: "no kill landed during a checkpoint write:\n" + "\n".join(history))
    if final is None:
        final, _, p = r.train(3, job_args + ["--resume", d])
        check("resuming from " + d in p.stderr, lambda: f"the last run did not resume:\n{p.stderr}")
    check(final["weights_sha256"] == full["weights_sha256"],
          "after the kill loop the weights differ from the uninterrupted run")
    print(f"  {resumed_kills} resumed runs killed, {write_kills} kill(s) during a checkpoint write; "
          f"final weights equal the uninterrupted run's")


def check_init_from(r, args):
    """--init-from a model file: one step with a negligible learning rate keeps its weights exactly."""
    a, da, _ = r.train(3, ckpt_args(r, "--servers", "1", "--epochs", "1"))
    model = os.path.join(da, "final_model.safetensors")
    b, _, _ = r.train(4, ckpt_args(r, "--servers", "2", "--epochs", "1", "--train-limit", "64", "--optimizer", "sgd",
                                   "--lr", "1e-30", "--init-from", model))
    if b["weights_sha256"] != a["weights_sha256"]:
        fail("--init-from did not start from the file's weights")
    if abs(b["test_accuracy"] - a["test_accuracy"]) > 1e-9:
        fail(f"accuracy {b['test_accuracy']} after --init-from, {a['test_accuracy']} before")
    _, _, p = r.train(3, ckpt_args(r, "--servers", "1", "--init-from", os.path.join(r.work, "missing.safetensors")),
                      expect_ok=False)
    if p.returncode == 0 or "missing.safetensors" not in p.stderr:
        fail("a missing --init-from file was not reported")


def write_safetensors_f32(path, tensors):
    """A float32 safetensors file of {name: numpy array} (the layout shardps writes)."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


DISTILL_DATA = ["--train-limit", "8192", "--test-limit", "2000"]
DISTILL_FLOOR = 0.70  # a model that learned nothing gets 0.10 on the ten balanced classes


def check_distill(r, args):
    """Knowledge distillation end to end: a short teacher run, then the shipped student config
    distilled from its final model. The student learns (accuracy above a floor), two identical runs
    give the same weights, the teacher really changes them (and alpha 0 gives the plain student's
    bits), a 1 server + 1 worker job gives the single process's weights, the summary records the
    settings, and bad flags or a teacher that does not fit are refused by name before training."""
    _, dt, _ = r.train(0, ["--config", r.config("fashion_mlp.prototxt"), "--servers", "0", "--epochs", "2"] + DISTILL_DATA)
    teacher = os.path.join(dt, "final_model.safetensors")
    student = ["--config", r.config("fashion_mlp_student.prototxt"), "--epochs", "2"] + DISTILL_DATA
    kd = ["--teacher", teacher, "--distill-temperature", "4", "--distill-alpha", "0.9"]
    a, _, p = r.train(0, student + ["--servers", "0"] + kd)
    print(f"  distilled student: test accuracy {a['test_accuracy']:.4f} (floor {DISTILL_FLOOR}); {p.stderr.splitlines()[0]}")
    check(a["test_accuracy"] >= DISTILL_FLOOR, f"distilled student accuracy {a['test_accuracy']} below {DISTILL_FLOOR}")
    check(a.get("distillation") == {"teacher": teacher, "temperature": 4, "alpha": 0.9},
          f"summary does not record the distillation settings: {a.get('distillation')}")
    b, _, _ = r.train(0, student + ["--servers", "0"] + kd)
    check(a["weights_sha256"] == b["weights_sha256"], "two identical distilled runs gave different weights")
    plain, _, _ = r.train(0, student + ["--servers", "0"])
    check("distillation" not in plain, "a run without --teacher records distillation in its summary")
    check(plain["weights_sha256"] != a["weights_sha256"], "the teacher did not change the student's weights")
    zero, _, _ = r.train(0, student + ["--servers", "0", "--teacher", teacher, "--distill-alpha", "0"])
    check(zero["weights_sha256"] == plain["weights_sha256"], "alpha 0 did not give the plain student's weights")
    t8, _, _ = r.train(0, student + ["--servers", "0", "--teacher", teacher, "--distill-temperature", "8"])
    check(t8["weights_sha256"] != a["weights_sha256"], "the temperature did not change the student's weights")
    d, _, _ = r.train(2, student + ["--servers", "1"] + kd)
    check(d["weights_sha256"] == a["weights_sha256"], "1 server + 1 worker distilled other weights than one process")
    print(f"  identical runs, 1 server + 1 worker: {a['weights_sha256'][:16]}; alone {plain['weights_sha256'][:16]} "
          f"(accuracy {plain['test_accuracy']:.4f}); alpha 0 gives alone's weights")

    bad = os.path.join(r.work, "wrong_shape.safetensors")
    write_safetensors_f32(bad, {"l0.w": np.zeros((784, 32)), "l0.b": np.zeros(32), "l1.w": np.zeros((16, 10)),
                                "l1.b": np.zeros(10)})
    refused = [("T = 0", kd[:2] + ["--distill-temperature", "0"], ["--distill-temperature"]),
               ("alpha 1.5", kd[:2] + ["--distill-alpha", "1.5"], ["--distill-alpha", "1.5"]),
               ("alpha without a teacher", ["--distill-alpha", "0.5"], ["--distill-alpha", "--teacher"]),
               ("a missing teacher", ["--teacher", os.path.join(r.work, "absent.safetensors")], ["absent.safetensors"]),
               ("a teacher of the wrong shape", ["--teacher", bad], ["wrong_shape.safetensors", "'l1.w'", "[16, 10]"])]
    for name, extra, needles in refused:
        for np_, servers in ((0, "0"), (2, "1")):
            _, _, p = r.train(np_, student + ["--servers", servers] + extra, expect_ok=False, timeout=120)
            check(p.returncode != 0, f"{name}: exit 0")
            for n in needles:
                check(n in p.stderr, lambda: f"{name}: the error does not name {n!r}:\n{p.stderr}")
            check(not os.path.exists(os.path.join(r.work, f"run{r.count}", "metrics.csv")),
                  f"{name}: the job started training before refusing")
        print(f"  {name}: refused: {[l for l in p.stderr.splitlines() if needles[0] in l][0][:170]}")
    _, _, p = r.train(0, ["--config", r.config("sparse_lr.prototxt"), "--teacher", teacher], expect_ok=False)
    check(p.returncode != 0 and "sparse_lr" in p.stderr and "--teacher" in p.stderr,
          f"sparse_lr with --teacher was not refused by name:\n{p.stderr}")


def write_idx(path, dims, data, magic_type=0x08, gz=True):
    raw = bytes([0, 0, magic_type, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(data)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(raw)


def check_bad_input(r, args):
    w = r.work
    imgs, labs = os.path.join(w, "imgs.gz"), os.path.join(w, "labs.gz")
    write_idx(imgs, [100, 4, 4], [i % 256 for i in range(1600)])
    write_idx(labs, [100], [i % 10 for i in range(100)])
    cfg = os.path.join(w, "tiny.prototxt")

    def write_cfg(train, train_labels, fmt="idx", extra=""):
        with open(cfg, "w") as f:
            f.write(f'model: "softmax"\ndata {{ format: "{fmt}" train: "{train}" train_labels: "{train_labels}" '
                    f'test: "{train}" test_labels: "{train_labels}" num_classes: 10 }}\n'
                    f'epochs: 1 batch_size: 10 timeout_ms: 20000\n{extra}')
    write_cfg(imgs, labs)
    r.train(3, ["--config", cfg, "--servers", "1"])  # the good case works

    cases = []
    trunc = os.path.join(w, "trunc.gz")
    write_idx(trunc, [100, 4, 4], [0] * 1000)  # 1600 bytes announced, 1000 present
    cases.append(("truncated IDX", dict(train=trunc, train_labels=labs), "trunc.gz"))
    magic = os.path.join(w, "magic.gz")
    write_idx(magic, [100, 4, 4], [0] * 1600, magic_type=0x0D)
    cases.append(("wrong magic number", dict(train=magic, train_labels=labs), "magic.gz"))
    badlab = os.path.join(w, "badlab.gz")
    write_idx(badlab, [100], [i % 10 for i in range(99)] + [12])
    cases.append(("label out of range", dict(train=imgs, train_labels=badlab), "badlab.gz"))
    svm = os.path.join(w, "bad.svm")
    with open(svm, "w") as f:
        f.write("1 1:0.5 3:1.0\n2 2:0.25 x:1\n")
    cases.append(("libsvm bad index", dict(train=svm, train_labels="", fmt="libsvm"), "bad.svm:2"))
    for name, kw, needle in cases:
        write_cfg(**kw)
        for np_, extra in ((3, ["--servers", "1"]), (0, ["--servers", "0"])):
            t0 = time.time()
            _, _, p = r.train(np_, ["--config", cfg] + extra, expect_ok=False, timeout=120)
            if p.returncode == 0:
                fail(f"{name}: exit 0")
            if needle not in p.stderr:
                fail(f"{name}: error does not name {needle!r}:\n{p.stderr}")
            print(f"  {name}: exit {p.returncode} in {time.time() - t0:.1f} s: "
                  f"{[l for l in p.stderr.splitlines() if needle in l][0][:160]}")
    write_cfg(imgs, labs, extra="learning_rat: 0.1\n")
    _, _, p = r.train(3, ["--config", cfg, "--servers", "1"], expect_ok=False, timeout=120)
    if p.returncode == 0 or "learning_rat" not in p.stderr:
        fail(f"unknown config key not reported:\n{p.stderr}")
    write_cfg(imgs, labs)
    _, _, p = r.train(3, ["--config", cfg, "--servers", "1", "--set", "optimizer.nope=1"], expect_ok=False)
    if p.returncode == 0 or "optimizer.nope" not in p.stderr:
        fail(f"unknown override key not reported:\n{p.stderr}")


def break_model_dir_after_first_checkpoint(p, ck, model_dir, what):
    """Once the job `p` has committed a checkpoint in `ck` (training is under way, past the checks
    at start), replaces the --model-out directory by a regular file, so that writing the final
    model fails at the end."""
    sc.wait_until(lambda: p.poll() is not None or sc.committed_manifests(ck), 300, f"{what}: a first checkpoint in {ck}",
                  poll=0.01)
    check(p.poll() is None, f"{what}: the job ended (exit {p.returncode}) before its first checkpoint")
    shutil.rmtree(model_dir)
    with open(model_dir, "w") as f:
        f.write("a file where the model's directory was\n")


def check_failure_ends_job(r, args):
    """Under mpirun, a rank that fails after training started (here the lead worker cannot write the
    final model: its directory became a file during training) ends the whole job at once
    (MPI_Abort) instead of leaving the servers waiting for its goodbye until their finish deadline;
    its error says where training stood."""
    model_dir, ck = sc.fresh_dir(os.path.join(r.work, "model-dir")), os.path.join(r.work, "fe-ck")
    shutil.rmtree(ck, ignore_errors=True)
    out = sc.fresh_dir(os.path.join(r.work, "fe-out"))
    cmd = sc.mpirun_cmd(r.mpirun, 3, [r.shardps, "train", "--out-dir", out, "--progress", "never", "--config",
                                      r.config("fashion_softmax.prototxt"), "--servers", "1", "--epochs", "2",
                                      "--test-limit", "500", "--checkpoint-dir", ck, "--checkpoint-every", "5",
                                      "--model-out", os.path.join(model_dir, "model.safetensors")])
    print("$ " + " ".join(cmd))
    p = sc.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    break_model_dir_after_first_checkpoint(p, ck, model_dir, "failure_ends_job")
    t0 = time.time()
    so, se = sc.communicate(p, 120, "the job whose model cannot be written")
    took = time.time() - t0
    check(p.returncode != 0, "the job succeeded although the lead worker could not write its model")
    err = so + se
    for want in ["rank 1 (worker 0): ", "model-dir", "last completed step"]:
        check(want in err, lambda: f"missing '{want}' in the output:\n{err}")
    print(f"  {[l for l in err.splitlines() if 'rank 1 (worker 0): ' in l][0][:200]}")
    print(f"  the job ended {took:.1f} s after its model directory was replaced, exit {p.returncode}")


def main():
    ap = sc.job_arguments()
    ap.add_argument("--config", default="fashion_softmax.prototxt")
    ap.add_argument("--min-accuracy", type=float, default=0.84)
    ap.add_argument("check", choices=["convergence", "repeat", "servers", "codec", "single_process", "workers", "local_sgd",
                                      "bad_input", "resume", "corruption", "registry", "crash", "kill_loop", "init_from",
                                      "failure_ends_job", "distill"])
    run_checks(ap.parse_args(), globals(), without_data={"bad_input"})


def run_checks(args, checks, without_data=()):
    """Runs check_<args.check> from `checks` (a module's globals) with a Runner over args.work."""
    def run_check():
        if args.check not in without_data:
            sc.need_fashion()
        os.makedirs(args.work, exist_ok=True)
        r = Runner(args.shardps, args.work, args.mpirun, args.source_dir)
        checks["check_" + args.check](r, args)

    sc.main(run_check, args.check)


if __name__ == "__main__":
    main()
