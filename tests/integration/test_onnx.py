#!/usr/bin/env python3
"""test_onnx.py - ONNX in and out (issue 6): uploads, model records, and
for every weight pass an ONNX artifact that onnx.checker accepts and ONNX
Runtime (onnxruntime-node) runs unchanged, with exactly the weights the
safetensors artifact of the same spec holds.

The exactness check: the same initializers go through the same spec as a
safetensors model; docs/artifact-format.md's numpy decoder reads that
artifact; those weights put back into the original graph and run in ONNX
Runtime must give the ONNX artifact's outputs (within 1e-5 relative).  So
the graph slimd writes around each compressed weight (DequantizeLinear,
code tables, Gather, Cast, sparse_initializer, split Gemm/MatMul/Conv) is
tested against the format's own reference, on both an MLP (Gemm with
transB, a Reshape fed by Shape/Gather/Unsqueeze/Concat) and a CNN (Conv,
BatchNormalization, MaxPool, Flatten, Gemm), made here with onnx.helper.

Needs python3-onnx, numpy and onnxruntime-node (tests/ort/node_modules,
installed by scripts/deps.sh); skipped with a reason when one is missing.
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
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:        # pragma: no cover
    print("1..0 # SKIP %s (apt-get install python3-onnx python3-numpy)" % e)
    sys.exit(0)

SRC = os.environ.get("SLIMD_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
ORT_MODULES = os.environ.get("SLIMD_ORT_MODULES",
                             os.path.join(SRC, "tests", "ort", "node_modules"))
D = None
WORK = None
DOC = {}
MODELS = {}      # name -> (path, {initializer: array})

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


def ort_run(model_path, x):
    """Runs model_path in ONNX Runtime on x; the first output as an array."""
    inp = os.path.join(WORK, "ort_in.bin")
    out = os.path.join(WORK, "ort_out.bin")
    x.astype(np.float32).tofile(inp)
    env = dict(os.environ, NODE_PATH=ORT_MODULES)
    p = subprocess.run(["node", os.path.join(WORK, "run.js"), model_path, inp,
                        json.dumps(list(x.shape)), out], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, "onnxruntime failed on %s: %s" % (model_path, p.stderr)
    dims = json.loads(p.stdout)
    return np.fromfile(out, np.float32).reshape(dims)


def mlp_model(rng):
    """784-64-32-10, torch's export shape: Reshape(x, Concat(Shape->Gather, -1)), Gemm transB."""
    w = {
        "fc1.weight": rng.standard_normal((64, 784)).astype(np.float32) * 0.05,
        "fc1.bias": rng.standard_normal(64).astype(np.float32) * 0.1,
        "fc2.weight": rng.standard_normal((32, 64)).astype(np.float32) * 0.15,
        "fc2.bias": rng.standard_normal(32).astype(np.float32) * 0.1,
        "fc3.weight": rng.standard_normal((10, 32)).astype(np.float32) * 0.2,
        "fc3.bias": np.zeros(10, np.float32),
    }
    nodes = [
        helper.make_node("Shape", ["input"], ["shp"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(
            np.array(0, np.int64))),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Constant", [], ["minus1"], value=numpy_helper.from_array(
            np.array([-1], np.int64))),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0),
        helper.make_node("Reshape", ["input", "newshape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "fc2.weight", "fc2.bias"], ["h2"], transB=1),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("Gemm", ["r2", "fc3.weight", "fc3.bias"], ["logits"], transB=1),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in w.items()]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes0"))
    g = helper.make_graph(nodes, "mlp",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                         ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)],
                          producer_name="slimd-test")
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m, w


def cnn_model(rng):
    """Conv-BN-Relu-MaxPool x2, Flatten, Gemm."""
    w = {
        "conv1.weight": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.3,
        "conv1.bias": rng.standard_normal(8).astype(np.float32) * 0.1,
        "conv2.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.1,
        "conv2.bias": rng.standard_normal(16).astype(np.float32) * 0.1,
        "fc.weight": rng.standard_normal((10, 16 * 7 * 7)).astype(np.float32) * 0.05,
        "fc.bias": np.zeros(10, np.float32),
    }
    bn = {}
    for i, c in ((1, 8), (2, 16)):
        bn["bn%d.scale" % i] = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        bn["bn%d.B" % i] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        bn["bn%d.mean" % i] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        bn["bn%d.var" % i] = (1 + 0.1 * rng.random(c)).astype(np.float32)
    nodes = []
    x = "input"
    for i in (1, 2):
        nodes += [
            helper.make_node("Conv", [x, "conv%d.weight" % i, "conv%d.bias" % i], ["c%d" % i],
                             pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            helper.make_node("BatchNormalization", ["c%d" % i, "bn%d.scale" % i, "bn%d.B" % i,
                                                    "bn%d.mean" % i, "bn%d.var" % i],
                             ["b%d" % i], epsilon=1e-5),
            helper.make_node("Relu", ["b%d" % i], ["r%d" % i]),
            helper.make_node("MaxPool", ["r%d" % i], ["p%d" % i], kernel_shape=[2, 2],
                             strides=[2, 2]),
        ]
        x = "p%d" % i
    nodes += [helper.make_node("Flatten", [x], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    inits = [numpy_helper.from_array(a, n) for n, a in list(w.items()) + list(bn.items())]
    g = helper.make_graph(nodes, "cnn",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                         ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)],
                          producer_name="slimd-test")
    m.ir_version = 7
    onnx.checker.check_model(m)
    w.update(bn)
    return m, w


def setup():
    global D, WORK
    if not os.path.isdir(ORT_MODULES):
        return
    WORK = h.make_tmpdir("slimd-onnx-")
    text = open(os.path.join(SRC, "docs", "artifact-format.md")).read()
    m = re.search(r"## Reference decoder \(numpy alone\)\s*```python\n(.*?)```", text, re.S)
    exec(m.group(1), DOC)
    with open(os.path.join(WORK, "run.js"), "w") as f:
        f.write(RUN_JS)
    rng = np.random.default_rng(11)
    for name, make in (("mlp", mlp_model), ("cnn", cnn_model)):
        model, w = make(rng)
        path = os.path.join(WORK, name + ".onnx")
        onnx.save(model, path)
        st = os.path.join(WORK, name + ".safetensors")
        with open(st, "wb") as f:
            f.write(h.safetensors_bytes([h.Tensor(n, "F32", list(a.shape), a.tobytes())
                                         for n, a in w.items()]))
        MODELS[name] = (path, w, st)
    D = h.Daemon()
    D.start()


def need_ort():
    if D is None:
        h.skip("onnxruntime-node is not installed in %s (scripts/deps.sh installs it)"
               % ORT_MODULES)


def upload_file(path):
    with open(path, "rb") as f:
        return D.upload(f.read(), name=os.path.basename(path))


def batch(n=8, seed=3):
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def reference_outputs(name, spec, x):
    """The safetensors artifact of the same spec, decoded by the documented
    reader, put into the original graph, run in ONNX Runtime."""
    path, w, st = MODELS[name]
    out = tempfile.mkdtemp(dir=WORK)
    sp = os.path.join(out, "spec.json")
    json.dump(spec, open(sp, "w"))
    # the daemon's thread count: randomized SVD's sums (OpenBLAS) depend
    # on it, and one int8 code flipped by a last-bit difference in a
    # low-rank factor is a 1e-3 difference here
    threads = max(1, (os.cpu_count() or 1) // D.workers)
    p = subprocess.run([h.slimd_bin(), "compress", st, "--spec", sp, "-o", out,
                        "--threads", str(threads)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    dec = DOC["decode"](os.path.join(out, name + ".slim.safetensors"))
    m = onnx.load(path)
    for t in m.graph.initializer:
        if t.name in dec:
            t.CopyFrom(numpy_helper.from_array(dec[t.name].astype(np.float32), t.name))
    ref = os.path.join(out, "reference.onnx")
    onnx.save(m, ref)
    return ort_run(ref, x)


def assert_reference(art, name, spec, tol=1e-5):
    """ONNX Runtime on the artifact gives the decoded reference's outputs."""
    x = batch()
    got = ort_run(art, x)
    want = reference_outputs(name, spec, x)
    err = float(np.abs(got - want).max() / (np.abs(want).max() + 1e-12))
    assert err < tol, "%s: ONNX artifact vs decoded safetensors: %.3g" % (art, err)


def run_job(model_id, spec):
    r = D.submit(dict(spec, model=model_id))
    job = D.wait_job(r.json["id"], timeout=120)
    assert job["state"] == "succeeded", job
    return r.json["id"], job


def fetch_artifact(job_id, suffix=".onnx"):
    r = D.get("/v1/jobs/%s/artifact" % job_id)
    assert r.status == 200, r
    path = os.path.join(WORK, job_id + suffix)
    with open(path, "wb") as f:
        f.write(r.body)
    return path, r


@test
def test_upload_onnx_record():
    """POST /v1/models takes .onnx: format, opset, inputs/outputs with shapes, op types, params"""
    need_ort()
    r = upload_file(MODELS["mlp"][0])
    m = r.json
    assert m["format"] == "onnx", m
    assert m["opset"] == 13 and m["ir_version"] == 7, m
    assert m["inputs"] == [{"name": "input", "type": "FLOAT", "shape": ["N", 1, 28, 28]}], m
    assert m["outputs"] == [{"name": "logits", "type": "FLOAT", "shape": ["N", 10]}], m
    for op in ("Gemm", "Reshape", "Shape", "Gather", "Concat", "Unsqueeze", "Relu", "Constant"):
        assert op in m["op_types"], (op, m["op_types"])
    want = sum(a.size for a in MODELS["mlp"][1].values()) + 1    # + the axes initializer
    assert m["params"] == want, (m["params"], want)
    assert m["external_data"] is False
    got = D.get("/v1/models/%s" % m["id"]).json
    assert got["format"] == "onnx" and got["op_types"] == m["op_types"]


@test
def test_bad_onnx_rejected():
    """truncated protobuf, a broken initializer, external data that escapes: 400 naming it"""
    need_ort()
    raw = open(MODELS["mlp"][0], "rb").read()
    r = D.request("POST", "/v1/models?name=cut", body=raw[: len(raw) // 2])
    check_error(r, 400, "INVALID_MODEL", "invalid ONNX model")
    m = onnx.load(MODELS["mlp"][0])
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-4]
    r = D.request("POST", "/v1/models", body=m.SerializeToString())
    check_error(r, 400, "INVALID_MODEL", "fc1.weight")
    m = onnx.load(MODELS["mlp"][0])
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "188160")):
        e = t.external_data.add()
        e.key, e.value = k, v
    r = D.request("POST", "/v1/models", body=m.SerializeToString())
    check_error(r, 400, "INVALID_MODEL", "not a relative path inside")
    models = D.get("/v1/models?limit=1000").json
    names = [x["name"] for x in models.get("models", models.get("items", []))]
    assert "cut" not in names, names


SPECS = [
    ("int8 per channel", {"passes": [{"op": "quantize", "dtype": "int8"}]}),
    ("int8 per tensor, asymmetric", {"passes": [{"op": "quantize", "dtype": "int8",
                                                 "granularity": "tensor",
                                                 "symmetric": False}]}),
    ("int4 groups of 32", {"passes": [{"op": "quantize", "dtype": "int4", "group_size": 32}]}),
    ("int4 asymmetric, groups of 100", {"passes": [{"op": "quantize", "dtype": "int4",
                                                    "group_size": 100, "symmetric": False}]}),
    ("ternary", {"passes": [{"op": "quantize", "dtype": "ternary"}]}),
    ("binary", {"passes": [{"op": "quantize", "dtype": "binary"}]}),
    ("fp16", {"passes": [{"op": "quantize", "dtype": "fp16"}]}),
    ("bf16", {"passes": [{"op": "quantize", "dtype": "bf16"}]}),
    ("cluster 16 (4-bit indices)", {"passes": [{"op": "cluster", "clusters": 16}]}),
    ("cluster 64 (8-bit indices)", {"passes": [{"op": "cluster", "clusters": 64}]}),
    ("lowrank", {"passes": [{"op": "lowrank", "rank_ratio": 0.5}]}),
    ("lowrank then int8", {"passes": [{"op": "lowrank", "rank_ratio": 0.5},
                                      {"op": "quantize", "dtype": "int8"}]}),
    ("prune 50%", {"passes": [{"op": "prune", "sparsity": 0.5}]}),
    ("prune 2:4 then int8", {"passes": [{"op": "prune", "sparsity": 0.5, "pattern": "2:4"},
                                        {"op": "quantize", "dtype": "int8"}]}),
    ("prune 80% sparse", {"passes": [{"op": "prune", "sparsity": 0.8}],
                          "output": {"sparse": True}}),
    ("prune 90% global, cluster 16, sparse (gap symbols)",
     {"passes": [{"op": "prune", "sparsity": 0.9, "scope": "global"},
                 {"op": "cluster", "clusters": 16}], "output": {"sparse": True}}),
    ("prune 30%, cluster 64, sparse (bit mask, 8-bit codes)",
     {"passes": [{"op": "prune", "sparsity": 0.3}, {"op": "cluster", "clusters": 64}],
      "output": {"sparse": True}}),
]


def check_scheme(label, spec):
    for name in ("mlp", "cnn"):
        mid = upload_file(MODELS[name][0]).json["id"]
        job_id, job = run_job(mid, spec)
        art, r = fetch_artifact(job_id)
        assert r.header("Content-Disposition", "").endswith('.onnx"'), r.headers
        m = onnx.load(art)
        onnx.checker.check_model(m)
        assert [i.name for i in m.graph.input] == ["input"], [i.name for i in m.graph.input]
        assert [o.name for o in m.graph.output] == ["logits"]
        # low rank runs x V^T U^T where the reference runs x (U V)^T: the
        # same weights, summed in another order
        lowrank = any(p["op"] == "lowrank" for p in spec["passes"])
        assert_reference(art, name, spec, tol=1e-4 if lowrank else 1e-5)
        rep = D.get("/v1/jobs/%s/report" % job_id).json
        assert rep["totals"]["file_bytes_after"] == os.path.getsize(art), (
            rep["totals"], os.path.getsize(art))


def make_scheme_test(label, spec):
    def fn():
        need_ort()
        check_scheme(label, spec)
    fn.__name__ = "test_scheme_" + re.sub(r"\W+", "_", label).strip("_")
    fn.__doc__ = "%s: ONNX artifact passes the checker and runs in ORT = decoded reference" % label
    return fn


for _label, _spec in SPECS:
    test(make_scheme_test(_label, _spec))


@test
def test_lowrank_splits_the_matmul():
    """low rank replaces each Gemm/Conv by two nodes; int8 feeds DequantizeLinear per channel"""
    need_ort()
    mid = upload_file(MODELS["cnn"][0]).json["id"]
    job_id, _ = run_job(mid, {"passes": [{"op": "lowrank", "rank": 4}]})
    m = onnx.load(fetch_artifact(job_id)[0])
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Conv") == 4 and ops.count("Gemm") == 2, ops
    job_id, _ = run_job(mid, {"passes": [{"op": "quantize", "dtype": "int8"}]})
    m = onnx.load(fetch_artifact(job_id)[0])
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 3, [n.op_type for n in m.graph.node]
    assert all(any(a.name == "axis" and a.i == 0 for a in n.attribute) for n in dq)
    types = {t.name: t.data_type for t in m.graph.initializer}
    assert types["conv2.weight_quantized"] == TensorProto.INT8, types
    assert "conv2.weight" not in types      # produced by its DequantizeLinear now


@test
def test_external_data_tar():
    """an ONNX model with external data, uploaded as a tar: the artifact is a tar of .onnx + data"""
    need_ort()
    path = MODELS["mlp"][0]
    d = tempfile.mkdtemp(dir=WORK)
    m = onnx.load(path)
    onnx.save_model(m, os.path.join(d, "net.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="net.onnx.data", size_threshold=0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(os.path.join(d, "net.onnx"), "net.onnx")
        tf.add(os.path.join(d, "net.onnx.data"), "net.onnx.data")
    rec = D.upload(buf.getvalue(), name="net").json
    assert rec["format"] == "onnx" and rec["external_data"] is True, rec
    assert rec["external_files"] == ["net.onnx.data"], rec
    spec = {"passes": [{"op": "quantize", "dtype": "int8"}]}
    job_id, _ = run_job(rec["id"], spec)
    art, r = fetch_artifact(job_id, ".tar")
    assert r.header("Content-Type") == "application/x-tar", r.headers
    out = tempfile.mkdtemp(dir=WORK)
    with tarfile.open(art) as tf:
        names = tf.getnames()
        tf.extractall(out)
    assert names == ["net.onnx", "net.onnx.data"], names
    m2 = onnx.load(os.path.join(out, "net.onnx"), load_external_data=False)
    ext = [t.name for t in m2.graph.initializer
           if t.data_location == TensorProto.EXTERNAL]
    assert "fc1.weight_quantized" in ext, ext
    onnx.checker.check_model(os.path.join(out, "net.onnx"))
    assert_reference(os.path.join(out, "net.onnx"), "mlp", spec)


@test
def test_external_data_cli():
    """slimd compress on an .onnx with external data writes .slim.onnx + .slim.onnx.data"""
    need_ort()
    d = tempfile.mkdtemp(dir=WORK)
    onnx.save_model(onnx.load(MODELS["cnn"][0]), os.path.join(d, "cnn.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    sp = os.path.join(d, "spec.json")
    spec = {"passes": [{"op": "cluster", "clusters": 16}]}
    json.dump(spec, open(sp, "w"))
    out = os.path.join(d, "out")
    os.mkdir(out)
    p = subprocess.run([h.slimd_bin(), "compress", os.path.join(d, "cnn.onnx"), "--spec", sp,
                        "-o", out], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == ["cnn.slim.onnx", "cnn.slim.onnx.data", "report.json"], \
        os.listdir(out)
    assert_reference(os.path.join(out, "cnn.slim.onnx"), "cnn", spec)


@test
def test_int4_blocked_at_opset_21():
    """output.opset 21: int4 as UINT4 blocked DequantizeLinear, same weights as the fallback"""
    need_ort()
    spec = {"passes": [{"op": "quantize", "dtype": "int4", "group_size": 32}],
            "output": {"opset": 21}}
    mid = upload_file(MODELS["cnn"][0]).json["id"]
    job_id, _ = run_job(mid, spec)
    art = fetch_artifact(job_id)[0]
    m = onnx.load(art)     # onnx 1.12's checker stops at opset 17: ONNX Runtime checks it
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [21]
    assert m.ir_version >= 10
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    blocks = [a.i for n in dq for a in n.attribute if a.name == "block_size"]
    assert blocks == [32], blocks          # fc.weight (2-D); the convs keep the fallback
    assert_reference(art, "cnn", {"passes": spec["passes"]})
    # an op whose meaning changed since the model's opset cannot be upgraded over
    g = onnx.load(MODELS["mlp"][0])
    g.graph.node.append(helper.make_node("ReduceSum", ["logits"], ["total"], keepdims=0))
    g.graph.output.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"]))
    mid = D.upload(g.SerializeToString(), name="reduce").json["id"]
    r = D.request("POST", "/v1/jobs", json_body=dict(spec, model=mid))
    check_error(r, 400, "INVALID_SPEC", "ReduceSum")


@test
def test_float16_graph():
    """output.float16_graph: every float tensor FLOAT16, FLOAT in and out, ORT within fp16 error"""
    need_ort()
    spec = {"passes": [{"op": "quantize", "dtype": "fp16"}], "output": {"float16_graph": True}}
    x = batch()
    for name in ("mlp", "cnn"):
        mid = upload_file(MODELS[name][0]).json["id"]
        job_id, _ = run_job(mid, spec)
        art = fetch_artifact(job_id)[0]
        m = onnx.load(art)
        onnx.checker.check_model(m, full_check=True)
        assert {t.data_type for t in m.graph.initializer
                if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)} == \
            {TensorProto.FLOAT16}
        assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
        assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
        got = ort_run(art, x)
        want = ort_run(MODELS[name][0], x)
        err = float(np.abs(got - want).max() / np.abs(want).max())
        assert 0 < err < 2e-2, (name, err)
    r = D.request("POST", "/v1/jobs", json_body={
        "model": mid, "passes": [{"op": "quantize", "dtype": "int8"}],
        "output": {"float16_graph": True}})
    check_error(r, 400, "INVALID_SPEC", "float16_graph")


@test
def test_sparse_cluster_forms_and_decode():
    """sparse clustered weights: gap symbols where they are smaller than the bit mask
    (10 % density), the bit mask where not (70 %); the file is what the form's bytes say;
    `slimd decode` gives back exactly the decoded safetensors weights"""
    need_ort()
    forms = set()
    for sparsity in (0.9, 0.3):
        spec = {"passes": [{"op": "prune", "sparsity": sparsity},
                           {"op": "cluster", "clusters": 16}], "output": {"sparse": True}}
        mid = upload_file(MODELS["mlp"][0]).json["id"]
        job_id, _ = run_job(mid, spec)
        art, _ = fetch_artifact(job_id)
        m = onnx.load(art)
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        entries = json.loads({p.key: p.value for p in m.metadata_props}["slimd.tensors"])
        for name, e in entries.items():
            if not e.get("sparse"):
                continue
            # the documented symbols, from the mask the decoder sees
            bits = np.unpackbits(inits[name + "_mask"] if name + "_mask" in inits else
                                 sym_mask(inits[name + "_gaps"], int(np.prod(e["shape"]))),
                                 bitorder="little")
            n = int(np.prod(e["shape"]))
            syms = gap_symbols(bits[:n])
            form = "_gaps" if (len(syms) + 1) // 2 + 64 < (n + 7) // 8 else "_mask"
            forms.add(form)
            assert name + form in inits, (sparsity, name, form, sorted(inits))
            if form == "_gaps":
                packed = np.array(syms + [15] * (len(syms) & 1), np.uint8)
                assert np.array_equal(inits[name + form], packed[0::2] | (packed[1::2] << 4))
            else:
                assert inits[name + form].size == (n + 7) // 8
            assert name not in inits and name + "_quantized" not in inits
        plain = art + ".plain.onnx"
        p = subprocess.run([h.slimd_bin(), "decode", art, "-o", plain], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        out = tempfile.mkdtemp(dir=WORK)
        sp = os.path.join(out, "spec.json")
        json.dump(spec, open(sp, "w"))
        p = subprocess.run([h.slimd_bin(), "compress", MODELS["mlp"][2], "--spec", sp, "-o", out],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        dec = DOC["decode"](os.path.join(out, "mlp.slim.safetensors"))
        got = {t.name: numpy_helper.to_array(t) for t in onnx.load(plain).graph.initializer}
        for name in entries:
            assert np.array_equal(got[name], dec[name].astype(np.float32)), name
        x = batch()
        assert np.allclose(ort_run(plain, x), ort_run(art, x), rtol=1e-5, atol=1e-6)
    assert forms == {"_gaps", "_mask"}, forms


def gap_symbols(bits):
    """docs/artifact-format.md's gap symbols of a 0/1 mask: per stored weight, d zeros
    before it as d // 15 symbols 15 and one symbol d % 15."""
    out, d = [], 0
    for b in bits:
        if not b:
            d += 1
            continue
        out += [15] * (d // 15) + [d % 15]
        d = 0
    return out


def sym_mask(packed, n):
    """The mask bytes back from packed gap symbols (15: fifteen zeros, no weight)."""
    bits, pos = np.zeros(n + 16, np.uint8), -1
    for k in range(2 * packed.size):
        s = (int(packed[k // 2]) >> (4 * (k & 1))) & 15
        pos += 15 if s == 15 else s + 1
        if s != 15:
            bits[pos] = 1
    return np.packbits(bits[:n], bitorder="little")


@test
def test_sparse_cluster_needs_opset_11():
    """sparse clustered weights need CumSum (opset 11): an opset-10 model gets a 400 naming
    the opset and the way out"""
    need_ort()
    m = onnx.load(MODELS["mlp"][0])
    m.opset_import[0].version = 10
    path = os.path.join(WORK, "mlp10.onnx")
    onnx.save(m, path)
    mid = upload_file(path).json["id"]
    r = D.request("POST", "/v1/jobs", json_body={
        "model": mid, "passes": [{"op": "prune", "sparsity": 0.9},
                                 {"op": "cluster", "clusters": 16}],
        "output": {"sparse": True}})
    check_error(r, 400, "INVALID_SPEC", "opset 11")


@test
def test_sparse_quantized_onnx_refused():
    """output.sparse with a quantize pass has no ONNX form: 400 at submission, naming it"""
    need_ort()
    mid = upload_file(MODELS["mlp"][0]).json["id"]
    r = D.request("POST", "/v1/jobs", json_body={
        "model": mid, "passes": [{"op": "prune", "sparsity": 0.5},
                                 {"op": "quantize", "dtype": "int8"}],
        "output": {"sparse": True}})
    check_error(r, 400, "INVALID_SPEC", "output.sparse")


def teardown():
    if D is not None:
        D.stop()


if __name__ == "__main__":
    h.run(setup, teardown, daemons=lambda: [D] if D else [])
