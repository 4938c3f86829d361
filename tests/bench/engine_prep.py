#!/usr/bin/env python3
"""engine_prep.py - the inputs of the engine benchmark (bench_engine.sh):

  fashion-test.safetensors  the 10,000 Fashion-MNIST test images of Debian's
                            dataset-fashion-mnist as `input` (F32, (N, 1,
                            28, 28), uint8 / 255) and `labels` (I64)
  mlp.onnx                  MLP 784-300-100-10 (ReLU), flattened with
                            Shape/Gather/Unsqueeze/Concat/Reshape as torch
                            exports x.view(x.size(0), -1); Gemm transB=1
  cnn.onnx                  Conv(1->16, 3, pad 1)+BatchNorm+ReLU+MaxPool(2),
                            Conv(16->32, 3, pad 1)+BatchNorm+ReLU+MaxPool(2),
                            Flatten, Dropout (inference), Gemm(1568->64)+ReLU,
                            Gemm(64->10)

The models have the shapes of the Fashion-MNIST fixtures (tests/fixtures,
trained by torch) but random weights: the time does not depend on the
weights, and this needs no training.  Opset 17.  Standard library, numpy
and python3-onnx only.

    /usr/bin/python3 engine_prep.py OUTDIR [--data /usr/share/datasets/fashion-mnist]
"""
import argparse
import gzip
import json
import os
import struct

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    nd = magic & 0xFF
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)


def write_st(path, tensors):
    header, off, blobs = {}, 0, []
    for name, a in tensors:
        dt = {np.float32: "F32", np.int64: "I64"}[a.dtype.type]
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def save(path, nodes, inits, rng_out="logits"):
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info(rng_out, TensorProto.FLOAT, ["N", 10])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                          producer_name="slimd-bench")
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(0)

    def w(name, *shape, fan_in=None):
        fan_in = fan_in or int(np.prod(shape[1:]))
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    x = idx(os.path.join(a.data, "t10k-images-idx3-ubyte.gz"))
    y = idx(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz"))
    write_st(os.path.join(a.out, "fashion-test.safetensors"),
             [("input", (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)),
              ("labels", y.astype(np.int64))])

    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["input"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["input", "shape"], ["h0"])]
    inits = [i64("zero", 0), i64("ax0", [0]), i64("minus1", [-1])]
    sizes = [784, 300, 100, 10]
    for i in range(3):
        inits += [w("fc%d.weight" % i, sizes[i + 1], sizes[i]),
                  numpy_helper.from_array(np.zeros(sizes[i + 1], np.float32), "fc%d.bias" % i)]
        out = "logits" if i == 2 else "g%d" % i
        nodes.append(helper.make_node("Gemm", ["h%d" % i, "fc%d.weight" % i, "fc%d.bias" % i],
                                      [out], transB=1))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], ["h%d" % (i + 1)]))
    save(os.path.join(a.out, "mlp.onnx"), nodes, inits)

    nodes, inits, prev = [], [], "input"
    for i, (cin, cout) in enumerate(((1, 16), (16, 32))):
        inits += [w("conv%d.weight" % i, cout, cin, 3, 3),
                  numpy_helper.from_array(np.zeros(cout, np.float32), "conv%d.bias" % i),
                  numpy_helper.from_array(1 + 0.1 * rng.standard_normal(cout).astype(np.float32),
                                          "bn%d.weight" % i),
                  numpy_helper.from_array(0.1 * rng.standard_normal(cout).astype(np.float32),
                                          "bn%d.bias" % i),
                  numpy_helper.from_array(0.1 * rng.standard_normal(cout).astype(np.float32),
                                          "bn%d.mean" % i),
                  numpy_helper.from_array(1 + 0.1 * np.abs(rng.standard_normal(cout))
                                          .astype(np.float32), "bn%d.var" % i)]
        nodes += [helper.make_node("Conv", [prev, "conv%d.weight" % i, "conv%d.bias" % i],
                                   ["c%d" % i], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization",
                                   ["c%d" % i] + ["bn%d.%s" % (i, k)
                                                  for k in ("weight", "bias", "mean", "var")],
                                   ["b%d" % i], epsilon=1e-5),
                  helper.make_node("Relu", ["b%d" % i], ["r%d" % i]),
                  helper.make_node("MaxPool", ["r%d" % i], ["p%d" % i], kernel_shape=[2, 2],
                                   strides=[2, 2])]
        prev = "p%d" % i
    nodes += [helper.make_node("Flatten", [prev], ["f"], axis=1),
              helper.make_node("Constant", [], ["ratio"],
                               value=numpy_helper.from_array(np.array(0.25, np.float32))),
              helper.make_node("Constant", [], ["train"],
                               value=numpy_helper.from_array(np.array(False))),
              helper.make_node("Dropout", ["f", "ratio", "train"], ["d"]),
              helper.make_node("Gemm", ["d", "fc0.weight", "fc0.bias"], ["g0"], transB=1),
              helper.make_node("Relu", ["g0"], ["h0"]),
              helper.make_node("Gemm", ["h0", "fc1.weight", "fc1.bias"], ["logits"], transB=1)]
    inits += [w("fc0.weight", 64, 1568), numpy_helper.from_array(np.zeros(64, np.float32),
                                                                 "fc0.bias"),
              w("fc1.weight", 10, 64), numpy_helper.from_array(np.zeros(10, np.float32),
                                                               "fc1.bias")]
    save(os.path.join(a.out, "cnn.onnx"), nodes, inits)


if __name__ == "__main__":
    main()
