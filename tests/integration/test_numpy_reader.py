#!/usr/bin/env python3
"""test_numpy_reader.py - issue 2's "Done when": an independent
safetensors reader, numpy alone (np.frombuffer on the header's offsets; no
safetensors package, no slimd code), loads the artifacts slimd writes and
dequantizes them to within 1 % relative Frobenius error of the original
Gaussian weights.  Checked for a daemon job (int8 per channel, symmetric),
for per-tensor asymmetric int8, and for the offline CLI
(`slimd compress MODEL --spec SPEC -o OUTDIR`).

Skipped (TAP "1..0 # SKIP") when numpy is not installed.
"""

import glob
import hashlib
import json
import os
import subprocess
import sys

try:
    import numpy as np
except ImportError:
    print("1..0 # SKIP numpy missing")
    sys.exit(0)

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
from slimd_harness import test  # noqa: E402

D = None
SHAPE = (512, 768)

# ---------------------------------------------------------------- the reader

NP_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
             "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def np_load(data):
    """safetensors bytes -> ({name: ndarray}, metadata), numpy only."""
    n = int(np.frombuffer(data, dtype="<u8", count=1)[0])
    header = json.loads(bytes(data[8:8 + n]).decode("utf-8"))
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        shape = tuple(e["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if e["dtype"] == "BF16":
            bits = np.frombuffer(data, dtype="<u2", count=count, offset=base + a)
            arr = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            dt = np.dtype(NP_DTYPES[e["dtype"]])
            assert b - a == count * dt.itemsize, (name, e)
            arr = np.frombuffer(data, dtype=dt, count=count, offset=base + a)
        out[name] = arr.reshape(shape)
    return out, header.get("__metadata__", {})


def np_save(tensors, metadata=None):
    """{name: ndarray} (float32/int64) -> safetensors bytes."""
    names = {np.dtype("<f4"): "F32", np.dtype("<i8"): "I64", np.dtype("<f2"): "F16"}
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header).encode()
    hj += b" " * (-len(hj) % 8)
    return np.array([len(hj)], dtype="<u8").tobytes() + hj + b"".join(blobs)


def dequantize(arts, name):
    """(q - zp) * scale over rows: W_hat has W's shape."""
    q = arts[name]
    scale = arts[name + "_scale"]
    zp = arts.get(name + "_zero_point")
    rows = q.shape[0]
    q2 = q.reshape(rows, -1).astype(np.float32)
    zp = np.zeros_like(scale, dtype=np.float32) if zp is None else zp.astype(np.float32)
    if scale.shape == (1,):
        w = (q2 - zp[0]) * scale[0]
    else:
        assert scale.shape == (rows, 1), scale.shape
        w = (q2 - zp) * scale
    return w.reshape(q.shape)


def rel_frob(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


# ---------------------------------------------------------------- fixtures

def model():
    rng = np.random.default_rng(20261129)
    return {
        "encoder.weight": (rng.standard_normal(SHAPE) * 0.02).astype(np.float32),
        "encoder.bias": (rng.standard_normal(SHAPE[0]) * 0.01).astype(np.float32),
        "conv.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
        "token_ids": np.arange(12, dtype=np.int64).reshape(3, 4),
    }


M = model()
M_BYTES = np_save(M, {"format": "pt"})
SPEC_CH = {"op": "quantize", "dtype": "int8", "granularity": "channel", "symmetric": True}
SPEC_TA = {"op": "quantize", "dtype": "int8", "granularity": "tensor", "symmetric": False}
_state = {}


def setup():
    global D
    D = h.Daemon(workers=2, name="numpy").start()
    _state["model"] = D.upload(M_BYTES, name="gaussian").json["id"]


def teardown():
    D.stop()


def daemon_job(passes):
    r = D.submit({"model": _state["model"], "passes": passes})
    job = D.wait_job(r.json["id"])
    assert job["state"] == "succeeded", job
    art = D.get("/v1/jobs/%s/artifact" % job["id"])
    assert art.status == 200, art
    rep = D.get("/v1/jobs/%s/report" % job["id"])
    assert rep.status == 200, rep
    return art.body, rep.json


def check_untouched(arts):
    for n in ("encoder.bias", "token_ids"):
        assert arts[n].dtype == M[n].dtype and arts[n].shape == M[n].shape, n
        assert arts[n].tobytes() == M[n].tobytes(), "%s not copied bit for bit" % n


def check_report(rep, name, err):
    row = [t for t in rep["tensors"] if t["name"] == name][0]
    assert abs(row["rel_error"] - err) <= 1e-5 * err + 1e-7, (name, row["rel_error"], err)
    assert abs(row["snr_db"] + 20 * np.log10(err)) < 0.01, (row["snr_db"], err)


# ---------------------------------------------------------------- tests

@test
def test_int8_channel_within_one_percent():
    """daemon int8/channel/symmetric artifact: numpy dequantizes to < 1 % error"""
    body, rep = daemon_job([SPEC_CH])
    arts, md = np_load(body)
    assert "slimd.quantization" in md and "slimd.version" in md, md
    for name in ("encoder.weight", "conv.weight"):
        w = M[name]
        q, scale = arts[name], arts[name + "_scale"]
        assert q.dtype == np.int8 and q.shape == w.shape, (name, q.dtype, q.shape)
        assert scale.dtype == np.float32 and scale.shape == (w.shape[0], 1), scale.shape
        assert name + "_zero_point" not in arts
        w2 = w.reshape(w.shape[0], -1)
        want_scale = (np.abs(w2).max(axis=1, keepdims=True) / np.float32(127)).astype(
            np.float32)
        assert np.array_equal(scale, want_scale), "%s: scale != max|w|/127 per row" % name
        want_q = np.clip(np.rint(w2 / want_scale), -127, 127).astype(np.int8)
        diff = np.abs(q.reshape(w2.shape).astype(np.int32) - want_q.astype(np.int32))
        assert diff.max() <= 1 and (diff > 0).sum() <= max(1, diff.size // 1000), \
            "%s: %d codes differ from rint(w/scale)" % (name, (diff > 0).sum())
        err = rel_frob(w, dequantize(arts, name))
        assert err < 0.01, "%s: relative Frobenius error %.4f >= 1 %%" % (name, err)
        check_report(rep, name, err)
    check_untouched(arts)


@test
def test_int8_tensor_asymmetric():
    """daemon int8/tensor/asymmetric: W_zero_point I8 [1]; error is the step's, < 1.5 %"""
    body, rep = daemon_job([SPEC_TA])
    arts, _ = np_load(body)
    for name in ("encoder.weight", "conv.weight"):
        w = M[name]
        scale, zp = arts[name + "_scale"], arts[name + "_zero_point"]
        assert scale.shape == (1,) and zp.shape == (1,) and zp.dtype == np.int8, (
            scale.shape, zp.shape, zp.dtype)
        lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
        assert abs(float(scale[0]) - (hi - lo) / 255) <= 1e-5 * float(scale[0]), (
            float(scale[0]), (hi - lo) / 255)
        w_hat = dequantize(arts, name)
        assert np.abs(w_hat - w).max() <= 0.5 * float(scale[0]) * 1.001 + 1e-9, name
        err = rel_frob(w, w_hat)
        # uniform rounding noise: step / sqrt(12) over the weights' rms.
        # A per-tensor range on 393k Gaussians spans ~9.5 sigma, so this is
        # ~1.1 %: the 1 % promise is per channel, not per tensor.
        expect = float(scale[0]) / np.sqrt(12) / float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
        assert 0.8 * expect < err < 1.1 * expect, (name, err, expect)
        assert err < 0.015, (name, err)
        check_report(rep, name, err)
    check_untouched(arts)


@test
def test_offline_cli():
    """slimd compress MODEL --spec SPEC -o OUTDIR: artifact within 1 %, report.json, same bytes as the daemon"""
    work = h.make_tmpdir("slimd-cli-")
    mpath = os.path.join(work, "model.safetensors")
    spath = os.path.join(work, "spec.json")
    out = os.path.join(work, "out")
    with open(mpath, "wb") as f:
        f.write(M_BYTES)
    with open(spath, "w") as f:
        json.dump({"passes": [SPEC_CH]}, f)
    p = subprocess.run([h.slimd_bin(), "compress", mpath, "--spec", spath, "-o", out],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, "compress exited %d:\n%s%s" % (p.returncode, p.stdout, p.stderr)
    found = glob.glob(os.path.join(out, "*.safetensors"))
    assert len(found) == 1, "expected one .safetensors in %s: %s" % (out, os.listdir(out))
    with open(found[0], "rb") as f:
        body = f.read()
    with open(os.path.join(out, "report.json")) as f:
        rep = json.load(f)
    arts, md = np_load(body)
    assert "slimd.quantization" in md, md
    for name in ("encoder.weight", "conv.weight"):
        err = rel_frob(M[name], dequantize(arts, name))
        assert err < 0.01, (name, err)
        check_report(rep, name, err)
    check_untouched(arts)
    assert rep["totals"]["bytes_before"] == sum(a.nbytes for a in M.values()), rep["totals"]
    # the daemon runs the same pipeline: same model + spec, same bytes
    dbody, _ = daemon_job([SPEC_CH])
    assert hashlib.sha256(dbody).hexdigest() == hashlib.sha256(body).hexdigest(), \
        "offline artifact differs from the daemon's for the same spec"


@test
def test_offline_cli_errors():
    """slimd compress: a bad spec or a missing model exits non-zero and says why"""
    work = h.make_tmpdir("slimd-cli-")
    mpath = os.path.join(work, "model.safetensors")
    spath = os.path.join(work, "spec.json")
    with open(mpath, "wb") as f:
        f.write(M_BYTES)
    with open(spath, "w") as f:
        json.dump({"passes": [{"op": "prun"}]}, f)
    p = subprocess.run([h.slimd_bin(), "compress", mpath, "--spec", spath, "-o",
                        os.path.join(work, "o1")], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, p
    assert "prun" in p.stderr and "passes[0]" in p.stderr, p.stderr
    with open(spath, "w") as f:
        json.dump({"passes": [SPEC_CH]}, f)
    p = subprocess.run([h.slimd_bin(), "compress", os.path.join(work, "missing.safetensors"),
                        "--spec", spath, "-o", os.path.join(work, "o2")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, p
    assert "missing.safetensors" in p.stderr, p.stderr


if __name__ == "__main__":
    h.run(setup=setup, teardown=teardown, daemons=lambda: [D] if D else [])
