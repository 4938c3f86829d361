#!/usr/bin/env python3
"""test_entropy.py - "output": {"entropy": true} (Huffman-coded gaps and
codes, docs/artifact-format.md) and `slimd decode`.

For entropy artifacts of prune+cluster, prune+quantize, quantize only,
pruned only, low rank: the documented numpy decoder and `slimd decode`
agree bit for bit, and both give exactly the weights of the same spec
without entropy (the coding is lossless), in fewer bytes.  `slimd decode`
of every kind of artifact (every scheme, safetensors and ONNX, the
daemon's tar of an ONNX model with external data, the ONNX container)
gives the reference weights (safetensors) or a plain ONNX model that
ONNX Runtime runs with the compressed artifact's outputs.  Truncated and
corrupted artifacts fail with exit 2 and a message, never a crash; bad
specs are 400s naming output.entropy.

Needs numpy, python3-onnx and onnxruntime-node (tests/ort/node_modules)
for the ONNX cases, which are skipped with a reason without them.
"""

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
from slimd_harness import check_error, test  # noqa: E402

try:
    import numpy as np
except ImportError as e:        # pragma: no cover
    print("1..0 # SKIP %s (apt-get install python3-numpy)" % e)
    sys.exit(0)
try:
    import onnx
    from onnx import numpy_helper
except ImportError:             # pragma: no cover
    onnx = None

SRC = os.environ.get("SLIMD_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
ORT_MODULES = os.environ.get("SLIMD_ORT_MODULES",
                             os.path.join(SRC, "tests", "ort", "node_modules"))
D = None
WORK = None
DOC = {}
ST_MLP = None        # a safetensors 784-300-100-10 MLP
ST_W = None

RUN_JS = r"""
const ort = require('onnxruntime-node');
const fs = require('fs');
(async () => {
  const [model, inp, shape, out] = process.argv.slice(2);
  const s = await ort.InferenceSession.create(model);
  const buf = fs.readFileSync(inp);
  const x = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  const feeds = {}; feeds[s.inputNames[0]] = new ort.Tensor('float32', x, JSON.parse(shape));
  const r = await s.run(feeds);
  const y = r[s.outputNames[0]];
  fs.writeFileSync(out, Buffer.from(y.data.buffer, y.data.byteOffset, y.data.byteLength));
  console.log(JSON.stringify(y.dims));
})().catch(e => { console.error(e.message); process.exit(1); });
"""


def mlp_weights(rng):
    """784-300-100-10 with gaussian weights (biases non-zero)."""
    return {
        "fc1.weight": (rng.standard_normal((300, 784)) * 0.05).astype(np.float32),
        "fc1.bias": (rng.standard_normal(300) * 0.1).astype(np.float32),
        "fc2.weight": (rng.standard_normal((100, 300)) * 0.08).astype(np.float32),
        "fc2.bias": (rng.standard_normal(100) * 0.1).astype(np.float32),
        "fc3.weight": (rng.standard_normal((10, 100)) * 0.2).astype(np.float32),
        "fc3.bias": np.zeros(10, np.float32),
    }


def write_st(path, w):
    with open(path, "wb") as f:
        f.write(h.safetensors_bytes([h.Tensor(n, "F32", list(a.shape), a.tobytes())
                                     for n, a in w.items()]))


def setup():
    global D, WORK, ST_MLP, ST_W
    WORK = h.make_tmpdir("slimd-entropy-")
    text = open(os.path.join(SRC, "docs", "artifact-format.md")).read()
    m = re.search(r"## Reference decoder \(numpy alone\)\s*```python\n(.*?)```", text, re.S)
    exec(m.group(1), DOC)
    with open(os.path.join(WORK, "run.js"), "w") as f:
        f.write(RUN_JS)
    ST_W = mlp_weights(np.random.default_rng(5))
    ST_MLP = os.path.join(WORK, "mlp.safetensors")
    write_st(ST_MLP, ST_W)
    D = h.Daemon()
    D.start()


def teardown():
    if D is not None:
        D.stop()


def compress(model, spec, threads=1):
    """slimd compress; (artifact path, report)."""
    out = tempfile.mkdtemp(dir=WORK)
    sp = os.path.join(out, "spec.json")
    json.dump(spec, open(sp, "w"))
    p = subprocess.run([h.slimd_bin(), "compress", model, "--spec", sp, "-o", out,
                        "--threads", str(threads)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    arts = [f for f in os.listdir(out) if ".slim." in f and not f.endswith(".data")]
    assert len(arts) == 1, os.listdir(out)
    return os.path.join(out, arts[0]), json.load(open(os.path.join(out, "report.json")))


def decode_cli(art, suffix=".safetensors", expect=0):
    out = os.path.join(tempfile.mkdtemp(dir=WORK), "decoded" + suffix)
    p = subprocess.run([h.slimd_bin(), "decode", art, "-o", out], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == expect, (p.returncode, p.stdout, p.stderr)
    return out, p


def st_tensors(path):
    t, _ = DOC["read"](path)
    return t


def assert_same(a, b, what):
    assert sorted(a) == sorted(b), (what, sorted(a), sorted(b))
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape and x.dtype == y.dtype, (what, k, x.shape, y.shape,
                                                            x.dtype, y.dtype)
        assert x.tobytes() == y.tobytes(), (what, k, float(np.abs(
            x.astype(np.float64) - y.astype(np.float64)).max()))


ENTROPY_SPECS = [
    ("prune 90% + cluster 16", [{"op": "prune", "sparsity": 0.9, "scope": "global"},
                                {"op": "cluster", "clusters": 16}], True),
    ("prune 80% + cluster 64 (8-bit)", [{"op": "prune", "sparsity": 0.8},
                                        {"op": "cluster", "clusters": 64}], True),
    ("prune 90% + int8", [{"op": "prune", "sparsity": 0.9},
                          {"op": "quantize", "dtype": "int8"}], True),
    ("prune 70% + int8 asymmetric per tensor",
     [{"op": "prune", "sparsity": 0.7},
      {"op": "quantize", "dtype": "int8", "granularity": "tensor", "symmetric": False}], True),
    ("prune 75% + int4", [{"op": "prune", "sparsity": 0.75},
                          {"op": "quantize", "dtype": "int4", "group_size": 64}], True),
    ("prune 60% + ternary", [{"op": "prune", "sparsity": 0.6},
                             {"op": "quantize", "dtype": "ternary"}], True),
    ("prune 50% + binary", [{"op": "prune", "sparsity": 0.5},
                            {"op": "quantize", "dtype": "binary"}], True),
    ("prune 90% only", [{"op": "prune", "sparsity": 0.9}], True),
    ("prune 90% + fp16", [{"op": "prune", "sparsity": 0.9},
                          {"op": "quantize", "dtype": "fp16"}], True),
    ("int8 only", [{"op": "quantize", "dtype": "int8"}], False),
    ("int4 only", [{"op": "quantize", "dtype": "int4", "group_size": 32,
                    "symmetric": False}], False),
    ("cluster 16 only", [{"op": "cluster", "clusters": 16}], False),
    ("prune 50% + int8, dense", [{"op": "prune", "sparsity": 0.5},
                                 {"op": "quantize", "dtype": "int8"}], False),
    ("lowrank + int8", [{"op": "lowrank", "rank_ratio": 0.25},
                        {"op": "quantize", "dtype": "int8"}], False),
]


def check_entropy(passes, sparse):
    plain_spec = {"passes": passes, "output": {"sparse": sparse}}
    spec = {"passes": passes, "output": {"sparse": sparse, "entropy": True}}
    art, rep = compress(ST_MLP, spec)
    plain, prep = compress(ST_MLP, plain_spec)
    raw, meta = DOC["read"](art)
    entries = json.loads(meta["slimd.tensors"])
    coded = [n for n, e in entries.items() if e.get("entropy") or any(
        f.get("entropy") for f in e.get("factors", {}).values())]
    assert coded, entries
    # the numpy decoder, slimd decode and the artifact without entropy agree exactly
    ref = DOC["decode"](art)
    assert_same(ref, DOC["decode"](plain), "entropy vs plain artifact")
    dec, _ = decode_cli(art)
    dec_plain, _ = decode_cli(plain)
    if any(p["op"] == "lowrank" for p in passes):
        # the factors' product is BLAS's in slimd, numpy's here: other sums
        for k, a in st_tensors(dec).items():
            assert np.allclose(a, ref[k], rtol=1e-5, atol=1e-6), k
        assert_same(st_tensors(dec_plain), st_tensors(dec), "slimd decode, plain vs entropy")
    else:
        assert_same(st_tensors(dec), ref, "slimd decode vs numpy")
        assert_same(st_tensors(dec_plain), ref, "slimd decode of the plain artifact")
    size, psize = os.path.getsize(art), os.path.getsize(plain)
    assert size < psize, (size, psize)
    assert rep["totals"]["file_bytes_after"] == size, (rep["totals"], size)
    h._diag("%d -> %d bytes with entropy (%d without)" % (os.path.getsize(ST_MLP), size, psize))
    # within the scheme's error of the original
    for k, w in ST_W.items():
        err = float(np.abs(ref[k] - w).max())
        assert err <= np.abs(w).max() + 1e-6, (k, err)


def make_entropy_test(label, passes, sparse):
    def fn():
        check_entropy(passes, sparse)
    fn.__name__ = "test_entropy_" + re.sub(r"\W+", "_", label).strip("_")
    fn.__doc__ = "%s: numpy decoder = slimd decode = the plain artifact, and smaller" % label
    return fn


for _label, _passes, _sparse in ENTROPY_SPECS:
    test(make_entropy_test(_label, _passes, _sparse))


@test
def test_entropy_bounds_exact_on_structured_mlp():
    """an MLP with 90 % zeros and 16 values: entropy coding is lossless and >= 30x smaller"""
    rng = np.random.default_rng(7)
    # 16 distinct values with 0 (cluster keeps a pruned tensor's zeros as one of its k)
    values = np.array([v for v in np.linspace(-0.3, 0.3, 16) if abs(v) > 1e-9][:15],
                      np.float32)
    w = mlp_weights(rng)
    for k in ("fc1.weight", "fc2.weight", "fc3.weight"):
        a = values[rng.integers(0, len(values), w[k].shape)]
        a[rng.random(w[k].shape) < 0.9] = 0
        w[k] = a
    path = os.path.join(WORK, "mlp16.safetensors")
    write_st(path, w)
    art, rep = compress(path, {"passes": [{"op": "prune", "sparsity": 0.0001},
                                          {"op": "cluster", "clusters": 16}],
                               "output": {"sparse": True, "entropy": True}})
    dec = DOC["decode"](art)
    for k in w:
        # k-means keeps the zeros and finds the 16 values (as float sums)
        assert np.array_equal(dec[k] == 0, w[k] == 0), k
        assert np.allclose(dec[k], w[k], rtol=0, atol=1e-6), k
    fp32 = sum(a.nbytes for a in w.values())
    size = os.path.getsize(art)
    h._diag("784-300-100-10, 90 %% zeros at random, 16 values: %d -> %d bytes (%.1fx)"
            % (fp32, size, fp32 / size))
    # random positions cost n H(0.1) bits, codes 4 bits: the bound is ~37x
    assert fp32 / size >= 30, (fp32, size)


# ---- every kind of artifact through slimd decode ------------------------------------

DECODE_SPECS = [
    ("int8", [{"op": "quantize", "dtype": "int8"}], False),
    ("int8 tensor asymmetric", [{"op": "quantize", "dtype": "int8", "granularity": "tensor",
                                 "symmetric": False}], False),
    ("int4", [{"op": "quantize", "dtype": "int4", "group_size": 32}], False),
    ("int4 asymmetric 100", [{"op": "quantize", "dtype": "int4", "group_size": 100,
                              "symmetric": False}], False),
    ("ternary", [{"op": "quantize", "dtype": "ternary"}], False),
    ("binary", [{"op": "quantize", "dtype": "binary"}], False),
    ("fp16", [{"op": "quantize", "dtype": "fp16"}], False),
    ("bf16", [{"op": "quantize", "dtype": "bf16"}], False),
    ("cluster 16", [{"op": "cluster", "clusters": 16}], False),
    ("cluster 64", [{"op": "cluster", "clusters": 64}], False),
    ("lowrank", [{"op": "lowrank", "rank_ratio": 0.5}], False),
    ("lowrank int8", [{"op": "lowrank", "rank_ratio": 0.5},
                      {"op": "quantize", "dtype": "int8"}], False),
    ("prune 50%", [{"op": "prune", "sparsity": 0.5}], False),
    ("prune 80% sparse", [{"op": "prune", "sparsity": 0.8}], True),
    ("prune 60% int4 sparse", [{"op": "prune", "sparsity": 0.6},
                               {"op": "quantize", "dtype": "int4"}], True),
]


@test
def test_decode_every_safetensors_scheme():
    """slimd decode of a safetensors artifact of every scheme = the documented numpy decoder"""
    for label, passes, sparse in DECODE_SPECS:
        art, _ = compress(ST_MLP, {"passes": passes, "output": {"sparse": sparse}})
        dec, _ = decode_cli(art)
        got = st_tensors(dec)
        want = DOC["decode"](art)
        if any(p["op"] == "lowrank" for p in passes):
            # the product is BLAS's here and numpy's there: same factors, other sums
            for k in want:
                assert np.allclose(got[k], want[k], rtol=1e-5, atol=1e-6), (label, k)
        else:
            assert_same(got, want, label)


# ---- ONNX -------------------------------------------------------------------

def need_ort():
    if onnx is None:
        h.skip("python3-onnx is not installed")
    if not os.path.isdir(ORT_MODULES):
        h.skip("onnxruntime-node is not installed in %s (scripts/deps.sh installs it)"
               % ORT_MODULES)


def ort_run(model_path, x):
    inp = os.path.join(WORK, "ort_in.bin")
    out = os.path.join(WORK, "ort_out.bin")
    x.astype(np.float32).tofile(inp)
    env = dict(os.environ, NODE_PATH=ORT_MODULES)
    p = subprocess.run(["node", os.path.join(WORK, "run.js"), model_path, inp,
                        json.dumps(list(x.shape)), out], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, "onnxruntime failed on %s: %s" % (model_path, p.stderr)
    return np.fromfile(out, np.float32).reshape(json.loads(p.stdout))


def batch(n=16, seed=3):
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


FIXTURE = os.path.join(SRC, "tests", "fixtures", "mlp.onnx")
CNN = os.path.join(SRC, "tests", "fixtures", "cnn.onnx")


def assert_plain_onnx(path):
    """A plain graph: every initializer holds floats or its original data, no decode nodes."""
    m = onnx.load(path)
    onnx.checker.check_model(m)
    ops = {n.op_type for n in m.graph.node}
    assert not ops & {"DequantizeLinear"}, ops
    # no code tables or packed codes left (a low-rank Conv keeps its
    # factors' Reshape shapes, slimd_shape*: part of the split, not a decode)
    names = [t.name for t in m.graph.initializer]
    assert not any(n.startswith("slimd_code_table") or n.endswith(("_quantized", "_packed",
                                                                   "_indices", "_fp16", "_bf16"))
                   for n in names), names
    assert "Gather" not in {n.op_type for n in m.graph.node if n.input and
                            n.input[0].endswith("_codebook")}
    assert all(t.data_type != onnx.TensorProto.UINT8 for t in m.graph.initializer), names
    return m


def close(a, b, tol):
    err = float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
    return err < tol, err


@test
def test_onnx_container_prune_cluster():
    """ONNX + entropy: one .safetensors container; decoded, ORT runs it = the ONNX artifact"""
    need_ort()
    passes = [{"op": "prune", "sparsity": 0.9, "scope": "global"},
              {"op": "cluster", "clusters": 16}]
    art, rep = compress(FIXTURE, {"passes": passes, "output": {"sparse": True,
                                                               "entropy": True}})
    assert art.endswith(".slim.safetensors"), art
    _, meta = DOC["read"](art)
    assert meta["slimd.container"] == "onnx", meta
    onnx_art, _ = compress(FIXTURE, {"passes": passes})
    dec, p = decode_cli(art, ".onnx")
    assert "onnx" in p.stdout, p.stdout
    m = assert_plain_onnx(dec)
    x = batch()
    ok, err = close(ort_run(dec, x), ort_run(onnx_art, x), 1e-5)
    assert ok, err
    # the numpy decoder gives the same weights as the decoded graph holds
    ref = DOC["decode"](art)
    for t in m.graph.initializer:
        if t.name in ref:
            assert np.array_equal(numpy_helper.to_array(t), ref[t.name]), t.name
    # the report's drift was measured on the decoded model
    assert "drift" in rep and "skipped" not in rep["drift"], rep.get("drift")
    size = os.path.getsize(art)
    h._diag("trained 784-300-100-10 (fixture), prune 90%% + cluster 16 + entropy: "
            "%d -> %d file bytes (%.1fx), weights %d -> %d (%.1fx)"
            % (os.path.getsize(FIXTURE), size, os.path.getsize(FIXTURE) / size,
               rep["totals"]["bytes_before"], rep["totals"]["bytes_after"],
               rep["totals"]["ratio"]))


ONNX_SPECS = [s for s in DECODE_SPECS if not s[2]] + [
    ("prune 80% sparse", [{"op": "prune", "sparsity": 0.8}], True)]


@test
def test_decode_every_onnx_artifact():
    """slimd decode of the ONNX artifact of every scheme: a plain graph, ORT = the artifact"""
    need_ort()
    x = batch()
    for model in (FIXTURE, CNN):
        for label, passes, sparse in ONNX_SPECS:
            art, _ = compress(model, {"passes": passes, "output": {"sparse": sparse}})
            dec, _ = decode_cli(art, ".onnx")
            assert_plain_onnx(dec)
            lowrank = any(p["op"] == "lowrank" for p in passes)
            ok, err = close(ort_run(dec, x), ort_run(art, x), 1e-4 if lowrank else 1e-5)
            assert ok, (model, label, err)
    # a float16 graph: the decoded weights are FLOAT16 initializers, as the graph reads them
    art, _ = compress(FIXTURE, {"passes": [{"op": "prune", "sparsity": 0.5},
                                           {"op": "quantize", "dtype": "fp16"}],
                                "output": {"float16_graph": True}})
    dec, _ = decode_cli(art, ".onnx")
    m = assert_plain_onnx(dec)
    assert {t.data_type for t in m.graph.initializer if t.name.endswith("weight")} == \
        {onnx.TensorProto.FLOAT16}
    ok, err = close(ort_run(dec, x), ort_run(art, x), 1e-3)
    assert ok, ("float16_graph", err)


@test
def test_decode_daemon_tar_and_container():
    """the daemon's tar of an ONNX model with external data, and its entropy container, decode"""
    need_ort()
    d = tempfile.mkdtemp(dir=WORK)
    onnx.save_model(onnx.load(FIXTURE), os.path.join(d, "net.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True,
                    location="net.onnx.data", size_threshold=0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(os.path.join(d, "net.onnx"), "net.onnx")
        tf.add(os.path.join(d, "net.onnx.data"), "net.onnx.data")
    mid = D.upload(buf.getvalue(), name="net").json["id"]
    x = batch()
    passes = [{"op": "prune", "sparsity": 0.8}, {"op": "quantize", "dtype": "int8"}]
    outs = {}
    for entropy in (False, True):
        r = D.submit({"model": mid, "passes": passes,
                      "output": {"sparse": entropy, "entropy": entropy}})
        job = D.wait_job(r.json["id"], timeout=120)
        assert job["state"] == "succeeded", job
        r = D.get("/v1/jobs/%s/artifact" % job["id"])
        assert r.status == 200, r
        cd = r.header("Content-Disposition", "")
        assert cd.endswith('.safetensors"' if entropy else '.tar"'), cd
        art = os.path.join(d, "art-%d" % entropy)
        open(art, "wb").write(r.body)
        dec, _ = decode_cli(art, ".onnx")
        assert_plain_onnx(dec)
        outs[entropy] = ort_run(dec, x)
        if not entropy:
            tdir = tempfile.mkdtemp(dir=WORK)
            with tarfile.open(art) as tf:
                tf.extractall(tdir)
            ok, err = close(outs[False], ort_run(os.path.join(tdir, "net.onnx"), x), 1e-5)
            assert ok, err
    ok, err = close(outs[True], outs[False], 1e-5)
    assert ok, err


# ---- bad input --------------------------------------------------------------------

@test
def test_corrupt_artifacts_fail_cleanly():
    """truncated or corrupted entropy artifacts: exit 2 with a message, never a crash"""
    art, _ = compress(ST_MLP, {"passes": [{"op": "prune", "sparsity": 0.9},
                                          {"op": "cluster", "clusters": 16}],
                               "output": {"sparse": True, "entropy": True}})
    data = open(art, "rb").read()
    raw, meta = DOC["read"](art)
    n = int.from_bytes(data[:8], "little")
    hdr = json.loads(data[8:8 + n])
    b, e = hdr["fc2.weight"]["data_offsets"]
    base = 8 + n
    bad = os.path.join(WORK, "bad.safetensors")
    rng = np.random.default_rng(1)
    cases = [data[:len(data) // 2], data[:base + e - 3], b"not an artifact at all" * 10]
    # the stream cut short inside a valid file: shrink the tensor, fix the offsets
    for k in range(40):
        mutated = bytearray(data)
        at = base + b + int(rng.integers(0, e - b))
        mutated[at] ^= int(rng.integers(1, 256))
        cases.append(bytes(mutated))
    failed = 0
    for blob in cases:
        open(bad, "wb").write(blob)
        out = os.path.join(WORK, "bad-out.safetensors")
        p = subprocess.run([h.slimd_bin(), "decode", bad, "-o", out], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode in (0, 2), (p.returncode, p.stderr)
        if p.returncode == 2:
            failed += 1
            assert p.stderr.startswith("slimd decode: "), p.stderr
            assert "Traceback" not in p.stderr and len(p.stderr) < 400, p.stderr
    assert failed >= 3, failed
    # a header claiming other stream parameters
    p = subprocess.run([h.slimd_bin(), "decode", os.path.join(WORK, "missing"), "-o",
                        os.path.join(WORK, "x")], capture_output=True, text=True)
    assert p.returncode == 1, p
    p = subprocess.run([h.slimd_bin(), "decode", ST_MLP, "-o", os.path.join(WORK, "x")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "not a slimd artifact" in p.stderr, p
    p = subprocess.run([h.slimd_bin(), "decode", art], capture_output=True, text=True)
    assert p.returncode == 2 and "usage" in p.stderr, p


@test
def test_entropy_spec_errors():
    """output.entropy: a boolean; 400 with dequantize, ONNX-only options, or nothing to code"""
    mid = D.upload(open(ST_MLP, "rb").read(), name="mlp").json["id"]
    cases = [
        ({"passes": [{"op": "quantize", "dtype": "int8"}], "output": {"entropy": "yes"}},
         "output.entropy"),
        ({"passes": [{"op": "quantize", "dtype": "int8"}],
          "output": {"entropy": True, "dequantize": True}}, "output.dequantize"),
        ({"passes": [{"op": "quantize", "dtype": "fp16"}], "output": {"entropy": True}},
         "nothing to code"),
        ({"passes": [{"op": "prune", "sparsity": 0.5}], "output": {"entropy": True}},
         "sparse"),
        ({"passes": [{"op": "quantize", "dtype": "int8"}],
          "output": {"entropy": True, "format": "onnx"}}, "container"),
        ({"passes": [{"op": "quantize", "dtype": "int8"}],
          "output": {"entropy": True, "opset": 17}}, "output.opset"),
    ]
    for spec, words in cases:
        r = D.request("POST", "/v1/jobs", json_body=dict(spec, model=mid))
        check_error(r, 400, "INVALID_SPEC", words)


if __name__ == "__main__":
    h.run(setup, teardown, daemons=lambda: [D] if D else [])
