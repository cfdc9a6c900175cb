#!/usr/bin/python3
"""End-to-end checks of `shardps serve` and `shardps predict` on a model trained by a real job,
through a real HTTP client (http.client) and raw sockets, run by CTest (tests/serve/CMakeLists.txt),
one CHECK per test:

    serve_checks.py --shardps build/bin/shardps --mpirun mpirun --source-dir . --work DIR CHECK

  endpoints  every KServe v2 endpoint's answer and error shape; infer outputs equal a forward pass
             computed with numpy from the version's exported safetensors file (within 1e-5), for
             flat and nested data and a batch; `shardps predict` writes the same predictions and
             the right accuracy; a bearer token server refuses a missing or wrong token
  abuse      malformed HTTP, a huge body, oversized headers, a slow client that never finishes its
             request, too many connections and a rate limit: each refused (or cut off) while the
             server goes on answering other clients
  hot_swap   4 keep-alive clients send infer requests while new versions are copied into the
             served registry (`shardps ckpt copy`), a corrupt version lands in between and a
             rollback ends it: no request fails, each client sees versions in order, the corrupt
             version is never served and is reported in /v2/health/ready and /metrics
  prometheus a real Prometheus server (Debian's) with a generated config scrapes `shardps serve` and
             the 3 processes of a training job run with --metrics-port; the series are read back
             through its HTTP API (requests by code, the served version, every rank's role, push-pull
             latency histograms, peers alive)
  fallback   the primary registry directory disappears: the fallback registry (a `ckpt copy
             --all` of it) serves, /v2/health/ready and /metrics say so; when it comes back the
             primary serves again; no request fails meanwhile

The script's exit code decides (tests/pylib/shardps_check.py).
"""
import glob
import http.client
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import shardps_check as sc  # noqa: E402
from shardps_check import check, fail  # noqa: E402

SMALL = ["--hidden", "32", "--train-limit", "2048", "--test-limit", "500", "--batch-size", "64",
         "--optimizer", "sgd", "--lr", "0.1", "--epochs", "1", "--progress", "plain"]
WIDTH = 784
# Served logits (float32 arithmetic) against numpy's float64 forward pass of the exported weights:
# within 1e-5, relative to the largest logit when that exceeds 1.
TOL = 1e-5


def train(a, ckpt_dir, every=8):
    """A 2-process job (1 server, 1 worker) that checkpoints every `every` steps into ckpt_dir."""
    cfg = os.path.join(a.source_dir, "examples", "configs", "fashion_mlp.prototxt")
    out = os.path.join(a.work, "train_out")
    sc.run(sc.mpirun_cmd(a.mpirun, 2, [a.shardps, "train", "--config", cfg, "--servers", "1", "--out-dir", out,
                                       "--checkpoint-dir", ckpt_dir, "--checkpoint-every", str(every)] + SMALL),
           timeout=600)
    versions = [v["version"] for v in sc.ckpt_versions(a.shardps, ckpt_dir) if v.get("valid")]
    check(len(versions) >= 4, f"training wrote {versions}; 4 or more versions are needed")
    return versions


class Server:
    """A `shardps serve` process on a free port."""

    def __init__(self, a, registry, extra=(), name="mlp"):
        self.port_file = os.path.join(a.work, f"port_{time.time_ns()}")
        self.log = open(os.path.join(a.work, f"serve_{time.time_ns()}.log"), "w+")
        cmd = [a.shardps, "serve", "--registry", registry, "--model", name, "--listen", "127.0.0.1:0",
               "--port-file", self.port_file] + list(extra)
        print("$ " + " ".join(cmd), flush=True)
        self.p = sc.popen(cmd, stdout=self.log, stderr=subprocess_stdout())
        sc.wait_until(lambda: os.path.exists(self.port_file) or self.p.poll() is not None, 60, "the server's port file")
        check(self.p.poll() is None, lambda: f"shardps serve exited {self.p.returncode}:\n{self.text()}")
        with open(self.port_file) as f:
            self.port = int(f.read())

    def text(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def conn(self, timeout=30):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        code = self.p.wait(30)
        check(code == 0, lambda: f"shardps serve exited {code} on SIGTERM:\n{self.text()}")
        check("stopping on SIGTERM" in self.text(), "the server did not log its stop")


def subprocess_stdout():
    import subprocess
    return subprocess.STDOUT


def request(conn, method, path, body=None, headers=None):
    """(status, parsed JSON or text) of one request on a keep-alive connection."""
    h = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read().decode()
    ctype = r.getheader("Content-Type", "")
    if ctype.startswith("application/json"):
        try:
            return r.status, json.loads(data)
        except ValueError:
            fail(f"{method} {path}: answer {r.status} is not JSON: {data[:200]!r}")
    return r.status, data


def expect_error(conn, method, path, status, words, body=None, headers=None):
    got, doc = request(conn, method, path, body, headers)
    check(got == status, f"{method} {path}: status {got}, expected {status}: {doc}")
    check(isinstance(doc, dict) and isinstance(doc.get("error"), str), f"{method} {path}: no {{\"error\": ...}}: {doc}")
    for w in words:
        check(w in doc["error"], f"{method} {path}: error {doc['error']!r} does not mention {w!r}")
    print(f"  {method} {path} -> {status} {doc['error']}", flush=True)


def promtool_check(text, what):
    """`promtool check metrics` (Debian's prometheus package) must accept `text` without a word."""
    import subprocess
    check(shutil.which("promtool"), "promtool not found; scripts/setup.sh installs prometheus")
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    check(p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(),
          f"promtool check metrics refused {what} (exit {p.returncode}): {p.stdout}{p.stderr}")
    print(f"  promtool check metrics: {what} accepted", flush=True)


def numpy_forward(tensors, x):
    import numpy as np
    h = np.asarray(x, dtype=np.float64)
    k = 0
    while f"l{k}.w" in tensors:
        h = h @ tensors[f"l{k}.w"].astype(np.float64) + tensors[f"l{k}.b"].astype(np.float64)
        if f"l{k + 1}.w" in tensors:
            h = np.maximum(h, 0)
        k += 1
    return h


def test_rows(n, seed=0):
    """n Fashion-MNIST test images as lists of floats (what a client sends)."""
    import gzip
    import numpy as np
    with gzip.open(os.path.join(sc.FASHION, "t10k-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    imgs = np.frombuffer(raw[16:], dtype=np.uint8).reshape(-1, WIDTH)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(imgs), n, replace=False)
    return (imgs[pick].astype(np.float32) / 255.0)


def infer_body(rows, nested=False, outputs=None):
    flat = [float(v) for r in rows for v in r]
    data = [list(map(float, r)) for r in rows] if nested else flat
    body = {"id": "req-1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), WIDTH], "data": data}]}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    return body


# ---- checks ----

def check_endpoints(a):
    import numpy as np
    sc.need_fashion()
    reg = os.path.join(a.work, "registry")
    versions = train(a, reg)
    last = versions[-1]
    st = os.path.join(a.work, "model.safetensors")
    sc.run([a.shardps, "ckpt", "export", f"{reg}@{last}", "--out", st])
    tensors = sc.read_safetensors_f32(st)

    srv = Server(a, reg)
    c = srv.conn()
    status, doc = request(c, "GET", "/v2/health/live")
    check(status == 200 and doc == {"live": True}, f"live: {status} {doc}")
    status, doc = request(c, "GET", "/v2/health/ready")
    check(status == 200 and doc["ready"] is True and doc["models"][0]["version"] == str(last)
          and doc["models"][0]["source"] == "primary" and doc["problem"] is None, f"ready: {status} {doc}")
    status, doc = request(c, "GET", "/v2")
    check(status == 200 and doc["name"] == "shardps", f"server metadata: {status} {doc}")
    for path in ("/v2/models/mlp", f"/v2/models/mlp/versions/{last}"):
        status, doc = request(c, "GET", path)
        check(status == 200 and doc["name"] == "mlp" and doc["versions"] == [str(last)]
              and doc["inputs"][0]["shape"] == [-1, WIDTH] and doc["inputs"][0]["datatype"] == "FP32"
              and doc["outputs"][0]["shape"] == [-1, 10], f"metadata {path}: {status} {doc}")
    for path in ("/v2/models/mlp/ready", f"/v2/models/mlp/versions/{last}/ready"):
        status, doc = request(c, "GET", path)
        check(status == 200 and doc["ready"] is True, f"{path}: {status} {doc}")

    # Inference equals numpy's forward pass of the exported weights.
    rows = test_rows(16)
    want = numpy_forward(tensors, rows)
    for nested in (False, True):
        status, doc = request(c, "POST", "/v2/models/mlp/infer", infer_body(rows, nested, ["logits", "probabilities", "label"]))
        check(status == 200, f"infer: {status} {doc}")
        check(doc["model_name"] == "mlp" and doc["model_version"] == str(last) and doc["id"] == "req-1", f"infer head: {doc}")
        out = {o["name"]: o for o in doc["outputs"]}
        logits = np.array(out["logits"]["data"], dtype=np.float64).reshape(out["logits"]["shape"])
        check(out["logits"]["shape"] == [16, 10] and out["logits"]["datatype"] == "FP32", f"logits: {out['logits']['shape']}")
        err = float(np.max(np.abs(logits - want)))
        check(err <= TOL * max(1.0, float(np.max(np.abs(want)))), f"served logits differ from numpy's forward pass by {err}")
        probs = np.array(out["probabilities"]["data"]).reshape(16, 10)
        check(np.allclose(probs.sum(axis=1), 1, atol=1e-5), "probabilities do not sum to 1")
        check(out["label"]["data"] == [int(v) for v in np.argmax(want, axis=1)] and out["label"]["datatype"] == "INT64",
              f"labels {out['label']['data']}")
        print(f"  infer ({'nested' if nested else 'flat'} data): max |served - numpy| = {err:.2e}", flush=True)
    status, doc = request(c, "POST", f"/v2/models/mlp/versions/{last}/infer",
                          {"inputs": [{"name": "x", "datatype": "FP32", "shape": [WIDTH], "data": [float(v) for v in rows[0]]}]})
    check(status == 200 and [o["name"] for o in doc["outputs"]] == ["logits", "label"]
          and doc["outputs"][0]["shape"] == [1, 10], f"one-row infer with the version named: {status} {doc}")

    # Errors: status and {"error": ...} naming what is wrong.
    expect_error(c, "GET", "/v2/models/nope", 404, ["unknown model 'nope'"])
    expect_error(c, "GET", "/v2/models/mlp/versions/999", 404, ["version 999", f"serving version {last}"])
    expect_error(c, "POST", "/v2/models/mlp/versions/999/infer", 404, ["version 999"], infer_body(rows[:1]))
    expect_error(c, "GET", "/v2/models/mlp/infer", 405, ["POST"])
    expect_error(c, "POST", "/v2/health/live", 405, ["GET"])
    expect_error(c, "GET", "/v3/anything", 404, ["no such endpoint"])
    expect_error(c, "POST", "/v2/models/mlp/infer", 400, ["not valid JSON"], "{not json")
    expect_error(c, "POST", "/v2/models/mlp/infer", 400, ["inputs"], {"inputs": []})
    bad = infer_body(rows[:1])
    bad["inputs"][0]["datatype"] = "INT32"
    expect_error(c, "POST", "/v2/models/mlp/infer", 400, ["FP32"], bad)
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 10], "data": [0.0] * 10}]}
    expect_error(c, "POST", "/v2/models/mlp/infer", 400, ["10 values", "takes 784"], bad)
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, WIDTH], "data": [0.0] * WIDTH}]}
    expect_error(c, "POST", "/v2/models/mlp/infer", 400, ["holds 784 values", "needs 1568"], bad)
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": ["a"] * WIDTH}]}
    expect_error(c, "POST", "/v2/models/mlp/infer", 400, ["numbers"], bad)
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": [1e39] * WIDTH}]}
    expect_error(c, "POST", "/v2/models/mlp/infer", 400, ["finite"], bad)
    # Data nested far deeper than the shape (a stack-depth attack): refused, the server lives on.
    deep = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 784], "data": ' + "[" * 100000 + "0" + "]" * 100000 + "}]}"
    expect_error(c, "POST", "/v2/models/mlp/infer", 400, ["nested deeper"], deep)
    # Finite inputs whose logits overflow float32: 400, never a non-JSON "inf".
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": [3e38] * WIDTH}]}
    expect_error(c, "POST", "/v2/models/mlp/infer", 400, ["not finite"], bad)
    # HEAD: the headers of a GET and no body, on a keep-alive connection that goes on working.
    c.request("HEAD", "/v2/health/live")
    r = c.getresponse()
    check(r.status == 200 and r.read() == b"" and int(r.getheader("Content-Length")) > 0, "HEAD /v2/health/live")
    check(request(c, "GET", "/v2/health/live")[0] == 200, "the connection after a HEAD")
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [5000, WIDTH], "data": []}]}
    expect_error(c, "POST", "/v2/models/mlp/infer", 400, ["5000 rows", "at most 4096"], bad)
    expect_error(c, "POST", "/v2/models/mlp/infer", 400, ["unknown output 'scores'"], infer_body(rows[:1], outputs=["scores"]))

    # /metrics: the requests above, by endpoint and code.
    status, text = request(c, "GET", "/metrics")
    check(status == 200 and 'shardps_serve_requests_total{model="mlp",version="%d",endpoint="infer",code="200"} 3' % last in text,
          f"/metrics lacks the 3 answered infer requests:\n{text[:3000]}")
    check('shardps_serve_model_version{model="mlp"} %d' % last in text, "/metrics lacks the served version")
    promtool_check(text, "the serving /metrics")
    srv.stop()

    # shardps predict: the same forward pass over a whole file, and the accuracy.
    csv_path = os.path.join(a.work, "pred.csv")
    p = sc.run([a.shardps, "predict", "--model", f"{reg}@{last}", "--data",
                os.path.join(sc.FASHION, "t10k-images-idx3-ubyte.gz"), "--labels",
                os.path.join(sc.FASHION, "t10k-labels-idx1-ubyte.gz"), "--out", csv_path])
    import gzip
    with gzip.open(os.path.join(sc.FASHION, "t10k-images-idx3-ubyte.gz")) as f:
        imgs = np.frombuffer(f.read()[16:], dtype=np.uint8).reshape(-1, WIDTH).astype(np.float32) / 255.0
    with gzip.open(os.path.join(sc.FASHION, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read()[8:], dtype=np.uint8)
    want = numpy_forward(tensors, imgs)
    got = np.loadtxt(csv_path, delimiter=",", skiprows=1)
    check(got.shape == (10000, 13), f"predictions CSV shape {got.shape}")
    err = float(np.max(np.abs(got[:, 3:] - want)))
    check(err <= TOL * max(1.0, float(np.max(np.abs(want)))), f"predict's logits differ from numpy's by {err}")
    acc = float(np.mean(np.argmax(want, axis=1) == labels))
    check(f"accuracy {acc:.4f}" in p.stdout, f"predict printed {p.stdout!r}; numpy's accuracy is {acc:.4f}")
    check(np.array_equal(got[:, 1], labels) and np.array_equal(got[:, 2], np.argmax(want, axis=1)), "predict's label columns")
    print(f"  predict: 10000 rows, max |CSV - numpy| = {err:.2e}, accuracy {acc:.4f}", flush=True)
    # Features only (CSV, --no-labels): the same logits, no label column, no accuracy.
    nolab = os.path.join(a.work, "rows.csv")
    np.savetxt(nolab, imgs[:5], delimiter=",", fmt="%.9g")
    out5 = os.path.join(a.work, "pred5.csv")
    p = sc.run([a.shardps, "predict", "--model", f"{reg}@{last}", "--data", nolab, "--no-labels", "--out", out5])
    check("accuracy" not in p.stdout and "5 rows" in p.stdout, f"predict --no-labels printed {p.stdout!r}")
    with open(out5) as f:
        header = f.readline().strip().split(",")
    check(header[:3] == ["row", "predicted", "logit_0"], f"--no-labels CSV header {header}")
    got5 = np.loadtxt(out5, delimiter=",", skiprows=1)
    check(np.max(np.abs(got5[:, 2:] - want[:5])) <= TOL * max(1.0, float(np.max(np.abs(want[:5])))), "--no-labels logits")
    r = sc.run([a.shardps, "predict", "--model", f"{reg}@{last}", "--data", csv_path], expect_ok=False)
    check(r.returncode == 1 and "pred.csv" in r.stderr, f"predict on a file that is not data: {r.returncode} {r.stderr}")

    # A bearer token: required for everything but liveness.
    tok = os.path.join(a.work, "token")
    with open(tok, "w") as f:
        f.write("s3cret-token-0123456789\n")
    os.chmod(tok, 0o600)
    srv = Server(a, reg, ["--token-file", tok])
    c = srv.conn()
    check(request(c, "GET", "/v2/health/live")[0] == 200, "liveness needs no token")
    expect_error(c, "GET", "/v2/health/ready", 401, ["bearer token"])
    expect_error(c, "POST", "/v2/models/mlp/infer", 401, ["bearer token"], infer_body(rows[:1]),
                 {"Authorization": "Bearer wrong-token-0123456789"})
    status, doc = request(c, "POST", "/v2/models/mlp/infer", infer_body(rows[:1]), {"Authorization": "Bearer s3cret-token-0123456789"})
    check(status == 200, f"with the token: {status} {doc}")
    srv.stop()
    os.chmod(tok, 0o644)
    r = sc.run([a.shardps, "serve", "--registry", reg, "--model", "mlp", "--token-file", tok], expect_ok=False, timeout=60)
    check(r.returncode == 1 and "chmod 600" in r.stderr, f"a readable token file: {r.returncode} {r.stderr}")
    r = sc.run([a.shardps, "serve", "--registry", reg, "--model", "mlp", "--listen", "0.0.0.0:0"], expect_ok=False, timeout=60)
    check(r.returncode == 2 and "--token-file" in r.stderr, f"a non-loopback address without a token: {r.returncode} {r.stderr}")
    r = sc.run([a.shardps, "serve", "--registry", os.path.join(a.work, "missing"), "--model", "mlp"], expect_ok=False, timeout=60)
    check(r.returncode == 1 and "does not exist" in r.stderr, f"a missing registry: {r.returncode} {r.stderr}")
    r = sc.run([a.shardps, "serve", "--registry", reg, "--model", "mlp", "--version", "tag:"], expect_ok=False, timeout=60)
    check(r.returncode == 2 and "--version" in r.stderr, f"a bad --version: {r.returncode} {r.stderr}")


def raw_exchange(port, payload, timeout=10):
    """Sends raw bytes, returns everything the server answers until it closes (or the timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(payload)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks).decode(errors="replace")
    finally:
        s.close()


def check_abuse(a):
    sc.need_fashion()
    reg = os.path.join(a.work, "registry")
    train(a, reg)
    rows = test_rows(1)
    body = json.dumps(infer_body(rows))
    srv = Server(a, reg, ["--max-body-bytes", "100000", "--request-timeout-ms", "1500"])

    def still_serving(what, server=None):
        c = (server or srv).conn()  # a fresh connection: idle ones are closed at the request timeout
        status, doc = request(c, "POST", "/v2/models/mlp/infer", body)
        c.close()
        check(status == 200, f"after {what}: infer answered {status} {doc}")

    out = raw_exchange(srv.port, b"GARBAGE / HTTP/9.9\r\n\r\n")
    check(out.startswith("HTTP/1.1 400") and "malformed HTTP" in out, f"malformed request: {out[:200]!r}")
    still_serving("a malformed request")
    out = raw_exchange(srv.port, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
    check(out.startswith("HTTP/1.1 413") and "larger than 100000" in out, f"huge body: {out[:200]!r}")
    still_serving("a huge body")
    out = raw_exchange(srv.port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    check(out.startswith("HTTP/1.1 431"), f"huge headers: {out[:200]!r}")
    still_serving("huge headers")
    # A slow client: half a request line, then nothing. The server cuts it off at the request
    # timeout while answering others.
    slow = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    slow.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nContent-Le")
    for _ in range(3):
        still_serving("a slow client")
    t0 = time.time()
    got = slow.recv(100)  # b"" once the server closed it
    check(got == b"", f"the slow client got {got!r}")
    print(f"  slow client closed by the server after {time.time() - t0:.1f} s more", flush=True)
    slow.close()
    c = srv.conn()
    status, text = request(c, "GET", "/metrics")
    c.close()
    for reason in ("malformed", "too_large", "timeout"):
        check(f'shardps_serve_http_refused_total{{reason="{reason}"}} 1' in text or
              (reason == "too_large" and 'shardps_serve_http_refused_total{reason="too_large"} 2' in text),
              f"/metrics lacks the refusal by {reason}:\n{text}")
    srv.stop()

    # Too many connections: with 8 open (each has had an answer, so the server holds it), the 9th
    # gets 503; the server goes on.
    srv = Server(a, reg, ["--max-connections", "8"])
    held = [srv.conn() for _ in range(8)]
    for h in held:
        check(request(h, "GET", "/v2/health/live")[0] == 200, "a held connection")
    out = raw_exchange(srv.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    check(out.startswith("HTTP/1.1 503") and "too many connections" in out, f"connection 9 of 8: {out[:200]!r}")
    for h in held:
        h.close()
    sc.wait_until(lambda: raw_exchange(srv.port, b"GET /v2/health/live HTTP/1.1\r\nConnection: close\r\n\r\n")
                  .startswith("HTTP/1.1 200"), 30, "a connection once the 8 closed")
    still_serving("too many connections", srv)
    srv.stop()

    # A rate limit: a burst beyond it gets 429 and the connection stays usable.
    srv = Server(a, reg, ["--rate-limit", "1"])
    c = srv.conn()
    codes = [request(c, "GET", "/v2/health/live")[0] for _ in range(30)]
    check(429 in codes and 200 in codes, f"30 back-to-back requests at a 1/s limit gave {codes}")
    time.sleep(1.5)
    check(request(c, "GET", "/v2/health/live")[0] == 200, "the connection after the burst")
    print(f"  rate limit 1/s: {codes.count(429)} of 30 back-to-back requests refused with 429", flush=True)
    srv.stop()


class Load:
    """`clients` threads, each with one keep-alive connection, sending single-row infer requests
    until stopped; records every failure and the versions each client saw, in order."""

    def __init__(self, port, clients=4, rate_per_client=50):
        self.port, self.stop_flag = port, threading.Event()
        self.failures, self.seen, self.requests = [], [[] for _ in range(clients)], 0
        self.body = json.dumps(infer_body(test_rows(1)))
        self.period = 1.0 / rate_per_client
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]
        for t in self.threads:
            t.start()

    def run(self, i):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop_flag.is_set():
            try:
                c.request("POST", "/v2/models/mlp/infer", body=self.body)
                r = c.getresponse()
                data = r.read()
                if r.status != 200:
                    self.failures.append(f"client {i}: {r.status} {data[:200]!r}")
                    continue
                v = int(json.loads(data)["model_version"])
                self.requests += 1
                if not self.seen[i] or self.seen[i][-1] != v:
                    self.seen[i].append(v)
            except Exception as e:  # noqa: BLE001 -- any failure is recorded and fails the check
                self.failures.append(f"client {i}: {type(e).__name__}: {e}")
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            time.sleep(self.period)

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)
            check(not t.is_alive(), "a load client did not stop")


def ready(srv):
    c = srv.conn()
    try:
        return request(c, "GET", "/v2/health/ready")[1]
    finally:
        c.close()


def served_version(srv):
    doc = ready(srv)
    return int(doc["models"][0]["version"]) if doc.get("models") else None


def check_hot_swap(a):
    sc.need_fashion()
    src = os.path.join(a.work, "trained")
    versions = train(a, src, every=4)
    reg = os.path.join(a.work, "served")
    sc.fresh_dir(reg)
    sc.run([a.shardps, "ckpt", "copy", f"{src}@{versions[0]}", reg])
    srv = Server(a, reg, ["--poll-ms", "100"])
    check(served_version(srv) == versions[0], "the first version")
    load = Load(srv.port)
    corrupt = versions[-2]
    sequence = [v for v in versions[1:] if v != corrupt]
    for v in versions[1:]:
        if v == corrupt:
            # A version that is committed but damaged: copied elsewhere, a byte flipped, then moved in.
            side = os.path.join(a.work, "side")
            sc.fresh_dir(side)
            sc.run([a.shardps, "ckpt", "copy", f"{src}@{v}", side])
            vdir = os.path.join(side, f"v{v:08d}")
            shard = sorted(glob.glob(os.path.join(vdir, "shard-*.bin")))[0]
            with open(shard, "r+b") as f:
                f.seek(100)
                b = f.read(1)
                f.seek(100)
                f.write(bytes([b[0] ^ 0xFF]))
            os.rename(vdir, os.path.join(reg, f"v{v:08d}"))
            sc.wait_until(lambda: (ready(srv).get("problem") or "").find(f"v{v:08d}") >= 0, 30,
                          "the corrupt version to be reported in /v2/health/ready")
            print(f"  corrupt v{v} reported: {ready(srv)['problem'][:160]}", flush=True)
            check(served_version(srv) != v, "the corrupt version is served")
            continue
        sc.run([a.shardps, "ckpt", "copy", f"{src}@{v}", reg], quiet=True)
        t0 = time.time()
        sc.wait_until(lambda: served_version(srv) == v, 30, f"version {v} to be served")
        print(f"  v{v} copied in; served after {time.time() - t0:.2f} s (poll 100 ms)", flush=True)
        time.sleep(0.3)
    # A rollback is obeyed: the latest selection becomes the rolled-back-to version.
    sc.run([a.shardps, "ckpt", "rollback", reg, str(versions[1])])
    sc.wait_until(lambda: served_version(srv) == versions[1], 30, "the rollback to be served")
    time.sleep(0.3)
    load.stop()
    expected = [versions[0]] + sequence + [versions[1]]
    check_load(load, expected, corrupt)
    c = srv.conn()
    _, text = request(c, "GET", "/metrics")
    swaps = [l for l in text.splitlines() if l.startswith('shardps_serve_swaps_total{model="mlp"}')]
    check(swaps and float(swaps[0].split()[-1]) == len(expected), f"swaps counted {swaps}, expected {len(expected)}")
    fails = [l for l in text.splitlines() if l.startswith('shardps_serve_load_failures_total')]
    print(f"  /metrics: {swaps[0]}; {fails}", flush=True)
    check("skipping checkpoint" in srv.text() and f"v{corrupt:08d}" in srv.text(), "the log does not report the corrupt version")
    srv.stop()

    # A tag moved 5 times under load, served by --version tag:prod.
    good = [v for v in versions if v != corrupt]
    moves = [good[i % len(good)] for i in range(6)]
    sc.run([a.shardps, "ckpt", "tag", reg, str(moves[0]), "prod"], quiet=True)
    srv = Server(a, reg, ["--poll-ms", "100", "--version", "tag:prod"])
    load = Load(srv.port)
    for v in moves[1:]:
        sc.run([a.shardps, "ckpt", "tag", reg, str(v), "prod"], quiet=True)
        t0 = time.time()
        sc.wait_until(lambda: served_version(srv) == v, 30, f"tag prod -> {v} to be served")
        print(f"  tag prod moved to v{v}; served after {time.time() - t0:.2f} s", flush=True)
        time.sleep(0.3)
    load.stop()
    check_load(load, moves, None)
    srv.stop()


def check_load(load, expected, never):
    """No failed request; each client's versions are `expected` in order (a subsequence of it)."""
    check(not load.failures, lambda: f"{len(load.failures)} failed requests during swaps, first: {load.failures[:3]}")
    total = 0
    for i, seen in enumerate(load.seen):
        check(never is None or never not in seen, f"client {i} was answered by version {never}")
        k = 0
        for v in seen:
            while k < len(expected) and expected[k] != v:
                k += 1
            check(k < len(expected), f"client {i} saw versions {seen}: not in the order of the swaps {expected}")
            k += 1
        total += 1
        print(f"  client {i} saw versions {seen}", flush=True)
    print(f"  {load.requests} requests, 0 failed", flush=True)


def check_fallback(a):
    sc.need_fashion()
    reg = os.path.join(a.work, "primary")
    versions = train(a, reg)
    backup = os.path.join(a.work, "backup")
    sc.run([a.shardps, "ckpt", "copy", reg, backup, "--all", "--with-tags"])
    srv = Server(a, reg, ["--fallback-registry", backup, "--poll-ms", "100"])
    doc = ready(srv)
    check(doc["models"][0]["source"] == "primary" and doc["models"][0]["version"] == str(versions[-1]), f"start: {doc}")
    load = Load(srv.port, clients=2)
    away = reg + ".away"
    os.rename(reg, away)
    sc.wait_until(lambda: ready(srv)["models"][0]["source"] == "fallback", 30, "the fallback registry to serve")
    doc = ready(srv)
    check(doc["ready"] is True and doc["models"][0]["version"] == str(versions[-1]) and "does not exist" in (doc["problem"] or ""),
          f"while the primary is gone: {doc}")
    print(f"  primary gone: {json.dumps(doc)}", flush=True)
    c = srv.conn()
    _, text = request(c, "GET", "/metrics")
    check('shardps_serve_fallback_active{model="mlp"} 1' in text and 'shardps_serve_fallbacks_total{model="mlp"} 1' in text,
          "/metrics does not show the fallback")
    c.close()
    time.sleep(0.5)
    os.rename(away, reg)
    sc.wait_until(lambda: ready(srv)["models"][0]["source"] == "primary", 30, "the primary to serve again")
    doc = ready(srv)
    check(doc["problem"] is None, f"after the primary came back: {doc}")
    time.sleep(0.3)
    load.stop()
    check_load(load, [versions[-1]], None)
    log = srv.text()
    check("from the fallback registry" in log and "from the primary registry" in log, f"the log does not tell the switches:\n{log}")
    srv.stop()


def free_ports(n):
    """n consecutive free loopback ports (a training job's ranks listen on P + rank)."""
    for _ in range(200):
        base = sc.free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    fail(f"no {n} consecutive free ports")


def prom_query(port, query):
    """The result vector of an instant query through Prometheus' HTTP API."""
    import urllib.parse
    import urllib.request
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.load(r)
    check(doc.get("status") == "success", f"Prometheus query {query!r}: {doc}")
    return doc["data"]["result"]


def check_prometheus(a):
    """A real Prometheus server scrapes a serving process and every process of a training job."""
    import urllib.request
    sc.need_fashion()
    check(shutil.which("prometheus"), "prometheus not found; scripts/setup.sh installs it")
    reg = os.path.join(a.work, "registry")
    train(a, reg)
    srv = Server(a, reg)
    train_base = free_ports(3)
    prom_port = sc.free_port()
    cfg = os.path.join(a.work, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\nscrape_configs:\n"
                f"  - job_name: serve\n    static_configs:\n      - targets: ['127.0.0.1:{srv.port}']\n"
                "  - job_name: train\n    static_configs:\n      - targets: [" +
                ", ".join(f"'127.0.0.1:{train_base + r}'" for r in range(3)) + "]\n")
    r = sc.run(["promtool", "check", "config", cfg], timeout=60)
    prom_log = open(os.path.join(a.work, "prometheus.log"), "w+")
    prom = sc.popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={os.path.join(a.work, 'tsdb')}",
                     f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=prom_log, stderr=subprocess_stdout())

    def prom_ready():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return prom.poll() is not None
    sc.wait_until(prom_ready, 60, "Prometheus to be ready")
    check(prom.poll() is None, "prometheus exited")

    # Some inference traffic, then the serving target as Prometheus sees it.
    c = srv.conn()
    body = infer_body(test_rows(2))
    for _ in range(5):
        check(request(c, "POST", "/v2/models/mlp/infer", body)[0] == 200, "infer")
    request(c, "POST", "/v2/models/mlp/infer", "{bad")
    c.close()
    sc.wait_until(lambda: prom_query(prom_port, 'shardps_serve_requests_total{endpoint="infer",code="200"}'), 60,
                  "Prometheus to scrape the serving process")
    res = prom_query(prom_port, 'sum(shardps_serve_requests_total{endpoint="infer"}) by (code)')
    by_code = {x["metric"]["code"]: float(x["value"][1]) for x in res}
    sc.wait_until(lambda: {x["metric"]["code"]: float(x["value"][1]) for x in
                           prom_query(prom_port, 'sum(shardps_serve_requests_total{endpoint="infer"}) by (code)')}
                  == {"200": 5.0, "400": 1.0}, 30, "Prometheus to see 5 answered and 1 refused infer request")
    lat = prom_query(prom_port, 'shardps_serve_request_duration_seconds_count{endpoint="infer"}')
    check(lat and sum(float(x["value"][1]) for x in lat) == 6, f"the infer latency histogram through Prometheus: {lat}")
    print(f"  Prometheus: serve infer requests by code {by_code}", flush=True)
    v = prom_query(prom_port, 'shardps_serve_model_version{model="mlp"}')
    check(v and v[0]["value"][1] == str(served_version(srv)), f"served version through Prometheus: {v}")

    # A training job with --metrics-port: every rank scraped while it runs.
    cfgf = os.path.join(a.source_dir, "examples", "configs", "fashion_mlp.prototxt")
    job = sc.popen(sc.mpirun_cmd(a.mpirun, 3, [a.shardps, "train", "--config", cfgf, "--servers", "1", "--out-dir",
                                               os.path.join(a.work, "metrics_job"), "--hidden", "32", "--train-limit", "4096",
                                               "--epochs", "200", "--batch-size", "64", "--progress", "never",
                                               "--metrics-port", str(train_base)]),
                   stdout=subprocess_pipe(), stderr=subprocess_stdout(), text=True)
    try:
        sc.wait_until(lambda: len(prom_query(prom_port, 'max_over_time(up{job="train"}[1m]) == 1')) == 3 or job.poll() is not None, 120,
                      "Prometheus to scrape the 3 training processes")
        check(job.poll() is None, "the training job ended before Prometheus scraped it")
        sc.wait_until(lambda: prom_query(prom_port, 'min(max_over_time(shardps_train_step[1m])) > 20') or job.poll() is not None, 120,
                      "training steps through Prometheus")
        if job.poll() is None:  # each rank's own text passes promtool too
            for r in range(3):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{train_base + r}/metrics", timeout=10) as resp:
                        promtool_check(resp.read().decode(), f"training rank {r}'s /metrics")
                except OSError as e:
                    check(job.poll() is not None, f"rank {r}'s /metrics while the job runs: {e}")
        roles = sorted((x["metric"]["role"], x["metric"]["rank"]) for x in prom_query(prom_port, "last_over_time(shardps_train_info[1m])"))
        check(roles == [("server", "0"), ("worker", "1"), ("worker", "2")], f"shardps_train_info: {roles}")
        ops = prom_query(prom_port, 'max_over_time(shardps_train_op_duration_seconds_count{op="push_pull"}[1m])')
        check(len(ops) == 2 and all(float(x["value"][1]) > 0 for x in ops), f"push-pull latency histograms: {ops}")
        peers = prom_query(prom_port, "last_over_time(shardps_train_peers_alive[1m])")
        check(len(peers) == 3 and all(x["value"][1] == "2" for x in peers), f"peers alive: {peers}")
        rate = prom_query(prom_port, "max(max_over_time(shardps_train_samples_per_second[1m]))")
        print(f"  Prometheus: training ranks {roles}, push_pull counts {[x['value'][1] for x in ops]}, "
              f"samples/s {rate[0]['value'][1] if rate else None}", flush=True)
    finally:
        sc.kill_group(job)
        job.wait(30)
    prom.send_signal(signal.SIGTERM)
    prom.wait(30)
    srv.stop()


def subprocess_pipe():
    import subprocess
    return subprocess.PIPE


CHECKS = {"endpoints": check_endpoints, "abuse": check_abuse, "hot_swap": check_hot_swap, "fallback": check_fallback,
          "prometheus": check_prometheus}

if __name__ == "__main__":
    ap = sc.job_arguments()
    ap.add_argument("check", choices=sorted(CHECKS))
    args = ap.parse_args()
    sc.fresh_dir(args.work)
    sc.main(CHECKS[args.check], f"serve_{args.check}", args)
