"""examples/python/train_cnn.py (CTest label `python`, registered when torch was found): the
Fashion-MNIST CNN on a subset, distributed (1 server + 2 workers under mpirun, or over TCP)
against one plain process (--single) on the same global batches, compared through the --out
state_dicts; and its flag checks. ~25 s per test on an idle 2-core machine.

Why two comparisons: rounding differences (the workers' two half-batch gradients averaged vs one
backward pass over the global batch: float sums in another order, ~1e-8 after one step) are
amplified by training (ReLU/max-pool switching, lr 0.05 with momentum): measured max abs weight
differences 6e-7 after 4 steps, 1e-4 after 16, 3e-2 after 32 (before the example standardised its
inputs and decayed its learning rate; now 1.5e-8 after 4 steps). So
  * over 4 steps, distributed vs plain --single: <= 1e-5 (a broken or unaveraged gradient moves
    the weights by ~1e-3 or more in 4 steps);
  * over a whole subset epoch (64 steps), distributed vs --single --grad-shards 2 (the same
    process computing the mean of the two half-batch gradients, one after the other): the
    same float operations (a + b is commutative, / 2 is exact), so equal up to 1e-6 (measured:
    bit-identical, equal weights_sha256), and the test accuracy after that epoch is > 0.6
    (measured 0.744; an untrained or broken model stays near 0.1-0.5).
"""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_jobs import PY, _stop_processes, job_env, run_mpi_job, run_tcp_job, sc, secret, tcp_env  # noqa: E402,F401

import shardps  # noqa: E402

SCRIPT = os.path.join(HERE, "..", "..", "examples", "python", "train_cnn.py")
SUBSET = ["--train-limit", "4096", "--test-limit", "1000", "--epochs", "1", "--lr", "0.05", "--momentum", "0.9",
          "--batch-size", "64", "--seed", "1", "--log-every", "16"]  # pinned: the figures above were measured so
RUN_TIMEOUT = 180  # seconds per run (each takes ~5-10 s on an idle 2-core machine)

needs_mpi = pytest.mark.skipif(not shardps._core.with_mpi, reason="built without MPI (SHARDPS_WITH_MPI=OFF)")


def final_json(stdout, what):
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, f"{what}: expected one final JSON line, got {lines}\n{stdout}"
    r = json.loads(lines[0])
    assert set(r) == {"test_accuracy", "samples_per_second", "wall_seconds", "weights_sha256"}, r
    return r


def run_single(out, *extra):
    what = "single " + " ".join(extra)
    t0 = time.time()
    p = sc.popen([PY, SCRIPT, "--single", *SUBSET, "--out", out, *extra], env=job_env(), stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True)
    so, se = sc.communicate(p, RUN_TIMEOUT, what)
    print(f"--- {what}: {time.time() - t0:.1f} s, exit {p.returncode}\n{so}", flush=True)
    assert p.returncode == 0, f"{what} exited {p.returncode}\n--- stdout\n{so}\n--- stderr\n{se}"
    return final_json(so, what)


def run_mpi(out, *extra, servers=1):
    what = f"mpirun ({servers} server(s)) " + " ".join(extra)
    argv = [PY, SCRIPT, "--servers", str(servers), *SUBSET, "--out", out, *extra]
    return final_json(run_mpi_job(servers + 2, argv, what, timeout=RUN_TIMEOUT), what)


def run_tcp(out, secret, *extra):
    outputs = run_tcp_job(
        lambda role, rank: [PY, SCRIPT, *SUBSET, *extra] + (["--out", out] if (role, rank) == ("worker", 0) else []),
        lambda role, rank, port: tcp_env(port, secret, role, rank), "tcp job", timeout=RUN_TIMEOUT)
    print(f"--- tcp worker 0:\n{outputs['worker 0']}")
    assert outputs["server 0"] == "" and outputs["worker 1"] == "", "only worker 0 prints"
    return final_json(outputs["worker 0"], "tcp worker 0")


def max_diff(a, b):
    sa, sb = torch.load(a), torch.load(b)
    assert list(sa) == list(sb)
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


@needs_mpi
def test_cnn_mpi_matches_single(tmp_path):
    d = str(tmp_path)
    # A whole subset epoch (64 steps): equal to the same gradient arithmetic in one process.
    mpi = run_mpi(f"{d}/mpi.pt")
    shards = run_single(f"{d}/shards.pt", "--grad-shards", "2")
    diff = max_diff(f"{d}/mpi.pt", f"{d}/shards.pt")
    print(f"64 steps: max abs diff mpirun vs --single --grad-shards 2: {diff:.3g}; "
          f"test accuracy {mpi['test_accuracy']} vs {shards['test_accuracy']}")
    assert diff <= 1e-6, f"distributed weights differ from --single --grad-shards 2 by {diff}"
    assert mpi["test_accuracy"] > 0.6, f"test accuracy {mpi['test_accuracy']} after the subset epoch"
    assert abs(mpi["test_accuracy"] - shards["test_accuracy"]) <= 0.002
    # 4 steps: equal to one plain process's backward pass on each global batch, within rounding.
    mpi4 = run_mpi(f"{d}/mpi4.pt", "--max-steps", "4")
    single4 = run_single(f"{d}/single4.pt", "--max-steps", "4")
    diff4 = max_diff(f"{d}/mpi4.pt", f"{d}/single4.pt")
    moved = max_diff(f"{d}/mpi4.pt", f"{d}/mpi.pt")
    print(f"4 steps: max abs diff mpirun vs plain --single: {diff4:.3g} (vs the 64-step weights: {moved:.3g})")
    assert diff4 <= 1e-5, f"distributed weights differ from one plain process by {diff4} after 4 steps"
    assert moved > 1e-3  # the comparison is not between untrained weights
    assert mpi4["weights_sha256"] != single4["weights_sha256"] or diff4 == 0


@needs_mpi
def test_cnn_server_optimizer_checkpoints(tmp_path):
    """--server-optimizer (the servers run SGD with momentum) with --checkpoint-dir: 2 epochs of 16
    steps uninterrupted; the same cut after the first epoch (on 2 servers) and resumed with
    --resume auto (on 1 server) ends with the same weights bit for bit; --export writes the final
    checkpoint's weights, equal to the --out state_dict."""
    d = str(tmp_path)
    small = ["--train-limit", "1024", "--epochs", "2", "--server-optimizer"]
    full = run_mpi(f"{d}/full.pt", *small, "--checkpoint-dir", f"{d}/ck_full", "--export", f"{d}/full.safetensors")
    cut = run_mpi(f"{d}/cut.pt", *small, "--checkpoint-dir", f"{d}/ck_cut", "--max-steps", "16", servers=2)
    resumed = run_mpi(f"{d}/resumed.pt", *small, "--checkpoint-dir", f"{d}/ck_cut", "--resume", "auto")
    print(f"server optimizer: accuracy {full['test_accuracy']} (full), {cut['test_accuracy']} (after the cut), "
          f"{resumed['test_accuracy']} (resumed)")
    assert cut["weights_sha256"] != full["weights_sha256"]
    assert resumed["weights_sha256"] == full["weights_sha256"], "the resumed run ends with other weights"
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert full["test_accuracy"] > 0.5, full
    final = torch.load(f"{d}/full.pt")
    exported = sc.read_safetensors_f32(f"{d}/full.safetensors")
    assert sorted(exported) == sorted(final)
    for k, t in final.items():
        assert exported[k].shape == tuple(t.shape) and (exported[k] == t.numpy()).all(), k
    versions = sorted(os.listdir(f"{d}/ck_full"))
    assert [v for v in versions if v.startswith("v")] == ["v00000001", "v00000002"], versions


def test_cnn_tcp_matches_single(tmp_path, secret):
    """The same subset epoch over TCP (3 processes started on their own with the SHARDPS_*
    variables, as the example's docstring shows) against --single --grad-shards 2."""
    d = str(tmp_path)
    tcp = run_tcp(f"{d}/tcp.pt", secret)
    shards = run_single(f"{d}/shards.pt", "--grad-shards", "2")
    diff = max_diff(f"{d}/tcp.pt", f"{d}/shards.pt")
    print(f"64 steps over TCP: max abs diff vs --single --grad-shards 2: {diff:.3g}; "
          f"test accuracy {tcp['test_accuracy']} vs {shards['test_accuracy']}")
    assert diff <= 1e-6, f"distributed (TCP) weights differ from --single --grad-shards 2 by {diff}"
    assert tcp["test_accuracy"] > 0.6, f"test accuracy {tcp['test_accuracy']} after the subset epoch"


def test_cnn_bad_flags(tmp_path):
    """Refused with a clear message before training (exit 2), on every rank."""
    def refused(cmd, message, what):
        p = sc.popen(cmd, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        so, se = sc.communicate(p, 120, what)
        assert p.returncode != 0 and message in se, f"{what}: exit {p.returncode}\n{so}\n{se}"
        assert "step " not in so, f"{what}: trained anyway\n{so}"

    refused([PY, SCRIPT, "--single", "--data-dir", str(tmp_path / "nope")], "is not a directory", "missing data dir")
    (tmp_path / "empty").mkdir()
    refused([PY, SCRIPT, "--single", "--data-dir", str(tmp_path / "empty")],
            "train-images-idx3-ubyte.gz not found", "empty data dir")
    refused([PY, SCRIPT, "--single", "--batch-size", "0"], "--batch-size must be >= 1", "batch size 0")
    refused([PY, SCRIPT, "--single", "--server-optimizer"], "need shardps (not --single)", "server optimizer, single")
    refused([PY, SCRIPT, "--server-optimizer", "--schedule", "cosine"], "keep the learning rate they were given",
            "a schedule with the server optimizer")
    refused([PY, SCRIPT, "--checkpoint-dir", str(tmp_path)], "--checkpoint-dir needs --server-optimizer",
            "checkpoints without the server optimizer")
    refused([PY, SCRIPT, "--single", "--batch-size", "64", "--grad-shards", "3"], "not divisible by --grad-shards 3",
            "grad shards")
    if shardps._core.with_mpi:
        refused(sc.mpirun_cmd("mpirun", 3, [PY, SCRIPT, "--servers", "1", "--batch-size", "63"]),
                "--batch-size 63 is not divisible by the 2 workers", "odd batch under mpirun")
