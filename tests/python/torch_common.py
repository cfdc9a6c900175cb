"""Shared by torch_job.py (the distributed job) and test_torch.py (the single-process references):
the small MLP, its deterministic data and the hashes of weights."""
import hashlib

import torch

IN, HID, OUT = 8, 16, 4
GLOBAL_BATCH = 16
STEPS = 50
LR, MOMENTUM = 0.05, 0.9
BPPS_STEPS, BPPS_LR = 3, 0.1


def make_mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(IN, HID), torch.nn.Tanh(), torch.nn.Linear(HID, OUT))


def data(seed=1, steps=STEPS, batch=GLOBAL_BATCH):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, IN, generator=g)
    y = torch.randn(steps, batch, OUT, generator=g)
    return x, y


def shard(t, worker, workers):
    """Worker `worker`'s equal part of a global batch (rows along dim 0)."""
    n = t.shape[0] // workers
    return t[worker * n:(worker + 1) * n]


def loss_fn(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def tensors_hash(tensors):
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def optimizer_hash(opt):
    sd = opt.state_dict()
    h = hashlib.sha256()
    for k in sorted(sd["state"]):
        for n in sorted(sd["state"][k]):
            v = sd["state"][k][n]
            h.update(f"{k}.{n}".encode())
            h.update(v.detach().contiguous().numpy().tobytes() if torch.is_tensor(v) else repr(v).encode())
    h.update(repr([{k: v for k, v in g.items()} for g in sd["param_groups"]]).encode())
    return h.hexdigest()


# The server-optimizer tests (server_opt_job.py, test_server_optimizer.py): four models, one per
# optimizer the servers run.
ADAM_LR = 0.01
ADAGRAD_LR = 0.05
PLAIN_LR, PLAIN_WD = 0.1, 0.01


def models_and_optimizers(seed_offset):
    """(prefix, model, torch optimizer) of the four models; seed_offset 0 gives worker 0's weights."""
    m = [make_mlp(s + seed_offset) for s in (100, 500, 700, 900)]
    return [("sgd", m[0], torch.optim.SGD(m[0].parameters(), lr=LR, momentum=MOMENTUM)),
            ("adam", m[1], torch.optim.Adam(m[1].parameters(), lr=ADAM_LR)),
            ("adagrad", m[2], torch.optim.Adagrad(m[2].parameters(), lr=ADAGRAD_LR)),
            ("plain", m[3], torch.optim.SGD(m[3].parameters(), lr=PLAIN_LR, weight_decay=PLAIN_WD))]


def server_state(models):
    """The models' weights by table name ("<prefix>.<parameter>")."""
    return {k: v.detach().clone() for prefix, m, _ in models for k, v in m.state_dict(prefix=prefix + ".").items()}
