#!/usr/bin/python3
"""CTest: `shardps bench --suite` on small sizes runs, writes its JSON with every configuration,
and scripts/plot_bench.py draws it."""
import json
import os
import subprocess
import sys

shardps, mpirun, source, work = sys.argv[1:5]
os.makedirs(work, exist_ok=True)
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
js, png = os.path.join(work, "suite.json"), os.path.join(work, "suite.png")
p = subprocess.run([mpirun, "--oversubscribe", "--bind-to", "none", "-np", "3", shardps, "bench", "--suite",
                    "--sizes", "1000,20000", "--rounds", "3", "--json-out", js],
                   env=env, capture_output=True, text=True, timeout=300)
print(p.stdout, p.stderr)
if p.returncode != 0:
    sys.exit("FAIL: suite exited %d" % p.returncode)
data = json.load(open(js))
configs = {(r["config"], r["floats"]) for r in data["results"]}
want = {(c, n) for c in ("1 server + 1 worker", "2 ranks colocated", "1 server + 2 workers") for n in (1000, 20000)}
if configs != want:
    sys.exit(f"FAIL: configurations {sorted(configs)}")
for r in data["results"]:
    for key in ("round_ms", "push_ms", "pull_ms", "allreduce_ms"):
        if not r[key]["median"] > 0:
            sys.exit(f"FAIL: {r['config']} {r['floats']}: {key} {r[key]}")
    if not (r["server_peak_rss_mib"] > 0 and r["worker_peak_rss_mib"] > 0):
        sys.exit(f"FAIL: no peak RSS in {r}")
if not (data["memcpy_gbps"] > 0 and len(data["p2p"]) == 4):
    sys.exit("FAIL: bandwidth references missing")
p = subprocess.run(["/usr/bin/python3", os.path.join(source, "scripts", "plot_bench.py"), js, "-o", png],
                   capture_output=True, text=True, timeout=120)
if p.returncode != 0 or not os.path.getsize(png) > 1000:
    sys.exit("FAIL: plot_bench.py: " + p.stderr)
print("PASS bench suite")
