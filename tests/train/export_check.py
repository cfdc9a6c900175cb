#!/usr/bin/python3
"""End-to-end check of `shardps ckpt export`, run by CTest (tests/train/CMakeLists.txt, test train_export).

    export_check.py --shardps build/bin/shardps --mpirun mpirun --source-dir . --work DIR

Trains a small run with checkpoints, exports the final checkpoint as f32, f16 and int8 (and with
--prune-below), and reads every file back with an independent reader (struct + json + numpy, no
safetensors library):
  * layout: 8-byte little-endian header length, JSON header, data offsets that cover the data
    exactly (no holes, no overlap, each tensor aligned to its element size), only string metadata;
  * f32 equals the run's final_model.safetensors bit for bit (names, shapes, values);
  * f16 equals numpy's float32 -> float16 conversion (round to nearest even) bit for bit;
  * int8: scale = max|w| / 127 (also the "<name>.scale" F32 tensor and metadata), |q| <= 127 and
    q * scale within scale / 2 of every weight;
  * --prune-below X zeroes exactly the weights with |w| < X, and the printed sparsity (per tensor
    and overall) matches the zeros in the file;
  * DIR@VERSION and DIR@TAG select older versions (their step in the metadata);
  * shapes come from the manifest, which records each table's shape; a manifest without shapes
    (as older versions wrote them, made here by rewriting MANIFEST with protoc) still exports the
    same shapes by the documented legacy name rule, with a note; a recorded shape that does not
    hold its table's size is refused naming the table;
  * bad --dtype, bad --prune-below, a missing checkpoint and an unwritable --out exit non-zero
    with a message and no crash.
Exits 0 printing "PASS export", or 1 printing "FAIL: ..." (tests/pylib/shardps_check.py).
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import shardps_check as sc  # noqa: E402
from shardps_check import fail  # noqa: E402

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I8": np.dtype("i1")}


def run(cmd, expect_ok=True, timeout=600):
    return sc.run(cmd, timeout=timeout, expect_ok=expect_ok)


def read_safetensors(path, need_meta=True):
    """Returns (tensors by name, metadata, header order); checks the layout strictly."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        fail(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n == 0 or 8 + n > len(data):
        fail(f"{path}: header length {n} does not fit the file of {len(data)} bytes")
    raw = data[8:8 + n]
    if not raw.startswith(b"{"):
        fail(f"{path}: header does not start with '{{'")
    header = json.loads(raw.decode("utf-8"))
    body = data[8 + n:]
    meta = header.pop("__metadata__", None)
    if meta is None and not need_meta:
        meta = {}
    if meta is None:
        fail(f"{path}: no __metadata__")
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            fail(f"{path}: metadata {k!r} is not a string value: {v!r}")
    spans, out = [], {}
    for name, info in header.items():
        if set(info) != {"dtype", "shape", "data_offsets"}:
            fail(f"{path}: tensor {name} has keys {sorted(info)}")
        if info["dtype"] not in DTYPES:
            fail(f"{path}: tensor {name} has dtype {info['dtype']}")
        dt = DTYPES[info["dtype"]]
        a, b = info["data_offsets"]
        count = int(np.prod(info["shape"], dtype=np.int64)) if info["shape"] else 1
        if not (0 <= a <= b <= len(body)) or b - a != count * dt.itemsize:
            fail(f"{path}: tensor {name} offsets [{a},{b}] do not hold shape {info['shape']} of {info['dtype']}")
        if a % dt.itemsize:
            fail(f"{path}: tensor {name} starts at {a}, not a multiple of {dt.itemsize}")
        spans.append((a, b, name))
        out[name] = np.frombuffer(body, dtype=dt, count=count, offset=a).reshape(info["shape"])
    pos = 0
    for a, b, name in sorted(spans):
        if a != pos:
            fail(f"{path}: tensor {name} starts at {a}, expected {pos} (hole or overlap)")
        pos = b
    if pos != len(body):
        fail(f"{path}: tensors cover {pos} data bytes of {len(body)}")
    return out, meta, list(header)


def check_meta(meta, path, version, step, dtype):
    want = {"checkpoint_version": str(version), "step": str(step), "source_dtype": "F32", "dtype": dtype}
    for k, v in want.items():
        if meta.get(k) != v:
            fail(f"{path}: metadata {k} = {meta.get(k)!r}, expected {v!r}")


def check_weights_only(model, tensors, path, suffix_ok=()):
    extra = [n for n in tensors if n not in model and not any(n.endswith(s) for s in suffix_ok)]
    missing = [n for n in model if n not in tensors]
    if extra or missing:
        fail(f"{path}: tensors {sorted(tensors)} vs the model's {sorted(model)}")
    for name, w in model.items():
        if tensors[name].shape != w.shape:
            fail(f"{path}: {name} has shape {tensors[name].shape}, the model {w.shape}")


def crc32c(data):
    """CRC32C (Castagnoli, reflected 0x82F63B78), as the checkpoint files use."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def manifest_text(source_dir, path):
    """MANIFEST (4-byte CRC32C + shardps.ckpt.Manifest) as protobuf text, via protoc."""
    with open(path, "rb") as f:
        raw = f.read()
    if struct.unpack("<I", raw[:4])[0] != crc32c(raw[4:]):
        fail(f"{path}: CRC32C mismatch")
    proto_dir = os.path.join(source_dir, "core", "storage", "proto")
    p = subprocess.run(["protoc", "-I", proto_dir, "--decode=shardps.ckpt.Manifest", "checkpoint.proto"],
                       input=raw[4:], capture_output=True, timeout=60)
    if p.returncode != 0:
        fail(f"protoc --decode {path}: {p.stderr.decode()}")
    return p.stdout.decode()


def write_manifest(source_dir, path, text):
    proto_dir = os.path.join(source_dir, "core", "storage", "proto")
    p = subprocess.run(["protoc", "-I", proto_dir, "--encode=shardps.ckpt.Manifest", "checkpoint.proto"],
                       input=text.encode(), capture_output=True, timeout=60)
    if p.returncode != 0:
        fail(f"protoc --encode for {path}: {p.stderr.decode()}")
    with open(path, "wb") as f:
        f.write(struct.pack("<I", crc32c(p.stdout)) + p.stdout)


def manifest_shapes(text):
    """{table name: [dims]} from a Manifest in protobuf text format."""
    shapes = {}
    for block in re.findall(r"tables \{(.*?)\n\}", text, re.S):
        name = re.search(r'name: "([^"]*)"', block).group(1)
        shapes[name] = [int(d) for d in re.findall(r"shape: (\d+)", block)]
    return shapes


def shape_checks(a, ck, newest, model, f32_path, ex):
    """Export reads shapes from the manifest; an old manifest without them uses the legacy rule."""
    vdir = os.path.join(ck, "v%08d" % newest["version"])
    text = manifest_text(a.source_dir, os.path.join(vdir, "MANIFEST"))
    recorded = manifest_shapes(text)
    want = {n: list(w.shape) for n, w in model.items()}
    if recorded != want:
        fail(f"the manifest records shapes {recorded}, the model has {want}")
    print(f"  the manifest records every table's shape: {recorded}")
    f32, _, _ = read_safetensors(f32_path)

    # A manifest as older versions wrote it: no shapes. Same tensors, by the legacy name rule.
    old_ck = ex("old_ck")
    shutil.copytree(vdir, os.path.join(old_ck, os.path.basename(vdir)))
    old_text = re.sub(r"\n\s*shape: \d+", "", text)
    if "shape:" in old_text:
        fail("could not strip the shapes from the manifest")
    write_manifest(a.source_dir, os.path.join(old_ck, os.path.basename(vdir), "MANIFEST"), old_text)
    path = ex("legacy.safetensors")
    p = run([a.shardps, "ckpt", "export", old_ck, "--out", path])
    if "records no table shapes" not in p.stderr:
        fail(f"exporting a manifest without shapes printed no note:\n{p.stderr}")
    t, _, _ = read_safetensors(path)
    for name in model:
        if t[name].shape != f32[name].shape or t[name].tobytes() != f32[name].tobytes():
            fail(f"{path}: {name} {t[name].shape} differs from the export with recorded shapes {f32[name].shape}")
    print("  a manifest without shapes: the same tensors and shapes by the legacy rule, with a note")

    # Shapes really come from the manifest: a recorded shape that does not hold the table is refused.
    bad_ck = ex("bad_shape_ck")
    shutil.copytree(vdir, os.path.join(bad_ck, os.path.basename(vdir)))
    bias = next(n for n, s in want.items() if len(s) == 1)
    bad_text = re.sub(r'(name: "%s"\n(?:.*\n)*?\s*shape: )(\d+)' % re.escape(bias),
                      lambda m: m.group(1) + str(int(m.group(2)) + 1), text, count=1)
    if manifest_shapes(bad_text)[bias] == want[bias]:
        fail("could not alter the recorded shape")
    write_manifest(a.source_dir, os.path.join(bad_ck, os.path.basename(vdir), "MANIFEST"), bad_text)
    bad_path = ex("bad_shape.safetensors")
    p = run([a.shardps, "ckpt", "export", bad_ck, "--out", bad_path], expect_ok=False)
    if p.returncode <= 0 or p.returncode >= 128 or f"'{bias}'" not in p.stderr or os.path.exists(bad_path):
        fail(f"a recorded shape not holding table {bias}: exit {p.returncode}\n{p.stderr}")
    print(f"  a recorded shape that does not hold '{bias}': exit {p.returncode}: {p.stderr.strip().splitlines()[-1]}")


def parse_sparsity(stdout):
    per, total = {}, None
    for line in stdout.splitlines():
        m = re.fullmatch(r"sparsity tensor (\S+) ([0-9.]+) \((\d+)/(\d+) zeros\)", line)
        if m:
            per[m[1]] = (float(m[2]), int(m[3]), int(m[4]))
        m = re.fullmatch(r"sparsity all ([0-9.]+) \((\d+)/(\d+) zeros\)", line)
        if m:
            total = (float(m[1]), int(m[2]), int(m[3]))
    if total is None or not per:
        fail("no sparsity printed:\n" + stdout)
    return per, total


def check_printed_sparsity(stdout, zeros_in_file, path):
    per, total = parse_sparsity(stdout)
    if set(per) != set(zeros_in_file):
        fail(f"{path}: sparsity printed for {sorted(per)}, file has {sorted(zeros_in_file)}")
    tz = tn = 0
    for name, (frac, z, n) in per.items():
        fz, fn = zeros_in_file[name]
        if (z, n) != (fz, fn) or abs(frac - fz / fn) > 1e-6:
            fail(f"{path}: printed sparsity of {name} {frac} ({z}/{n}), the file has {fz}/{fn} zeros")
        tz, tn = tz + fz, tn + fn
    if (total[1], total[2]) != (tz, tn) or abs(total[0] - tz / tn) > 1e-6:
        fail(f"{path}: printed overall sparsity {total}, the file has {tz}/{tn} zeros")
    return tz / tn


def export_checks(a):
    t_start = time.time()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    ck, out_dir = os.path.join(a.work, "ck"), os.path.join(a.work, "run")
    cfg = os.path.join(a.source_dir, "examples", "configs", "fashion_mlp.prototxt")
    run(sc.mpirun_cmd(a.mpirun, 3, [a.shardps, "train", "--config", cfg,
         "--hidden", "32", "--train-limit", "4096", "--test-limit", "1000", "--epochs", "1", "--servers", "1",
         "--checkpoint-dir", ck, "--checkpoint-every", "32", "--out-dir", out_dir, "--progress", "never"]))
    model, _, _ = read_safetensors(os.path.join(out_dir, "final_model.safetensors"), need_meta=False)
    model = {k: v.astype(np.float32) for k, v in model.items()}
    versions = json.loads(run([a.shardps, "ckpt", "list", ck, "--json"]).stdout)
    valid = [v for v in versions if v["valid"]]
    if len(valid) < 2:
        fail(f"expected at least two checkpoint versions, got {versions}")
    newest, first = valid[-1], valid[0]
    ex = lambda name: os.path.join(a.work, name)  # noqa: E731

    # f32: the final checkpoint holds exactly the final model.
    path = ex("f32.safetensors")
    p = run([a.shardps, "ckpt", "export", ck, "--out", path])
    t, meta, _ = read_safetensors(path)
    check_meta(meta, path, newest["version"], newest["step"], "F32")
    check_weights_only(model, t, path)
    for name, w in model.items():
        if t[name].tobytes() != w.tobytes():
            fail(f"{path}: {name} differs from final_model.safetensors")
    if os.path.exists(path + ".tmp"):
        fail("the temporary file was left behind")
    print(f"  f32: {len(t)} tensors equal final_model.safetensors bit for bit "
          f"({', '.join(f'{n}{list(v.shape)}' for n, v in t.items())})")
    shape_checks(a, ck, newest, model, path, ex)

    # f16: numpy's round-to-nearest-even conversion, bit for bit, and within half-precision rounding.
    path = ex("f16.safetensors")
    run([a.shardps, "ckpt", "export", ck, "--out", path, "--dtype", "f16"])
    t, meta, _ = read_safetensors(path)
    check_meta(meta, path, newest["version"], newest["step"], "F16")
    check_weights_only(model, t, path)
    for name, w in model.items():
        if t[name].dtype != np.float16:
            fail(f"{path}: {name} is {t[name].dtype}")
        if t[name].view(np.uint16).tobytes() != w.astype(np.float16).view(np.uint16).tobytes():
            fail(f"{path}: {name} differs from numpy's float16 conversion")
        w64, h64 = w.astype(np.float64), t[name].astype(np.float64)
        if np.any(np.abs(h64 - w64) > 2.0 ** -11 * np.abs(w64) + 2.0 ** -24):
            fail(f"{path}: {name} is off by more than half-precision rounding")
    print("  f16: every tensor equals numpy's float16 conversion bit for bit")

    # int8: symmetric per-tensor scale, q * scale within scale / 2.
    path = ex("int8.safetensors")
    run([a.shardps, "ckpt", "export", ck, "--out", path, "--dtype", "int8"])
    t, meta, _ = read_safetensors(path)
    check_meta(meta, path, newest["version"], newest["step"], "I8")
    check_weights_only(model, t, path, suffix_ok=(".scale",))
    worst = 0.0
    for name, w in model.items():
        q, st = t[name], t.get(name + ".scale")
        if q.dtype != np.int8 or st is None or st.dtype != np.float32 or st.shape != (1,):
            fail(f"{path}: {name} is not an I8 tensor with an F32 [1] scale tensor")
        scale = st[0]
        want = np.float32(np.max(np.abs(w))) / np.float32(127) if np.any(w) else np.float32(1)
        if scale != want or np.float32(float(meta.get(name + ".scale", "nan"))) != scale:
            fail(f"{path}: {name} scale {scale} (metadata {meta.get(name + '.scale')}), expected {want}")
        if np.any(np.abs(q.astype(np.int16)) > 127) or (np.any(w) and np.max(np.abs(q.astype(np.int16))) != 127):
            fail(f"{path}: {name} quantized values out of [-127, 127] or not using the range")
        err = np.abs(q.astype(np.float64) * np.float64(scale) - w.astype(np.float64))
        if np.any(err > np.float64(scale) / 2 * (1 + 1e-6)):
            fail(f"{path}: {name} dequantizes {err.max()} off, more than scale/2 = {scale / 2}")
        worst = max(worst, float(np.max(err / scale)))
    print(f"  int8: scales match max|w|/127, worst error {worst:.4f} * scale")

    # --prune-below X: exactly the weights with |w| < X become zero; the printed sparsity is the file's.
    x = float(np.quantile(np.concatenate([np.abs(w.ravel()) for w in model.values()]), 0.6))
    xs = repr(x)
    path = ex("pruned.safetensors")
    p = run([a.shardps, "ckpt", "export", ck, "--out", path, "--prune-below", xs])
    t, meta, _ = read_safetensors(path)
    check_meta(meta, path, newest["version"], newest["step"], "F32")
    zeros = {}
    for name, w in model.items():
        want = np.where(np.abs(w.astype(np.float64)) < x, np.float32(0), w).astype(np.float32)
        if t[name].tobytes() != want.tobytes():
            fail(f"{path}: {name} is not the model with |w| < {xs} zeroed")
        zeros[name] = (int(np.count_nonzero(t[name] == 0)), t[name].size)
    frac = check_printed_sparsity(p.stdout, zeros, path)
    if abs(float(meta.get("sparsity", "nan")) - frac) > 1e-6 or float(meta.get("prune_below", "nan")) != x:
        fail(f"{path}: metadata sparsity {meta.get('sparsity')} prune_below {meta.get('prune_below')}")
    if not 0.55 < frac < 0.65:
        fail(f"pruning below the 60% quantile left sparsity {frac}")
    print(f"  prune below {xs}: sparsity {frac:.4f}, per tensor as printed")

    # --prune-below with int8: pruned weights quantize to 0; the printed zeros are the file's.
    path = ex("pruned_int8.safetensors")
    p = run([a.shardps, "ckpt", "export", ck, "--out", path, "--prune-below", xs, "--dtype", "int8"])
    t, meta, _ = read_safetensors(path)
    zeros = {}
    for name, w in model.items():
        q = t[name]
        if np.any(q[np.abs(w.astype(np.float64)) < x] != 0):
            fail(f"{path}: {name} has a pruned weight that is not zero")
        zeros[name] = (int(np.count_nonzero(q == 0)), q.size)
    frac8 = check_printed_sparsity(p.stdout, zeros, path)
    print(f"  prune + int8: sparsity {frac8:.4f} as printed")

    # DIR@VERSION and DIR@TAG pick an older version.
    run([a.shardps, "ckpt", "tag", ck, str(first["version"]), "early"])
    p1, p2 = ex("v_first.safetensors"), ex("tag_early.safetensors")
    run([a.shardps, "ckpt", "export", f"{ck}@{first['version']}", "--out", p1])
    run([a.shardps, "ckpt", "export", f"{ck}@early", "--out", p2])
    t1, m1, _ = read_safetensors(p1)
    check_meta(m1, p1, first["version"], first["step"], "F32")
    with open(p1, "rb") as f1, open(p2, "rb") as f2:
        b1, b2 = f1.read(), f2.read()
    if b1 != b2:
        fail("DIR@TAG and DIR@VERSION of the same version exported different files")
    if all(t1[n].tobytes() == model[n].tobytes() for n in model):
        fail(f"version {first['version']} (step {first['step']}) exported the final weights")
    print(f"  @{first['version']} and @early: step {first['step']}, identical files")

    # Errors: a message on stderr, a non-zero exit, no crash, no output file.
    bad_out = ex("bad.safetensors")
    missing_dir = ex("no_such_ckpt")
    os.makedirs(ex("a_directory"))
    cases = [
        ("bad --dtype", [ck, "--out", bad_out, "--dtype", "bf16"], "dtype"),
        ("bad --prune-below", [ck, "--out", bad_out, "--prune-below", "-1"], "prune-below"),
        ("non-numeric --prune-below", [ck, "--out", bad_out, "--prune-below", "abc"], "prune-below"),
        ("nan --prune-below", [ck, "--out", bad_out, "--prune-below", "nan"], "prune-below"),
        ("missing --out", [ck], "--out"),
        ("unknown flag", [ck, "--out", bad_out, "--bogus"], "bogus"),
        ("missing checkpoint", [missing_dir, "--out", bad_out], "no_such_ckpt"),
        ("missing version", [f"{ck}@999", "--out", bad_out], "999"),
        ("missing tag", [f"{ck}@nosuchtag", "--out", bad_out], "nosuchtag"),
        ("unwritable --out", [ck, "--out", ex("no/such/dir/x.safetensors")], "no/such/dir"),
        ("--out is a directory", [ck, "--out", ex("a_directory")], "a_directory"),
    ]
    for name, args, needle in cases:
        p = run([a.shardps, "ckpt", "export"] + args, expect_ok=False)
        if p.returncode <= 0 or p.returncode >= 128:
            fail(f"{name}: exit {p.returncode} (want a clean non-zero exit)\n{p.stderr}")
        if needle not in p.stderr:
            fail(f"{name}: the message does not mention {needle!r}:\n{p.stderr}")
        print(f"  {name}: exit {p.returncode}: {p.stderr.strip().splitlines()[0]}")
    if os.path.exists(bad_out) or os.path.exists(bad_out + ".tmp"):
        fail("a failed export left a file behind")
    print(f"export checks done ({time.time() - t_start:.1f} s)")


def main():
    ap = sc.job_arguments()
    sc.main(export_checks, "export", ap.parse_args())


if __name__ == "__main__":
    main()
