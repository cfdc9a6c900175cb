#!/usr/bin/python3
"""Runs one command and checks BOTH its exit code and its output; the CTest wrapper of tests that
must match a message (instead of PASS_REGULAR_EXPRESSION, which would ignore the exit code).

    expect_run.py [--exit ok|fail|N] [--timeout S] [--stderr TEXT]... [--output REGEX]... -- CMD ARGS...

--exit ok: the command must exit 0 (default); fail: it must exit non-zero without being killed by a
signal (a clean refusal, not a crash); N: exactly N.
--stderr TEXT: TEXT (plain text) must appear in its stderr.
--output REGEX: REGEX (Python syntax, searched) must match its stdout + stderr.
Exits 0 when every expectation holds, 1 naming the first that does not.
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shardps_check as sc  # noqa: E402


def expect(a):
    p = sc.run(a.cmd, timeout=a.timeout, expect_ok=False)
    out = p.stdout + p.stderr
    shown = f"\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
    rc = p.returncode
    if a.exit == "ok":
        sc.check(rc == 0, lambda: f"exit {rc}, expected 0{shown}")
    elif a.exit == "fail":
        sc.check(rc != 0, lambda: f"exit 0, expected a failure{shown}")
        sc.check(0 < rc < 128, lambda: f"exit {rc}: killed by a signal or crashed, expected a clean refusal{shown}")
    else:
        sc.check(rc == int(a.exit), lambda: f"exit {rc}, expected {a.exit}{shown}")
    for text in a.stderr:
        sc.check(text in p.stderr, lambda: f"stderr does not contain {text!r}{shown}")
    for rx in a.output:
        sc.check(re.search(rx, out, re.S), lambda: f"output does not match /{rx}/{shown}")
    print(f"  exit {rc} as expected ({a.exit}); {len(a.stderr) + len(a.output)} message check(s) hold")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exit", default="ok")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--stderr", action="append", default=[])
    ap.add_argument("--output", action="append", default=[])
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.cmd and a.cmd[0] == "--":
        a.cmd = a.cmd[1:]
    if not a.cmd:
        ap.error("no command given")
    if a.exit not in ("ok", "fail") and not a.exit.lstrip("-").isdigit():
        ap.error("--exit takes ok, fail or a number")
    sc.main(expect, os.path.basename(a.cmd[0]), a)


if __name__ == "__main__":
    main()
