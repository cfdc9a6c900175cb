"""shardps.torch (CTest label `python`; tests/python/CMakeLists.txt runs each test as one CTest test).
The jobs (torch_job.py, 1 server + 2 workers) run twice under mpirun and twice over TCP: the two
runs' final weights must be bit-identical and equal (within 1e-6) to single-process SGD on the
global batch; broadcasts bit-exact; backward_passes_per_step=2; a parameter used by one worker only;
the guard rails. The argument checks, the named_parameters checks and the torch-version check run
in this process (or a child), without a job."""
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_jobs import PY, _stop_processes, job_env, run_mpi_job, run_tcp_job, sc, secret, tcp_env  # noqa: E402,F401
from torch_common import LR, MOMENTUM, STEPS, data, loss_fn, make_mlp, tensors_hash  # noqa: E402

import shardps  # noqa: E402
import shardps.torch as spt  # noqa: E402

JOB = os.path.join(HERE, "torch_job.py")


def reference_weights():
    """Single-process SGD with momentum on the whole global batch, from root's initial weights."""
    torch.set_num_threads(1)
    model = make_mlp(100)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    X, Y = data()
    for step in range(STEPS):
        opt.zero_grad()
        loss_fn(model, X[step], Y[step]).backward()
        opt.step()
    return model.state_dict()


def check_job(out):
    """What the two workers wrote; returns worker 0's final-weights hash."""
    r = [sc.read_json(os.path.join(out, f"w{k}.json"), f"worker {k}'s results") for k in (0, 1)]
    w0, w1 = r
    assert w0["done"] and w1["done"]
    # Broadcasts: the workers started different and end with the root's values, bit for bit.
    assert w0["m4_pre"] != w1["m4_pre"] and w0["opt4_pre"] != w1["opt4_pre"] and w0["model_pre"] != w1["model_pre"]
    for x in r:
        assert x["m4_post"] == w1["m4_pre"], "broadcast_parameters (tables, root 1) is not the root's values"
        assert x["m4_neg_zero"], "the root's -0.0 did not arrive as -0.0"
        assert x["opt4_post"] == w1["opt4_pre"], "broadcast_optimizer_state is not the root's state"
        assert x["opt4_lr"] == pytest.approx(0.002, abs=0), x["opt4_lr"]
        assert x["model_post"] == w0["model_pre"], "broadcast_parameters (stream, root 0) is not the root's values"
    assert w0["final"] == w1["final"], "the workers' final weights differ"
    # backward_passes_per_step=2: equal to one step on the accumulated gradient.
    for x in r:
        assert x["bpps_maxdiff"] < 1e-6, f"bpps: max abs difference {x['bpps_maxdiff']}"
        assert x["bpps_changed"] > 1e-3, "bpps: the weights did not move"
    # The parameter only worker 0 used: worker 1 pushed zeros, both got worker 0's gradient / 2.
    assert w1["extra_local"] is None and w0["extra_local"] is not None
    half = (torch.tensor(w0["extra_local"], dtype=torch.float32) / 2).tolist()
    assert w0["extra_grad"] == half and w1["extra_grad"] == half and any(v != 0 for v in half)
    assert w0["m3_post"] == w1["m3_post"]
    # Guard rails.
    for x in r:
        assert x["err_zero_grad"].startswith("AssertionError: ") and "zero_grad() was called while" in x["err_zero_grad"] \
            and "guard.lin.weight" in x["err_zero_grad"], x["err_zero_grad"]
        assert x["err_passes"].startswith("AssertionError: ") and \
            "more than backward_passes_per_step=1 times before step()" in x["err_passes"], x["err_passes"]
        assert x["err_zero_grad_partial"].startswith("AssertionError: ") and \
            "the gradients of ['bpps.0.bias', 'bpps.0.weight', 'bpps.2.bias', 'bpps.2.weight'] have accumulated fewer " \
            "than backward_passes_per_step=2 passes" in x["err_zero_grad_partial"], x["err_zero_grad_partial"]
        assert x["err_late_declare"].startswith("Error: shardps.torch: cannot declare table 'grad.late.extra': "
                                                "the node has started"), x["err_late_declare"]
    ref = reference_weights()
    final = torch.load(os.path.join(out, "final.pt"))
    diff = max(float((final[k] - ref[k]).abs().max()) for k in ref)
    print(f"max abs difference from single-process SGD: {diff:.3g}")
    assert diff <= 1e-6, f"distributed SGD differs from single-process SGD on the global batch by {diff}"
    assert tensors_hash(final.items()) == w0["final"]
    return w0["final"]


def run_mpi(out):
    run_mpi_job(3, [PY, JOB], "mpirun torch job", env=job_env(SPT_OUT=out))


def run_tcp(out, secret):
    run_tcp_job(lambda role, rank: [PY, JOB], lambda role, rank, port: {**tcp_env(port, secret, role, rank), "SPT_OUT": out},
                "tcp torch job")


@pytest.mark.skipif(not shardps._core.with_mpi, reason="built without MPI (SHARDPS_WITH_MPI=OFF)")
def test_torch_mpi_job(tmp_path):
    hashes = []
    for k in range(2):
        out = str(tmp_path / f"run{k}")
        os.makedirs(out)
        run_mpi(out)
        hashes.append(check_job(out))
    assert hashes[0] == hashes[1], "two runs of the same job gave different weights"


def test_torch_tcp_job(tmp_path, secret):
    hashes = []
    for k in range(2):
        out = str(tmp_path / f"run{k}")
        os.makedirs(out)
        run_tcp(out, secret)
        hashes.append(check_job(out))
    assert hashes[0] == hashes[1], "two runs of the same job gave different weights"


def test_torch_argument_checks():
    """Refused before any communication (no init needed)."""
    with pytest.raises(TypeError, match=r"push_pull\('g'\): tensor dtype is torch.float64, expected torch.float32"):
        spt.push_pull(torch.zeros(3, dtype=torch.float64), "g")
    with pytest.raises(ValueError, match=r"push_pull\('g'\): tensor is not contiguous"):
        spt.push_pull(torch.zeros(4, 4).t(), "g")
    with pytest.raises(TypeError, match=r"push_pull\('g'\): tensor is on meta; only CPU tensors"):
        spt.push_pull(torch.zeros(3, device="meta"), "g")  # stands for CUDA (no GPU here): any non-CPU device
    with pytest.raises(TypeError, match=r"expected a torch.Tensor, got list"):
        spt.push_pull([1.0], "g")
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    named = list(model.named_parameters())
    with pytest.raises(ValueError, match=r"does not name every parameter of the optimizer; unnamed: "
                                         r"group 0 param 2 \(shape \(1, 3\)\), group 0 param 3 \(shape \(1,\)\)"):
        spt.DistributedOptimizer(opt, named[:2])
    with pytest.raises(ValueError, match=r"duplicate names \['0.weight'\]"):
        spt.DistributedOptimizer(opt, named + [("0.weight", named[1][1])])
    with pytest.raises(ValueError, match=r"backward_passes_per_step must be an int >= 1, got 0"):
        spt.DistributedOptimizer(opt, named, backward_passes_per_step=0)


def test_torch_version_recorded_and_checked():
    import shardps._build_info as bi
    assert bi.TORCH_VERSION == torch.__version__
    code = ("import shardps._build_info as b; b.TORCH_VERSION = '0.0.1'\n"
            "try:\n    import shardps.torch\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n")
    p = subprocess.run([PY, "-c", code], env=job_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"IMPORTERROR shardps.torch: shardps was built against torch 0.0.1, but this process runs torch " \
           f"{torch.__version__}; rebuild shardps" in p.stdout, p.stdout + p.stderr
