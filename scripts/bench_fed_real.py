#!/usr/bin/python3
"""Federated averaging with real client processes, timed (docs/benchmarks.md#federated-averaging).

    scripts/bench_fed_real.py [--shardps build/bin/shardps] [--clients 10] [--rounds 6] [--launches 3]

Each launch: `shardps fed-serve` and --clients `shardps fed-client` processes on 127.0.0.1 (a fresh
shared secret), the Fashion-MNIST MLP of examples/configs/fashion_fedavg.prototxt on the first
600 x clients training samples (600 per client, IID), every client in every round (fraction 1),
E 5, B 10, secure aggregation with 16-bit updates. Reported per launch: the seconds per round
(the median of the rounds after the first, from the coordinator's metrics CSV: local training of
the clients, all on this machine's 2 cores, plus the four phases of secure aggregation), the
test accuracy after the last round, and the wall time of the whole launch (process start, data
loading and joining included). Then the median and the spread over the launches.
"""
import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(a, tmp, i):
    d = os.path.join(tmp, f"launch{i}")
    os.makedirs(d)
    key = os.path.join(d, "job.key")
    subprocess.run([a.shardps, "keygen", "--out", key], check=True, capture_output=True)
    common = ["--config", os.path.join(ROOT, "examples", "configs", "fashion_fedavg.prototxt"), "--secret", key,
              "--set", f"data.train_limit={600 * a.clients}", "--set", f"federated.clients={a.clients}",
              "--set", "federated.fraction=1", "--set", f"federated.rounds={a.rounds}"]
    port_file = os.path.join(d, "port")
    t0 = time.monotonic()
    serve = subprocess.Popen([a.shardps, "fed-serve", "--listen", "127.0.0.1:0", "--port-file", port_file, "--wait-clients",
                              str(a.clients), "--out-dir", os.path.join(d, "out"), "--progress", "never"] + common,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(port_file):
        if serve.poll() is not None or time.monotonic() > deadline:
            sys.exit("fed-serve did not start: " + serve.stderr.read())
        time.sleep(0.05)
    port = open(port_file).read().strip()
    clients = [subprocess.Popen([a.shardps, "fed-client", "--connect", f"127.0.0.1:{port}", "--client", str(k)] + common,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in range(a.clients)]
    out, err = serve.communicate(timeout=3600)
    for c in clients:
        c.communicate(timeout=600)
    wall = time.monotonic() - t0
    if serve.returncode != 0 or any(c.returncode != 0 for c in clients):
        sys.exit(f"launch {i} failed: {err[-3000:]}")
    with open(os.path.join(d, "out", "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    walls = [float(r["wall_seconds"]) for r in rows]
    per_round = statistics.median([b - a_ for a_, b in zip(walls, walls[1:])])
    return per_round, float(rows[-1]["test_accuracy"]), wall, [r["survivors"] for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shardps", default=os.path.join(ROOT, "build", "bin", "shardps"))
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--launches", type=int, default=3)
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.launches):
            r = launch(a, tmp, i)
            results.append(r)
            print(f"launch {i + 1}: {r[0]:.2f} s/round, accuracy {r[1]:.4f} after {a.rounds} rounds, launch wall {r[2]:.1f} s, "
                  f"survivors {r[3]}", flush=True)
    per = [r[0] for r in results]
    print(f"{a.clients} real clients: median {statistics.median(per):.2f} s/round (spread {min(per):.2f}-{max(per):.2f}) "
          f"over {a.launches} launches")


if __name__ == "__main__":
    main()
