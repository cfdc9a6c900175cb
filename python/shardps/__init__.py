"""shardps: a Horovod/BytePS-like Python API over the shardps parameter server.

    import shardps
    shardps.init(servers=1)                  # mpirun: rank/size from MPI; TCP: keywords or SHARDPS_* variables
    shardps.declare("grad.w", shape=(784, 10))
    if not shardps.start():                  # a server rank serves until every worker finished
        raise SystemExit(0)                  # ... and the script should then exit
    shardps.push_pull(arr, "grad.w", average=True)   # float32, C-contiguous; the result replaces arr in place

Each push_pull of a table is that table's next step (tables step independently); every worker
must push_pull the same tables the same number of times. By default a table's servers run the
optimizer "sum": the answer is the sum over workers of that step's arrays (divided by the worker
count with average=True). declare(..., optimizer="adam", lr=...) makes the servers hold the weights
and run that optimizer: initialize() sets the weights from one worker's array, each push_pull then
pushes a gradient and answers the new weights, and checkpoint() saves them (with the optimizer
state) in a registry directory that start(resume=...) restarts from, on any number of servers.
The environment is read here only, in init().
"""
import atexit
import os
import sys

from . import _core
from ._core import Error, TimeoutError  # noqa: A004  (shardps.TimeoutError is also a builtin TimeoutError)

__all__ = [
    "Error", "TimeoutError", "Handle", "init", "declare", "start", "shutdown", "push_pull", "push_pull_async",
    "barrier", "initialize", "pull", "checkpoint", "load_checkpoint", "export_checkpoint", "resumed_step", "rank", "size", "local_rank", "num_workers", "num_servers", "worker_index", "is_server", "is_worker",
]

Handle = _core.Handle
_job = _core.Job()  # this process's job: every call below goes through it

_local_rank = 0
_atexit_registered = False


def _pick(value, env, name, convert=str):
    """The keyword's value, else the environment variable `name` (converted), else None."""
    if value is not None:
        return value
    text = env.get(name, "")
    if text == "":
        return None
    try:
        return convert(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {convert.__name__}") from None


def init(servers=None, *, transport=None, role=None, rank=None, num_workers=None, coordinator=None,
         secret_file=None, insecure=None, listen=None, peer_timeout=None, setup_timeout=300.0, timeout_s=60.0,
         finish_timeout_s=600.0, local_rank=None):
    """Joins the job. Under mpirun (transport 'mpi', the default there) rank and size come from MPI;
    ranks 0..servers-1 serve and the rest work. Over TCP ('tcp', the default when a coordinator is
    given) every process is started on its own, with the flags of `shardps train --transport tcp`
    as keywords, each falling back to its variable: servers (SHARDPS_NUM_SERVERS, default 1),
    role 'server'|'worker' (SHARDPS_ROLE), rank within the role (SHARDPS_RANK), num_workers
    (SHARDPS_NUM_WORKERS), coordinator 'HOST:PORT' (SHARDPS_COORDINATOR), secret_file
    (SHARDPS_SECRET_FILE) or insecure (SHARDPS_INSECURE=1), listen (SHARDPS_LISTEN), peer_timeout
    seconds (SHARDPS_PEER_TIMEOUT). timeout_s: default deadline of every wait (and how long a server
    holds a request); finish_timeout_s: how long servers wait for silent workers at the end.
    Returns (rank, size)."""
    global _local_rank, _atexit_registered
    env = os.environ
    under_mpirun = "OMPI_COMM_WORLD_SIZE" in env or "PMIX_RANK" in env
    coordinator = _pick(coordinator, env, "SHARDPS_COORDINATOR")
    transport = _pick(transport, env, "SHARDPS_TRANSPORT") or ("tcp" if coordinator and not under_mpirun else "mpi")
    servers = _pick(servers, env, "SHARDPS_NUM_SERVERS", int)
    c = _core.Config()
    c.transport = transport
    c.num_servers = 1 if servers is None else int(servers)
    c.timeout = timeout_s
    c.finish_timeout = finish_timeout_s
    c.setup_timeout = setup_timeout
    if transport == "tcp":
        if under_mpirun:
            raise ValueError("init: transport 'tcp' was asked for, but this process was started by mpirun")
        if not coordinator:
            raise ValueError("init: tcp needs coordinator='HOST:PORT' (or SHARDPS_COORDINATOR)")
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"init: coordinator {coordinator!r} is not HOST:PORT")
        role = _pick(role, env, "SHARDPS_ROLE")
        if role not in ("server", "worker"):
            raise ValueError(f"init: tcp needs role='server' or 'worker' (or SHARDPS_ROLE), got {role!r}")
        index = _pick(rank, env, "SHARDPS_RANK", int)
        workers = _pick(num_workers, env, "SHARDPS_NUM_WORKERS", int)
        if index is None or workers is None:
            raise ValueError("init: tcp needs rank (the index within the role; SHARDPS_RANK) and "
                             "num_workers (SHARDPS_NUM_WORKERS)")
        within = c.num_servers if role == "server" else workers
        if not 0 <= index < within:
            raise ValueError(f"init: rank {index} outside 0..{within - 1} for a {role}")
        c.rank = index if role == "server" else c.num_servers + index
        c.size = c.num_servers + workers
        c.host = host.strip("[]")
        c.port = int(port)
        secret = _pick(secret_file, env, "SHARDPS_SECRET_FILE")
        insecure = insecure if insecure is not None else env.get("SHARDPS_INSECURE") == "1"
        c.insecure = bool(insecure)
        c.secret_file = secret or ""
        c.listen = _pick(listen, env, "SHARDPS_LISTEN") or "127.0.0.1"
        pt = _pick(peer_timeout, env, "SHARDPS_PEER_TIMEOUT", float)
        if pt is not None:
            c.peer_timeout = pt
    elif transport != "mpi":
        raise ValueError(f"init: transport must be 'mpi' or 'tcp', got {transport!r}")
    result = _job.init(c)
    if local_rank is not None:
        _local_rank = int(local_rank)
    elif "OMPI_COMM_WORLD_LOCAL_RANK" in env:
        _local_rank = int(env["OMPI_COMM_WORLD_LOCAL_RANK"])
    elif "SLURM_LOCALID" in env:
        _local_rank = int(env["SLURM_LOCALID"])
    else:
        _local_rank = _job.rank()  # no launcher told: one host
    if not _atexit_registered:
        atexit.register(_shutdown_at_exit)
        _atexit_registered = True
    return result


_OPTIMIZER_FIELDS = ("lr", "momentum", "beta1", "beta2", "eps", "weight_decay", "initial_accumulator")


def declare(name, shape, optimizer=None, **hyper):
    """Declares a float32 table `name` of `shape` (a tuple, or an int for one dimension); before start().

    optimizer=None (or "sum"): push_pull answers the sum (mean) of the workers' arrays.
    optimizer="sgd" | "momentum" | "adam" | "adagrad" (any name the servers register; see
    shardps.optimizers()): the servers hold the table's weights and apply that optimizer to the
    sum of each step's pushes, with keywords lr, momentum, beta1, beta2, eps, weight_decay,
    initial_accumulator (defaults 0.01, 0.9, 0.9, 0.999, 1e-8, 0, 0.1)."""
    if isinstance(shape, int):
        shape = (shape,)
    try:
        dims = [int(d) for d in shape]
    except TypeError:
        raise TypeError(f"declare({name!r}): shape must be a tuple of ints, got {shape!r}") from None
    args = _core.OptimizerArgs()
    if optimizer is not None:
        args.kind = str(optimizer)
    unknown = sorted(set(hyper) - set(_OPTIMIZER_FIELDS))
    if unknown:
        raise TypeError(f"declare({name!r}): unknown optimizer settings {unknown} (known: {list(_OPTIMIZER_FIELDS)})")
    if hyper and args.kind == "sum":
        raise ValueError(f"declare({name!r}): optimizer settings {sorted(hyper)} given without an optimizer")
    for key, value in hyper.items():
        setattr(args, key, float(value))
    _job.declare(name, dims, args)


def optimizers():
    """The names declare(optimizer=...) accepts."""
    return [n.strip() for n in _core.optimizers().split(",")]


def start(checkpoint_dir=None, resume=None, keep_last=0):
    """Starts this process's node. Workers: returns True. Servers: serve until every worker has
    called shutdown(), then return False; the script should then exit.

    checkpoint_dir: where checkpoint() writes versions of the tables whose servers run an
    optimizer (the same path on every process: one machine, or a shared file system); worker 0
    holds the directory's writer lock for the run. keep_last: keep that many newest untagged
    versions (0: all). resume: "auto" (checkpoint_dir's newest valid version, or a fresh start if
    it has none), or "DIR", "DIR@VERSION", "DIR@TAG" (an error if there is none): the servers load
    it, whatever server count wrote it, and those tables go on from its step (resumed_step())."""
    return _job.start(checkpoint_dir or "", resume or "", int(keep_last))


def push_pull_async(array, name, average=True):
    """Pushes `array` (numpy float32, C-contiguous, the declared shape) as table `name`'s next step;
    returns a Handle whose wait(timeout=None) writes the sum (mean when average) into `array` and
    returns it. Keep `array` unchanged until then."""
    return _job.push_pull_async(array, name, average)


def push_pull(array, name, average=True, timeout=None):
    """push_pull_async(...).wait(timeout): the sum (or mean) over workers, written into `array`."""
    return _job.push_pull_async(array, name, average).wait(timeout)


def initialize(array, name, root=0, timeout=None):
    """Sets the weights of table `name` (declared with an optimizer) from worker `root`'s `array`;
    every worker's `array` then holds them (bit for bit). After a resume, or when already set,
    the array receives the table's current weights instead. Every worker calls it."""
    return _job.initialize_async(array, name, int(root)).wait(timeout)


def pull(array, name, timeout=None):
    """The current weights of table `name` (declared with an optimizer), written into `array`."""
    return _job.pull_async(array, name).wait(timeout)


def checkpoint(wait=False):
    """Every worker calls it after the same step of every table declared with an optimizer:
    worker 0 writes a version of start()'s checkpoint_dir at that step, in the background
    (wait=True: until it is committed). A checkpoint still being written is committed first,
    and the last one before shutdown()."""
    _job.checkpoint(bool(wait))


def resumed_step():
    """The step the job resumed from (0: a fresh start)."""
    return _job.resumed_step()


def load_checkpoint(spec):
    """The weights of a checkpoint version ("DIR", "DIR@VERSION" or "DIR@TAG"): a dict from table
    name to a float32 array of its shape, plus "__step__". Needs no job."""
    return _core.load_checkpoint(str(spec))


def export_checkpoint(spec, path):
    """Writes the weights of a checkpoint version to a safetensors file at `path` (atomically);
    returns the version's directory. Needs no job."""
    return _core.export_checkpoint(str(spec), str(path))


def barrier(timeout=None):
    """Returns once every worker has entered the same barrier (workers only)."""
    _job.barrier(timeout)


def shutdown():
    """Workers say goodbye (the servers stop serving once all have); stops the node; finalises
    MPI if init() initialised it. Idempotent; also run at exit."""
    _job.shutdown()


def _shutdown_at_exit():
    try:
        _job.shutdown()
    except Exception as e:  # noqa: BLE001  an exit status of 0 would hide it
        print(f"shardps: at exit: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


def rank():
    return _job.rank()


def size():
    return _job.size()


def local_rank():
    return _local_rank


def num_workers():
    return _job.num_workers()


def num_servers():
    return _job.num_servers()


def worker_index():
    """This process's index among the workers (-1 on a server)."""
    return _job.worker_index()


def is_server():
    return _job.is_server()


def is_worker():
    return _job.is_worker()


def next_step(name):
    """The step the next push_pull of table `name` will be."""
    return _job.next_step(name)
