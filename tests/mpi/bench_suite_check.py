#!/usr/bin/python3
"""CTest: `shardps bench --suite` on small sizes runs, writes its JSON with every configuration,
and scripts/plot_bench.py draws it. Exits 0 only when every check holds (tests/pylib/shardps_check.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import shardps_check as sc  # noqa: E402
from shardps_check import check  # noqa: E402


def bench_suite(shardps, mpirun, source, work):
    os.makedirs(work, exist_ok=True)
    js, png = os.path.join(work, "suite.json"), os.path.join(work, "suite.png")
    for f in (js, png):
        if os.path.exists(f):
            os.remove(f)
    p = sc.run(sc.mpirun_cmd(mpirun, 3, [shardps, "bench", "--suite", "--sizes", "1000,20000", "--sparse-sizes", "5000",
                                         "--rounds", "3", "--json-out", js]), timeout=280)
    print(p.stdout, p.stderr)
    data = sc.read_json(js, "the suite's JSON")
    configs = {(r["config"], r["floats"]) for r in data["results"]}
    want = {(c, n) for c in ("1 server + 1 worker", "2 ranks colocated", "1 server + 2 workers") for n in (1000, 20000)}
    check(configs == want, f"configurations {sorted(configs)}")
    for r in data["results"]:
        for key in ("round_ms", "push_ms", "pull_ms", "allreduce_ms"):
            check(r[key]["median"] > 0, f"{r['config']} {r['floats']}: {key} {r[key]}")
        check(r["server_peak_rss_mib"] > 0 and r["worker_peak_rss_mib"] > 0, f"no peak RSS in {r}")
    sparse = {(r["config"], r["keys"]) for r in data["sparse"]}
    check(sparse == {(c, 5000) for c, _ in want}, f"sparse rounds {sorted(sparse)}")
    for r in data["sparse"]:
        check(r["round_ms"]["median"] > 0, f"sparse {r['config']}: round_ms {r['round_ms']}")
    check(data["memcpy_gbps"] > 0 and len(data["p2p"]) == 4, "bandwidth references missing")
    p = sc.run(["/usr/bin/python3", os.path.join(source, "scripts", "plot_bench.py"), js, "-o", png], timeout=120)
    check(os.path.getsize(png) > 1000, f"plot_bench.py drew only {os.path.getsize(png)} bytes: {p.stderr}")


if __name__ == "__main__":
    sc.main(bench_suite, "bench suite", *sys.argv[1:5])
