"""shardps.torch: Horovod/BytePS-style PyTorch integration over the shardps parameter server.

A training script differs from plain PyTorch by a few lines:

    import shardps, shardps.torch as spt
    shardps.init(servers=1)                      # under mpirun: ranks 0..servers-1 serve, the rest work
    model = Net(); opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = spt.DistributedOptimizer(opt, model.named_parameters())   # declares the tables "grad.<name>"
    spt.broadcast_parameters(model.state_dict(), root_worker=0)    # declares "bcast.<name>", starts, broadcasts
    spt.broadcast_optimizer_state(opt, root_worker=0)
    for x, y in my_shard_of_the_data:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()  # gradients averaged over the workers

Tables can only be declared before the node starts, so the objects that need tables
(DistributedOptimizer, broadcast_parameters) declare them when they are created, and the FIRST
communication call (broadcast_parameters, broadcast_optimizer_state, push_pull, a gradient hook, or
spt.start()) starts the node implicitly. SERVER RANKS run the script up to that first communication
call, serve there until every worker has shut down, and then exit the process with status 0
(sys.exit(0) after shardps.shutdown()): code after it runs on workers only. Create every
DistributedOptimizer (and call broadcast_parameters) before the first communication call.

Each worker pushes every gradient table once per optimizer step (tables whose hooks did not fire,
e.g. unused parameters, are pushed as zeros by step()), so all workers must call step() the same
number of times. Gradients are averaged over workers (summed over backward_passes_per_step passes
locally, not divided by it, as Horovod). Only CPU float32 tensors are supported.

Broadcasts are bit-exact: the root pushes its values and the other workers push -0.0 (x + -0.0 == x
bit for bit, -0.0 included) to a "sum" table. Data that is not float32 tensor data (the optimizer's
state_dict, non-float32 buffers, broadcasts after start) goes as bytes, 16 bits per float, through
one stream table "bcast.__stream__".

The torch version is checked against the one this package was built against (_build_info.py,
written by CMake at configure time): a mismatch raises ImportError.
"""
import io
import sys

import numpy as np
import torch

import shardps
from shardps import _core

try:
    from shardps._build_info import TORCH_VERSION as _BUILT_TORCH_VERSION
except ImportError:  # a source tree not configured by CMake
    _BUILT_TORCH_VERSION = None

if _BUILT_TORCH_VERSION is None:
    raise ImportError(f"shardps.torch: this shardps build found no importable torch at configure time "
                      f"(running torch {torch.__version__}); reconfigure and rebuild shardps with torch installed")
if _BUILT_TORCH_VERSION != torch.__version__:
    raise ImportError(f"shardps.torch: shardps was built against torch {_BUILT_TORCH_VERSION}, but this process runs "
                      f"torch {torch.__version__}; rebuild shardps (reconfigure with cmake) for this torch")

__all__ = ["push_pull", "push_pull_async", "broadcast_parameters", "broadcast_optimizer_state",
           "DistributedOptimizer", "start", "declare"]

STREAM_TABLE = "bcast.__stream__"
STREAM_FLOATS = 1 << 16  # 16 bits of payload each: 128 KiB per step
_declared = {}  # name -> shape, the tables declared through this module
_server_tables = {}  # name -> shape: tables whose servers run the optimizer (server mode)


# ---- start and declarations ----

def start(checkpoint_dir=None, resume=None, keep_last=0):
    """Starts the node if it is not started yet. On a worker returns True. On a server rank, serves
    until every worker has shut down, then shuts down and exits the process (sys.exit(0)).
    checkpoint_dir, resume, keep_last: as shardps.start() (checkpoints need
    DistributedOptimizer(..., server_optimizer=True)); call this explicitly to give them, before
    any other communication call (which would start the node without them)."""
    if not shardps._job.started():
        if not shardps.start(checkpoint_dir, resume, keep_last):  # a server: served until every worker said goodbye
            shardps.shutdown()
            sys.exit(0)
        return True
    if not shardps.is_worker():
        raise shardps.Error("shardps.torch: this rank is a server (it has served already): "
                            "communication calls are for workers")
    if checkpoint_dir is not None or resume is not None:
        raise shardps.Error("shardps.torch.start: the node has already started (a communication call started it) "
                            "without checkpoint_dir/resume; call start(checkpoint_dir=..., resume=...) before "
                            "broadcast_parameters and the first step")
    return True


def declare(name, shape, optimizer=None, **hyper):
    """Declares a float32 table (before the node starts), remembering it for shardps.torch."""
    if shardps._job.started():
        raise shardps.Error(f"shardps.torch: cannot declare table {name!r}: the node has started (the first "
                            f"communication call starts it); create DistributedOptimizer and call "
                            f"broadcast_parameters before the first communication call")
    if STREAM_TABLE not in _declared and name != STREAM_TABLE:
        shardps.declare(STREAM_TABLE, (STREAM_FLOATS,))
        _declared[STREAM_TABLE] = (STREAM_FLOATS,)
    shardps.declare(name, tuple(shape), optimizer, **hyper)
    _declared[name] = tuple(shape)
    if optimizer is not None:
        _server_tables[name] = tuple(shape)


def _ensure_stream_declared():
    if STREAM_TABLE not in _declared and not shardps._job.started():
        shardps.declare(STREAM_TABLE, (STREAM_FLOATS,))
        _declared[STREAM_TABLE] = (STREAM_FLOATS,)


# ---- push_pull on tensors ----

def _as_array(tensor, what):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise TypeError(f"{what}: tensor is on {tensor.device}; only CPU tensors are supported (copy it with .cpu())")
    if tensor.dtype != torch.float32:
        raise TypeError(f"{what}: tensor dtype is {tensor.dtype}, expected torch.float32")
    if tensor.layout != torch.strided:
        raise TypeError(f"{what}: tensor layout is {tensor.layout}, expected torch.strided (dense)")
    if not tensor.is_contiguous():
        raise ValueError(f"{what}: tensor is not contiguous (call .contiguous() and push_pull that)")
    return tensor.detach().numpy()  # shares the tensor's memory: the result lands in place


def push_pull_async(tensor, name, average=True):
    """Starts the push_pull of `tensor` (CPU float32 contiguous) as table `name`'s next step; the
    handle's wait() writes the sum (mean when average) over workers into `tensor` in place."""
    arr = _as_array(tensor, f"push_pull({name!r})")
    start()
    return shardps.push_pull_async(arr, name, average)


def push_pull(tensor, name, average=True, timeout=None):
    """push_pull_async(...).wait(timeout); returns `tensor`, which holds the result."""
    push_pull_async(tensor, name, average).wait(timeout)
    return tensor


# ---- broadcasts ----

def _check_root(root_worker):
    n = shardps.num_workers()
    if not isinstance(root_worker, int) or not 0 <= root_worker < n:
        raise ValueError(f"root_worker must be a worker index in 0..{n - 1}, got {root_worker!r}")


def _broadcast_bytes(data, root_worker):
    """Root's bytes to every worker (the others pass None), through the stream table."""
    is_root = shardps.worker_index() == root_worker
    buf = np.zeros(STREAM_FLOATS, np.float32)
    if is_root:
        n = len(data)
        buf[:4] = [(n >> (16 * i)) & 0xFFFF for i in range(4)]
    shardps.push_pull(buf, STREAM_TABLE, average=False)
    n = sum(int(buf[i]) << (16 * i) for i in range(4))
    words = np.zeros((n + 1) // 2, np.float32)
    if is_root:
        padded = data + (b"\0" if n % 2 else b"")
        words[:] = np.frombuffer(padded, "<u2").astype(np.float32)
    for off in range(0, len(words), STREAM_FLOATS):
        part = words[off:off + STREAM_FLOATS]
        buf[:] = 0.0
        buf[:len(part)] = part
        shardps.push_pull(buf, STREAM_TABLE, average=False)
        part[:] = buf[:len(part)]
    return words.astype("<u2").tobytes()[:n]


def _broadcast_object(obj, root_worker):
    data = None
    if shardps.worker_index() == root_worker:
        f = io.BytesIO()
        torch.save(obj, f)
        data = f.getvalue()
    return torch.load(io.BytesIO(_broadcast_bytes(data, root_worker)))


def _items(params):
    if isinstance(params, dict):
        items = list(params.items())
    else:
        items = list(params)
        if any(not (isinstance(i, tuple) and len(i) == 2) for i in items):
            raise TypeError("broadcast_parameters: params must be a state_dict or a list of (name, tensor) pairs")
    names = [n for n, _ in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"broadcast_parameters: duplicate names {dup}")
    return items


def _bcast_eligible(t):
    return (isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dtype == torch.float32
            and t.layout == torch.strided and t.numel() > 0)


def broadcast_parameters(params, root_worker=0):
    """Every worker ends with root's values (bit-exact) in `params`, a state_dict or a list of
    (name, tensor) pairs such as model.named_parameters(), written in place. Before the node starts,
    declares a table "bcast.<name>" per float32 tensor and starts the node (server ranks serve
    there and exit); other entries (and everything after start without such tables) go as bytes."""
    items = _items(params)
    if not shardps._job.started():
        for name, t in items:
            if _bcast_eligible(t) and name not in _server_tables and "bcast." + name not in _declared:
                declare("bcast." + name, tuple(t.shape))
        _ensure_stream_declared()
    start()
    _check_root(root_worker)
    is_root = shardps.worker_index() == root_worker
    rest = []
    handles = []
    for name, t in items:
        table = "bcast." + name
        if _bcast_eligible(t) and _server_tables.get(name) == tuple(t.shape):
            # Server mode: the parameter's own table; root's values become the servers' weights
            # (or, resumed, the checkpoint's weights come back to every worker).
            with torch.no_grad():
                buf = t.detach().contiguous().clone()
            handles.append((shardps._job.initialize_async(buf.numpy(), name, root_worker), buf, t))
        elif _bcast_eligible(t) and _declared.get(table) == tuple(t.shape):
            with torch.no_grad():
                buf = t.detach().contiguous().clone() if is_root else torch.full(t.shape, -0.0)
            handles.append((shardps.push_pull_async(buf.numpy(), table, average=False), buf, t))
        elif isinstance(t, torch.Tensor):
            rest.append((name, t))
        else:
            raise TypeError(f"broadcast_parameters: {name!r} is a {type(t).__name__}, not a tensor")
    for h, buf, t in handles:
        h.wait()
        with torch.no_grad():
            t.copy_(buf)
    if rest:
        values = _broadcast_object({n: t.detach() for n, t in rest} if is_root else None, root_worker)
        for name, t in rest:
            if name not in values or values[name].shape != t.shape or values[name].dtype != t.dtype:
                raise ValueError(f"broadcast_parameters: {name!r} differs in shape or dtype from the root's")
            with torch.no_grad():
                t.copy_(values[name])


def broadcast_optimizer_state(optimizer, root_worker=0):
    """Every worker's optimizer gets root's state (tensors, step counts) and hyperparameters (lr,
    momentum, ... of every param group), bit-exact, through optimizer.state_dict() and
    load_state_dict(). The param groups must hold the same parameters in the same order everywhere."""
    _ensure_stream_declared()
    start()
    _check_root(root_worker)
    is_root = shardps.worker_index() == root_worker
    state = _broadcast_object(optimizer.state_dict() if is_root else None, root_worker)
    mine = [len(g["params"]) for g in optimizer.param_groups]
    theirs = [len(g["params"]) for g in state["param_groups"]]
    if mine != theirs:
        raise ValueError(f"broadcast_optimizer_state: this worker's param groups hold {mine} parameters, "
                         f"the root's {theirs}")
    if not is_root:
        optimizer.load_state_dict(state)


# ---- DistributedOptimizer ----

def _server_optimizer_of(optimizer_class, group, name):
    """The servers' optimizer and settings equal to a torch optimizer's param group, or ValueError."""
    base = [c for c in optimizer_class.__mro__ if c.__module__.startswith("torch.optim")]
    kind = base[0].__name__ if base else optimizer_class.__name__
    wd = float(group.get("weight_decay", 0.0))
    if group.get("maximize", False):
        raise ValueError(f"DistributedOptimizer(server_optimizer=True): {kind}(maximize=True) is not supported")
    if kind == "SGD":
        if group.get("nesterov", False) or group.get("dampening", 0.0) != 0.0:
            raise ValueError("DistributedOptimizer(server_optimizer=True): SGD with nesterov or dampening is not supported "
                             "by the servers' momentum (v = m*v + g; w -= lr*v)")
        if group.get("momentum", 0.0) == 0.0:
            return "sgd", dict(lr=group["lr"], weight_decay=wd)
        return "momentum", dict(lr=group["lr"], momentum=group["momentum"], weight_decay=wd)
    if kind == "Adam":
        if group.get("amsgrad", False):
            raise ValueError("DistributedOptimizer(server_optimizer=True): Adam(amsgrad=True) is not supported")
        b1, b2 = group["betas"]
        return "adam", dict(lr=group["lr"], beta1=b1, beta2=b2, eps=group["eps"], weight_decay=wd)
    if kind == "Adagrad":
        if group.get("lr_decay", 0.0) != 0.0:
            raise ValueError("DistributedOptimizer(server_optimizer=True): Adagrad(lr_decay != 0) is not supported")
        return "adagrad", dict(lr=group["lr"], eps=group["eps"], weight_decay=wd,
                               initial_accumulator=group.get("initial_accumulator_value", 0.0))
    raise ValueError(f"DistributedOptimizer(server_optimizer=True): the servers run SGD (with momentum), Adam and "
                     f"Adagrad; {kind} (parameter {name!r}) has no server counterpart: use server_optimizer=False")


class _DistributedOptimizer(torch.optim.Optimizer):
    def __init__(self, params, named_parameters, backward_passes_per_step=1, server_optimizer=False):
        super(self.__class__, self).__init__(params)
        self._timeout = None
        self._server = bool(server_optimizer)
        if named_parameters is not None:
            named_parameters = list(named_parameters)
        else:
            named_parameters = [(f"param.{gi}.{pi}", p) for gi, g in enumerate(self.param_groups)
                                for pi, p in enumerate(g["params"])]
        if any(not (isinstance(i, tuple) and len(i) == 2) for i in named_parameters):
            raise ValueError("DistributedOptimizer: named_parameters must be (name, parameter) pairs, "
                             "e.g. model.named_parameters()")
        names = [n for n, _ in named_parameters]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"DistributedOptimizer: named_parameters has duplicate names {dup}")
        if not isinstance(backward_passes_per_step, int) or backward_passes_per_step < 1:
            raise ValueError(f"DistributedOptimizer: backward_passes_per_step must be an int >= 1, "
                             f"got {backward_passes_per_step!r}")
        named_ids = {id(p) for _, p in named_parameters}
        unnamed = [f"group {gi} param {pi} (shape {tuple(p.shape)})" for gi, g in enumerate(self.param_groups)
                   for pi, p in enumerate(g["params"]) if id(p) not in named_ids]
        if unnamed:
            raise ValueError("DistributedOptimizer: named_parameters does not name every parameter of the "
                             "optimizer; unnamed: " + ", ".join(unnamed))
        in_groups = {id(p) for g in self.param_groups for p in g["params"]}
        self._names = {}
        for name, p in named_parameters:
            if id(p) in in_groups and id(p) not in self._names:
                self._names[id(p)] = name
        self.backward_passes_per_step = backward_passes_per_step
        self._params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        for p in self._params:
            _as_array(p, f"DistributedOptimizer: parameter {self._names[id(p)]!r}")
        self._declared_settings = {}
        if self._server:
            # One table per parameter, named as the parameter (so checkpoints and exports carry
            # state_dict names), whose servers run the torch optimizer's counterpart.
            for g in self.param_groups:
                for p in g["params"]:
                    if not p.requires_grad:
                        continue
                    kind, hyper = _server_optimizer_of(type(self).__mro__[1], g, self._names[id(p)])
                    declare(self._names[id(p)], tuple(p.shape), kind, **hyper)
                    self._declared_settings[id(p)] = (kind, hyper)
            self._buffers = {id(p): np.zeros(tuple(p.shape), np.float32) for p in self._params}
        else:
            for p in self._params:
                declare("grad." + self._names[id(p)], tuple(p.shape))
        self._delay = {id(p): backward_passes_per_step for p in self._params}
        self._handles = {}  # id(p) -> (handle or None, grad tensor)
        self._synchronized = False
        self._should_synchronize = True
        self._grad_accs = []
        self._register_hooks()

    def _register_hooks(self):
        for p in self._params:
            p_tmp = p.expand_as(p)
            grad_acc = p_tmp.grad_fn.next_functions[0][0]
            grad_acc.register_hook(self._make_hook(p))
            self._grad_accs.append(grad_acc)  # keep the accumulator (and its hook) alive

    def _push_pull_grad_async(self, p):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grad = p.grad
        arr = _as_array(grad, f"gradient of {self._names[id(p)]!r}")
        start()
        if self._server:
            name = self._names[id(p)]
            if shardps.next_step(name) == 0:
                return None, grad  # weights not set yet (no broadcast_parameters): step() sets them first
            buf = self._buffers[id(p)]
            np.copyto(buf, arr)  # the gradient goes out of, and the new weights come into, this buffer
            return shardps.push_pull_async(buf, name, True), grad
        return shardps.push_pull_async(arr, "grad." + self._names[id(p)], True), grad

    def _make_hook(self, p):
        def hook(*ignore):
            key = id(p)
            if key in self._handles and self._handles[key][0] is not None:
                if self._delay[key] <= 0:
                    raise AssertionError(
                        f"shardps DistributedOptimizer: the gradient of {self._names[key]!r} was computed more "
                        f"than backward_passes_per_step={self.backward_passes_per_step} times before step(); "
                        f"call step() (or synchronize()) after each {self.backward_passes_per_step} backward "
                        f"pass(es), or raise backward_passes_per_step to accumulate more passes locally")
            self._delay[key] -= 1
            entry = (None, None)
            if self._delay[key] == 0:
                entry = self._push_pull_grad_async(p)
            self._handles[key] = entry
        return hook

    def synchronize(self):
        """Waits for every gradient push_pull of this step, first starting those whose hooks did not
        fire (unused parameters: zeros) or fired fewer than backward_passes_per_step times."""
        if self._server:
            self._initialize_unset()
        for p in self._params:
            key = id(p)
            if key not in self._handles or self._handles[key][0] is None:
                self._handles[key] = self._push_pull_grad_async(p)
        for p in self._params:
            handle, grad = self._handles[id(p)]
            handle.wait(self._timeout)
            if p.grad is not grad:
                raise AssertionError(f"shardps DistributedOptimizer: the gradient tensor of {self._names[id(p)]!r} "
                                     f"was replaced while its push_pull was pending")
            self._delay[id(p)] = self.backward_passes_per_step
        self._handles.clear()
        self._synchronized = True

    def skip_synchronize(self):
        """A context manager for step() after an explicit synchronize() (as Horovod's)."""
        opt = self

        class _Skip:
            def __enter__(self_):
                opt._should_synchronize = False

            def __exit__(self_, *exc):
                opt._should_synchronize = True
        return _Skip()

    def _initialize_unset(self):
        """Server mode: tables whose weights are not set (broadcast_parameters was not called) get
        worker 0's parameters now; every worker's parameters become them."""
        unset = [p for p in self._params if shardps.next_step(self._names[id(p)]) == 0]
        handles = []
        for p in unset:
            buf = self._buffers[id(p)]
            np.copyto(buf, p.detach().numpy())
            handles.append((shardps._job.initialize_async(buf, self._names[id(p)], 0), buf, p))
        for h, buf, p in handles:
            h.wait(self._timeout)
            with torch.no_grad():
                p.copy_(torch.from_numpy(buf))

    def _check_settings(self):
        for g in self.param_groups:
            for p in g["params"]:
                if id(p) not in self._declared_settings:
                    continue
                kind, hyper = _server_optimizer_of(type(self).__mro__[1], g, self._names[id(p)])
                if (kind, hyper) != self._declared_settings[id(p)]:
                    raise ValueError(
                        f"DistributedOptimizer(server_optimizer=True): the settings of parameter "
                        f"{self._names[id(p)]!r} changed to {kind} {hyper} after the servers were given "
                        f"{self._declared_settings[id(p)]}; the servers keep the settings they were declared with "
                        f"(a learning-rate schedule needs server_optimizer=False)")

    def step(self, closure=None):
        if self._server:
            loss = closure() if closure is not None else None
            self._check_settings()
            if self._should_synchronize:
                self.synchronize()
            self._synchronized = False
            with torch.no_grad():  # the servers applied the optimizer: their weights are the parameters
                for p in self._params:
                    p.copy_(torch.from_numpy(self._buffers[id(p)]))
            return loss
        if self._should_synchronize:
            self.synchronize()
        self._synchronized = False
        return super(self.__class__, self).step(closure)

    def zero_grad(self, *args, **kwargs):
        pending = sorted(self._names[k] for k, (h, _) in self._handles.items() if h is not None)
        partial = sorted(self._names[k] for k, (h, _) in self._handles.items() if h is None)
        if pending or partial:
            what = []
            if pending:
                what.append(f"the push_pulls of the gradients of {pending} are pending")
            if partial:
                what.append(f"the gradients of {partial} have accumulated fewer than backward_passes_per_step="
                            f"{self.backward_passes_per_step} passes")
            raise AssertionError(
                "shardps DistributedOptimizer: zero_grad() was called while " + " and ".join(what) +
                " (after backward(), before step() or synchronize()); call step() first, or zero the gradients "
                "before backward()")
        return super(self.__class__, self).zero_grad(*args, **kwargs)


def DistributedOptimizer(optimizer, named_parameters=None, backward_passes_per_step=1, server_optimizer=False):
    """Wraps a torch.optim optimizer: its gradients are averaged over the workers before each step.
    Each parameter's gradient is pushed (table "grad.<name>", declared here: call this before the
    first communication call) as soon as backward() has produced it, after
    backward_passes_per_step passes have accumulated it locally; step() waits for all of them
    (pushing zeros for parameters whose gradients were not computed), then runs the wrapped
    optimizer's step. named_parameters (e.g. model.named_parameters()) must name every parameter of
    the optimizer, each once; the names must be the same on every worker.

    server_optimizer=True: the servers run the optimizer (torch.optim.SGD with or without
    momentum, Adam, Adagrad, with each param group's settings at this call) and hold the weights
    and the optimizer state; the workers push gradients and pull weights. The tables are named as
    the parameters; broadcast_parameters(model.state_dict()) hands worker 0's parameters to the
    servers (or, after a resume, the checkpoint's to every worker); step() copies the servers'
    new weights into the parameters and leaves .grad as computed. shardps.checkpoint() after
    step() saves them; spt.start(checkpoint_dir=..., resume=...) restarts from one."""
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,), dict(_DistributedOptimizer.__dict__))
    return cls(optimizer.param_groups, named_parameters, backward_passes_per_step, server_optimizer)
