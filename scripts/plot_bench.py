#!/usr/bin/python3
"""Draws the JSON of `shardps bench --suite` to a PNG: for each configuration, the median
push+pull round against MPI_Allreduce of the same floats on the same ranks, by table size, with
the bandwidth each implies next to MPI point-to-point streaming and memcpy.

    scripts/plot_bench.py bench_suite.json [-o bench_suite.png]
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="file written by shardps bench --suite --json-out")
    ap.add_argument("-o", "--out", help="PNG to write (default: the JSON name with .png)")
    args = ap.parse_args()
    out = args.out or (args.json[:-5] if args.json.endswith(".json") else args.json) + ".png"
    try:
        with open(args.json) as f:
            data = json.load(f)
        results = data["results"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"plot_bench: cannot read {args.json}: {e}")
    configs = []
    for r in results:
        if r["config"] not in configs:
            configs.append(r["config"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for c, color in zip(configs, colors):
        rows = sorted((r for r in results if r["config"] == c), key=lambda r: r["floats"])
        x = [r["floats"] for r in rows]
        ax1.plot(x, [r["round_ms"]["median"] for r in rows], "o-", color=color, label=f"{c}: push+pull round")
        ax1.plot(x, [r["allreduce_ms"]["median"] for r in rows], "x--", color=color, label=f"{c}: MPI_Allreduce")
        # Bytes a worker moves per round (push + pull) over the round time.
        ax2.plot(x, [2 * 4 * r["floats"] / (r["round_ms"]["median"] * 1e-3) / 1e9 for r in rows], "o-", color=color,
                 label=c)
    if data.get("p2p"):
        best = max(p["gbps"] for p in data["p2p"])
        ax2.axhline(best, color="gray", linestyle="--", label=f"MPI point-to-point stream ({best:.1f} GB/s)")
    if data.get("memcpy_gbps"):
        ax2.axhline(data["memcpy_gbps"], color="black", linestyle=":",
                    label=f"single-thread memcpy ({data['memcpy_gbps']:.1f} GB/s)")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("table size (floats)")
    ax1.set_ylabel("median time per round (ms)")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xlabel("table size (floats)")
    ax2.set_ylabel("GB/s per worker (push + pull bytes / round)")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7)
    fig.suptitle("shardps bench --suite")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
