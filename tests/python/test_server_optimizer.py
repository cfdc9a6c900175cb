"""shardps.torch with the optimizer on the servers (CTest label `python`): server_opt_job.py, 2
workers, SGD+momentum, Adam, Adagrad and SGD with weight decay on the servers. Against
single-process torch on the global batch (within 1e-6); checkpoints through the registry (load_checkpoint and the safetensors export equal the
final weights); a job cut after 20 steps on 2 servers and resumed on 1 server ends bit-identical to
the uninterrupted run; over TCP the same weights as under mpirun."""
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_jobs import PY, _stop_processes, job_env, run_mpi_job, run_tcp_job, sc, secret, tcp_env  # noqa: E402,F401
from torch_common import STEPS, data, loss_fn, models_and_optimizers, server_state  # noqa: E402

import shardps  # noqa: E402

JOB = os.path.join(HERE, "server_opt_job.py")


def reference():
    """The four models trained in one process on the whole global batch, from worker 0's initial weights."""
    torch.set_num_threads(1)
    models = models_and_optimizers(0)
    X, Y = data()
    for step in range(STEPS):
        for _, m, o in models:
            o.zero_grad()
            loss_fn(m, X[step], Y[step]).backward()
            o.step()
    return server_state(models)


def run(out, ckpt, phase, servers, transport="mpi", secret=None):
    os.makedirs(out, exist_ok=True)
    env = dict(SPT_OUT=out, SPT_CKPT=ckpt, SPT_PHASE=phase, SPT_SERVERS=str(servers))
    what = f"{transport} job ({phase}, {servers} servers)"
    if transport == "mpi":
        run_mpi_job(servers + 2, [PY, JOB], what, env=job_env(**env))
    else:
        roles = [("server", k) for k in range(servers)] + [("worker", 0), ("worker", 1)]
        run_tcp_job(lambda role, rank: [PY, JOB],
                    lambda role, rank, port: {**tcp_env(port, secret, role, rank), **env, "SHARDPS_NUM_SERVERS": str(servers)},
                    what, roles=roles)
    r = [sc.read_json(os.path.join(out, f"w{k}.json"), f"worker {k}'s results") for k in (0, 1)]
    assert r[0]["done"] and r[1]["done"]
    assert r[0]["final"] == r[1]["final"], "the workers' final weights differ"
    for x in r:
        assert x["err_lr"] and "changed to momentum" in x["err_lr"] and "'sgd.0.weight'" in x["err_lr"], x["err_lr"]
    return r


def check_final(out, r, steps_in_ckpt):
    final = torch.load(os.path.join(out, "final.pt"))
    assert r[0]["ckpt_equal"], "load_checkpoint's weights differ from the final weights"
    assert r[0]["ckpt_step"] == steps_in_ckpt, r[0]["ckpt_step"]
    exported = sc.read_safetensors_f32(os.path.join(out, "export.safetensors"))
    assert sorted(exported) == sorted(final)
    for k, t in final.items():
        assert exported[k].shape == tuple(t.shape) and (exported[k] == t.numpy()).all(), k
    ref = reference()
    initial = server_state(models_and_optimizers(0))
    for prefix, tol in (("sgd.", 1e-6), ("adam.", 1e-6), ("adagrad.", 1e-6), ("plain.", 1e-6)):
        diff = max(float((final[k] - ref[k]).abs().max()) for k in ref if k.startswith(prefix))
        moved = max(float((final[k] - initial[k]).abs().max()) for k in ref if k.startswith(prefix))
        print(f"{prefix[:-1]}: max abs difference from single-process torch {diff:.3g} (weights moved up to {moved:.3g})")
        assert moved > 1e-2, f"{prefix} weights did not move"
        assert diff <= tol, f"{prefix[:-1]} on the servers differs from single-process torch by {diff} (> {tol})"
    return final


@pytest.mark.skipif(not shardps._core.with_mpi, reason="built without MPI (SHARDPS_WITH_MPI=OFF)")
def test_server_optimizer_mpi_and_resume(tmp_path):
    full = run(str(tmp_path / "full"), str(tmp_path / "ck_full"), "full", servers=1)
    final = check_final(str(tmp_path / "full"), full, STEPS + 1)
    # Cut after 20 steps on 2 servers, resumed on 1: the same bits as without the cut.
    first = run(str(tmp_path / "first"), str(tmp_path / "ck_cut"), "first", servers=2)
    assert first[0]["ckpt_step"] == 21
    resumed = run(str(tmp_path / "resumed"), str(tmp_path / "ck_cut"), "resume", servers=1)
    assert resumed[0]["resumed_step"] == 21 and resumed[1]["resumed_step"] == 21
    assert resumed[0]["final"] == full[0]["final"], "the resumed run's weights differ from the uninterrupted run's"
    again = torch.load(str(tmp_path / "resumed" / "final.pt"))
    assert all(torch.equal(again[k], final[k]) for k in final)


def test_server_optimizer_tcp(tmp_path, secret):
    r = run(str(tmp_path / "tcp"), str(tmp_path / "ck"), "full", servers=2, transport="tcp", secret=secret)
    check_final(str(tmp_path / "tcp"), r, STEPS + 1)
