#!/usr/bin/python3
"""End-to-end checks of `shardps train --consistency`, run by CTest (tests/train/CMakeLists.txt).

    consistency_checks.py --shardps build/bin/shardps --work DIR CHECK

ssp_zero:    consistency ssp with staleness 0 gives the weights of bsp, bit for bit (same
             weights_sha256), also with one worker slowed down by --test-slow-worker and with a
             straggler that moves from step to step (any:3).
convergence: ssp with staleness 2 and asp (one worker slowed 2x) train the softmax config for a
             short run (2 epochs of 30000 samples; bsp reaches about 0.84) to a test accuracy
             above a floor (0.78).
refused:     bad consistency/staleness values and unsupported combinations are refused before
             training, naming the field; --servers 0 with ssp/asp gives the weights of bsp.
No check asserts a time.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shardps_check as sc  # noqa: E402
from shardps_check import check  # noqa: E402
from train_checks import SMALL, run_checks  # noqa: E402


def check_ssp_zero(r, args):
    cfg = r.config("fashion_mlp.prototxt")
    bsp, _, _ = r.train(3, ["--config", cfg, "--servers", "1"] + SMALL)
    ssp, _, _ = r.train(3, ["--config", cfg, "--servers", "1", "--consistency", "ssp", "--staleness", "0"] + SMALL)
    print(f"bsp {bsp['weights_sha256']}\nssp0 {ssp['weights_sha256']}")
    check(bsp["weights_sha256"] == ssp["weights_sha256"], "ssp with staleness 0 gave other weights than bsp")
    for slow_flag in ("1:2", "any:3"):
        slow, _, _ = r.train(3, ["--config", cfg, "--servers", "1", "--consistency", "ssp", "--staleness", "0",
                                 "--test-slow-worker", slow_flag] + SMALL)
        check(slow["weights_sha256"] == bsp["weights_sha256"],
              f"ssp 0 with --test-slow-worker {slow_flag} gave other weights than bsp")


def check_convergence(r, args):
    cfg = r.config("fashion_softmax.prototxt")
    short = ["--config", cfg, "--servers", "1", "--epochs", "2", "--train-limit", "30000", "--test-limit", "2000",
             "--test-slow-worker", "1:2"]
    for policy in (["--consistency", "ssp", "--staleness", "2"], ["--consistency", "asp"]):
        s, _, _ = r.train(3, short + policy)
        print(f"{' '.join(policy)}: test accuracy {s['test_accuracy']:.4f} (need >= {args.min_accuracy}), "
              f"train loss {s.get('train_loss')}")
        check(s["test_accuracy"] >= args.min_accuracy,
              f"{' '.join(policy)}: accuracy {s['test_accuracy']} below {args.min_accuracy}")


def expect_refused(r, np_, extra, words):
    cfg = r.config("fashion_softmax.prototxt")
    _, _, p = r.train(np_, ["--config", cfg] + extra, expect_ok=False, timeout=120)
    err = p.stdout + p.stderr
    check(p.returncode != 0, f"{extra} was accepted")
    for w in words:
        check(w in err, f"{extra}: the error does not say '{w}':\n{err}")
    check("test accuracy" not in err + p.stdout, f"{extra}: refused only after training:\n{err}")


def check_refused(r, args):
    expect_refused(r, 0, ["--servers", "0", "--consistency", "stale"], ["consistency", "'stale'", "ssp"])
    expect_refused(r, 0, ["--servers", "0", "--consistency", "ssp", "--staleness", "-1"], ["staleness", "-1"])
    expect_refused(r, 0, ["--servers", "0", "--consistency", "ssp", "--staleness", "1001"], ["staleness", "1001"])
    expect_refused(r, 0, ["--servers", "0", "--staleness", "2"], ["staleness", "'ssp'"])
    expect_refused(r, 0, ["--servers", "0", "--consistency", "asp", "--mode", "local_sgd"], ["consistency", "local_sgd"])
    expect_refused(r, 3, ["--servers", "1", "--consistency", "ssp", "--checkpoint-dir", os.path.join(r.work, "ck")],
                   ["consistency", "checkpoint"])
    expect_refused(r, 0, ["--servers", "0", "--test-slow-worker", "1:0.5"], ["--test-slow-worker", "1:0.5"])
    expect_refused(r, 0, ["--servers", "0", "--test-slow-worker", "3:2"], ["--test-slow-worker", "only 1 workers"])
    # --servers 0: one worker applying its own updates, which ssp and asp give too.
    cfg = r.config("fashion_softmax.prototxt")
    tiny = ["--config", cfg, "--servers", "0", "--epochs", "1", "--train-limit", "2048", "--test-limit", "500"]
    a, _, _ = r.train(0, tiny)
    b, _, _ = r.train(0, tiny + ["--consistency", "ssp", "--staleness", "3"])
    c, _, _ = r.train(0, tiny + ["--consistency", "asp"])
    check(a["weights_sha256"] == b["weights_sha256"] == c["weights_sha256"],
          "--servers 0 with ssp or asp differs from bsp")


def main():
    ap = sc.job_arguments()
    ap.add_argument("--min-accuracy", type=float, default=0.78)
    ap.add_argument("check", choices=["ssp_zero", "convergence", "refused"])
    run_checks(ap.parse_args(), globals())


if __name__ == "__main__":
    main()
