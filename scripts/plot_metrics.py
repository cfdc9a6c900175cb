#!/usr/bin/python3
"""Draws a shardps metrics CSV (shardps train --metrics-csv) to a PNG: training loss by step and
test accuracy by epoch.

    scripts/plot_metrics.py shardps_run/metrics.csv [-o shardps_run/metrics.png]
"""
import argparse
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="metrics CSV written by shardps train")
    ap.add_argument("-o", "--out", help="PNG to write (default: the CSV name with .png)")
    args = ap.parse_args()
    out = args.out or (args.csv[:-4] if args.csv.endswith(".csv") else args.csv) + ".png"
    steps, losses, eval_steps, accs, test_losses = [], [], [], [], []
    try:
        with open(args.csv, newline="") as f:
            for row in csv.DictReader(f):
                step = int(row["step"])
                if row["test_accuracy"]:
                    eval_steps.append(step)
                    accs.append(float(row["test_accuracy"]))
                    test_losses.append(float(row["test_loss"]))
                else:
                    steps.append(step)
                    losses.append(float(row["train_loss"]))
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"plot_metrics: cannot read {args.csv}: {e}")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, losses, label="train loss")
    if eval_steps:
        ax1.plot(eval_steps, test_losses, "o-", label="test loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("cross-entropy")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(eval_steps, accs, "o-", color="tab:green")
    ax2.set_xlabel("step")
    ax2.set_ylabel("test accuracy")
    ax2.grid(alpha=0.3)
    fig.suptitle(args.csv)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
