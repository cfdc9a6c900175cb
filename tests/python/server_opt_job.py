"""One process of a shardps.torch job in server-optimizer mode (DistributedOptimizer(...,
server_optimizer=True)); test_server_optimizer.py starts it under mpirun or over TCP. Two models
train side by side on each worker's half of the global batch: MLPs with SGD+momentum (tables
"sgd.*"), Adam ("adam.*"), Adagrad ("adagrad.*") and plain SGD with weight decay ("plain.*"); the
servers run the four optimizers.
Environment: SPT_OUT (results: w<worker>.json, worker 0's final.pt and export.safetensors),
SPT_CKPT (the checkpoint directory), SPT_SERVERS, SPT_PHASE:
  full:   steps 0..STEPS-1, a checkpoint after CUT steps and after the last;
  first:  steps 0..CUT-1 and a checkpoint there (the job then ends, as if preempted);
  resume: start(resume="auto") from SPT_CKPT and go on to STEPS."""
import json
import os

import torch

import shardps
import shardps.torch as spt
from torch_common import STEPS, data, loss_fn, models_and_optimizers, shard, server_state, tensors_hash

CUT = 20

torch.set_num_threads(1)
phase = os.environ["SPT_PHASE"]
out = os.environ["SPT_OUT"]
ckpt = os.environ["SPT_CKPT"]
shardps.init(servers=int(os.environ["SPT_SERVERS"]), timeout_s=60.0, finish_timeout_s=120.0)
w = shardps.worker_index()
nw = shardps.num_workers()
# Different initial weights on each worker: broadcast_parameters hands worker 0's to the servers.
models = [(prefix, m, spt.DistributedOptimizer(o, m.named_parameters(prefix=prefix), server_optimizer=True))
          for prefix, m, o in models_and_optimizers(100 * max(w, 0))]
spt.start(checkpoint_dir=ckpt, resume="auto" if phase == "resume" else None)  # servers serve here and exit
for prefix, m, _ in models:
    spt.broadcast_parameters(m.state_dict(prefix=prefix + "."))
res = {"worker": w, "resumed_step": shardps.resumed_step()}
done = max(0, shardps.resumed_step() - 1)  # table step 1 holds the initial weights: optimizer steps = step - 1
X, Y = data()
stop = CUT if phase == "first" else STEPS
for step in range(done, stop):
    x, y = shard(X[step], w, nw), shard(Y[step], w, nw)
    for _, m, o in models:
        o.zero_grad()
        loss_fn(m, x, y).backward()
        o.step()
    if step + 1 == CUT or step + 1 == STEPS:
        shardps.checkpoint(wait=step + 1 == stop)
# Guard rail: a changed learning rate cannot reach the servers.
o_sgd = models[0][2]
lr = o_sgd.param_groups[0]["lr"]
o_sgd.param_groups[0]["lr"] = lr * 2
try:
    o_sgd.step()
    res["err_lr"] = None
except ValueError as e:
    res["err_lr"] = str(e)
o_sgd.param_groups[0]["lr"] = lr
final = server_state(models)
res["final"] = tensors_hash(final.items())
if w == 0:
    torch.save(final, os.path.join(out, "final.pt"))
    # The newest checkpoint through the registry: the same weights, bit for bit.
    saved = shardps.load_checkpoint(ckpt)
    res["ckpt_step"] = saved.pop("__step__")
    res["ckpt_equal"] = sorted(saved) == sorted(final) and all(
        torch.equal(torch.from_numpy(saved[k]), final[k]) for k in final)
    shardps.export_checkpoint(ckpt, os.path.join(out, "export.safetensors"))
res["done"] = True
with open(os.path.join(out, f"w{w}.json"), "w") as f:
    json.dump(res, f)
shardps.shutdown()
