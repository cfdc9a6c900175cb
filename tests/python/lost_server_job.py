"""One process of the lost-server job of test_jobs.py (TCP, 1 server + 2 workers, SHARDPS_* set).
Worker 0 starts a push_pull that cannot complete (worker 1 never pushes), prints PENDING, and must
see shardps.Error (not a timeout) once the test kills the server: it prints
"ERROR <seconds> <message>". Worker 1 waits for a line on stdin (sent after the kill), then its
push_pull must fail at once too. Every wait has a deadline."""
import select
import sys
import time

import numpy as np

import shardps

WAIT = 30.0  # far more than the test allows for the failure to show


def expect_failure(handle):
    """Waits for `handle`; prints how it ended (ERROR is the expected outcome) and exits on any other."""
    t0 = time.monotonic()
    try:
        handle.wait(timeout=WAIT)
        print("UNEXPECTED-SUCCESS", flush=True)
        sys.exit(2)
    except shardps.TimeoutError as e:
        print(f"TIMEOUT {time.monotonic() - t0:.2f} {e}", flush=True)
        sys.exit(3)
    except shardps.Error as e:
        print(f"ERROR {time.monotonic() - t0:.2f} {e}", flush=True)


shardps.init(servers=1, timeout_s=WAIT, finish_timeout_s=60.0)
shardps.declare("t", shape=(1000,))
if not shardps.start():
    sys.exit(0)
print("READY", flush=True)
a = np.ones(1000, np.float32)
if shardps.worker_index() == 0:
    h = shardps.push_pull_async(a, "t")
    print("PENDING", flush=True)
else:
    ready, _, _ = select.select([sys.stdin], [], [], 60)
    if not ready:
        print("NO-GO", flush=True)
        sys.exit(4)
    sys.stdin.readline()
    h = shardps.push_pull_async(a, "t")
expect_failure(h)
try:
    shardps.shutdown()  # the server is gone: the goodbye fails, with a message
    print("SHUTDOWN-OK", flush=True)
except shardps.Error as e:
    print(f"SHUTDOWN-ERROR {e}", flush=True)
sys.exit(0)
