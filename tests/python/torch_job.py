"""One process of a shardps.torch job (1 server + 2 workers, under mpirun or over TCP with the
SHARDPS_* variables); test_torch.py starts it and checks what the workers write to
$SPT_OUT/w<worker>.json (and worker 0's final weights, final.pt). The server rank runs this script
up to the first communication call (broadcast_parameters), serves there and exits 0.
  1. broadcast_parameters through per-tensor tables (root worker 1, a -0.0 on the root) and through
     the byte stream (root 0, after start), broadcast_optimizer_state (Adam, root 1);
  2. 50 SGD+momentum steps of DistributedOptimizer on each worker's half of the global batch;
  3. backward_passes_per_step=2 against a local reference of one step on the accumulated gradients;
  4. a parameter only worker 0 uses (its hook does not fire on worker 1) and the guard rails."""
import copy
import json
import os
import sys

import torch

import shardps
import shardps.torch as spt
from torch_common import (BPPS_LR, BPPS_STEPS, IN, LR, MOMENTUM, OUT, STEPS, data, loss_fn, make_mlp, optimizer_hash,
                          shard, tensors_hash)

torch.set_num_threads(1)
shardps.init(servers=1, timeout_s=60.0, finish_timeout_s=120.0)
w = shardps.worker_index()  # -1 on the server, which never gets past the first communication call
nw = shardps.num_workers()
res = {"worker": w}


class Guard(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.lin = torch.nn.Linear(IN, OUT)
        self.extra = torch.nn.Parameter(torch.full((OUT,), 1.5))

    def forward(self, x, use_extra):
        out = self.lin(x)
        return out * self.extra if use_extra else out


# The models and DistributedOptimizers (they declare their tables) before any communication.
model = make_mlp(100 + max(w, 0))  # different initial weights on each worker: the broadcast fixes that
opt = spt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM), model.named_parameters())
m2 = make_mlp(7)
opt2 = spt.DistributedOptimizer(torch.optim.SGD(m2.parameters(), lr=BPPS_LR), m2.named_parameters(prefix="bpps"),
                                backward_passes_per_step=2)
m3 = Guard()
opt3 = spt.DistributedOptimizer(torch.optim.SGD(m3.parameters(), lr=0.1), m3.named_parameters(prefix="guard"))
m4 = make_mlp(200 + max(w, 0))
opt4 = torch.optim.Adam(m4.parameters(), lr=0.001 * (w + 1), betas=(0.9, 0.99 - 0.01 * max(w, 0)))
torch.manual_seed(300 + max(w, 0))
for _ in range(2):  # a different Adam state on each worker
    opt4.zero_grad()
    loss_fn(m4, torch.randn(4, IN), torch.randn(4, OUT)).backward()
    opt4.step()
with torch.no_grad():
    m4[0].weight[0, 0] = -0.0 if w == 1 else 2.0  # the root's -0.0 must arrive as -0.0
res["m4_pre"] = tensors_hash(m4.state_dict().items())
res["opt4_pre"] = optimizer_hash(opt4)
res["model_pre"] = tensors_hash(model.state_dict().items())

# 1. Broadcasts. The first one declares bcast.<name> tables for m4 and starts the node.
spt.broadcast_parameters(m4.state_dict(), root_worker=1)
assert shardps.is_worker()
res["m4_post"] = tensors_hash(m4.state_dict().items())
res["m4_neg_zero"] = bool(torch.signbit(m4[0].weight[0, 0])) and float(m4[0].weight[0, 0]) == 0.0
spt.broadcast_optimizer_state(opt4, root_worker=1)
res["opt4_post"] = optimizer_hash(opt4)
res["opt4_lr"] = opt4.param_groups[0]["lr"]
spt.broadcast_parameters(list(model.named_parameters(prefix="main")), root_worker=0)  # no bcast.main.* tables: the byte stream
spt.broadcast_optimizer_state(opt, root_worker=0)
res["model_post"] = tensors_hash(model.state_dict().items())

# 2. Training on this worker's half of each global batch.
X, Y = data()
for step in range(STEPS):
    opt.zero_grad()
    loss_fn(model, shard(X[step], w, nw), shard(Y[step], w, nw)).backward()
    opt.step()
res["final"] = tensors_hash(model.state_dict().items())
if w == 0:
    torch.save(model.state_dict(), os.path.join(os.environ["SPT_OUT"], "final.pt"))

# 3. backward_passes_per_step=2 against one step on the accumulated, worker-averaged gradients.
ref = copy.deepcopy(m2)
BX, BY = data(seed=2, steps=2 * BPPS_STEPS)
for step in range(BPPS_STEPS):
    opt2.zero_grad()
    for k in range(2):
        loss_fn(m2, shard(BX[2 * step + k], w, nw), shard(BY[2 * step + k], w, nw)).backward()
    opt2.step()
    grads = []
    for v in range(nw):  # every worker's accumulated gradient, computed here from the same data
        ref.zero_grad()
        for k in range(2):
            loss_fn(ref, shard(BX[2 * step + k], v, nw), shard(BY[2 * step + k], v, nw)).backward()
        grads.append([p.grad.clone() for p in ref.parameters()])
    with torch.no_grad():
        for i, p in enumerate(ref.parameters()):
            mean = sum(g[i] for g in grads) / nw
            p -= BPPS_LR * mean
res["bpps_maxdiff"] = max(float((a - b).abs().max()) for a, b in zip(m2.parameters(), ref.parameters()))
res["bpps_changed"] = max(float((a - b).abs().max()) for a, b in zip(m2.parameters(), make_mlp(7).parameters()))

# 4. A parameter only worker 0 uses: worker 1's step() pushes zeros for it.
GX, GY = data(seed=3, steps=1)
opt3.zero_grad()
loss_fn_out = (m3(shard(GX[0], w, nw), use_extra=(w == 0)) - shard(GY[0], w, nw)).pow(2).mean()
loss_fn_out.backward()
res["extra_local"] = m3.extra.grad.tolist() if m3.extra.grad is not None else None
opt3.step()
res["extra_grad"] = m3.extra.grad.tolist()
res["m3_post"] = tensors_hash(m3.state_dict().items())


def expect(kind, fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001  recorded for the test to judge
        res[kind] = f"{type(e).__name__}: {e}"
    else:
        res[kind] = "no error"


# Guard rails: zero_grad() while push_pulls are pending; more backward passes than asked for.
opt3.zero_grad()
m3(GX[0], use_extra=True).sum().backward()
expect("err_zero_grad", opt3.zero_grad)
opt3.step()
opt3.zero_grad()
m3(GX[0], use_extra=True).sum().backward()
expect("err_passes", lambda: m3(GX[0], use_extra=True).sum().backward())
opt3.step()
opt2.zero_grad()
loss_fn(m2, shard(BX[0], w, nw), shard(BY[0], w, nw)).backward()  # 1 of backward_passes_per_step=2
expect("err_zero_grad_partial", opt2.zero_grad)
opt2.step()
expect("err_late_declare", lambda: spt.DistributedOptimizer(torch.optim.SGD(m3.parameters(), lr=0.1),
                                                            m3.named_parameters(prefix="late")))
res["done"] = True

shardps.shutdown()
with open(os.path.join(os.environ["SPT_OUT"], f"w{w}.json"), "w") as f:
    json.dump(res, f)
print(f"worker {w}: done", flush=True)
sys.exit(0)
