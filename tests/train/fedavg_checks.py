#!/usr/bin/python3
"""End-to-end checks of `shardps train --mode fedavg` (docs/federated.md), run by CTest
(tests/train/CMakeLists.txt).

    fedavg_checks.py --shardps build/bin/shardps --mpirun mpirun --source-dir SRC --work DIR CHECK

determinism: a small federated job gives the same weights on 1 and 2 servers and on a second
             launch; a label-shard partition gives other weights than IID (the partitioner is
             applied); the lead worker prints the per-client label histogram.
resume:      a job checkpointed every round, resumed from round 1 onto 2 servers, ends with the
             weights of the job that never stopped; also with clipping and noise (differential
             privacy), whose epsilon counts the rounds before the resume.
convergence: IID FedAvg of the MLP on a Fashion-MNIST subset reaches an accuracy a model that does
             not learn cannot reach; the metrics CSV has a row per round with its participants.
secure:      secure aggregation (the servers' aggregator learns only the sum): the same weights on
             1 and 2 servers; clients dropping before each phase (0-2) leave the weights of the
             round without them, before phase 3 (masked input sent) the weights with them; an
             accuracy near plain FedAvg's (16-bit quantization); a threshold the survivors miss
             aborts every round, is reported, and leaves the model untrained.
refused:     bad federated settings end the job before training, naming the setting.
No check asserts a time.
"""
import csv
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shardps_check as sc  # noqa: E402
from shardps_check import fail  # noqa: E402
from train_checks import run_checks  # noqa: E402

# 6000 samples over 20 clients (300 each); 5 clients a round, 1 local epoch of batch 10.
SMALL = ["--hidden", "32", "--train-limit", "6000", "--test-limit", "1000", "--clients", "20", "--fraction", "0.25",
         "--local-epochs", "1", "--local-batch", "10", "--rounds", "3"]


def check_determinism(r, args):
    cfg = r.config("fashion_fedavg.prototxt")
    a, _, pa = r.train(3, ["--config", cfg, "--servers", "1"] + SMALL)
    b, _, _ = r.train(4, ["--config", cfg, "--servers", "2"] + SMALL)
    c, _, _ = r.train(3, ["--config", cfg, "--servers", "1"] + SMALL)
    s, _, _ = r.train(3, ["--config", cfg, "--servers", "1", "--partitioner", "shards"] + SMALL)
    print(f"  iid: {a['weights_sha256'][:16]} (1 server) / {b['weights_sha256'][:16]} (2 servers) / "
          f"{c['weights_sha256'][:16]} (again); shards: {s['weights_sha256'][:16]}; accuracy {a['test_accuracy']}")
    if a["weights_sha256"] != b["weights_sha256"]:
        fail("fedavg: 1 and 2 servers gave different weights")
    if a["weights_sha256"] != c["weights_sha256"]:
        fail("fedavg: a second launch gave different weights")
    if a["weights_sha256"] == s["weights_sha256"]:
        fail("fedavg: the shards partition gave the weights of the iid one")
    if a["steps"] != 3 or a.get("federated", {}).get("clients") != 20:
        fail(f"fedavg summary does not report 3 rounds of 20 clients: {a}")
    if "samples per client: min 300, median 300, max 300" not in pa.stderr:
        fail("the lead worker did not print the label histogram:\n" + pa.stderr[-2000:])


def check_resume(r, args):
    cfg = r.config("fashion_fedavg.prototxt")
    for name, extra in (("plain", []), ("with clipping and noise", ["--clip-norm", "1", "--noise-multiplier", "0.5"])):
        base = ["--config", cfg] + SMALL + extra
        full, _, _ = r.train(3, base + ["--servers", "1"])
        ck = os.path.join(r.work, "ck-" + name.split()[0])
        shutil.rmtree(ck, ignore_errors=True)
        r.train(3, base + ["--servers", "1", "--checkpoint-dir", ck, "--checkpoint-every", "1"])
        resumed, _, _ = r.train(4, base + ["--servers", "2", "--resume", f"{ck}@1"])
        print(f"  {name}: uninterrupted {full['weights_sha256'][:16]}, resumed from round 1 onto 2 servers "
              f"{resumed['weights_sha256'][:16]}; dp {full.get('dp')} / {resumed.get('dp')}")
        if resumed["weights_sha256"] != full["weights_sha256"]:
            fail(f"fedavg {name}: the resumed run's weights differ from the uninterrupted run's")
        if extra and (full["dp"]["epsilon"] is None or full["dp"]["epsilon"] != resumed["dp"]["epsilon"]):
            fail(f"fedavg {name}: epsilon {full['dp']} uninterrupted, {resumed['dp']} resumed (the rounds before count)")


def check_convergence(r, args):
    cfg = r.config("fashion_fedavg.prototxt")
    s, out, _ = r.train(3, ["--config", cfg, "--servers", "1", "--hidden", "64", "--train-limit", "12000",
                            "--test-limit", "2000", "--clients", "20", "--fraction", "0.25", "--local-epochs", "2",
                            "--local-batch", "10", "--rounds", "8"])
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    accs = [float(x["test_accuracy"]) for x in rows]
    print(f"  accuracy by round: {', '.join(f'{a:.3f}' for a in accs)}")
    if [int(x["step"]) for x in rows] != list(range(1, 9)) or any(x["clients"] != "5" for x in rows):
        fail(f"the metrics CSV does not have rounds 1..8 with 5 clients each: {rows}")
    if s["test_accuracy"] < 0.75:
        fail(f"IID FedAvg reached accuracy {s['test_accuracy']} (a model that learns reaches 0.75 here)")
    if not accs[-1] > accs[0]:
        fail(f"accuracy did not rise over the rounds: {accs}")


def rows_of(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def check_secure(r, args):
    cfg = r.config("fashion_fedavg.prototxt")
    base = ["--config", cfg] + SMALL
    sa = base + ["--secure-aggregation"]
    plain, _, _ = r.train(3, base + ["--servers", "1"])
    one, out1, _ = r.train(3, sa + ["--servers", "1"])
    two, _, _ = r.train(4, sa + ["--servers", "2"])
    print(f"  plain {plain['weights_sha256'][:16]} accuracy {plain['test_accuracy']}; secure "
          f"{one['weights_sha256'][:16]} (1 server) / {two['weights_sha256'][:16]} (2 servers) accuracy "
          f"{one['test_accuracy']}; {one.get('secagg')}")
    if one["weights_sha256"] != two["weights_sha256"]:
        fail("secure fedavg: 1 and 2 servers gave different weights")
    if one["weights_sha256"] == plain["weights_sha256"]:
        fail("secure fedavg gave plain fedavg's weights (no quantization: was the aggregator used?)")
    if abs(one["test_accuracy"] - plain["test_accuracy"]) > 0.02:
        fail(f"secure fedavg accuracy {one['test_accuracy']} is far from plain fedavg's {plain['test_accuracy']}")
    sa_sum = one.get("secagg") or {}
    if sa_sum.get("client_updates") != 15 or sa_sum.get("aborted_rounds") != 0:
        fail(f"the summary does not report 3 rounds of 5 clients summed: {sa_sum}")
    if any(x["survivors"] != "5" for x in rows_of(out1)):
        fail(f"the metrics CSV does not report 5 survivors a round: {rows_of(out1)}")
    # One of the round's 5 clients drops before each phase.
    by_phase = {}
    for phase in range(4):
        s, out, _ = r.train(3, sa + ["--servers", "1", "--secagg-dropouts", "1", "--secagg-drop-phase", str(phase)])
        by_phase[phase] = s["weights_sha256"]
        survivors = {x["survivors"] for x in rows_of(out)}
        print(f"  a dropout before phase {phase}: {s['weights_sha256'][:16]}, survivors {survivors}")
        if survivors != ({"4"} if phase < 3 else {"5"}):
            fail(f"dropout before phase {phase}: survivors per round {survivors}")
    if not (by_phase[0] == by_phase[1] == by_phase[2]):
        fail(f"a client dropping before phase 0, 1 or 2 leaves the same survivors, but the weights differ: {by_phase}")
    if by_phase[0] == one["weights_sha256"]:
        fail("a dropout changed nothing: the dropped client's update is still in the sum")
    if by_phase[3] != one["weights_sha256"]:
        fail("a client dropping after it sent its masked input is in the sum; the weights should be those without dropouts")
    # With DP: clipped updates summed securely, the noise added to the unmasked average; epsilon
    # as without secure aggregation.
    sdp, _, _ = r.train(3, sa + ["--servers", "1", "--clip-norm", "1", "--noise-multiplier", "0.5"])
    pdp, _, _ = r.train(3, base + ["--servers", "1", "--clip-norm", "1", "--noise-multiplier", "0.5"])
    print(f"  with DP: secure epsilon {sdp['dp']['epsilon']} accuracy {sdp['test_accuracy']}; plain epsilon "
          f"{pdp['dp']['epsilon']} accuracy {pdp['test_accuracy']}")
    if sdp["dp"]["epsilon"] is None or sdp["dp"]["epsilon"] != pdp["dp"]["epsilon"]:
        fail(f"secure DP-FedAvg reports epsilon {sdp['dp']['epsilon']}, plain {pdp['dp']['epsilon']}")
    if abs(sdp["test_accuracy"] - pdp["test_accuracy"]) > 0.02:
        fail(f"secure DP-FedAvg accuracy {sdp['test_accuracy']} is far from plain DP-FedAvg's {pdp['test_accuracy']}")
    # t = 5 of 5 with one dropout: every round aborts; the model stays untrained.
    s, out, p = r.train(3, sa + ["--servers", "1", "--secagg-dropouts", "1", "--secagg-threshold", "5"])
    rows = rows_of(out)
    print(f"  t = 5 with a dropout: {s.get('secagg')}, accuracy {[x['test_accuracy'] for x in rows]}")
    if (s.get("secagg") or {}).get("aborted_rounds") != 3 or any(x["survivors"] != "0" for x in rows):
        fail(f"t = 5 with a dropout did not abort every round: {s.get('secagg')} {rows}")
    if len({x["test_accuracy"] for x in rows}) != 1:
        fail(f"aborted rounds changed the model: {[x['test_accuracy'] for x in rows]}")
    if "aborted" not in p.stderr or "the threshold needs 5" not in p.stderr:
        fail("the aborted rounds were not reported:\n" + p.stderr[-2000:])


def check_refused(r, args):
    cfg = r.config("fashion_fedavg.prototxt")
    for extra, needle in ((["--partitioner", "pathological"], "federated.partitioner"),
                          (["--fraction", "0"], "federated.fraction"),
                          (["--clients", "7000"], "7000 clients need at least as many samples, there are 6000"),
                          (["--fraction", "0.05", "--secure-aggregation"], "gives 1")):
        small = [a for i, a in enumerate(SMALL) if extra[0] not in SMALL[i - 1:i + 1]]  # without the flag being tested
        _, _, p = r.train(3, ["--config", cfg, "--servers", "1"] + small + extra, expect_ok=False)
        print(f"  {' '.join(extra)}: exit {p.returncode}")
        if p.returncode == 0 or needle not in p.stderr:
            fail(f"{' '.join(extra)}: expected a failure naming '{needle}', got exit {p.returncode}:\n{p.stderr[-2000:]}")


def main():
    ap = sc.job_arguments()
    ap.add_argument("check", choices=["determinism", "resume", "convergence", "secure", "refused"])
    run_checks(ap.parse_args(), globals())


if __name__ == "__main__":
    main()
