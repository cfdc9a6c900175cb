#!/usr/bin/python3
"""Compares what shardps serves with a forward pass computed independently from the exported
safetensors file with numpy (float64), over the whole Fashion-MNIST test set:

    scripts/compare_predictions.py --shardps build/bin/shardps --model CKPT_DIR@VERSION [--work DIR]

It exports the version (`shardps ckpt export`), runs `shardps predict` (which loads the version
exactly as `shardps serve` does and runs the same Model::Logits), and prints the largest absolute
and relative (to max(1, |logit|)) differences of the logits, against numpy in float64 and float32,
and whether the predicted classes agree. Exit 1 when a difference exceeds --tolerance (1e-5,
relative) or a predicted class differs where numpy's top two logits are not within it.
"""
import argparse
import gzip
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "pylib"))
import shardps_check as sc  # noqa: E402


def forward(tensors, x, dtype):
    h = x.astype(dtype)
    k = 0
    while f"l{k}.w" in tensors:
        h = h @ tensors[f"l{k}.w"].astype(dtype) + tensors[f"l{k}.b"].astype(dtype)
        if f"l{k + 1}.w" in tensors:
            h = np.maximum(h, 0)
        k += 1
    return h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardps", default="build/bin/shardps")
    ap.add_argument("--model", required=True, help="DIR, DIR@VERSION or DIR@TAG")
    ap.add_argument("--work", default=None)
    ap.add_argument("--tolerance", type=float, default=1e-5)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="compare_predictions_")
    st, csv = os.path.join(work, "model.safetensors"), os.path.join(work, "pred.csv")
    images = os.path.join(sc.FASHION, "t10k-images-idx3-ubyte.gz")
    labels = os.path.join(sc.FASHION, "t10k-labels-idx1-ubyte.gz")
    subprocess.run([a.shardps, "ckpt", "export", a.model, "--out", st], check=True, stdout=subprocess.DEVNULL)
    p = subprocess.run([a.shardps, "predict", "--model", a.model, "--data", images, "--labels", labels, "--out", csv],
                       check=True, capture_output=True, text=True)
    print(p.stdout.strip())
    tensors = sc.read_safetensors_f32(st)
    with gzip.open(images) as f:
        x = np.frombuffer(f.read()[16:], dtype=np.uint8).reshape(-1, 784).astype(np.float32) / 255.0
    got = np.loadtxt(csv, delimiter=",", skiprows=1)
    logits = got[:, 3:]
    ok = True
    for name, dtype in (("float64", np.float64), ("float32", np.float32)):
        want = forward(tensors, x, dtype).astype(np.float64)
        d = np.abs(logits - want)
        rel = d / np.maximum(1.0, np.abs(want))
        print(f"vs numpy {name}: max |diff| {d.max():.3e}, max relative {rel.max():.3e}, largest |logit| {np.abs(want).max():.2f}")
        if name == "float64":
            ok = rel.max() <= a.tolerance
            top2 = np.sort(want, axis=1)[:, -2:]
            close = (top2[:, 1] - top2[:, 0]) <= a.tolerance * np.maximum(1.0, np.abs(top2[:, 1]))
            differ = (got[:, 2] != np.argmax(want, axis=1)) & ~close
            print(f"predicted classes differing from numpy's (not ties within tolerance): {int(differ.sum())}")
            ok = ok and not differ.any()
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
