#!/usr/bin/python3
"""Draws benchmark JSON to a PNG. Two inputs are understood:

- suite.json of scripts/bench_suite.sh (launches across configurations): for each configuration,
  every launch's median round as a point, the median of the launch medians as a line, and
  MPI_Allreduce of the same launches dashed; the spread between launches is what it shows.
- the JSON of `shardps bench --suite` (one launch): for each configuration, the median push+pull
  round against MPI_Allreduce by table size, with the bandwidth each implies next to MPI
  point-to-point streaming and memcpy.

    scripts/plot_bench.py suite.json [-o suite.png]
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def finish(fig, ax1, ylabel1, ax2, ylabel2, title, out):
    """The axes both drawings share (table size on a log scale; the left panel's time also log),
    each panel's y label, grid and legend; then the title, and the figure written to `out`."""
    ax1.set_yscale("log")
    for ax, ylabel in ((ax1, ylabel1), (ax2, ylabel2)):
        ax.set_xscale("log")
        ax.set_xlabel("table size (floats)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(out)


def plot_launches(data, out):
    """suite.json of scripts/bench_suite.sh: the spread of launch medians per configuration."""
    configs = []
    for c in data["configs"]:
        name = f"{c['transport']} {c['config']}"
        if name not in configs:
            configs.append(name)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
              "tab:olive", "tab:cyan"]
    for k, (name, color) in enumerate(zip(configs, colors)):
        rows = sorted((c for c in data["configs"] if f"{c['transport']} {c['config']}" == name), key=lambda c: c["floats"])
        x = [r["floats"] for r in rows]
        jitter = 1 + 0.04 * (k - len(configs) / 2)  # side by side at each size
        for r in rows:
            ax1.plot([r["floats"] * jitter] * len(r["launch_medians_ms"]), r["launch_medians_ms"], ".", color=color,
                     alpha=0.6)
            ax2.plot([r["floats"] * jitter] * len(r["launch_medians_ms"]),
                     [v / r["median_of_medians_ms"] for v in r["launch_medians_ms"]], ".", color=color, alpha=0.6)
        ax1.plot(x, [r["median_of_medians_ms"] for r in rows], "-", color=color, label=f"{name}: median of launch medians")
        ar = [(r["floats"], r["allreduce_median_of_medians_ms"]) for r in rows if r.get("allreduce_median_of_medians_ms")]
        if ar:
            ax1.plot([a for a, _ in ar], [b for _, b in ar], "x--", color=color, label=f"{name}: MPI_Allreduce, same launches")
    ax2.axhline(1.5, color="gray", linestyle=":", label="1.5x the median")
    finish(fig, ax1, "median round of each launch (ms)", ax2, "launch median / median of launch medians",
           f"scripts/bench_suite.sh {data['launches']}: push+pull round across launches ({data.get('date', '')})", out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="file written by shardps bench --suite --json-out")
    ap.add_argument("-o", "--out", help="PNG to write (default: the JSON name with .png)")
    args = ap.parse_args()
    out = args.out or (args.json[:-5] if args.json.endswith(".json") else args.json) + ".png"
    try:
        with open(args.json) as f:
            data = json.load(f)
        if "configs" in data:
            return plot_launches(data, out)
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
    finish(fig, ax1, "median time per round (ms)", ax2, "GB/s per worker (push + pull bytes / round)",
           "shardps bench --suite", out)


if __name__ == "__main__":
    main()
