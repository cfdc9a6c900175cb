"""A PyTorch CNN on Fashion-MNIST, data-parallel over shardps.torch (or one plain process: --single).

Under mpirun (ranks 0..S-1 serve, the rest work; --servers S):

    export PYTHONPATH=$PWD/build/python           # from the source tree: the build tree's shardps package
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
      mpirun --oversubscribe --bind-to none -np 3 -x PYTHONPATH \
      /usr/bin/python3 examples/python/train_cnn.py --servers 1

Over TCP, every process started on its own; shardps.init() reads the SHARDPS_* variables (the
flags --coordinator/--role/--rank/--num-workers/--secret-file are the same as init() keywords
and win over the variables):

    build/bin/shardps keygen --out job.key          # 32 random bytes, mode 600
    export PYTHONPATH=$PWD/build/python SHARDPS_TRANSPORT=tcp SHARDPS_COORDINATOR=127.0.0.1:29500 \
           SHARDPS_NUM_SERVERS=1 SHARDPS_NUM_WORKERS=2 SHARDPS_SECRET_FILE=job.key
    SHARDPS_ROLE=server SHARDPS_RANK=0 /usr/bin/python3 examples/python/train_cnn.py &
    SHARDPS_ROLE=worker SHARDPS_RANK=1 /usr/bin/python3 examples/python/train_cnn.py &
    SHARDPS_ROLE=worker SHARDPS_RANK=0 /usr/bin/python3 examples/python/train_cnn.py --out cnn.pt

The "1 plain PyTorch process" baseline (no shardps at all, same global batches):

    /usr/bin/python3 examples/python/train_cnn.py --single --out cnn_single.pt

Data: the IDX gzip files of /usr/share/datasets/fashion-mnist (--data-dir), read with gzip+numpy,
pixels scaled to [0,1], then standardised with the training pixels' mean and std (0.2860, 0.3530);
--train-limit/--test-limit take the first N examples (for tests).

Training: each epoch shuffles the training set with a torch.Generator seeded by (--seed, epoch);
step k's global batch is positions [k*B, (k+1)*B) of that order (B = --batch-size; the last
partial batch is dropped), and worker w of W takes the contiguous share [w*B/W, (w+1)*B/W) of it.
Each worker's loss is the mean over its share, and DistributedOptimizer averages the gradients
over the workers, so every step is the step of one process on the whole global batch up to the
order of float sums (no dropout and no batch norm, for that reason). SGD with momentum and weight
decay (--lr, --momentum, --weight-decay); --schedule cosine (the default) sets the learning rate of
step k (0-based) of T in all to --lr * (1 + cos(pi k / T)) / 2, a function of the step number only
(the same on every worker, and on a resumed run), --schedule constant keeps --lr (the default with
--server-optimizer, whose servers keep the settings they were given). The model is seeded by
--seed and worker 0's weights and optimizer state are broadcast before training. --epochs whole
epochs, or --max-steps steps in all.

--single: the same training in one process without shardps. Its weights equal the distributed
run's within rounding (max abs difference ~6e-7 after 4 steps), but training amplifies rounding
(ReLU/max-pool switches; ~1e-4 after 16 steps, ~3e-2 after 32), so longer runs agree only
statistically. --single --grad-shards 2 computes each step's gradient as 2 workers do (the mean
of the two half-batch gradients): that is bit-identical to 2 workers (a + b is commutative and
/ 2 exact; with more than 2 shares the server's summation order may differ).

--server-optimizer: the servers run the SGD with momentum and hold the weights
(DistributedOptimizer(..., server_optimizer=True)); then --checkpoint-dir DIR writes a checkpoint
(a registry version: `shardps ckpt list DIR`) after every epoch and at the end, --resume auto (or
DIR@VERSION) goes on from one, on any number of servers, with the same weights bit for bit as an
uninterrupted run, and --export FILE writes the final checkpoint's weights as safetensors.

Server ranks run this script up to spt.start() (the first communication call), serve there
until the workers finish, and exit 0. Worker 0 prints progress every --log-every steps (the
loss of the global batch, samples/s of the whole job), the test accuracy after every epoch
(the workers evaluate disjoint halves of the test set and sum the counts), and at the end one
JSON line:
    {"test_accuracy": ..., "samples_per_second": ..., "wall_seconds": ..., "weights_sha256": ...}
samples_per_second: training samples (all workers) per second of training, evaluation excluded;
wall_seconds: from the start of training (after the broadcasts) to the end of the last
evaluation; weights_sha256: over the state_dict's names and float32 bytes, in order. With --out
the final state_dict is saved with torch.save (written to a temporary file, then os.replace).
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

DATA_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


class UsageError(Exception):
    """A bad flag or missing data: reported before training, exit status 2."""


# ---- data ----

def _idx_header(path, magic):
    """(count, dims) of an IDX gzip file, checking its magic number; reads 16 bytes."""
    if not os.path.isfile(path):
        raise UsageError(f"data file {path} not found (--data-dir must hold {', '.join(sum(FILES.values(), ()))})")
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(16 if magic == IMAGES_MAGIC else 8)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    words = [int.from_bytes(head[i:i + 4], "big") for i in range(0, len(head), 4)]
    if len(head) < 8 or words[0] != magic or (magic == IMAGES_MAGIC and (len(words) < 4 or words[2:4] != [28, 28])):
        raise UsageError(f"{path} is not an IDX {'28x28 image' if magic == IMAGES_MAGIC else 'label'} file")
    return words[1]


def check_data(data_dir):
    """Checks the four files' headers (cheap, on every rank, before init); returns the sizes."""
    if not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {data_dir} is not a directory (Fashion-MNIST IDX gzip files expected)")
    sizes = {}
    for split, (img, lab) in FILES.items():
        n_img = _idx_header(os.path.join(data_dir, img), IMAGES_MAGIC)
        n_lab = _idx_header(os.path.join(data_dir, lab), LABELS_MAGIC)
        if n_img != n_lab:
            raise UsageError(f"{split}: {n_img} images but {n_lab} labels in {data_dir}")
        sizes[split] = n_img
    return sizes


def load_split(data_dir, split, limit):
    """(images uint8 [N,1,28,28], labels int64 [N]) of the first `limit` examples (all when None)."""
    img, lab = (os.path.join(data_dir, f) for f in FILES[split])
    with gzip.open(img, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[4:8], "big")
    images = np.frombuffer(raw, np.uint8, count=n * 784, offset=16).reshape(n, 1, 28, 28)
    with gzip.open(lab, "rb") as f:
        raw = f.read()
    labels = np.frombuffer(raw, np.uint8, count=n, offset=8)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


MEAN, STD = 0.2860, 0.3530  # of the Fashion-MNIST training pixels in [0, 1]


def as_input(images_u8):
    return (images_u8.to(torch.float32) / 255.0 - MEAN) / STD


# ---- model ----

class Net(torch.nn.Module):
    """conv 1->32 5x5, max-pool 2, conv 32->64 5x5, max-pool 2, fc 1024->128, fc 128->10 (ReLU)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 5)
        self.conv2 = torch.nn.Conv2d(32, 64, 5)
        self.fc1 = torch.nn.Linear(64 * 4 * 4, 128)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)   # 24x24 -> 12x12
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)   # 8x8 -> 4x4
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def weights_sha256(model):
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_atomically(model, path):
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


# ---- flags ----

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=DATA_DIR, help=f"Fashion-MNIST IDX gzip files (default {DATA_DIR})")
    p.add_argument("--train-limit", type=int, help="use the first N training examples only")
    p.add_argument("--test-limit", type=int, help="use the first N test examples only")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="global batch, split evenly over the workers")
    p.add_argument("--lr", type=float, default=0.05, help="(peak) learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay of the SGD")
    p.add_argument("--schedule", choices=["cosine", "constant"],
                   help="learning rate over the steps: cosine decay from --lr to 0 (default), or constant "
                        "(default with --server-optimizer, the only one it allows)")
    p.add_argument("--seed", type=int, default=1, help="model initialisation and shuffling")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads per process")
    p.add_argument("--log-every", type=int, default=100, help="progress line every N steps (0: none)")
    p.add_argument("--out", help="save the final state_dict here (torch.save, atomically)")
    p.add_argument("--max-steps", type=int, help="stop after N steps in all (default: --epochs whole epochs)")
    p.add_argument("--single", action="store_true", help="one plain PyTorch process, no shardps")
    p.add_argument("--grad-shards", type=int, default=1,
                   help="with --single: the gradient of each global batch is the mean of the gradients of K "
                        "equal contiguous shares, computed one after the other (as K workers do; default 1: "
                        "one backward pass on the whole global batch)")
    g = p.add_argument_group("shardps (ignored with --single); each falls back to its SHARDPS_* variable")
    g.add_argument("--servers", type=int, help="server processes (SHARDPS_NUM_SERVERS, default 1)")
    g.add_argument("--coordinator", help="TCP: HOST:PORT of server 0 (SHARDPS_COORDINATOR)")
    g.add_argument("--role", choices=["server", "worker"], help="TCP: this process's role (SHARDPS_ROLE)")
    g.add_argument("--rank", type=int, help="TCP: index within the role (SHARDPS_RANK)")
    g.add_argument("--num-workers", type=int, help="TCP: workers in the job (SHARDPS_NUM_WORKERS)")
    g.add_argument("--secret-file", help="TCP: the shared secret (SHARDPS_SECRET_FILE)")
    g.add_argument("--timeout", type=float, default=300.0, help="deadline (s) of every shardps wait")
    g.add_argument("--server-optimizer", action="store_true",
                   help="the servers run SGD with momentum and hold the weights (DistributedOptimizer("
                        "server_optimizer=True)); needed for --checkpoint-dir")
    g.add_argument("--checkpoint-dir", help="with --server-optimizer: a checkpoint (registry version) after every "
                                            "epoch and at the end, in this directory (shared by every process)")
    g.add_argument("--resume", help="with --checkpoint-dir: 'auto' (its newest version, else a fresh start), or "
                                    "DIR, DIR@VERSION, DIR@TAG; training goes on from the version's step")
    g.add_argument("--keep-last", type=int, default=0, help="keep this many newest checkpoints (0: all)")
    g.add_argument("--export", help="with --checkpoint-dir: worker 0 writes the final checkpoint's weights to this "
                                    "safetensors file (through the registry)")
    a = p.parse_args(argv)
    for name in ("epochs", "batch_size", "threads", "grad_shards"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("train_limit", "test_limit"):
        v = getattr(a, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if a.lr <= 0 or not 0 <= a.momentum < 1:
        p.error(f"--lr must be > 0 and --momentum in [0, 1), got {a.lr} and {a.momentum}")
    if a.weight_decay < 0:
        p.error(f"--weight-decay must be >= 0, got {a.weight_decay}")
    if a.max_steps is not None and a.max_steps < 1:
        p.error(f"--max-steps must be >= 1, got {a.max_steps}")
    if a.grad_shards != 1 and not a.single:
        p.error("--grad-shards is for --single (the workers are the shares of a distributed run)")
    if a.log_every < 0:
        p.error("--log-every must be >= 0")
    if a.servers is not None and a.servers < 1:
        p.error(f"--servers must be >= 1, got {a.servers}")
    for name in ("out", "export"):
        v = getattr(a, name)
        if v and not os.path.isdir(os.path.dirname(os.path.abspath(v))):
            p.error(f"--{name} {v}: directory {os.path.dirname(os.path.abspath(v))} does not exist")
    if a.single and (a.server_optimizer or a.checkpoint_dir or a.resume or a.export):
        p.error("--server-optimizer, --checkpoint-dir, --resume and --export need shardps (not --single)")
    if a.checkpoint_dir and not a.server_optimizer:
        p.error("--checkpoint-dir needs --server-optimizer (the checkpoints hold the servers' weights)")
    if (a.resume or a.export) and not a.checkpoint_dir:
        p.error("--resume and --export need --checkpoint-dir")
    if a.keep_last < 0:
        p.error(f"--keep-last must be >= 0, got {a.keep_last}")
    if a.schedule is None:
        a.schedule = "constant" if a.server_optimizer else "cosine"
    elif a.schedule != "constant" and a.server_optimizer:
        p.error(f"--schedule {a.schedule} needs the workers' optimizer: the servers of --server-optimizer keep "
                f"the learning rate they were given (use --schedule constant)")
    return a


def check_sizes(a, sizes, workers):
    n_train = min(sizes["train"], a.train_limit or sizes["train"])
    if a.batch_size % workers:
        raise UsageError(f"--batch-size {a.batch_size} is not divisible by the {workers} workers")
    if a.batch_size % a.grad_shards:
        raise UsageError(f"--batch-size {a.batch_size} is not divisible by --grad-shards {a.grad_shards}")
    if n_train < a.batch_size:
        raise UsageError(f"{n_train} training examples are fewer than one global batch (--batch-size {a.batch_size})")
    return n_train


# ---- training ----

def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        sizes = check_data(a.data_dir)
        if a.single:
            w, nw, comm = 0, 1, None
            check_sizes(a, sizes, 1)
        else:
            import shardps
            import shardps.torch as spt
            shardps.init(a.servers, role=a.role, rank=a.rank, num_workers=a.num_workers,
                         coordinator=a.coordinator, secret_file=a.secret_file, timeout_s=a.timeout)
            nw = shardps.num_workers()
            w = shardps.worker_index()  # -1 on a server: it never gets past broadcast_parameters
            check_sizes(a, sizes, nw)   # every rank (servers too) refuses the same flags: nobody waits
            comm = (shardps, spt)
    except (UsageError, ValueError) as e:  # ValueError: shardps.init's checks of its keywords/variables
        print(f"train_cnn.py: error: {e}", file=sys.stderr, flush=True)
        return 2

    torch.manual_seed(a.seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    done = 0  # optimizer steps already taken (a resumed run's)
    if comm:
        shardps, spt = comm
        opt = spt.DistributedOptimizer(opt, model.named_parameters(), server_optimizer=a.server_optimizer)
        spt.declare("metrics.loss", (1,))   # the global batch's loss (mean of the workers' means)
        spt.declare("metrics.eval", (2,))   # (correct, examples) summed over the workers
        try:  # servers serve here and exit; a bad --resume is reported on every rank
            spt.start(checkpoint_dir=a.checkpoint_dir, resume=a.resume, keep_last=a.keep_last)
        except (shardps.Error, ValueError) as e:
            print(f"train_cnn.py: error: {e}", file=sys.stderr, flush=True)
            return 2
        spt.broadcast_parameters(model.state_dict(), root_worker=0)  # resumed: the checkpoint's weights
        if a.server_optimizer:
            done = max(0, shardps.resumed_step() - 1)  # the tables' step 0 is the initial weights
        else:
            spt.broadcast_optimizer_state(opt, root_worker=0)
    lead = w == 0

    def log(msg):
        if lead:
            print(msg, flush=True)

    train_x, train_y = load_split(a.data_dir, "train", a.train_limit)
    test_x, test_y = load_split(a.data_dir, "test", a.test_limit)
    n = len(train_y)
    steps_per_epoch = n // a.batch_size
    share = a.batch_size // nw
    log(f"{'single process' if not comm else f'{nw} workers, {shardps.num_servers()} server(s)'}: "
        f"{n} training / {len(test_y)} test examples, {a.epochs} epoch(s) of {steps_per_epoch} steps"
        f"{'' if a.max_steps is None else f' (at most {a.max_steps} steps)'}, "
        f"global batch {a.batch_size} ({share} per worker), lr {a.lr} ({a.schedule}), momentum {a.momentum}, "
        f"weight decay {a.weight_decay}, seed {a.seed}")

    def global_mean(values, table):
        t = torch.tensor(values, dtype=torch.float32)
        if comm:
            spt.push_pull(t, table, average=table == "metrics.loss")
        return t

    def evaluate():
        """Accuracy on the test set; worker w evaluates the contiguous part w of nw."""
        model.eval()
        lo, hi = len(test_y) * w // nw, len(test_y) * (w + 1) // nw
        correct = 0
        with torch.no_grad():
            for i in range(lo, hi, 1000):
                j = min(hi, i + 1000)
                correct += int((model(as_input(test_x[i:j])).argmax(1) == test_y[i:j]).sum())
        model.train()
        c, total = global_mean([correct, hi - lo], "metrics.eval").tolist()
        return c / total

    t_start = time.perf_counter()
    train_seconds = 0.0
    samples = 0
    accuracy = None
    total_steps = a.epochs * steps_per_epoch if a.max_steps is None else min(a.max_steps, a.epochs * steps_per_epoch)
    epochs = -(-total_steps // steps_per_epoch)
    if done:
        log(f"resumed after {done} steps (epoch {done // steps_per_epoch + 1}, step {done % steps_per_epoch} of it)")
    for epoch in range(done // steps_per_epoch, epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed * 1000003 + epoch))
        t_epoch = time.perf_counter()
        t_log, samples_log = t_epoch, 0
        epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        first = done - epoch * steps_per_epoch if epoch == done // steps_per_epoch else 0
        for step in range(first, epoch_steps):
            idx = order[step * a.batch_size + w * share: step * a.batch_size + (w + 1) * share]
            if a.schedule == "cosine":
                k = epoch * steps_per_epoch + step  # steps done before this one
                for g in opt.param_groups:
                    g["lr"] = a.lr * 0.5 * (1.0 + math.cos(math.pi * k / total_steps))
            opt.zero_grad()
            if a.grad_shards == 1:
                loss = F.cross_entropy(model(as_input(train_x[idx])), train_y[idx])
                loss.backward()
            else:  # --single --grad-shards K: the mean of K shares' gradients, as K workers' push_pull
                loss, grads = 0.0, None
                for part in idx.chunk(a.grad_shards):
                    model.zero_grad()
                    part_loss = F.cross_entropy(model(as_input(train_x[part])), train_y[part])
                    part_loss.backward()
                    loss += part_loss.detach()
                    g = [p.grad.clone() for p in model.parameters()]
                    grads = g if grads is None else [x + y for x, y in zip(grads, g)]
                for p, g in zip(model.parameters(), grads):
                    p.grad = g / a.grad_shards
                loss = loss / a.grad_shards
            opt.step()
            samples += a.batch_size
            samples_log += a.batch_size
            gstep = epoch * steps_per_epoch + step + 1
            if a.log_every and (gstep % a.log_every == 0 or step == epoch_steps - 1):
                gl = global_mean([loss.item()], "metrics.loss").item()
                now = time.perf_counter()
                log(f"step {gstep} epoch {epoch + 1} loss {gl:.4f} {samples_log / (now - t_log):.0f} samples/s")
                t_log, samples_log = now, 0
        train_seconds += time.perf_counter() - t_epoch
        if a.checkpoint_dir:  # after every epoch (and the last step): written while the evaluation runs
            shardps.checkpoint(wait=epoch == epochs - 1)
        accuracy = evaluate()
        log(f"epoch {epoch + 1}: test accuracy {accuracy:.4f} ({time.perf_counter() - t_start:.1f} s)")
    if accuracy is None:  # resumed at the end: nothing left to train
        accuracy = evaluate()
    wall = time.perf_counter() - t_start
    if lead:
        if a.out:
            save_atomically(model, a.out)
        if a.export:
            src = shardps.export_checkpoint(a.checkpoint_dir, a.export)
            log(f"exported {src} to {a.export}")
        print(json.dumps({"test_accuracy": round(accuracy, 6),
                          "samples_per_second": round(samples / train_seconds, 1) if train_seconds else None,
                          "wall_seconds": round(wall, 2), "weights_sha256": weights_sha256(model)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
