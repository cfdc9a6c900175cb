#!/usr/bin/python3
"""Baseline for sparse logistic regression: `shardps datagen` writes a synthetic click-style set,
Debian's liblinear (liblinear-tools) trains L2-regularised logistic regression on it
(`liblinear-train -s 0`), and this script computes liblinear's test log-loss from
`liblinear-predict -b 1` probabilities, printed beside the Bayes-optimal log-loss of meta.json.

  scripts/bench_sparse_lr_liblinear.py [--shardps build/bin/shardps] [--work build/bench_sparse_lr]
      [--train-rows 1000000] [--test-rows 100000] [--feature-bits 24] [--nnz 30] [--seed 1]
      [--cost 1] [--json-out FILE]

Exits non-zero when a step fails or liblinear's probabilities do not cover the test set.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time


def run(cmd, **kw):
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    dt = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"bench_sparse_lr_liblinear: {' '.join(cmd)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p, dt


def test_labels(path):
    """The label of every row (1 or 0) of a libsvm file, as the generator wrote it."""
    out = []
    with open(path) as f:
        for line in f:
            tok = line.split(None, 1)[0] if line.strip() else None
            if tok is None or tok.startswith("#"):
                continue
            out.append(1 if float(tok) == 1 else 0)
    return out


def liblinear_logloss(pred_path, labels):
    """Mean log-loss of liblinear-predict -b 1 output ("labels 1 0" header, then "label p1 p0")."""
    with open(pred_path) as f:
        header = f.readline().split()
        if not header or header[0] != "labels":
            sys.exit(f"bench_sparse_lr_liblinear: {pred_path}: no 'labels' header (was -b 1 given?)")
        cols = [1 if float(x) == 1 else 0 for x in header[1:]]
        if 1 not in cols:
            sys.exit(f"bench_sparse_lr_liblinear: {pred_path}: liblinear saw no positive label")
        pos_col = cols.index(1)
        total, n = 0.0, 0
        for line, y in zip(f, labels):
            p1 = float(line.split()[1 + pos_col])
            p = min(max(p1 if y == 1 else 1.0 - p1, 1e-15), 1.0)
            total -= math.log(p)
            n += 1
    if n == 0 or not math.isfinite(total):
        sys.exit(f"bench_sparse_lr_liblinear: {pred_path}: no usable probabilities")
    if n != len(labels):
        sys.exit(f"bench_sparse_lr_liblinear: {pred_path} has {n} predictions for {len(labels)} test rows")
    return total / n


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shardps", default=os.path.join(root, "build", "bin", "shardps"))
    ap.add_argument("--work", default=os.path.join(root, "build", "bench_sparse_lr"))
    ap.add_argument("--train-rows", type=int, default=1_000_000)
    ap.add_argument("--test-rows", type=int, default=100_000)
    ap.add_argument("--feature-bits", type=int, default=24)
    ap.add_argument("--nnz", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cost", type=float, default=1.0, help="liblinear -c (the inverse L2 strength)")
    ap.add_argument("--json-out", help="also write the results as JSON here")
    a = ap.parse_args()
    for tool in ("liblinear-train", "liblinear-predict"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_sparse_lr_liblinear: {tool} not found: install liblinear-tools (scripts/setup.sh)")
    if not os.access(a.shardps, os.X_OK):
        sys.exit(f"bench_sparse_lr_liblinear: no shardps program at {a.shardps} (build first, or pass --shardps)")
    data = os.path.join(a.work, "data")
    os.makedirs(a.work, exist_ok=True)

    _, t_gen = run([a.shardps, "datagen", "--out", data, "--force", "--seed", str(a.seed),
                    "--feature-bits", str(a.feature_bits), "--nnz", str(a.nnz),
                    "--train-rows", str(a.train_rows), "--test-rows", str(a.test_rows)])
    with open(os.path.join(data, "meta.json")) as f:
        meta = json.load(f)
    model = os.path.join(a.work, "liblinear.model")
    pred = os.path.join(a.work, "liblinear.pred")
    _, t_train = run(["liblinear-train", "-q", "-s", "0", "-c", str(a.cost), "-B", "1",
                      os.path.join(data, "train.svm"), model])
    _, t_pred = run(["liblinear-predict", "-b", "1", os.path.join(data, "test.svm"), model, pred])
    labels = test_labels(os.path.join(data, "test.svm"))
    ll = liblinear_logloss(pred, labels)
    bayes = meta["bayes_logloss"]
    res = {
        "train_rows": a.train_rows, "test_rows": a.test_rows, "feature_bits": a.feature_bits, "nnz": a.nnz,
        "seed": a.seed, "cost": a.cost,
        "datagen_seconds": round(t_gen, 3), "liblinear_train_seconds": round(t_train, 3),
        "liblinear_predict_seconds": round(t_pred, 3),
        "liblinear_test_logloss": ll, "bayes_logloss": bayes,
        "true_model_logloss": meta["true_model_logloss"], "constant_logloss": meta["constant_logloss"],
        "liblinear_over_bayes": ll / bayes,
    }
    print(f"data: {a.train_rows} train / {a.test_rows} test rows, 2^{a.feature_bits} features, "
          f"{a.nnz} features a row, seed {a.seed} (datagen {t_gen:.2f} s)")
    print(f"liblinear-train -s 0 -c {a.cost:g} -B 1: {t_train:.2f} s train, {t_pred:.2f} s predict")
    print(f"test log-loss: liblinear {ll:.6f}   Bayes-optimal {bayes:.6f} ({100 * (ll / bayes - 1):+.2f}%)   "
          f"true model on the drawn labels {meta['true_model_logloss']:.6f}   constant {meta['constant_logloss']:.6f}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
