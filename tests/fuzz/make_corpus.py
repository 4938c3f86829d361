#!/usr/bin/python3
"""make_corpus.py - writes the seed corpora of tests/fuzz/corpus/.

Each fuzz target starts from small, real inputs of its format, one file
each: what a user would send (a tiny safetensors model, the job specs of
the README, a tiny ONNX model, IDX headers and data, Range headers) and
the edge cases the readers were written for (a zero-size tensor, a pax
tar, a gzip IDX, a suffix range).  The files are committed; this script
says how they were made and makes them again (same bytes) with
`/usr/bin/python3 tests/fuzz/make_corpus.py`.  The ONNX seeds need
Debian's python3-onnx (scripts/ort.sh installs it); without it they are
left as they are.

Regression inputs that a fuzzer found are committed beside these under
names starting with "regress-" and are not touched here.
"""

import gzip
import io
import json
import os
import struct
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- safetensors

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
         "I8": 1, "U8": 1, "BOOL": 1}


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, off, data = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


def tiny_model():
    return safetensors([
        ("layer.0.weight", "F32", [2, 3], f32(0.5, -1.0, 2.0, 0.0, 0.25, -0.75)),
        ("layer.0.bias", "F32", [2], f32(0.1, -0.1)),
        ("ids", "I64", [2], struct.pack("<2q", 7, 9)),
    ], {"format": "pt"})


def seeds_safetensors():
    put("safetensors", "tiny", tiny_model())
    put("safetensors", "every-dtype", safetensors(
        [("t_" + dt.lower(), dt, [2], bytes(range(i, i + 2 * SIZES[dt])))
         for i, dt in enumerate(SIZES)]))
    put("safetensors", "empty", safetensors([]))
    put("safetensors", "metadata-only", safetensors([], {"a": "b", "slimd.note": "x"}))
    put("safetensors", "scalar-and-zero-size", safetensors([
        ("scalar", "F32", [], f32(3.0)),
        ("none", "F16", [0, 4], b""),
        ("conv.weight", "BF16", [2, 1, 2, 2], bytes(16)),
    ]))
    put("safetensors", "unpadded", safetensors([("w", "U8", [3], b"abc")], pad=False))


# ---------------------------------------------------------------- job specs

def seeds_spec():
    specs = {
        # the README's
        "readme-int8-channel": {"model": "mdl_1", "passes": [
            {"op": "quantize", "dtype": "int8", "granularity": "channel"}]},
        "readme-offline-int8": {"passes": [{"op": "quantize", "dtype": "int8"}]},
        "readme-lowrank-rank": {"model": "mdl_1", "passes": [{"op": "lowrank", "rank": 64}]},
        "readme-cluster": {"model": "mdl_1", "passes": [{"op": "cluster", "clusters": 16}]},
        "int4-group-mse": {"model": "mdl_1", "passes": [
            {"op": "quantize", "dtype": "int4", "granularity": "group", "group_size": 8,
             "symmetric": False, "calibration": "mse"}]},
        "prune-2-4-int8": {"model": "mdl_1", "passes": [
            {"op": "prune", "pattern": "2:4"},
            {"op": "quantize", "dtype": "int8"}]},
        "prune-global-sparse-binary": {"model": "mdl_1", "passes": [
            {"op": "prune", "sparsity": 0.5, "scope": "global", "include": ["*.weight"]},
            {"op": "quantize", "dtype": "binary"}], "output": {"sparse": True}},
        "prune-cluster-sparse-entropy": {"model": "mdl_1", "passes": [
            {"op": "prune", "sparsity": 0.9, "scope": "global"},
            {"op": "cluster", "clusters": 16}], "output": {"sparse": True, "entropy": True}},
        "prune-rows-ternary": {"model": "mdl_1", "passes": [
            {"op": "prune", "sparsity": 0.3, "pattern": "rows", "exclude": ["conv.*"]},
            {"op": "quantize", "dtype": "ternary"}]},
        "lowrank-energy-exact-fp16": {"model": "mdl_1", "passes": [
            {"op": "lowrank", "energy": 0.95, "algorithm": "exact"},
            {"op": "quantize", "dtype": "fp16"}], "output": {"dequantize": True}},
        "lowrank-ratio-randomized-bf16": {"model": "mdl_1", "passes": [
            {"op": "lowrank", "rank_ratio": 0.25, "algorithm": "randomized"},
            {"op": "quantize", "dtype": "bf16"}]},
        "eval-limits-output": {"model": "mdl_1", "passes": [
            {"op": "quantize", "dtype": "int8", "granularity": "tensor"}],
            "eval": {"dataset": "ds_1", "max_samples": 10, "batch_size": 4},
            "limits": {"memory_mb": 64},
            "output": {"format": "onnx", "opset": 21, "float16_graph": False}},
    }
    for name, spec in specs.items():
        put("spec", name, json.dumps(spec))


# ---------------------------------------------------------------- IDX

def idx(type_byte, dims, payload):
    return bytes([0, 0, type_byte, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def idx_input(images, labels=None):
    """The fuzz_idx layout: flags, images length (LE32), images, labels."""
    return bytes([1 if labels is not None else 0]) + struct.pack("<I", len(images)) + images + (
        labels or b"")


def gz(b):
    return gzip.compress(b, compresslevel=9, mtime=0)


def seeds_idx():
    img = idx(0x08, [2, 3, 3], bytes(range(0, 18 * 14, 14)))
    lab = idx(0x08, [2], bytes([3, 0]))
    put("idx", "ubyte-with-labels", idx_input(img, lab))
    put("idx", "ubyte-gzip", idx_input(gz(img), gz(lab)))
    put("idx", "no-labels", idx_input(img))
    put("idx", "short-int-labels", idx_input(idx(0x0B, [3, 2], struct.pack(">6h", 1, -2, 3, -4, 5, 6)),
                                             idx(0x0C, [3], struct.pack(">3i", 0, 1, 2))))
    put("idx", "float-double", idx_input(idx(0x0D, [1, 2], struct.pack(">2f", 0.5, -1.5)),
                                         idx(0x09, [1], b"\x01")))
    put("idx", "double-4d", idx_input(idx(0x0E, [1, 1, 2, 1], struct.pack(">2d", 1.0, 2.0))))


# ---------------------------------------------------------------- HTTP

def seeds_http():
    cases = [
        (1000, "bytes=0-99"), (1000, "bytes=-100"), (1000, "bytes=900-"),
        (1000, "bytes=0--1"), (1000, "bytes=1000-"), (0, "bytes=-1"),
        (2 ** 63 + 5, "bytes=18446744073709551615-"),
        (10, "/v1/models/mdl_04276e6d7f07d3c6/file"), (10, "/v1/jobs/job_1/report.html"),
        (10, "/v1/health%00x"), (10, "/v1/models/a%2Fb"), (10, "caf%C3%A9 model"),
        (10, "r\xc3\xa9sum\xc3\xa9"), (10, "1000"), (10, "-1"), (10, "offset=+5"),
        (10, "localhost:8420"), (10, "[::1]:8420"), (10, "Example.COM.:80"),
        (10, "127.0.0.1"), (10, "evil.example:8420"), (10, "Bearer slimd_0123abcd"),
        (10, "bearer\t  tok"), (10, "multipart/form-data; boundary=x"),
        (10, " Text/Plain;charset=utf-8"), (10, "application/json"),
    ]
    for i, (size, text) in enumerate(cases):
        put("http", "case-%02d" % i, struct.pack("<Q", size) + text.encode("latin-1"))


# ---------------------------------------------------------------- ONNX

def onnx_models():
    try:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    out = {}

    def model(nodes, inits, inputs, outputs, opset=17, sparse=()):
        g = helper.make_graph(nodes, "g", inputs, outputs, inits, sparse_initializer=list(sparse))
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="make_corpus")
        m.ir_version = 8
        return m.SerializeToString()

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    b = numpy_helper.from_array(np.array([0.5, -0.5, 0.0], dtype=np.float32), "b")
    out["matmul-add-relu"] = model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])], [w, b], [x], [y])
    wt = numpy_helper.from_array(np.ones((3, 4), dtype=np.float32), "wt")
    out["gemm-transb-softmax"] = model(
        [helper.make_node("Gemm", ["x", "wt", "b"], ["g"], transB=1),
         helper.make_node("Softmax", ["g"], ["y"], axis=1)], [wt, b], [x], [y])
    # typed fields instead of raw_data
    wf = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [float(i) for i in range(12)])
    out["float-data-field"] = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [wf], [x], [y])
    # conv, batchnorm, pool, flatten
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])
    yo = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    k = numpy_helper.from_array(np.ones((2, 1, 3, 3), dtype=np.float32), "k")
    kb = numpy_helper.from_array(np.zeros(2, dtype=np.float32), "kb")
    bn = [numpy_helper.from_array(np.full(2, v, dtype=np.float32), n)
          for n, v in (("s", 1.0), ("o", 0.0), ("mu", 0.1), ("var", 1.0))]
    out["conv-bn-pool"] = model(
        [helper.make_node("Conv", ["x", "k", "kb"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "s", "o", "mu", "var"], ["n"]),
         helper.make_node("MaxPool", ["n"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Flatten", ["p"], ["y"])], [k, kb] + bn, [xi], [yo])
    # reshape through Shape/Gather/Concat, as torch exports it
    x8 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4])
    y8 = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    out["shape-gather-concat-reshape"] = model(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Constant", [], ["i0"], value=numpy_helper.from_array(np.array(0, dtype=np.int64))),
         helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
         helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
         helper.make_node("Concat", ["n1", "m1"], ["shape"], axis=0),
         helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [numpy_helper.from_array(np.array([0], dtype=np.int64), "ax"),
         numpy_helper.from_array(np.array([-1], dtype=np.int64), "m1")], [x8], [y8])
    # quantized weights through DequantizeLinear, and a sparse initializer
    q = numpy_helper.from_array(np.array([[1, -2, 3], [4, 5, -6], [7, 8, 9], [0, 1, 2]],
                                         dtype=np.int8), "q")
    sc = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "sc")
    out["dequantize-linear"] = model(
        [helper.make_node("DequantizeLinear", ["q", "sc"], ["w"]),
         helper.make_node("MatMul", ["x", "w"], ["y"])], [q, sc], [x], [y])
    vals = numpy_helper.from_array(np.array([1.0, 2.0], dtype=np.float32), "w")
    idxs = numpy_helper.from_array(np.array([1, 10], dtype=np.int64), "w_idx")
    sp = helper.make_sparse_tensor(vals, idxs, [4, 3])
    out["sparse-initializer"] = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [], [x], [y],
                                      sparse=[sp])
    # a sparse clustered weight as slimd's ONNX artifacts write it: gap
    # symbols -> CumSum positions, ScatterElements into ConstantOfShape
    # zeros (onnx_write.c)
    i32 = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.int32), name)
    out["sparse-gaps-scatter"] = model(
        [helper.make_node("Gather", ["adv", "g"], ["a"]),
         helper.make_node("CumSum", ["a", "ax0"], ["p1"]),
         helper.make_node("Sub", ["p1", "one"], ["pos"]),
         helper.make_node("ConstantOfShape", ["n12"], ["z"]),
         helper.make_node("ScatterElements", ["z", "pos", "v"], ["flat"], axis=0),
         helper.make_node("Reshape", ["flat", "shp"], ["w"]),
         helper.make_node("MatMul", ["x", "w"], ["y"])],
        [i32("adv", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 15]), i32("g", [1, 0, 6]),
         numpy_helper.from_array(np.array(0, dtype=np.int64), "ax0"), i32("one", [1]),
         numpy_helper.from_array(np.array([12], dtype=np.int64), "n12"),
         numpy_helper.from_array(np.array([0.5, -1.0, 2.0], dtype=np.float32), "v"),
         numpy_helper.from_array(np.array([4, 3], dtype=np.int64), "shp")], [x], [y])
    # external data: refused by the reader when it comes as bytes alone
    we = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    we.data_location = TensorProto.EXTERNAL
    we.ClearField("raw_data")
    for key, val in (("location", "w.bin"), ("offset", "0"), ("length", "48")):
        e = we.external_data.add()
        e.key, e.value = key, val
    out["external-data"] = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [we], [x], [y])
    return out


def tar_bytes(members, fmt=tarfile.USTAR_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def seeds_onnx_and_upload(models):
    put("upload", "tiny-safetensors", tiny_model())
    s1 = safetensors([("a.weight", "F32", [2, 2], f32(1, 2, 3, 4))])
    s2 = safetensors([("b.weight", "F16", [2], bytes(4))])
    index = json.dumps({"metadata": {"total_size": 20}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors"}}).encode()
    put("upload", "sharded-tar", tar_bytes([
        ("model.safetensors.index.json", index),
        ("model-00001-of-00002.safetensors", s1), ("model-00002-of-00002.safetensors", s2)]))
    put("upload", "sharded-pax-tar", tar_bytes([
        ("ckpt/model.safetensors.index.json", index),
        ("ckpt/model-00001-of-00002.safetensors", s1),
        ("ckpt/model-00002-of-00002.safetensors", s2)], tarfile.PAX_FORMAT))
    if models is None:
        print("python3-onnx is missing: the ONNX seeds are left as they are", file=sys.stderr)
        return
    for name, data in models.items():
        put("onnx", name, data)
    put("upload", "onnx-matmul", models["matmul-add-relu"])
    put("upload", "onnx-external-tar", tar_bytes([
        ("model.onnx", models["external-data"]),
        ("w.bin", struct.pack("<12f", *[1.0] * 12))]))


def main():
    seeds_safetensors()
    seeds_spec()
    seeds_idx()
    seeds_http()
    seeds_onnx_and_upload(onnx_models())


if __name__ == "__main__":
    main()
