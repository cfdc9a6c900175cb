#!/usr/bin/python3
"""End-to-end checks of `shardps train` with model sparse_lr, run by CTest (tests/train/CMakeLists.txt).

    sparse_checks.py --shardps build/bin/shardps --work DIR CHECK

Data: `shardps datagen` (60000 training and 10000 test rows over 2^16 feature ids, 30 a row),
whose meta.json states the Bayes-optimal test log-loss of the true model.
convergence: the shipped config (examples/configs/sparse_lr.prototxt) on that data, 1 server and
             2 workers, ends within 3% of the Bayes-optimal log-loss and well below the constant
             predictor's.
servers:     the same run on 1 and on 2 servers gives the same losses, digit for digit (BSP sums
             each key's rows in worker-rank order whatever the placement).
resume:      a run checkpointed every 20 steps, resumed from the version at step 40 onto 2 servers,
             ends with the losses of the run that never stopped.
No check asserts a time.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shardps_check as sc  # noqa: E402
from shardps_check import check  # noqa: E402
from train_checks import run_checks  # noqa: E402


def data(r):
    d = os.path.join(r.work, "clicks")
    if not os.path.exists(os.path.join(d, "meta.json")):
        sc.run([r.shardps, "datagen", "--out", d, "--train-rows", "60000", "--test-rows", "10000", "--feature-bits", "16",
                "--force"], timeout=300)
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    flags = ["--config", r.config("sparse_lr.prototxt"), "--set", "data.train=" + os.path.join(d, "train.svm"),
             "--set", "data.test=" + os.path.join(d, "test.svm"), "--batch-size", "256"]
    return meta, flags


def check_convergence(r, args):
    meta, flags = data(r)
    s, _, _ = r.train(3, flags)
    bayes, const = meta["bayes_logloss"], meta["constant_logloss"]
    print(f"test log-loss {s['test_logloss']:.6f}, Bayes-optimal {bayes:.6f}, constant {const:.6f}, "
          f"accuracy {s['test_accuracy']:.4f}, {s['steps']} steps")
    check(s["test_logloss"] <= bayes * 1.03, f"test log-loss {s['test_logloss']} is not within 3% of Bayes {bayes}")
    check(s["test_logloss"] < const - 0.5 * (const - bayes), "the model is not much better than a constant")


def check_servers(r, args):
    _, flags = data(r)
    one, _, _ = r.train(3, flags + ["--servers", "1", "--epochs", "1"])
    two, _, _ = r.train(4, flags + ["--servers", "2", "--epochs", "1"])
    for k in ("test_logloss", "train_loss", "test_accuracy"):
        print(f"{k}: 1 server {one[k]!r}, 2 servers {two[k]!r}")
        check(one[k] == two[k], f"{k} differs between 1 and 2 servers: {one[k]} vs {two[k]}")


def check_resume(r, args):
    _, flags = data(r)
    ck = os.path.join(r.work, "ck")
    short = flags + ["--epochs", "1", "--set", "data.train_limit=0"]
    straight, _, _ = r.train(3, short + ["--checkpoint-dir", ck, "--checkpoint-every", "20"])
    resumed, _, _ = r.train(4, short + ["--servers", "2", "--resume", ck + "@2"])
    for k in ("test_logloss", "test_accuracy"):
        print(f"{k}: straight {straight[k]!r}, resumed at step 40 on 2 servers {resumed[k]!r}")
        check(straight[k] == resumed[k], f"{k} differs after resuming: {straight[k]} vs {resumed[k]}")


def main():
    ap = sc.job_arguments()
    ap.add_argument("check", choices=["convergence", "servers", "resume"])
    args = ap.parse_args()
    run_checks(args, globals(), without_data={"convergence", "servers", "resume"})


if __name__ == "__main__":
    main()
