"""Run by pytest in every process of a 1-server, 2-worker job, under mpirun or over TCP (test_jobs.py
sets SHARDPS_* for TCP): push_pull sums and means, several steps of two tables stepped
independently, a table of several chunks, in-place results, async handles, a timeout that leaves
the step pending, barrier, argument errors, and a table whose servers run Adam (initialize, pull,
push_pull answering weights, its errors). Both workers run the same operations in the same
order; every wait has a deadline (TIMEOUT). The server rank serves in the fixture and then only
checks its role."""
import time

import numpy as np
import pytest

import shardps

TIMEOUT = 30.0
SHAPES = {"grad.w": (784, 10), "grad.b": (10,), "big": (300_000,)}  # big: two chunks of 256 Ki floats
OPT_SHAPE, OPT_LR = (6, 5), 0.125  # the Adam table


def grad(name, step, widx):
    """The array worker `widx` pushes to table `name` at `step`: different per worker, step and table."""
    n = int(np.prod(SHAPES[name]))
    seed = sum(map(ord, name)) % 13
    v = ((np.arange(n) % 97) * (widx + 1) + 3 * step + seed).astype(np.float32) * np.float32(0.25)
    return v.reshape(SHAPES[name])


def expected_sum(name, step):
    total = grad(name, step, 0).copy()
    for w in range(1, shardps.num_workers()):
        total += grad(name, step, w)  # worker-index order, float32, as the servers sum
    return total


@pytest.fixture(scope="module")
def job():
    info = {}
    shardps.init(servers=1, timeout_s=TIMEOUT, finish_timeout_s=120.0)
    for name, shape in SHAPES.items():
        shardps.declare(name, shape=shape)
    try:
        shardps.push_pull(np.zeros(10, np.float32), "grad.b")
    except shardps.Error as e:
        info["before_start"] = e
    try:
        shardps.declare("grad.w", shape=(3,))
    except ValueError as e:
        info["duplicate"] = e
    for key, args, kwargs in (("bad_optimizer", ("o1", (3,), "rmsprop"), {}),
                              ("settings_without_optimizer", ("o2", (3,)), {"lr": 0.1}),
                              ("unknown_setting", ("o3", (3,), "adam"), {"learning_rate": 0.1})):
        try:
            shardps.declare(*args, **kwargs)
        except (ValueError, TypeError) as e:
            info[key] = e
    shardps.declare("opt", shape=OPT_SHAPE, optimizer="adam", lr=OPT_LR)
    info["worker"] = shardps.start()  # a server serves here until both workers shut down
    return info


@pytest.fixture
def worker(job):
    if not job["worker"]:
        pytest.skip("server rank")
    return shardps.worker_index()


def test_roles(job):
    assert shardps.size() == 3 and shardps.num_workers() == 2 and shardps.num_servers() == 1
    assert isinstance(shardps.local_rank(), int)
    if job["worker"]:
        assert not shardps.is_server() and shardps.is_worker()
        assert shardps.worker_index() == shardps.rank() - 1 and shardps.worker_index() in (0, 1)
    else:
        assert shardps.is_server() and shardps.rank() == 0 and shardps.worker_index() == -1


def test_errors_before_start(job):
    e = job.get("before_start")
    assert isinstance(e, shardps.Error), f"push_pull before start() raised {e!r}"
    assert "push_pull('grad.b')" in str(e) and "start" in str(e)
    assert isinstance(job.get("duplicate"), ValueError) and "already declared" in str(job["duplicate"])
    e = job.get("bad_optimizer")
    assert isinstance(e, ValueError) and "declare('o1')" in str(e) and "rmsprop" in str(e) and "adam" in str(e), e
    e = job.get("settings_without_optimizer")
    assert isinstance(e, ValueError) and "given without an optimizer" in str(e), e
    e = job.get("unknown_setting")
    assert isinstance(e, TypeError) and "unknown optimizer settings ['learning_rate']" in str(e), e


def test_server_optimizer_table(worker):
    w0 = np.arange(30, dtype=np.float32).reshape(OPT_SHAPE) * np.float32(0.5) - 3
    with pytest.raises(shardps.Error, match=r"push_pull\('opt'\): the table's servers run an optimizer.*initialize"):
        shardps.push_pull(np.zeros(OPT_SHAPE, np.float32), "opt")
    with pytest.raises(shardps.Error, match=r"pull\('opt'\): the weights are not set yet"):
        shardps.pull(np.zeros(OPT_SHAPE, np.float32), "opt")
    with pytest.raises(ValueError, match=r"initialize\('grad.b'\): the table's servers run no optimizer"):
        shardps.initialize(np.zeros(10, np.float32), "grad.b")
    with pytest.raises(ValueError, match=r"root 2 outside the workers 0..1"):
        shardps.initialize(np.zeros(OPT_SHAPE, np.float32), "opt", root=2)
    with pytest.raises(shardps.Error, match=r"checkpoint: start\(\) was given no checkpoint_dir"):
        shardps.checkpoint()
    # Worker 1's array becomes the weights, on both workers, bit for bit.
    a = w0.copy() if worker == 1 else np.full(OPT_SHAPE, 7.0, np.float32)
    shardps.initialize(a, "opt", root=1, timeout=TIMEOUT)
    assert np.array_equal(a, w0) and shardps.next_step("opt") == 1
    got = np.zeros(OPT_SHAPE, np.float32)
    shardps.pull(got, "opt", timeout=TIMEOUT)
    assert np.array_equal(got, w0)
    # One Adam step on the mean gradient: its first step moves each weight by lr * sign(g).
    g = (np.arange(30, dtype=np.float32).reshape(OPT_SHAPE) % 3 - 1) * np.float32(worker + 1)
    shardps.push_pull(g, "opt", timeout=TIMEOUT)
    mean = (np.arange(30).reshape(OPT_SHAPE) % 3 - 1) * 1.5
    assert np.allclose(g, w0 - OPT_LR * np.sign(mean), atol=1e-6), (g, w0)
    shardps.pull(got, "opt", timeout=TIMEOUT)
    assert np.array_equal(got, g) and shardps.next_step("opt") == 2
    # initialize again: the table is set, so it answers the current weights.
    again = np.zeros(OPT_SHAPE, np.float32)
    shardps.initialize(again, "opt", timeout=TIMEOUT)
    assert np.array_equal(again, g)


def test_sum_steps_two_tables(worker):
    for step in range(3):
        w, b = grad("grad.w", step, worker), grad("grad.b", step, worker)
        assert shardps.next_step("grad.w") == step and shardps.next_step("grad.b") == step
        hw = shardps.push_pull_async(w, "grad.w", average=False)
        hb = shardps.push_pull_async(b, "grad.b", average=False)
        assert hb.wait(timeout=TIMEOUT) is b
        assert hw.wait(timeout=TIMEOUT) is w
        np.testing.assert_array_equal(w, expected_sum("grad.w", step))
        np.testing.assert_array_equal(b, expected_sum("grad.b", step))
    # The tables step independently: grad.w goes on alone for two more steps.
    for step in (3, 4):
        w = grad("grad.w", step, worker)
        shardps.push_pull(w, "grad.w", average=False, timeout=TIMEOUT)
        np.testing.assert_array_equal(w, expected_sum("grad.w", step))
    assert shardps.next_step("grad.w") == 5 and shardps.next_step("grad.b") == 3


def test_average_in_place(worker):
    step = shardps.next_step("grad.b")
    b = grad("grad.b", step, worker)
    address = b.ctypes.data
    out = shardps.push_pull(b, "grad.b", average=True, timeout=TIMEOUT)
    assert out is b and b.ctypes.data == address
    np.testing.assert_array_equal(b, expected_sum("grad.b", step) / np.float32(2))


def test_big_table_several_chunks(worker):
    for step in range(2):
        g = grad("big", step, worker)
        shardps.push_pull(g, "big", average=True, timeout=TIMEOUT)
        np.testing.assert_array_equal(g, expected_sum("big", step) / np.float32(2))


def test_async_handle_waits_once(worker):
    step = shardps.next_step("grad.w")
    w = grad("grad.w", step, worker)
    h = shardps.push_pull_async(w, "grad.w")
    assert isinstance(h, shardps.Handle)
    assert h.wait(TIMEOUT) is w and h.done()
    assert h.wait(TIMEOUT) is w  # a second wait returns the same result: no second division
    np.testing.assert_array_equal(w, expected_sum("grad.w", step) / np.float32(2))


def test_two_steps_in_flight(worker):
    # Steps s and s + 1 of one table pushed before either is waited for (the server keeps the
    # early push until its step begins), waited for in the opposite order.
    step = shardps.next_step("grad.w")
    first, second = grad("grad.w", step, worker), grad("grad.w", step + 1, worker)
    h1 = shardps.push_pull_async(first, "grad.w", average=False)
    h2 = shardps.push_pull_async(second, "grad.w", average=False)
    assert h2.wait(TIMEOUT) is second and h1.wait(TIMEOUT) is first
    np.testing.assert_array_equal(first, expected_sum("grad.w", step))
    np.testing.assert_array_equal(second, expected_sum("grad.w", step + 1))


def test_timeout_leaves_step_pending(worker):
    step = shardps.next_step("grad.b")
    b = grad("grad.b", step, worker)
    if worker == 0:
        h = shardps.push_pull_async(b, "grad.b", average=False)
        t0 = time.monotonic()
        with pytest.raises(shardps.TimeoutError) as e:
            h.wait(timeout=0.5)  # worker 1 pushes only after the barrier
        assert time.monotonic() - t0 < 5
        assert isinstance(e.value, TimeoutError) and isinstance(e.value, shardps.Error)
        assert e.value.code == "DEADLINE_EXCEEDED" and "grad.b" in str(e.value) and "500 ms" in str(e.value)
        assert not h.done()
        shardps.barrier(timeout=TIMEOUT)
        h.wait(timeout=TIMEOUT)
    else:
        shardps.barrier(timeout=TIMEOUT)
        shardps.push_pull(b, "grad.b", average=False, timeout=TIMEOUT)
    np.testing.assert_array_equal(b, expected_sum("grad.b", step))


def test_barrier_waits_for_everyone(worker):
    shardps.barrier(timeout=TIMEOUT)
    if worker == 1:
        time.sleep(2.0)
    t0 = time.monotonic()
    shardps.barrier(timeout=TIMEOUT)
    if worker == 0:
        assert time.monotonic() - t0 > 1.0, "the barrier returned before worker 1 entered it"


def test_argument_errors(worker):
    steps = {name: shardps.next_step(name) for name in SHAPES}
    with pytest.raises(TypeError, match=r"dtype is float64, expected float32"):
        shardps.push_pull(np.zeros(10), "grad.b")
    with pytest.raises(TypeError, match=r"expected a numpy.ndarray of float32, got list"):
        shardps.push_pull([0.0] * 10, "grad.b")
    with pytest.raises(ValueError, match=r"not C-contiguous"):
        shardps.push_pull(np.zeros((784, 20), np.float32)[:, ::2], "grad.w")
    with pytest.raises(ValueError, match=r"shape \(5,\) differs from the declared \(10,\)"):
        shardps.push_pull(np.zeros(5, np.float32), "grad.b")
    with pytest.raises(ValueError, match=r"push_pull\('nope'\): no table of that name was declared \(declared: 'grad.w'"):
        shardps.push_pull(np.zeros(10, np.float32), "nope")
    ro = np.zeros(10, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"read-only"):
        shardps.push_pull(ro, "grad.b")
    with pytest.raises(shardps.Error, match=r"declare\('late'\): tables are declared before start\(\)"):
        shardps.declare("late", shape=(4,))
    with pytest.raises(shardps.Error, match=r"init: already called"):
        shardps.init(servers=1)
    assert {name: shardps.next_step(name) for name in SHAPES} == steps  # nothing was sent
