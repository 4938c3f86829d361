#!/usr/bin/env python3
"""test_eval.py - accuracy in every report (issue 6), on real data.

The Fashion-MNIST MLP and CNN that torch trained and exported
(tests/fixtures, made by gen_fashion.py) and the first 2,000 test images
(IDX, gzip) are uploaded to a daemon; int8, int4, prune 50 %, lowrank and
cluster jobs run with "eval"; each report's accuracy before and after is
checked against ONNX Runtime (onnxruntime-node) running the original and
the downloaded artifact on the same images (within 0.1 point), and
onnx.checker accepts every artifact.  The issue's "done when": the MLP's
int8 per-channel artifact is at most 30 % of the original's bytes and
ONNX Runtime gets exactly the accuracy the report gives.

Also: a job without a dataset reports the output drift; eval on a
safetensors model, on a dataset that does not fit the model, and on a
model with an operator the engine lacks are clear errors at submission.

Needs python3-onnx, numpy and onnxruntime-node (tests/ort/node_modules);
skipped with a reason when one is missing.
"""

import json
import os
import subprocess
import sys

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
from slimd_harness import check_error, test  # noqa: E402

try:
    import numpy as np
    import fashion_ort
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:        # pragma: no cover
    print("1..0 # SKIP %s (apt-get install python3-onnx python3-numpy)" % e)
    sys.exit(0)

SRC = os.environ.get("SLIMD_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(SRC, "tests", "fixtures")
ORT_MODULES = os.environ.get("SLIMD_ORT_MODULES",
                             os.path.join(SRC, "tests", "ort", "node_modules"))
IMAGES = os.path.join(FIX, "fashion-test-2000-images-idx3-ubyte.gz")
LABELS = os.path.join(FIX, "fashion-test-2000-labels-idx1-ubyte.gz")
D = None
WORK = None
DS = None          # the dataset id
X = None           # images as float32 [n, 1, 28, 28], / 255
Y = None           # labels
MODEL_IDS = {}

ORT = None         # fashion_ort.Runner: the images, labels and onnxruntime


def ort_accuracy(model_path):
    return ORT.accuracy(model_path)


def setup():
    global D, WORK, DS, X, Y, ORT
    if not os.path.isdir(ORT_MODULES) or not os.path.exists(IMAGES):
        return
    WORK = h.make_tmpdir("slimd-eval-")
    ORT = fashion_ort.Runner(WORK, IMAGES, LABELS, ORT_MODULES)
    X, Y = ORT.X, ORT.Y
    D = h.Daemon()
    D.start()
    body, ctype = h.multipart([("images", "images.gz", open(IMAGES, "rb").read()),
                               ("labels", "labels.gz", open(LABELS, "rb").read())])
    r = D.request("POST", "/v1/datasets?name=fashion-2000", body=body,
                  headers={"Content-Type": ctype})
    assert r.status == 201, r
    DS = r.json["id"]
    for name in ("mlp", "cnn"):
        MODEL_IDS[name] = D.upload(open(os.path.join(FIX, name + ".onnx"), "rb").read(),
                                   name=name).json["id"]


def need():
    if D is None:
        h.skip("needs onnxruntime-node in %s and the fixtures in %s" % (ORT_MODULES, FIX))


def run_eval(name, passes, **ev):
    spec = {"model": MODEL_IDS[name], "passes": passes, "eval": dict({"dataset": DS}, **ev)}
    r = D.submit(spec)
    job = D.wait_job(r.json["id"], timeout=300)
    assert job["state"] == "succeeded", job
    rep = D.get("/v1/jobs/%s/report" % r.json["id"]).json
    art = os.path.join(WORK, r.json["id"] + ".onnx")
    a = D.get("/v1/jobs/%s/artifact" % r.json["id"])
    assert a.status == 200, a
    with open(art, "wb") as f:
        f.write(a.body)
    onnx.checker.check_model(onnx.load(art))
    return rep, art


def check_against_ort(name, passes, rep, art):
    acc = rep["accuracy"]
    assert acc["samples"] == len(Y) == 2000, acc
    before = ort_accuracy(os.path.join(FIX, name + ".onnx"))
    after = ort_accuracy(art)
    # within 0.1 point: the engine's float sums are not ONNX Runtime's
    assert abs(acc["before"] - before) <= 0.001, (acc["before"], before)
    assert abs(acc["after"] - after) <= 0.001, (acc["after"], after, passes)
    for k in ("top5", "cross_entropy", "throughput", "latency_ms"):
        assert acc[k]["before"] > 0 and acc[k]["after"] > 0, (k, acc)
    assert 0.0 <= acc["agreement"] <= 1.0
    return before, after


@test
def test_done_when_mlp_int8():
    """MLP int8 per channel: reported accuracy = ONNX Runtime's on the artifact, <= 30 % bytes"""
    need()
    passes = [{"op": "quantize", "dtype": "int8", "granularity": "channel"}]
    rep, art = run_eval("mlp", passes)
    before, after = check_against_ort("mlp", passes, rep, art)
    assert rep["accuracy"]["after"] == after, (rep["accuracy"]["after"], after)
    assert rep["accuracy"]["before"] == before, (rep["accuracy"]["before"], before)
    assert after > 0.8, after
    orig = os.path.getsize(os.path.join(FIX, "mlp.onnx"))
    assert os.path.getsize(art) <= 0.30 * orig, (os.path.getsize(art), orig)
    assert rep["totals"]["file_bytes_after"] == os.path.getsize(art)
    h._diag("mlp int8: accuracy %.4f -> %.4f (ORT %.4f), %d -> %d bytes" % (
        rep["accuracy"]["before"], rep["accuracy"]["after"], after, orig,
        os.path.getsize(art)))


CASES = [
    ("int8", [{"op": "quantize", "dtype": "int8"}]),
    ("int4", [{"op": "quantize", "dtype": "int4", "group_size": 32}]),
    ("prune50", [{"op": "prune", "sparsity": 0.5}]),
    ("lowrank", [{"op": "lowrank", "rank_ratio": 0.5}]),
    ("cluster", [{"op": "cluster", "clusters": 16}]),
]


def make_case(model, label, passes):
    def fn():
        need()
        rep, art = run_eval(model, passes)
        before, after = check_against_ort(model, passes, rep, art)
        h._diag("%s %s: %.4f -> %.4f (ORT %.4f -> %.4f)" % (
            model, label, rep["accuracy"]["before"], rep["accuracy"]["after"], before, after))
    fn.__name__ = "test_%s_%s" % (model, label)
    fn.__doc__ = "%s %s with eval: report's accuracy = ONNX Runtime's (0.1 point)" % (
        model, label)
    return fn


for _model in ("mlp", "cnn"):
    for _label, _passes in CASES:
        if _model == "mlp" and _label == "int8":
            continue        # the done-when test above
        test(make_case(_model, _label, _passes))


@test
def test_external_data_fixture():
    """the MLP with external data, uploaded as a tar: same accuracy as the inline one, tar out"""
    need()
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for f in ("mlp_external.onnx", "mlp_external.onnx.data"):
            tf.add(os.path.join(FIX, f), f)
    mid = D.upload(buf.getvalue(), name="mlp-external").json["id"]
    passes = [{"op": "quantize", "dtype": "int8"}]
    r = D.submit({"model": mid, "passes": passes, "eval": {"dataset": DS}})
    job = D.wait_job(r.json["id"], timeout=300)
    assert job["state"] == "succeeded", job
    ext = D.get("/v1/jobs/%s/report" % r.json["id"]).json["accuracy"]
    a = D.get("/v1/jobs/%s/artifact" % r.json["id"])
    assert a.header("Content-Type") == "application/x-tar", a.headers
    inline, _ = run_eval("mlp", passes)
    assert (ext["before"], ext["after"]) == (inline["accuracy"]["before"],
                                             inline["accuracy"]["after"]), (ext, inline)


@test
def test_drift_without_dataset():
    """an ONNX job without eval reports output drift on a random batch"""
    need()
    r = D.submit({"model": MODEL_IDS["cnn"], "passes": [{"op": "quantize", "dtype": "int4"}]})
    job = D.wait_job(r.json["id"], timeout=120)
    assert job["state"] == "succeeded", job
    rep = D.get("/v1/jobs/%s/report" % r.json["id"]).json
    dr = rep["drift"]
    assert dr["samples"] == 32 and "accuracy" not in rep, rep.keys()
    assert 0 < dr["output_drift"]["relative_error"] < 0.5, dr
    assert dr["latency_ms"]["before"] > 0 and dr["latency_ms"]["after"] > 0
    html = D.get("/v1/jobs/%s/report.html" % r.json["id"])
    assert b"Output drift" in html.body and b"ms per batch" in html.body


@test
def test_max_samples_and_html():
    """eval.max_samples limits the samples; report.html shows accuracy before and after"""
    need()
    r = D.submit({"model": MODEL_IDS["mlp"], "passes": [{"op": "quantize", "dtype": "fp16"}],
                  "eval": {"dataset": DS, "max_samples": 500, "batch_size": 64}})
    job = D.wait_job(r.json["id"], timeout=120)
    assert job["state"] == "succeeded", job
    rep = D.get("/v1/jobs/%s/report" % r.json["id"]).json
    assert rep["accuracy"]["samples"] == 500 and rep["accuracy"]["batch_size"] == 64
    assert rep["accuracy"]["agreement"] > 0.99, rep["accuracy"]
    html = D.get("/v1/jobs/%s/report.html" % r.json["id"]).body
    assert b"top-1 accuracy" in html and DS.encode() in html


@test
def test_eval_errors():
    """eval on safetensors, a missing dataset, an unsupported op: clear errors at submission"""
    need()
    st = h.safetensors_bytes([h.t_f32("w", [4, 4], 1)])
    mid = D.upload(st).json["id"]
    r = D.request("POST", "/v1/jobs", json_body={
        "model": mid, "passes": [{"op": "quantize", "dtype": "int8"}], "eval": {"dataset": DS}})
    check_error(r, 400, "INVALID_SPEC", "ONNX")
    r = D.request("POST", "/v1/jobs", json_body={
        "model": MODEL_IDS["mlp"], "passes": [{"op": "quantize", "dtype": "int8"}],
        "eval": {"dataset": "ds_nope"}})
    assert r.status in (400, 404), r
    assert "ds_nope" in r.json["error"]["message"], r.json
    # a graph with an operator the engine does not have
    w = numpy_helper.from_array(np.ones((784, 10), np.float32) * 0.01, "w")
    g = helper.make_graph([helper.make_node("Flatten", ["input"], ["f"]),
                           helper.make_node("MatMul", ["f", "w"], ["m"]),
                           helper.make_node("Hardmax", ["m"], ["logits"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                         ["N", 10])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    mid = D.upload(m.SerializeToString(), name="hardmax").json["id"]
    r = D.request("POST", "/v1/jobs", json_body={
        "model": mid, "passes": [{"op": "quantize", "dtype": "int8"}], "eval": {"dataset": DS}})
    check_error(r, 422, "UNSUPPORTED_OPERATOR", "Hardmax")
    # ... which never blocks a weight-only job: it succeeds, the drift says why it is missing
    r = D.submit({"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}]})
    job = D.wait_job(r.json["id"], timeout=60)
    assert job["state"] == "succeeded", job
    rep = D.get("/v1/jobs/%s/report" % r.json["id"]).json
    assert "Hardmax" in rep["drift"]["skipped"], rep["drift"]


@test
def test_engine_memory_budget():
    """a graph whose tensors outgrow limits.memory_mb: drift skipped, eval fails, daemon lives"""
    need()
    w = numpy_helper.from_array(np.ones((4096, 1, 1, 1), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[250, 250, 250, 250]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Flatten", ["p"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4096])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    mid = D.upload(m.SerializeToString(), name="huge-activations").json["id"]
    spec = {"model": mid, "passes": [{"op": "quantize", "dtype": "int8", "include": ["w"]}],
            "limits": {"memory_mb": 256}}
    r = D.submit(spec)
    job = D.wait_job(r.json["id"], timeout=60)
    assert job["state"] == "succeeded", job
    rep = D.get("/v1/jobs/%s/report" % r.json["id"]).json
    assert "engine's limit" in rep["drift"]["skipped"], rep["drift"]
    r = D.submit(dict(spec, eval={"dataset": DS, "max_samples": 10}))
    job = D.wait_job(r.json["id"], timeout=60)
    assert job["state"] == "failed" and "engine's limit" in job["error"]["message"], job
    assert D.get("/v1/health").status == 200


@test
def test_dataset_shape_mismatch():
    """a dataset whose samples do not fit the model's input: the job fails naming both sizes"""
    need()
    x = np.zeros((10, 30), np.float32)
    body = h.safetensors_bytes([h.Tensor("input", "F32", [10, 30], x.tobytes()),
                                h.Tensor("labels", "I64", [10], np.zeros(10, np.int64).tobytes())])
    r = D.request("POST", "/v1/datasets?name=small", body=body)
    assert r.status == 201, r
    r = D.submit({"model": MODEL_IDS["mlp"], "passes": [{"op": "quantize", "dtype": "int8"}],
                  "eval": {"dataset": r.json["id"]}})
    job = D.wait_job(r.json["id"], timeout=60)
    assert job["state"] == "failed", job
    assert "30 values" in job["error"]["message"] and "784" in job["error"]["message"], job


def teardown():
    if D is not None:
        D.stop()


if __name__ == "__main__":
    h.run(setup, teardown, daemons=lambda: [D] if D else [])
