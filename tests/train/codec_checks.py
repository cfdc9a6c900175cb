#!/usr/bin/python3
"""End-to-end checks of `shardps train` with lossy codecs (docs/compression.md), run by CTest
(tests/train/CMakeLists.txt).

    codec_checks.py --shardps build/bin/shardps --mpirun mpirun --source-dir SRC --work DIR CHECK

determinism: every lossy codec (fp16, int8, sign, topk, randomk) gives the same weights on 1 and
             on 2 servers (the codecs, their random draws and the servers' replicas are functions
             of table, chunk, step and worker index only), other weights than float32 (the codec
             is really applied), and counts fewer bytes each way than float32 in the summary; sign
             and topk with the optimizer on the workers give the same weights on 1 and 2 servers.
resume:      an int8 run with Adam checkpointed every 24 steps, resumed from a mid-run version onto
             another server count, ends with the weights of the run that never stopped (the
             checkpoint carries the servers' replicas and the workers' error-feedback residuals);
             the same with a warm-up (compress_after) that ends after the resumed version, and
             one that ends at it; Adam on the workers (their slots are checkpointed), with float32
             and with scaled sign.
convergence: int8 and scaled sign with error feedback train the Fashion-MNIST MLP on a subset to
             an accuracy a model that does not learn cannot reach, int8 within 1 point of float32.
No check asserts a time.
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shardps_check as sc  # noqa: E402,F401
from shardps_check import fail  # noqa: E402
from train_checks import SMALL, run_checks  # noqa: E402

LOSSY = ["fp16", "int8", "sign", "topk", "randomk"]
# Adam (the shipped MLP config's optimizer), 2 x 64 steps.
CKPT = ["--hidden", "32", "--train-limit", "4096", "--test-limit", "1000", "--batch-size", "64", "--epochs", "2"]


def check_determinism(r, args):
    cfg = r.config("fashion_mlp.prototxt")
    f32, _, _ = r.train(3, ["--config", cfg, "--servers", "1"] + SMALL)
    for codec in LOSSY:
        extra = ["--codec", codec] + (["--codec-density", "0.1"] if codec in ("topk", "randomk") else [])
        a, _, _ = r.train(3, ["--config", cfg, "--servers", "1"] + SMALL + extra)
        b, _, _ = r.train(4, ["--config", cfg, "--servers", "2"] + SMALL + extra)
        print(f"  {codec}: {a['weights_sha256'][:16]} / {b['weights_sha256'][:16]}, accuracy {a['test_accuracy']}, "
              f"bytes push {a['push_bytes']} pull {a['pull_bytes']} (float32: {a['push_float32_bytes']}, "
              f"{a['pull_float32_bytes']})")
        if a["weights_sha256"] != b["weights_sha256"]:
            fail(f"{codec}: 1 and 2 servers gave different weights")
        if a["weights_sha256"] == f32["weights_sha256"]:
            fail(f"{codec} gave the weights of float32: the codec was not applied")
        if not (a["push_bytes"] < a["push_float32_bytes"] and a["pull_bytes"] < a["pull_float32_bytes"]):
            fail(f"{codec}: no fewer bytes than float32 each way: {a}")
    # The optimizer on the workers (each worker's own Adam state, its compressed changes pushed):
    # as deterministic, on any server count.
    for codec in ("sign", "topk"):
        extra = ["--codec", codec, "--optimizer-on", "workers"] + (["--codec-density", "0.1"] if codec == "topk" else [])
        a, _, _ = r.train(3, ["--config", cfg, "--servers", "1"] + SMALL + extra)
        b, _, _ = r.train(4, ["--config", cfg, "--servers", "2"] + SMALL + extra)
        print(f"  {codec}, Adam on the workers: {a['weights_sha256'][:16]} / {b['weights_sha256'][:16]}, "
              f"accuracy {a['test_accuracy']}")
        if a["weights_sha256"] != b["weights_sha256"]:
            fail(f"{codec} with the optimizer on the workers: 1 and 2 servers gave different weights")
    if f32["push_bytes"] != f32["push_float32_bytes"]:
        fail(f"float32 run counts {f32['push_bytes']} bytes pushed for {f32['push_float32_bytes']} of floats")


def check_resume(r, args):
    cfg = r.config("fashion_mlp.prototxt")
    for name, extra, version in (("int8", ["--codec", "int8"], "2"),
                                 ("int8 with compress_after 30", ["--codec", "int8", "--compress-after", "30"], "1"),
                                 # the resumed version's step is the first compressed one
                                 ("int8 with compress_after 24", ["--codec", "int8", "--compress-after", "24"], "1"),
                                 # the optimizer on the workers: their Adam slots are checkpointed
                                 ("Adam on the workers", ["--optimizer-on", "workers"], "2"),
                                 ("sign with Adam on the workers", ["--codec", "sign", "--optimizer-on", "workers"], "1")):
        base = ["--config", cfg] + CKPT + extra
        full, _, _ = r.train(3, base + ["--servers", "1"])
        ck = os.path.join(r.work, "ck-" + name.replace(" ", "_"))
        shutil.rmtree(ck, ignore_errors=True)
        r.train(3, base + ["--servers", "1", "--checkpoint-dir", ck, "--checkpoint-every", "24"])
        resumed, _, p = r.train(4, base + ["--servers", "2", "--resume", f"{ck}@{version}"])
        print(f"  {name}: uninterrupted {full['weights_sha256'][:16]}, resumed from version {version} onto 2 servers "
              f"{resumed['weights_sha256'][:16]}")
        if resumed["weights_sha256"] != full["weights_sha256"]:
            fail(f"{name}: the resumed run's weights differ from the uninterrupted run's")


def check_convergence(r, args):
    cfg = r.config("fashion_mlp.prototxt")
    sub = ["--config", cfg, "--servers", "1", "--train-limit", "16384", "--test-limit", "2000", "--epochs", "2"]
    f32, _, _ = r.train(3, sub)
    i8, _, _ = r.train(3, sub + ["--codec", "int8"])
    sg, _, _ = r.train(3, sub + ["--codec", "sign"])
    print(f"  accuracy: float32 {f32['test_accuracy']}, int8 {i8['test_accuracy']}, sign {sg['test_accuracy']}")
    if i8["test_accuracy"] < f32["test_accuracy"] - 0.01:
        fail(f"int8 accuracy {i8['test_accuracy']} is more than 1 point below float32's {f32['test_accuracy']}")
    if sg["test_accuracy"] < 0.7:
        fail(f"scaled sign reached accuracy {sg['test_accuracy']} (a model that learns reaches 0.7 here)")


def main():
    ap = sc.job_arguments()
    ap.add_argument("check", choices=["determinism", "resume", "convergence"])
    run_checks(ap.parse_args(), globals())


if __name__ == "__main__":
    main()
