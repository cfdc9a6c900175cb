#!/usr/bin/python3
"""Compressed training measured (docs/benchmarks.md#gradient-codecs, docs/compression.md).

    scripts/bench_codecs.py accuracy [--epochs 12] [--runs CODEC[:FLAGS],..] [--out results.jsonl]
    scripts/bench_codecs.py speed    [--launches 5] [--epochs 1] [--codecs identity,int8]
    scripts/bench_codecs.py netsim   [--launches 3] [--epochs 1] [--codecs identity,int8] [--rate 1gbit]

accuracy: the Fashion-MNIST MLP (examples/configs/fashion_mlp.prototxt: 784-256-10, Adam 0.001),
          1 server + 2 workers under mpirun, one launch per setting (training is deterministic: a
          second launch gives the same weights), the test accuracy and the bytes each way from the
          summary JSON. A run is CODEC or CODEC:FLAG=VALUE/FLAG... e.g. sign:no-error-feedback,
          topk:codec-density=0.01/compress-after=1000.
speed:    samples/s of the same job on loopback (mpirun), launches alternating between the codecs,
          median (min-max) per codec and the ratio of the medians to the first codec.
netsim:   the same over TCP on scripts/netsim.py's simulated network (1 server and 2 workers, each
          on its own host, every link limited to --rate; needs root), alternating launches.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def parse_run(spec):
    """'topk:codec-density=0.01/no-error-feedback' -> ('topk', ['--codec', 'topk', '--codec-density', '0.01', ...])."""
    codec, _, rest = spec.partition(":")
    flags = ["--codec", codec]
    for item in filter(None, rest.split("/")):
        k, eq, v = item.partition("=")
        flags += ["--" + k] + ([v] if eq else [])
    return flags


def train(shardps, flags, out, timeout=3600):
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "3", shardps, "train", "--config",
           os.path.join(ROOT, "examples", "configs", "fashion_mlp.prototxt"), "--servers", "1", "--progress", "never",
           "--out-dir", out] + flags
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def netsim_train(shardps, flags, out, rate, timeout=3600):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "netsim.py"), "train", "--hosts", "3", "--rate", rate,
           "--servers", "1", "--workers", "2", "--shardps", shardps, "--out-dir", out, "--",
           "--config", os.path.join(ROOT, "examples", "configs", "fashion_mlp.prototxt"), "--progress", "never"] + flags
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def summary_row(name, s, ref):
    push = s["push_float32_bytes"] / s["push_bytes"] if s["push_bytes"] else 0
    pull = s["pull_float32_bytes"] / s["pull_bytes"] if s["pull_bytes"] else 0
    delta = (s["test_accuracy"] - ref) * 100 if ref is not None else 0
    return (f"| {name} | {s['test_accuracy']:.4f} | {delta:+.2f} | {push:.2f}x | {pull:.2f}x | "
            f"{s['push_bytes']} / {s['pull_bytes']} |")


def cmd_accuracy(a):
    runs = a.runs.split(",")
    rows, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i, spec in enumerate(runs):
            s = train(a.shardps, parse_run(spec) + ["--epochs", str(a.epochs)], os.path.join(tmp, f"r{i}"))
            if ref is None:
                ref = s["test_accuracy"]
            rows.append(summary_row(spec, s, ref))
            print(rows[-1], flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps({"run": spec, "epochs": a.epochs, **s}) + "\n")
    print("\n| run | test accuracy | points vs first | push: fewer bytes | pull: fewer bytes | bytes push / pull |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


def alternate(a, one):
    codecs = a.codecs.split(",")
    sps = {c: [] for c in codecs}
    with tempfile.TemporaryDirectory() as tmp:
        for launch in range(a.launches):
            for c in codecs:
                s = one(parse_run(c) + ["--epochs", str(a.epochs)], os.path.join(tmp, f"{c}-{launch}"))
                sps[c].append(s["samples_per_second"])
                print(f"launch {launch} {c}: {s['samples_per_second']:.0f} samples/s, accuracy {s['test_accuracy']}",
                      flush=True)
    first = statistics.median(sps[codecs[0]])
    print("\n| codec | samples/s median (min-max) | ratio to " + codecs[0] + " |")
    print("|---|---|---|")
    for c in codecs:
        m = statistics.median(sps[c])
        print(f"| {c} | {m:.0f} ({min(sps[c]):.0f}-{max(sps[c]):.0f}) | {m / first:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["accuracy", "speed", "netsim"])
    ap.add_argument("--shardps", default=os.path.join(ROOT, "build", "bin", "shardps"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--runs", default="identity,fp16,int8,sign,sign:no-error-feedback,topk,topk:no-error-feedback")
    ap.add_argument("--codecs", default="identity,int8")
    ap.add_argument("--launches", type=int, default=5)
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.what == "accuracy":
        cmd_accuracy(a)
    elif a.what == "speed":
        alternate(a, lambda flags, out: train(a.shardps, flags, out))
    else:
        alternate(a, lambda flags, out: netsim_train(a.shardps, flags, out, a.rate))


if __name__ == "__main__":
    main()
