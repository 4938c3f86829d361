#!/usr/bin/env python3
"""test_train.py - the training passes (issue 7): distill and finetune.

On the Fashion-MNIST fixtures (tests/fixtures: the MLP torch trained, the
first 2,000 test images as IDX), a daemon runs:
  - distill into {"hidden": [64]} and into an uploaded ONNX student, with a
    held-out part; the artifact runs in ONNX Runtime (onnxruntime-node),
    whose accuracy on the eval images must equal the report's (0.1 point);
  - prune -> finetune: the artifact's pruned weights are exactly the zeros
    a prune-only job leaves, and the others moved;
  - cluster -> finetune: every weight matrix keeps at most 16 values;
  - quantize int8 -> finetune: re-quantized, DequantizeLinear in ORT;
  - a long distill: GET /v1/jobs/{id} shows "training" (epoch, loss,
    held-out accuracy, history) while it runs, and a cancel ends it fast;
  - bad specs: 400s that name the field;
  - `slimd compress` with the same pass and a dataset file.
Epochs are few and data small: the whole file takes seconds of training.

Needs python3-onnx, numpy and onnxruntime-node (tests/ort/node_modules);
skipped with a reason when one is missing.
"""

import json
import os
import subprocess
import sys
import time

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
DS = None          # the 2,000 images with labels
DS_NOLAB = None    # the same images without labels
X = None
Y = None
MLP = None         # the fixture MLP's model id

ORT = None         # fashion_ort.Runner: the images, labels and onnxruntime


def ort_accuracy(model_path):
    return ORT.accuracy(model_path)


def student_model(hidden, seed):
    """An ONNX MLP 784-hidden-10 as torch exports nn.Linear (Gemm transB=1)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((hidden, 784)) * np.sqrt(2 / 784)).astype(np.float32)
    w2 = (rng.standard_normal((10, hidden)) * np.sqrt(2 / hidden)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "l1.weight"),
             numpy_helper.from_array(np.zeros(hidden, np.float32), "l1.bias"),
             numpy_helper.from_array(w2, "l2.weight"),
             numpy_helper.from_array(np.zeros(10, np.float32), "l2.bias")]
    g = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "l1.weight", "l1.bias"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "l2.weight", "l2.bias"], ["logits"], transB=1)],
        "student",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def setup():
    global D, WORK, DS, DS_NOLAB, X, Y, MLP, ORT
    if not os.path.isdir(ORT_MODULES) or not os.path.exists(IMAGES):
        return
    WORK = h.make_tmpdir("slimd-train-")
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
    body = h.safetensors_bytes([h.Tensor("input", "F32", list(X.shape), X.tobytes())])
    r = D.request("POST", "/v1/datasets?name=fashion-2000-unlabelled", body=body)
    assert r.status == 201, r
    DS_NOLAB = r.json["id"]
    MLP = D.upload(open(os.path.join(FIX, "mlp.onnx"), "rb").read(), name="mlp").json["id"]


def need():
    if D is None:
        h.skip("needs onnxruntime-node in %s and the fixtures in %s" % (ORT_MODULES, FIX))


def run_job(passes, model=None, timeout=300, **extra):
    spec = dict({"model": model or MLP, "passes": passes, "eval": {"dataset": DS}}, **extra)
    r = D.submit(spec)
    job = D.wait_job(r.json["id"], timeout=timeout)
    assert job["state"] == "succeeded", job
    rep = D.get("/v1/jobs/%s/report" % r.json["id"]).json
    art = os.path.join(WORK, r.json["id"] + ".onnx")
    a = D.get("/v1/jobs/%s/artifact" % r.json["id"])
    assert a.status == 200, a
    with open(art, "wb") as f:
        f.write(a.body)
    onnx.checker.check_model(onnx.load(art))
    return job, rep, art


def weights(path):
    m = onnx.load(path)
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer
            if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}


def check_training(rep, epochs, val=True):
    tr = rep["training"]
    assert len(tr) == 1, tr
    t = tr[0]
    assert t["epochs"] == epochs and len(t["history"]) == epochs, t
    assert t["final_loss"] > 0 and t["seconds"] > 0 and t["samples_per_s"] > 0, t
    if val:
        assert 0 < t["val_accuracy"] <= 1 and t["val_samples"] > 0, t
        assert all(e["val_accuracy"] is not None for e in t["history"]), t
    return t


def check_ort(rep, art):
    after = ort_accuracy(art)
    acc = rep["accuracy"]
    assert acc["samples"] == 2000, acc
    # within 0.1 point: the engine's float sums are not ONNX Runtime's
    assert abs(acc["after"] - after) <= 0.001, (acc["after"], after)
    return after


@test
def test_distill_hidden():
    """distill into {"hidden": [64]}: an MLP ORT runs, its accuracy = the report's"""
    need()
    job, rep, art = run_job([{"op": "distill", "student": {"hidden": [64]}, "dataset": DS,
                              "temperature": 2, "alpha": 0.5, "epochs": 3, "batch_size": 64,
                              "lr": 0.001, "optimizer": "adam", "seed": 1,
                              "validation_fraction": 0.2}])
    t = check_training(rep, 3)
    assert t["student"]["kind"] == "mlp" and t["student"]["params"] == 784 * 64 + 64 + 650, t
    assert t["train_samples"] == 1600 and t["val_samples"] == 400, t
    w = weights(art)
    assert sorted(v.shape for v in w.values()) == [(10, 64), (64, 784)], w.keys()
    after = check_ort(rep, art)
    assert after > 0.6, after     # 3 epochs on 1,600 images
    assert job["training"]["epoch"] == 3 and len(job["training"]["history"]) == 3, job
    assert rep["totals"]["file_bytes_after"] < rep["totals"]["file_bytes_before"] / 4, rep
    h._diag("distill 784-64-10: held-out %.4f, eval %.4f (teacher %.4f), loss %.4f" % (
        t["val_accuracy"], after, rep["accuracy"]["before"], t["final_loss"]))


@test
def test_distill_uploaded_student():
    """distill into an uploaded ONNX student: its graph, trained weights; ORT agrees"""
    need()
    sm = student_model(32, 5)
    sid = D.upload(sm.SerializeToString(), name="student").json["id"]
    job, rep, art = run_job([{"op": "distill", "student": sid, "dataset": DS,
                              "temperature": 4, "alpha": 0.7, "epochs": 2, "batch_size": 128,
                              "lr": 0.002, "optimizer": "adam", "validation_fraction": 0.1}])
    check_training(rep, 2)
    w = weights(art)
    w0 = {t.name: numpy_helper.to_array(t) for t in sm.graph.initializer}
    assert set(w) == {"l1.weight", "l2.weight"}, w.keys()
    assert w["l1.weight"].shape == (32, 784)
    assert not np.array_equal(w["l1.weight"], w0["l1.weight"]), "the student did not train"
    after = check_ort(rep, art)
    assert after > 0.5, after


@test
def test_finetune_after_prune_keeps_zeros():
    """prune 80 % -> finetune: exactly the prune-only job's zeros, other weights moved"""
    need()
    prune = {"op": "prune", "sparsity": 0.8, "scope": "global"}
    _, rep0, art0 = run_job([prune])
    _, rep, art = run_job([prune, {"op": "finetune", "dataset": DS, "epochs": 2,
                                   "batch_size": 64, "lr": 0.0005, "optimizer": "adam",
                                   "validation_fraction": 0.2}])
    t = check_training(rep, 2)
    assert t["constraints"]["masked"] == 3, t
    w0, w = weights(art0), weights(art)
    assert set(w0) == set(w) and len(w) == 3, w.keys()
    moved = 0
    for name in w:
        assert np.array_equal(w[name] == 0, w0[name] == 0), name
        moved += int((w[name] != w0[name]).sum())
    assert moved > 0.1 * sum((v != 0).sum() for v in w.values()), moved
    after = check_ort(rep, art)
    assert after >= rep0["accuracy"]["after"] - 0.02, (after, rep0["accuracy"])
    h._diag("prune 80 %%: %.4f, after finetune %.4f" % (rep0["accuracy"]["after"], after))


@test
def test_finetune_after_cluster_keeps_sharing():
    """cluster 16 -> finetune: at most 16 values per matrix, and they are new values"""
    need()
    cl = {"op": "cluster", "clusters": 16}
    out = {"dequantize": True}
    _, _, art0 = run_job([cl], output=out)
    _, rep, art = run_job([cl, {"op": "finetune", "dataset": DS, "epochs": 1,
                                "batch_size": 64, "lr": 0.0005}], output=out)
    t = check_training(rep, 1, val=False)
    assert t["constraints"]["shared"] == 3, t
    w0, w = weights(art0), weights(art)
    for name in w:
        assert len(np.unique(w[name])) <= 16, (name, len(np.unique(w[name])))
        assert not np.array_equal(np.unique(w[name]), np.unique(w0[name])), name
    check_ort(rep, art)
    # the stored (not dequantized) form: a codebook of 16 per matrix
    _, rep2, art2 = run_job([cl, {"op": "finetune", "dataset": DS, "epochs": 1,
                                  "batch_size": 64, "lr": 0.0005}])
    books = [t for t in onnx.load(art2).graph.initializer if t.name.endswith("_codebook")]
    assert len(books) == 3 and all(t.dims[0] == 16 for t in books), books
    check_ort(rep2, art2)


@test
def test_finetune_after_quantize():
    """int8 -> finetune (fake quantization): stored int8 again, ORT's accuracy = the report's"""
    need()
    _, rep, art = run_job([{"op": "quantize", "dtype": "int8"},
                           {"op": "finetune", "dataset": DS, "epochs": 1, "batch_size": 64,
                            "lr": 0.0002, "validation_fraction": 0.25}])
    t = check_training(rep, 1)
    assert t["constraints"]["fake_quantized"] == 3, t
    m = onnx.load(art)
    assert any(n.op_type == "DequantizeLinear" for n in m.graph.node), "not int8 any more"
    assert any(x.data_type == TensorProto.INT8 for x in m.graph.initializer)
    check_ort(rep, art)


@test
def test_deep_compression_pipeline():
    """prune 90 % -> finetune -> cluster 16 -> finetune: zeros kept, <= 16 values besides 0"""
    need()
    prune = {"op": "prune", "sparsity": 0.9, "scope": "global"}
    ft = {"op": "finetune", "dataset": DS, "epochs": 1, "batch_size": 64, "lr": 0.0005}
    out = {"dequantize": True}
    _, _, art0 = run_job([prune], output=out)
    _, rep, art = run_job([prune, ft, {"op": "cluster", "clusters": 16}, ft], output=out)
    tr = rep["training"]
    assert [t["index"] for t in tr] == [1, 3], tr
    assert tr[0]["constraints"]["masked"] == 3 and tr[1]["constraints"]["shared"] == 3, tr
    assert [p["op"] for p in rep["passes"]] == ["prune", "finetune", "cluster", "finetune"]
    w0, w = weights(art0), weights(art)
    for name in w:
        assert np.array_equal(w[name] == 0, w0[name] == 0), name
        assert len(np.unique(w[name][w[name] != 0])) <= 16, name
    after = check_ort(rep, art)
    h._diag("deep compression (1 + 1 epochs on 2,000 images): %.4f" % after)


@test
def test_distill_lowrank_student():
    """distill into the teacher's low-rank factors: factor pairs in the graph, ORT agrees"""
    need()
    _, rep, art = run_job([{"op": "distill", "student": {"from": "lowrank", "rank_ratio": 0.25},
                            "dataset": DS, "epochs": 1, "batch_size": 64, "lr": 0.0005,
                            "temperature": 2, "alpha": 0.5}])
    t = check_training(rep, 1, val=False)
    assert t["student"]["kind"] == "lowrank", t
    assert t["student"]["params"] < 266610 * 0.6, t["student"]
    m = onnx.load(art)
    n_mm = sum(n.op_type in ("Gemm", "MatMul") for n in m.graph.node)
    assert n_mm >= 5, [n.op_type for n in m.graph.node]
    after = check_ort(rep, art)
    assert after > 0.6, after


@test
def test_distill_lowrank_cnn_student():
    """distill a CNN into its low-rank factors: each Conv becomes a Conv on V's kernels and
    a 1x1 Conv on U's (2-D factors reshaped in the graph), trained; ORT agrees"""
    need()
    cnn = D.upload(open(os.path.join(FIX, "cnn.onnx"), "rb").read(), name="cnn").json["id"]
    _, rep, art = run_job([{"op": "distill", "student": {"from": "lowrank", "rank_ratio": 0.5},
                            "dataset": DS, "epochs": 1, "batch_size": 64, "lr": 0.0005,
                            "temperature": 2, "alpha": 0.5, "seed": 3}], model=cnn)
    t = check_training(rep, 1, val=False)
    assert t["student"]["kind"] == "lowrank", t
    m = onnx.load(art)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    n_conv = sum(1 for n in onnx.load(os.path.join(FIX, "cnn.onnx")).graph.node
                 if n.op_type == "Conv")
    assert len(convs) > n_conv, [n.op_type for n in m.graph.node]
    factors = [t.name for t in m.graph.initializer if t.name.endswith(("_u", "_v"))]
    assert len(factors) >= 2 * n_conv, sorted(t.name for t in m.graph.initializer)
    after = check_ort(rep, art)
    assert after > 0.5, after


@test
def test_progress_and_cancel():
    """a long distill shows its epochs in GET /v1/jobs/{id}; a cancel stops it within a batch"""
    need()
    r = D.submit({"model": MLP, "passes": [{"op": "distill", "student": {"hidden": [256]},
                                            "dataset": DS, "epochs": 500, "batch_size": 16,
                                            "validation_fraction": 0.1}]})
    jid = r.json["id"]
    deadline = time.time() + 120
    seen = None
    while time.time() < deadline:
        job = D.get("/v1/jobs/" + jid).json
        assert job["state"] in ("queued", "running"), job
        tr = job.get("training")
        if tr and tr["epoch"] >= 2:
            seen = job
            break
        time.sleep(0.1)
    assert seen, "no training progress within 120 s"
    tr = seen["training"]
    assert tr["epochs"] == 500 and tr["op"] == "distill" and tr["pass"] == 0, tr
    assert tr["loss"] > 0 and 0 <= tr["val_accuracy"] <= 1, tr
    assert len(tr["history"]) >= 2 and tr["history"][0]["epoch"] == 1, tr
    assert seen["stage"] == "distill" and 0 < seen["progress"] < 1, seen
    # what the running job trains on cannot be deleted under it
    check_error(D.request("DELETE", "/v1/datasets/" + DS), 409, "CONFLICT", jid)
    t0 = time.time()
    assert D.post_json("/v1/jobs/%s/cancel" % jid, {}).status == 200
    job = D.wait_job(jid, timeout=30, interval=0.02)
    took = time.time() - t0
    assert job["state"] == "canceled", job
    # one batch of 16 through 784-256-10 is well under a millisecond; the
    # bound is the harness's usual one for a loaded machine
    limit = 4.0 if getattr(h, "SANITIZED", False) else 1.0
    assert took < limit, took
    h._diag("cancel took %.3f s at epoch %d" % (took, tr["epoch"]))


@test
def test_bad_specs():
    """bad training specs: 400s that name the field"""
    need()
    good = {"op": "distill", "student": {"hidden": [8]}, "dataset": DS, "epochs": 1}

    def bad(passes, contains, model=None, status=400, code="INVALID_SPEC"):
        r = D.request("POST", "/v1/jobs", json_body={"model": model or MLP, "passes": passes})
        check_error(r, status, code, contains)

    bad([dict(good, epoch=3)], "passes[0]: unknown key 'epoch'")
    bad([dict(good, alpha=1.5)], "passes[0].alpha")
    bad([dict(good, temperature=0)], "passes[0].temperature")
    bad([dict(good, optimizer="rmsprop")], "passes[0].optimizer")
    bad([dict(good, epochs=0)], "passes[0].epochs")
    bad([dict(good, batch_size=-1)], "passes[0].batch_size")
    bad([dict(good, validation_fraction=1.0)], "passes[0].validation_fraction")
    bad([dict(good, student={"hidden": [0]})], "passes[0].student.hidden[0]")
    bad([dict(good, student={"from": "svd", "rank_ratio": 0.5})], "passes[0].student.from")
    bad([dict(good, student={"from": "lowrank"})], "passes[0].student.rank_ratio")
    bad([dict(good, student=7)], "passes[0].student")
    bad([{k: v for k, v in good.items() if k != "student"}], "passes[0].student")
    bad([dict(good, include=["*"])], "passes[0]: include/exclude")
    bad([{"op": "finetune", "epochs": 1}], "passes[0].dataset")
    bad([dict(good, dataset="ds_nope")], "passes[0].dataset: dataset ds_nope does not exist")
    bad([dict(good, student="mdl_nope")], "passes[0].student: model mdl_nope does not exist")
    # labels: finetune and alpha < 1 need them; alpha 1 does not
    bad([{"op": "finetune", "dataset": DS_NOLAB}], "passes[0].dataset: dataset %s has no "
        "labels" % DS_NOLAB)
    bad([dict(good, dataset=DS_NOLAB, alpha=0.5)], "passes[0].dataset")
    r = D.submit({"model": MLP, "passes": [dict(good, dataset=DS_NOLAB, alpha=1.0)]})
    job = D.wait_job(r.json["id"], timeout=120)
    assert job["state"] == "succeeded", job
    # training needs a graph: a safetensors model, or a safetensors student
    st = D.upload(h.safetensors_bytes([h.t_f32("w", [4, 4], 1)])).json["id"]
    bad([dict(good)], "training needs an ONNX model", model=st)
    bad([dict(good, student=st)], "passes[0].student: model %s is safetensors" % st)
    # order: two encodings stay refused, finetune may go between
    bad([{"op": "cluster", "clusters": 4}, {"op": "finetune", "dataset": DS},
         {"op": "quantize", "dtype": "int8"}], "only one of cluster or quantize")
    assert D.get("/v1/health").status == 200


@test
def test_cli_compress():
    """slimd compress: prune -> finetune with a dataset file, offline"""
    need()
    ds = os.path.join(WORK, "train.safetensors")
    with open(ds, "wb") as f:
        f.write(h.safetensors_bytes([h.Tensor("input", "F32", list(X.shape), X.tobytes()),
                                     h.Tensor("labels", "I64", [len(Y)], Y.tobytes())]))
    spec = os.path.join(WORK, "spec.json")
    with open(spec, "w") as f:
        json.dump({"passes": [{"op": "prune", "sparsity": 0.5},
                              {"op": "finetune", "dataset": ds, "epochs": 1,
                               "validation_fraction": 0.1}],
                   "eval": {"dataset": ds}}, f)
    out = os.path.join(WORK, "cli-out")
    p = subprocess.run([h.slimd_bin(), "compress", os.path.join(FIX, "mlp.onnx"), "--spec", spec,
                        "-o", out], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "finetune: epoch 1/1" in p.stderr, p.stderr
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["training"][0]["epochs"] == 1, rep["training"]
    check_ort(rep, os.path.join(out, "mlp.slim.onnx"))
    # a dataset path that is not there: named
    with open(spec, "w") as f:
        json.dump({"passes": [{"op": "finetune", "dataset": ds + ".nope"}]}, f)
    p = subprocess.run([h.slimd_bin(), "compress", os.path.join(FIX, "mlp.onnx"), "--spec", spec,
                        "-o", out], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "passes[0].dataset" in p.stderr, p.stderr


@test
def test_training_within_budget():
    """training within the job's memory budget (limits.memory_mb): a distill teacher whose
    graph makes a 400 MB tensor, and a finetune whose batch's activations pass the budget,
    fail the job naming the teacher or the tensor and the limit"""
    need()
    ds = os.path.join(WORK, "budget.safetensors")
    with open(ds, "wb") as f:
        f.write(h.safetensors_bytes([h.Tensor("input", "F32", [8, 4], bytes(8 * 4 * 4)),
                                     h.Tensor("labels", "I64", [8], bytes(8 * 8))]))
    big = 100 * 1000 * 1000           # floats: 400 MB
    g = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"]),
         helper.make_node("Slice", ["big", "s0", "s1"], ["few"]),
         helper.make_node("Gemm", ["input", "w"], ["z"]),
         helper.make_node("Add", ["z", "few"], ["output"])],
        "t", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(np.array([big], np.int64), "shape"),
         numpy_helper.from_array(np.array([0], np.int64), "s0"),
         numpy_helper.from_array(np.array([3], np.int64), "s1"),
         numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    teacher = os.path.join(WORK, "big-teacher.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), teacher)
    spec = os.path.join(WORK, "budget-spec.json")
    out = os.path.join(WORK, "budget-out")
    for mb, ok in ((64, False), (1024, True)):
        with open(spec, "w") as f:
            json.dump({"passes": [{"op": "distill", "student": {"hidden": [4]}, "dataset": ds,
                                   "epochs": 1}], "limits": {"memory_mb": mb}}, f)
        p = subprocess.run([h.slimd_bin(), "compress", teacher, "--spec", spec, "-o", out],
                           capture_output=True, text=True, timeout=120)
        if ok:
            assert p.returncode == 0, p.stderr
        else:
            assert p.returncode != 0, "a 400 MB teacher ran in a 64 MiB budget"
            assert "the teacher" in p.stderr and "limit of 64 MiB" in p.stderr, p.stderr
    # finetune of the 784-300-100-10 MLP, batch 4096: about 38 MB of activations and
    # gradients, past a 16 MiB budget (its largest weight, 0.9 MiB, is within it)
    n = 4096
    x = np.zeros((n, 784), np.float32)
    with open(ds, "wb") as f:
        f.write(h.safetensors_bytes([h.Tensor("input", "F32", [n, 784], x.tobytes()),
                                     h.Tensor("labels", "I64", [n], bytes(n * 8))]))
    for mb, ok in ((16, False), (256, True)):
        with open(spec, "w") as f:
            json.dump({"passes": [{"op": "finetune", "dataset": ds, "epochs": 1,
                                   "batch_size": n}], "limits": {"memory_mb": mb}}, f)
        p = subprocess.run([h.slimd_bin(), "compress", os.path.join(FIX, "mlp.onnx"), "--spec",
                            spec, "-o", out], capture_output=True, text=True, timeout=120)
        if ok:
            assert p.returncode == 0, p.stderr
        else:
            assert p.returncode != 0, "a 38 MB batch trained in a 16 MiB budget"
            assert "limit of 16 MiB for activations" in p.stderr, p.stderr


def teardown():
    if D is not None:
        D.stop()


if __name__ == "__main__":
    h.run(setup, teardown, daemons=lambda: [D] if D else [])
