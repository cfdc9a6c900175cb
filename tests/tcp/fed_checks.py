#!/usr/bin/python3
"""Federated averaging with real client processes (shardps fed-serve / fed-client,
docs/federated.md#real-clients), run by CTest (tests/tcp/CMakeLists.txt).

    fed_checks.py --shardps build/bin/shardps --source-dir SRC --work DIR CHECK

Every check starts a coordinator and 10 client processes on 127.0.0.1 that share a secret; the
clients dump the ring vectors they mask and the coordinator the ring sums it unmasks (test-only
flags), so a check can recompute each sum from the survivors' own inputs.

kill_phase_P (P = 0..3): 3 of the 10 clients (n - t, t = 7) are SIGKILLed right before they send
          their bundle of phase P in round 1 (a real crash: the process dies, the kernel closes its
          socket). The round completes; its sum is exactly the sum of the inputs of the clients it
          names as survivors (those that sent a masked input: the 7 others for P <= 2, all 10 for
          P = 3), and round 2 runs with the 7 clients left.
abort:    4 of 10 (n - t + 1) die before phase 2 of round 1: the round aborts, is reported, and
          leaves the model as it was; round 2 runs with the 6 left.
refused:  a client with another secret, a second client with the same index and a client index
          outside the config are refused with errors naming the problem, while the job goes on;
          a coordinator that never gets its clients ends with an error naming how many came.
No check asserts a time.
"""
import argparse
import array
import csv
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import shardps_check as sc  # noqa: E402
from shardps_check import fail  # noqa: E402

CLIENTS = 10
SMALL = ["--set", "hidden=16", "--set", "data.train_limit=3000", "--set", "data.test_limit=500",
         "--set", f"federated.clients={CLIENTS}", "--set", "federated.fraction=1", "--set", "federated.local_epochs=1",
         "--set", "federated.rounds=2"]


class Job:
    def __init__(self, args, name):
        self.args = args
        self.dir = os.path.join(args.work, name)
        sc.fresh_dir(self.dir)
        for d in ("inputs", "sums"):
            os.makedirs(os.path.join(self.dir, d))
        self.key = os.path.join(self.dir, "job.key")
        sc.run([args.shardps, "keygen", "--out", self.key], quiet=True)
        self.common = ["--config", os.path.join(args.source_dir, "examples", "configs", "fashion_fedavg.prototxt")] + SMALL

    def serve(self, wait_clients=CLIENTS, extra=()):
        port_file = os.path.join(self.dir, "port")
        self.log = open(os.path.join(self.dir, "serve.log"), "w+")
        self.coordinator = sc.popen([self.args.shardps, "fed-serve", "--secret", self.key, "--listen", "127.0.0.1:0",
                                     "--port-file", port_file, "--wait-clients", str(wait_clients), "--out-dir",
                                     os.path.join(self.dir, "out"), "--progress", "never", "--test-dump-sums",
                                     os.path.join(self.dir, "sums")] + self.common + list(extra),
                                    stdout=self.log, stderr=self.log)
        sc.wait_until(lambda: os.path.exists(port_file) or self.coordinator.poll() is not None, 120, "the coordinator's port file")
        if self.coordinator.poll() is not None:
            fail("the coordinator ended before listening:\n" + self.serve_log())
        with open(port_file) as f:
            self.port = int(f.read())

    def client(self, k, extra=(), key=None):
        log = open(os.path.join(self.dir, f"client{k}.log"), "w+")
        p = sc.popen([self.args.shardps, "fed-client", "--secret", key or self.key, "--connect", f"127.0.0.1:{self.port}",
                      "--client", str(k), "--test-dump-inputs", os.path.join(self.dir, "inputs"), "--connect-timeout-ms",
                      "60000"] + self.common + list(extra), stdout=log, stderr=log)
        p.log = log
        return p

    def serve_log(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def finish(self, timeout=600):
        sc.communicate(self.coordinator, timeout, "fed-serve")
        return self.coordinator.returncode, self.serve_log()

    def metrics(self):
        with open(os.path.join(self.dir, "out", "metrics.csv")) as f:
            return list(csv.DictReader(f))

    def survivors(self, rnd):
        path = os.path.join(self.dir, "sums", f"round_{rnd}.survivors")
        if not os.path.exists(path):
            return None, None
        with open(path) as f:
            lines = f.read().split()
        return int(lines[1]), [int(x) for x in lines[2:]]

    def check_sum(self, rnd):
        """The unmasked sum of round rnd equals the sum of its survivors' own inputs mod 2^m."""
        m, who = self.survivors(rnd)
        if who is None:
            fail(f"round {rnd} has no sum")
        total = None
        for i in who:
            v = array.array("Q")
            with open(os.path.join(self.dir, "inputs", f"round_{rnd}_id_{i}.input"), "rb") as f:
                v.frombytes(f.read())
            total = list(v) if total is None else [a + b for a, b in zip(total, v)]
        mask = (1 << m) - 1
        total = [x & mask for x in total]
        got = array.array("Q")
        with open(os.path.join(self.dir, "sums", f"round_{rnd}.sum"), "rb") as f:
            got.frombytes(f.read())
        if list(got) != total:
            bad = next(i for i, (a, b) in enumerate(zip(got, total)) if a != b)
            fail(f"round {rnd}: the unmasked sum differs from the survivors' inputs summed mod 2^{m} at element {bad}")
        return who


def ids_of(clients):
    return [k + 1 for k in clients]  # every client is selected (fraction 1): secagg id = index + 1


def run_kill(args, phase, victims, expect_abort):
    job = Job(args, f"kill_phase_{phase}" if not expect_abort else "abort")
    job.serve()
    procs = {}
    for k in range(CLIENTS):
        extra = ["--test-exit-before-phase", str(phase), "--test-exit-round", "1"] if k in victims else []
        procs[k] = job.client(k, extra)
    rc, log = job.finish()
    for k, p in procs.items():
        sc.communicate(p, 120, f"client {k}")
        if k in victims and p.returncode != -9:
            fail(f"client {k} should have died of SIGKILL before phase {phase}, exit {p.returncode}")
        if k not in victims and p.returncode != 0:
            p.log.seek(0)
            fail(f"client {k} exit {p.returncode}:\n{p.log.read()[-2000:]}")
    if rc != 0:
        fail(f"fed-serve exit {rc}:\n{log[-3000:]}")
    rows = job.metrics()
    print(f"  killed {sorted(victims)} before phase {phase}: survivors per round "
          f"{[r['survivors'] for r in rows]}, clients {[r['clients'] for r in rows]}, accuracy "
          f"{[r['test_accuracy'] for r in rows]}")
    if [r["clients"] for r in rows] != [str(CLIENTS), str(CLIENTS - len(victims))]:
        fail(f"rounds selected {[r['clients'] for r in rows]} clients; expected {CLIENTS}, then the {CLIENTS - len(victims)} alive")
    if expect_abort:
        if rows[0]["survivors"] != "0" or "round 1 aborted" not in log:
            fail(f"round 1 did not abort with {len(victims)} of {CLIENTS} killed:\n{log[-3000:]}")
        if job.survivors(1)[1] is not None:
            fail("an aborted round wrote a sum")
        before = rows[0]["test_accuracy"]
        # The model after an aborted round 1 is the initial one; round 2 moves it.
        if rows[1]["survivors"] != str(CLIENTS - len(victims)):
            fail(f"round 2 did not sum the {CLIENTS - len(victims)} clients left: {rows}")
        print(f"  round 1 aborted (accuracy {before}: the untrained model), round 2 summed {rows[1]['survivors']}")
        job.check_sum(2)
        return
    who = job.check_sum(1)
    expected = [i for i in ids_of(range(CLIENTS)) if phase == 3 or i not in ids_of(victims)]
    if who != expected:
        fail(f"round 1's survivors are {who}; expected {expected}")
    job.check_sum(2)
    print(f"  round 1: the sum of survivors {who} is exact; round 2: exact over {job.survivors(2)[1]}")


def check_refused(args):
    job = Job(args, "refused")
    job.serve(wait_clients=2, extra=["--join-timeout-ms", "60000"])
    other_key = os.path.join(job.dir, "other.key")
    sc.run([args.shardps, "keygen", "--out", other_key], quiet=True)
    stranger = job.client(0, key=other_key)
    sc.communicate(stranger, 120, "the client with another secret")
    stranger.log.seek(0)
    text = stranger.log.read()
    if stranger.returncode == 0 or "handshake" not in text:
        fail(f"a client with another secret: exit {stranger.returncode}, expected a handshake error:\n{text[-2000:]}")
    print(f"  another secret: exit {stranger.returncode}: {text.strip().splitlines()[-1][:160]}")
    out_of_range = job.client(CLIENTS + 5)
    sc.communicate(out_of_range, 120, "the client outside the config")
    out_of_range.log.seek(0)
    text = out_of_range.log.read()
    if out_of_range.returncode == 0 or "outside [0, 10)" not in text:
        fail(f"client index {CLIENTS + 5}: exit {out_of_range.returncode}:\n{text[-2000:]}")
    a = job.client(1)
    # A second client 1 once the first has joined: refused by the coordinator.
    sc.wait_until(lambda: "client 1 joined" in job.serve_log() or a.poll() is not None, 120, "client 1 to join")
    dup = job.client(1, extra=["--reply-timeout-ms", "60000"])
    sc.communicate(dup, 120, "the duplicate client")
    dup.log.seek(0)
    text = dup.log.read()
    b = job.client(2)
    rc, log = job.finish()
    for k, p in ((1, a), (2, b)):
        sc.communicate(p, 120, f"client {k}")
    if "already connected" not in text and "already connected" not in log:
        fail(f"a second client 1 was not refused as already connected (exit {dup.returncode}):\n{text[-1500:]}\n{log[-1500:]}")
    if rc != 0 or a.returncode != 0 or b.returncode != 0:
        fail(f"the job with clients 1 and 2 did not finish: coordinator {rc}, clients {a.returncode} {b.returncode}:\n{log[-3000:]}")
    print(f"  duplicate client 1: exit {dup.returncode}; the job of clients 1 and 2 finished")
    # Nobody comes.
    lonely = Job(args, "lonely")
    lonely.serve(wait_clients=3, extra=["--join-timeout-ms", "1500"])
    rc, log = lonely.finish(120)
    if rc == 0 or "0 of the 3 clients to wait for joined within 1500 ms" not in log:
        fail(f"a coordinator without clients: exit {rc}:\n{log[-2000:]}")
    print("  no clients: " + [x for x in log.splitlines() if "joined within" in x][0][:160])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardps", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("check", choices=["kill_phase_0", "kill_phase_1", "kill_phase_2", "kill_phase_3", "abort", "refused"])
    args = ap.parse_args()

    def run():
        sc.need_fashion()
        os.makedirs(args.work, exist_ok=True)
        if args.check.startswith("kill_phase_"):
            run_kill(args, int(args.check[-1]), {2, 5, 9}, expect_abort=False)
        elif args.check == "abort":
            run_kill(args, 2, {0, 3, 6, 8}, expect_abort=True)
        else:
            check_refused(args)

    sc.main(run, args.check)


if __name__ == "__main__":
    main()
