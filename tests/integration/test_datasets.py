#!/usr/bin/env python3
"""test_datasets.py - /v1/datasets end to end against the real daemon
(issue 6, datasets): MNIST-style IDX uploads (multipart images and
labels, gzip or not) converted to the canonical safetensors, canonical
safetensors uploads (raw body or multipart "file"), list / get / file /
delete, bad inputs (each a JSON error naming the problem, and nothing
stored: no row, no blob, no temp file), the upload limit (IDX data counts
uncompressed), free space, and jobs whose "eval" names a dataset (a
missing one is refused; a queued job's dataset cannot be deleted).

The IDX files are made here with struct and gzip: tiny, no fixtures.

Run by hand:  SLIMD_BIN=./slimd /usr/bin/python3 tests/integration/test_datasets.py
"""

import gzip
import hashlib
import os
import random
import re
import struct
import sys
import time
import zlib

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
from slimd_harness import check_error, test  # noqa: E402

D = None
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
INT8 = {"op": "quantize", "dtype": "int8", "granularity": "channel"}
TERMINAL = ("succeeded", "failed", "canceled")


def setup():
    global D
    D = h.Daemon(workers=1, name="datasets").start()


def teardown():
    D.stop()


# ---------------------------------------------------------------- fixtures

IDX_TYPES = {"ubyte": (0x08, "B"), "sbyte": (0x09, "b"), "short": (0x0B, "h"),
             "int": (0x0C, "i"), "float": (0x0D, "f"), "double": (0x0E, "d")}


def idx(kind, dims, values=None, payload=None):
    """An IDX file: 00 00 type ndim, big-endian dims, big-endian data."""
    code, fmt = IDX_TYPES[kind]
    head = struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(">%dI" % len(dims), *dims)
    if payload is None:
        payload = struct.pack(">%d%s" % (len(values), fmt), *values)
    return head + payload


def mnist(n, rows=4, cols=4, seed=0, classes=10):
    """(images IDX, labels IDX, pixels, labels) of n random ubyte images."""
    r = random.Random(seed)
    pixels = [r.randrange(256) for _ in range(n * rows * cols)]
    labels = [r.randrange(classes) for _ in range(n)]
    labels[0] = classes - 1
    return idx("ubyte", [n, rows, cols], pixels), idx("ubyte", [n], labels), pixels, labels


def canonical(n, feat, seed=0, labels=True, classes=3):
    """A canonical dataset: input F32 [n, feat], labels I64 [n]."""
    ts = [h.t_f32("input", [n, feat], seed)]
    ys = []
    if labels:
        ys = [(i * 7 + seed) % classes for i in range(n)]
        ts.append(h.Tensor("labels", "I64", [n], h.i64_bytes(ys), ys))
    return h.safetensors_bytes(ts), ts, ys


def post_parts(fields, path="/v1/datasets", d=None):
    body, ctype = h.multipart(fields)
    return (d or D).request("POST", path, body=body, headers={"Content-Type": ctype})


def post_raw(data, path="/v1/datasets", d=None):
    return (d or D).request("POST", path, body=data,
                            headers={"Content-Type": "application/octet-stream"})


def dataset_ids(d=None):
    r = (d or D).get("/v1/datasets?limit=1000")
    assert r.status == 200, r
    return [x["id"] for x in r.json["datasets"]]


def tmp_entries(d=None):
    p = os.path.join((d or D).data_dir, "tmp")
    return sorted(os.listdir(p)) if os.path.isdir(p) else []


def blob_files(d=None):
    out = []
    for root, _, files in os.walk(os.path.join((d or D).data_dir, "blobs")):
        out += [os.path.join(root, f) for f in files]
    return sorted(out)


def refused(r, status, code, contains, d=None, before=None):
    """Checks an error reply and that nothing was stored: no dataset row,
    no new blob, nothing in tmp/.  before: (ids, blobs) taken earlier."""
    msg = check_error(r, status, code, contains)
    if before is not None:
        assert dataset_ids(d) == before[0], "a refused upload left a dataset behind: %r" % r
        assert blob_files(d) == before[1], "a refused upload left a blob behind: %r" % r
    assert tmp_entries(d) == [], "tmp/ not empty after a refused upload: %s" % tmp_entries(d)
    return msg


def state(d=None):
    return dataset_ids(d), blob_files(d)


def check_dataset_object(ds, name, samples, shape, labels, classes, source):
    assert ds["id"].startswith("ds_") and len(ds["id"]) == 19, ds
    assert ds["name"] == name, (ds["name"], name)
    assert ds["format"] == "safetensors", ds
    assert ds["samples"] == samples and ds["input_shape"] == shape, ds
    assert ds["input_dtype"] in ("F32", "F16", "BF16", "F64", "U8"), ds
    assert ds["labels"] is labels and ds["classes"] == classes, ds
    assert ds["source"] == source, ds
    assert isinstance(ds["bytes"], int) and ds["bytes"] > 0, ds
    assert re.match(r"^[0-9a-f]{64}$", ds["sha256"]), ds
    assert RFC3339.match(ds["created_at"]), ds


# ---------------------------------------------------------------- uploads

@test
def test_idx_multipart_gzip():
    """IDX images + labels, gzipped, as multipart: 201, float32 pixels / 255, I64 labels"""
    imgs, labs, pixels, labels = mnist(7, 5, 3, seed=1)
    r = post_parts([("images", "train-images-idx3-ubyte.gz", gzip.compress(imgs)),
                    ("labels", "train-labels-idx1-ubyte.gz", gzip.compress(labs))])
    assert r.status == 201, r
    ds = r.json
    check_dataset_object(ds, "train-images-idx3-ubyte.gz", 7, [5, 3], True, 10, "idx")
    assert ds["input_dtype"] == "F32", ds
    assert r.header("Location") == "/v1/datasets/" + ds["id"], r.headers
    f = D.get("/v1/datasets/%s/file" % ds["id"])
    assert f.status == 200, f
    assert hashlib.sha256(f.body).hexdigest() == ds["sha256"] and len(f.body) == ds["bytes"]
    assert f.header("ETag") == '"%s"' % ds["sha256"], f.headers
    st = h.SafetensorsFile(f.body)
    assert st.names() == {"input", "labels"}, st.names()
    assert st["input"].dtype == "F32" and st["input"].shape == [7, 5, 3]
    # torchvision's ToTensor: the byte divided by 255 in float32
    assert st["input"].decoded() == [h.f32(p / 255.0) for p in pixels]
    assert st["labels"].dtype == "I64" and st["labels"].decoded() == labels
    assert st.metadata == {"slimd.source": "idx", "slimd.scale": "1/255"}, st.metadata
    assert D.get("/v1/datasets/" + ds["id"]).json == ds


@test
def test_idx_multipart_plain_named_and_unlabeled():
    """plain IDX, ?name= wins; images alone make an unlabeled dataset; float IDX kept as is"""
    imgs, labs, _, labels = mnist(4, 2, 2, seed=2, classes=3)
    r = post_parts([("images", "i.idx", imgs), ("labels", "l.idx", labs)],
                   path="/v1/datasets?name=tiny%20digits")
    assert r.status == 201, r
    check_dataset_object(r.json, "tiny digits", 4, [2, 2], True, 3, "idx")
    r = post_parts([("note", "ignored"), ("images", "imgs.idx", imgs)])
    assert r.status == 201, r
    check_dataset_object(r.json, "imgs.idx", 4, [2, 2], False, 0, "idx")
    vals = [0.5, -1.25, 3.0, 1e-3, 7.0, -0.0]
    r = post_parts([("images", "f.idx", idx("float", [3, 2], vals)),
                    ("labels", "l.idx", idx("short", [3], [0, 300, 2]))])
    assert r.status == 201, r
    check_dataset_object(r.json, "f.idx", 3, [2], True, 301, "idx")
    st = h.SafetensorsFile(D.get("/v1/datasets/%s/file" % r.json["id"]).body)
    assert st["input"].decoded() == [h.f32(v) for v in vals]
    assert st.metadata["slimd.scale"] == "1"


@test
def test_safetensors_raw_and_file():
    """canonical safetensors as the raw body and as multipart "file": stored as sent"""
    data, ts, ys = canonical(6, 5, seed=3)
    r = post_raw(data, path="/v1/datasets?name=raw")
    assert r.status == 201, r
    check_dataset_object(r.json, "raw", 6, [5], True, max(ys) + 1, "safetensors")
    assert r.json["sha256"] == hashlib.sha256(data).hexdigest() and r.json["bytes"] == len(data)
    assert D.get("/v1/datasets/%s/file" % r.json["id"]).body == data
    r = post_parts([("file", "eval.safetensors", data)])
    assert r.status == 201, r
    check_dataset_object(r.json, "eval.safetensors", 6, [5], True, max(ys) + 1, "safetensors")
    # no labels, F16 input, 1-D samples
    x = h.t_f16("input", [9], 4)
    r = post_raw(h.safetensors_bytes([x]))
    assert r.status == 201, r
    check_dataset_object(r.json, "dataset", 9, [], False, 0, "safetensors")
    assert r.json["input_dtype"] == "F16"


@test
def test_list_get_delete():
    """list newest first with paging; GET one and its file; DELETE 204 then 404; shared blobs survive"""
    a = post_raw(canonical(3, 2, seed=10)[0], path="/v1/datasets?name=a").json
    b = post_raw(canonical(3, 2, seed=11)[0], path="/v1/datasets?name=b").json
    r = D.get("/v1/datasets")
    assert r.status == 200 and set(r.json) == {"datasets", "total", "limit", "offset"}, r
    full = D.get("/v1/datasets?limit=1000").json
    assert full["total"] == len(full["datasets"]), full
    ids = [x["id"] for x in full["datasets"]]
    assert ids.index(b["id"]) < ids.index(a["id"]), "not newest first"
    assert [x for x in full["datasets"] if x["id"] == a["id"]][0] == a
    p = D.get("/v1/datasets?limit=1&offset=1").json
    assert p["limit"] == 1 and p["offset"] == 1 and len(p["datasets"]) == 1, p
    assert p["datasets"][0]["id"] == ids[1], p
    check_error(D.get("/v1/datasets?limit=0"), 400, "INVALID_ARGUMENT", "limit")
    # datasets are not models, and the other way round
    check_error(D.get("/v1/models/" + a["id"]), 404, "NOT_FOUND")
    assert a["id"] not in [m["id"] for m in D.get("/v1/models?limit=1000").json["models"]]

    path = os.path.join(D.data_dir, "blobs", a["sha256"][:2], a["sha256"])
    assert os.path.exists(path)
    r = D.request("DELETE", "/v1/datasets/" + a["id"])
    assert r.status == 204 and r.body == b"", r
    assert not os.path.exists(path), "the deleted dataset's blob is still there"
    check_error(D.get("/v1/datasets/" + a["id"]), 404, "NOT_FOUND", a["id"])
    check_error(D.get("/v1/datasets/%s/file" % a["id"]), 404, "NOT_FOUND")
    check_error(D.request("DELETE", "/v1/datasets/" + a["id"]), 404, "NOT_FOUND")
    check_error(D.request("PUT", "/v1/datasets/" + b["id"]), 405, "METHOD_NOT_ALLOWED")

    # one file uploaded as a dataset and as a model shares its blob
    data = canonical(4, 3, seed=12)[0]
    ds = post_raw(data).json
    m = D.upload(data, name="same-bytes").json
    assert m["sha256"] == ds["sha256"]
    assert D.request("DELETE", "/v1/datasets/" + ds["id"]).status == 204
    r = D.get("/v1/models/%s/file" % m["id"])
    assert r.status == 200 and r.body == data, "deleting a dataset broke a model: %r" % r
    ds = post_raw(data).json
    assert D.request("DELETE", "/v1/models/" + m["id"]).status == 204
    assert D.get("/v1/datasets/%s/file" % ds["id"]).body == data
    assert D.request("DELETE", "/v1/datasets/" + ds["id"]).status == 204
    assert not os.path.exists(os.path.join(D.data_dir, "blobs", ds["sha256"][:2], ds["sha256"]))


# ---------------------------------------------------------------- bad inputs

@test
def test_bad_safetensors_uploads():
    """raw/file uploads: empty 400, junk or IDX 415, not a dataset 400 naming the tensor; nothing stored"""
    before = state()
    refused(post_raw(b""), 400, "INVALID_DATASET", "empty", before=before)
    refused(post_raw(b"definitely not a dataset\n" * 20), 415, "UNSUPPORTED_MEDIA",
            "unrecognised dataset format", before=before)
    imgs, labs, _, _ = mnist(3)
    refused(post_raw(gzip.compress(imgs)), 415, "UNSUPPORTED_MEDIA", ["IDX", "images=@"],
            before=before)
    refused(post_raw(imgs), 415, "UNSUPPORTED_MEDIA", "IDX", before=before)
    # a model is not a dataset
    refused(post_raw(h.safetensors_bytes([h.t_f32("layer.weight", [4, 4], 1)])), 400,
            "INVALID_DATASET", ["invalid dataset", "unexpected tensor 'layer.weight'"],
            before=before)
    x = h.t_f32("input", [3, 2], 1)
    bad = [
        ([x, h.Tensor("labels", "I64", [2], h.i64_bytes([0, 1]))],
         "tensor 'labels': 2 labels for 3 samples in 'input'"),
        ([x, h.Tensor("labels", "I32", [3], h.i32_bytes([0, -4, 1]))],
         "tensor 'labels': label -4 of sample 1 is negative"),
        ([x, h.t_f32("labels", [3], 2)], "tensor 'labels': dtype F32 is not an integer"),
        ([x, h.Tensor("labels", "I64", [3, 1], h.i64_bytes([0, 1, 2]))],
         "tensor 'labels': shape [3, 1], expected [3]"),
        ([h.Tensor("input", "I32", [3, 2], h.i32_bytes([1] * 6))],
         "tensor 'input': dtype I32 is not one of F32, F16, BF16, F64, U8"),
        ([h.Tensor("input", "F32", [0, 2], b"")], "tensor 'input': no samples"),
        ([h.Tensor("labels", "I64", [3], h.i64_bytes([0, 1, 2]))], "no tensor 'input'"),
    ]
    for ts, want in bad:
        refused(post_raw(h.safetensors_bytes(ts)), 400, "INVALID_DATASET", want, before=before)
    body, ctype = h.multipart([("file", "x.safetensors", h.safetensors_bytes(bad[0][0]))])
    r = D.request("POST", "/v1/datasets", body=body, headers={"Content-Type": ctype})
    refused(r, 400, "INVALID_DATASET", "2 labels for 3 samples", before=before)
    # a malformed safetensors file: the reader's message, as INVALID_DATASET
    good = canonical(3, 2)[0]
    refused(post_raw(good[:-5]), 400, "INVALID_DATASET", "invalid dataset", before=before)
    # a bad ?name=
    for q in ("", "a%0Ab", "%FF"):
        refused(post_raw(good, path="/v1/datasets?name=" + q), 400, "INVALID_ARGUMENT", "name",
                before=before)


@test
def test_bad_idx_uploads():
    """IDX uploads: bad magic, short, long, count mismatch, overflowing dims, bad labels, bad forms"""
    before = state()
    imgs, labs, _, _ = mnist(5, 3, 3, seed=5)
    gz = gzip.compress

    def bad(fields, status, code, want):
        refused(post_parts(fields), status, code, want, before=before)

    bad([("images", "i.gz", gz(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)), ("labels", "l", labs)],
        400, "INVALID_DATASET", ["images: not an IDX file", "after gunzip"])
    bad([("images", "i", imgs), ("labels", "l", b"GIF89a" + b"\0" * 10)],
        400, "INVALID_DATASET", "labels: not an IDX file")
    bad([("images", "i", imgs[:-7]), ("labels", "l", labs)],
        400, "INVALID_DATASET", "images: the file ends after 38 of the 45 data bytes its header "
                                "claims (5 x 3 x 3 ubyte)")
    bad([("images", "i", imgs + b"\0"), ("labels", "l", labs)],
        400, "INVALID_DATASET", "images: the file runs on past the 45 data bytes")
    bad([("images", "i", gz(imgs)[:-12]), ("labels", "l", labs)],
        400, "INVALID_DATASET", "images: the gzip stream is cut short")
    bad([("images", "i", b"\x1f\x8b\x08\0\0\0\0\0\0\x03garbage!"), ("labels", "l", labs)],
        400, "INVALID_DATASET", "images: corrupt gzip data")
    bad([("images", "i", imgs), ("labels", "l", idx("ubyte", [4], [1, 2, 3, 4]))],
        400, "INVALID_DATASET", "images hold 5 samples but labels hold 4")
    bad([("images", "i", idx("ubyte", [0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF], payload=b""))],
        400, "INVALID_DATASET", "multiply past 2^60")
    bad([("images", "i", idx("ubyte", [5, 0, 3], payload=b""))],
        400, "INVALID_DATASET", "images: dimension 1 is 0")
    bad([("images", "i", idx("ubyte", [5], [1] * 5))],
        400, "INVALID_DATASET", "images: 1 dimension")
    bad([("images", "i", imgs), ("labels", "l", idx("float", [5], [1.0] * 5))],
        400, "INVALID_DATASET", "labels: element type float")
    bad([("images", "i", imgs), ("labels", "l", idx("sbyte", [5], [1, 2, -1, 0, 0]))],
        400, "INVALID_DATASET", "labels: label -1 of sample 2 is negative")
    bad([("images", "i", imgs), ("labels", "l", idx("ubyte", [5, 1], [1] * 5))],
        400, "INVALID_DATASET", "labels: 2 dimensions")
    bad([("images", "i", b""), ("labels", "l", labs)],
        400, "INVALID_DATASET", "images: the multipart field is empty")
    # the form itself
    bad([("labels", "l", labs)], 400, "INVALID_ARGUMENT", "'labels' without 'images'")
    bad([("file", "f", canonical(3, 2)[0]), ("images", "i", imgs)], 400, "INVALID_ARGUMENT",
        "not both")
    bad([("data", "d", imgs)], 400, "INVALID_ARGUMENT", "no field named 'images'")
    bad([("images", "i", imgs), ("images", "i2", imgs)], 400, "INVALID_ARGUMENT",
        "'images' appears twice")
    refused(post_parts([("images", "i", imgs)], path="/v1/datasets?name=%01"), 400,
            "INVALID_ARGUMENT", "name", before=before)


@test
def test_upload_limits_and_space():
    """--max-upload-bytes: 413 for a big body and for IDX data that only gunzip makes big; 507 short of space"""
    d = h.Daemon(workers=1, max_upload=8192, name="limit").start()
    try:
        before = state(d)
        big = canonical(300, 8)[0]
        assert len(big) > 8192
        refused(post_raw(big, d=d), 413, "PAYLOAD_TOO_LARGE", "8192", d=d, before=before)
        imgs, labs, _, _ = mnist(200, 8, 8)
        refused(post_parts([("images", "i", imgs), ("labels", "l", labs)], d=d), 413,
                "PAYLOAD_TOO_LARGE", "8192", d=d, before=before)
        # 100 KB of zeros gzip to a few hundred bytes: counted uncompressed
        zeros = gzip.compress(idx("ubyte", [100, 32, 32], payload=b"\0" * 102400))
        assert len(zeros) < 8192
        refused(post_parts([("images", "i", zeros)], d=d), 413, "PAYLOAD_TOO_LARGE",
                ["after gunzip", "--max-upload-bytes"], d=d, before=before)
        imgs, labs, _, _ = mnist(20, 8, 8)
        r = post_parts([("images", "i", gzip.compress(imgs)), ("labels", "l", labs)], d=d)
        assert r.status == 201, r
    finally:
        d.stop()

    # the converted file (4 bytes a pixel) must fit the free space too:
    # leave the daemon 1 GiB above --min-free-bytes and send IDX data that
    # gzip makes small and the conversion makes 4 GB.  The margins are
    # wide because the disk is shared: the tests running beside this one
    # (make -j2) write and delete hundreds of MB in between
    data_dir = h.make_tmpdir()
    v = os.statvfs(data_dir)
    free = v.f_bavail * v.f_frsize
    if free < 2 << 30:
        h.skip("less than 2 GiB free")
    d = h.Daemon(workers=1, data_dir=data_dir, name="space",
                 env={"SLIMD_MIN_FREE_BYTES": str(free - (1 << 30))}).start()
    try:
        before = state(d)
        n = 1000 * 1000
        z = zlib.compressobj(1, zlib.DEFLATED, 31)   # gzip, streamed: 1 GB of zeros
        chunk = bytes(1 << 20)
        parts = [z.compress(idx("ubyte", [n, 1000], payload=b""))]
        for _ in range(n * 1000 // len(chunk)):
            parts.append(z.compress(chunk))
        parts.append(z.compress(bytes(n * 1000 % len(chunk))) + z.flush())
        zeros = b"".join(parts)
        msg = refused(post_parts([("images", "i", zeros)], d=d), 507, "INSUFFICIENT_STORAGE",
                      "free", d=d, before=before)
        assert "MiB" in msg, msg
    finally:
        d.stop()


# ---------------------------------------------------------------- jobs

def tiled_model(mb=32):
    """A model of a few big F32 matrices (rows tiled from a few Gaussian
    ones, cheap to build): int8 jobs on it take a moment."""
    rows = [h.f32_bytes(h.gaussian(2048, 300 + k)) for k in range(8)]
    n = (mb << 20) // (2048 * 4 * 2048)
    ts = [h.Tensor("blocks.%d.weight" % j, "F32", [2048, 2048],
                   b"".join(rows[(i + j) % 8] for i in range(2048))) for j in range(n)]
    return h.safetensors_bytes(ts)


def eval_model():
    """A model a job with "eval" can name: an ONNX model (input [N, 4],
    one MatMul to 3 classes) when this daemon takes ONNX uploads and
    python3-onnx is there to build one, else a safetensors model (which a
    daemon whose evaluation runs ONNX graphs refuses for eval: the test
    then skips what needs it)."""
    try:
        from onnx import TensorProto, helper
        w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.1 * i for i in range(12)])
        g = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                             ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                             ["N", 3])], [w])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        r = D.upload(m.SerializeToString(), name="eval-onnx", expect=None)
        if r.status == 201:
            return r.json["id"]
    except ImportError:
        pass
    return D.upload(h.safetensors_bytes([h.t_f32("fc.weight", [3, 4], 1)]), name="eval-st").json["id"]


def submit_eval(spec):
    r = D.submit(spec, expect=None)
    if r.status == 400 and "ONNX" in r.body.decode():
        h.skip("eval needs an ONNX model on this daemon, and python3-onnx is missing")
    assert r.status == 202, r
    return r.json


@test
def test_job_eval_dataset():
    """eval naming a missing dataset is 404 and queues nothing; a queued job's dataset cannot be deleted (409)"""
    small = h.safetensors_bytes([h.t_f32("fc.weight", [8, 4], 1), h.t_f32("fc.bias", [8], 2)])
    mid = D.upload(small, name="small").json["id"]
    total = D.get("/v1/jobs").json["total"]
    r = D.submit({"model": mid, "passes": [INT8], "eval": {"dataset": "ds_nosuchdataset00"}},
                 expect=None)
    check_error(r, 404, "NOT_FOUND", "eval.dataset: dataset ds_nosuchdataset00 does not exist")
    r = D.submit({"model": mid, "passes": [INT8], "eval": {"datasets": "x"}}, expect=None)
    check_error(r, 400, "INVALID_SPEC", "eval")
    assert D.get("/v1/jobs").json["total"] == total, "a refused job was queued"

    emid = eval_model()
    imgs = idx("ubyte", [10, 4], list(range(40)))
    labs = idx("ubyte", [10], [i % 3 for i in range(10)])
    ds = post_parts([("images", "i", imgs), ("labels", "l", labs)]).json
    # --workers 1: jobs on a big model in front keep the eval job queued
    big = D.upload(tiled_model(), name="big").json["id"]
    ahead = [D.submit({"model": big, "passes": [INT8]}).json["id"] for _ in range(3)]
    try:
        j = submit_eval({"model": emid, "passes": [INT8],
                         "eval": {"dataset": ds["id"], "max_samples": 5}})
    except BaseException:       # a skip too: leave no job running for the next test
        for a in ahead:
            D.request("POST", "/v1/jobs/%s/cancel" % a)
        raise
    assert j["dataset"] == ds["id"], j
    state_now = D.get("/v1/jobs/" + j["id"]).json["state"]
    r = D.request("DELETE", "/v1/datasets/" + ds["id"])
    if state_now not in ("queued", "running"):
        h.skip("the job finished before the delete could be tried (%s)" % state_now)
    check_error(r, 409, "CONFLICT", [ds["id"], j["id"], "cancel it or wait"])
    assert D.get("/v1/datasets/" + ds["id"]).status == 200
    # once it has finished the dataset can go; the job keeps its spec
    for a in ahead + [j["id"]]:
        D.request("POST", "/v1/jobs/%s/cancel" % a)
    jj = D.wait_job(j["id"], timeout=120)
    assert jj["state"] in TERMINAL, jj
    r = D.request("DELETE", "/v1/datasets/" + ds["id"])
    assert r.status == 204, r
    jj = D.get("/v1/jobs/" + j["id"]).json
    assert jj["dataset"] is None and jj["spec"]["eval"]["dataset"] == ds["id"], jj
    for a in ahead:
        D.wait_job(a, timeout=120)

    # a job with an eval dataset runs
    ds = post_raw(canonical(4, 4)[0]).json
    j = submit_eval({"model": emid, "passes": [INT8], "eval": {"dataset": ds["id"]}})
    jj = D.wait_job(j["id"], timeout=60)
    assert jj["state"] == "succeeded", jj
    assert jj["dataset"] == ds["id"], jj
    assert D.request("DELETE", "/v1/datasets/" + ds["id"]).status == 204


@test
def test_restart_keeps_datasets():
    """datasets survive a restart unchanged"""
    before = D.get("/v1/datasets?limit=1000").json
    assert before["total"] >= 3, before
    D.restart()
    after = D.get("/v1/datasets?limit=1000").json
    assert after == before
    for x in after["datasets"]:
        f = D.get("/v1/datasets/%s/file" % x["id"])
        assert f.status == 200 and hashlib.sha256(f.body).hexdigest() == x["sha256"], x


if __name__ == "__main__":
    h.run(setup=setup, teardown=teardown, daemons=lambda: [D] if D else [])
