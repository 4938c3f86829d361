#!/usr/bin/python3
"""entropy_ratio.py - what "output": {"entropy": true} saves on a
784-300-100-10 MLP (Deep Compression's third stage; issue 7).

Two models:
  * tests/fixtures/mlp.onnx, the trained Fashion-MNIST MLP (266,610
    parameters), pruned 90 % (global) and clustered to 16, evaluated on
    the fixture's 2000 test images: the ONNX artifact without entropy,
    and the entropy container with "sparse": true;
  * the same shape in safetensors with weights set so that 90 % are zero
    (at random positions) and 16 values remain: its bound is the entropy
    of random positions, n H(0.1) bits, plus 4 bits a weight.
Prints, for each artifact, its file bytes, the ratio against the fp32
file and against the fp32 weights alone (what slimd's report calls
bytes_before / bytes_after), and the accuracy where there is one.  No
retraining here (finetune is another pass): accuracy after 90 % pruning
without it is expected to fall.

Usage: /usr/bin/python3 tests/bench/entropy_ratio.py [SLIMD]  (default ./slimd)
"""

import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "..")
FIX = os.path.join(SRC, "tests", "fixtures")
SLIMD = sys.argv[1] if len(sys.argv) > 1 else os.path.join(SRC, "slimd")
WORK = tempfile.mkdtemp(prefix="slimd-entropy-bench-")


def st_write(path, tensors):
    hdr, off, bufs = {}, 0, []
    for name, (dt, a) in tensors.items():
        b = a.tobytes()
        hdr[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        bufs.append(b)
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(bufs))


def dataset():
    """The fixture's 2000 test images as slimd's canonical dataset (scaled 1/255)."""
    img = gzip.open(os.path.join(FIX, "fashion-test-2000-images-idx3-ubyte.gz")).read()
    lab = gzip.open(os.path.join(FIX, "fashion-test-2000-labels-idx1-ubyte.gz")).read()
    n = struct.unpack(">I", img[4:8])[0]
    x = np.frombuffer(img, np.uint8, n * 784, 16).reshape(n, 1, 28, 28).astype(np.float32) / 255
    y = np.frombuffer(lab, np.uint8, n, 8).astype(np.int64)
    path = os.path.join(WORK, "fashion2000.safetensors")
    st_write(path, {"input": ("F32", x), "labels": ("I64", y)})
    return path


def compress(model, spec):
    out = tempfile.mkdtemp(dir=WORK)
    sp = os.path.join(out, "spec.json")
    json.dump(spec, open(sp, "w"))
    p = subprocess.run([SLIMD, "compress", model, "--spec", sp, "-o", out],
                       capture_output=True, text=True)
    if p.returncode:
        sys.exit("slimd compress failed: " + p.stderr)
    art = [f for f in os.listdir(out) if ".slim." in f and not f.endswith(".data")][0]
    return os.path.join(out, art), json.load(open(os.path.join(out, "report.json")))


def row(label, art, rep, fp32_file, fp32_weights):
    size = os.path.getsize(art)
    acc = rep.get("accuracy", {})
    a = acc.get("after", {}).get("top1") if isinstance(acc.get("after"), dict) else acc.get("after")
    b = acc.get("before", {}).get("top1") if isinstance(acc.get("before"), dict) else acc.get("before")
    print("%-46s %9d B  %6.2fx file  %6.2fx weights (%d B)  %s" % (
        label, size, fp32_file / size, fp32_weights / rep["totals"]["bytes_after"],
        rep["totals"]["bytes_after"],
        "acc %.4f -> %.4f" % (b, a) if a is not None and b is not None else ""))


def main():
    ds = dataset()
    mlp = os.path.join(FIX, "mlp.onnx")
    fp32_file = os.path.getsize(mlp)
    passes = [{"op": "prune", "sparsity": 0.9, "scope": "global"},
              {"op": "cluster", "clusters": 16}]
    ev = {"dataset": ds}
    print("trained MLP 784-300-100-10 (tests/fixtures/mlp.onnx, %d B; fp32 weights %d B)"
          % (fp32_file, 266610 * 4))
    art, rep = compress(mlp, {"passes": passes, "eval": ev})
    row("prune 90% + cluster 16 (ONNX artifact)", art, rep, fp32_file, 266610 * 4)
    art, rep = compress(mlp, {"passes": passes, "eval": ev,
                              "output": {"sparse": True, "entropy": True}})
    row("  + sparse + entropy (container)", art, rep, fp32_file, 266610 * 4)
    dec = os.path.join(WORK, "decoded.onnx")
    subprocess.run([SLIMD, "decode", art, "-o", dec], check=True, capture_output=True)
    print("  slimd decode -> %s (%d B, plain ONNX)" % (dec, os.path.getsize(dec)))

    rng = np.random.default_rng(0)
    values = np.linspace(-0.3, 0.3, 15).astype(np.float32)
    t = {}
    for name, shape in (("fc1", (300, 784)), ("fc2", (100, 300)), ("fc3", (10, 100))):
        w = values[rng.integers(0, 15, shape)]
        w[rng.random(shape) < 0.9] = 0
        t[name + ".weight"] = ("F32", w)
        t[name + ".bias"] = ("F32", (rng.standard_normal(shape[0]) * 0.1).astype(np.float32))
    st = os.path.join(WORK, "mlp16.safetensors")
    st_write(st, t)
    n = sum(a.size for k, (_, a) in t.items() if k.endswith("weight"))
    nnz = sum(int((a != 0).sum()) for k, (_, a) in t.items() if k.endswith("weight"))
    q = nnz / n
    bound = (n * -(q * np.log2(q) + (1 - q) * np.log2(1 - q)) + nnz * np.log2(16)) / 8
    print("\nMLP 784-300-100-10 with 90 %% zeros at random and 16 values (safetensors, %d B)"
          % os.path.getsize(st))
    art, rep = compress(st, {"passes": [{"op": "prune", "sparsity": 0.0001},
                                        {"op": "cluster", "clusters": 16}],
                             "output": {"sparse": True}})
    row("cluster 16, sparse (bit mask, 4-bit codes)", art, rep, os.path.getsize(st), n * 4 + 1640)
    art, rep = compress(st, {"passes": [{"op": "prune", "sparsity": 0.0001},
                                        {"op": "cluster", "clusters": 16}],
                             "output": {"sparse": True, "entropy": True}})
    row("  + entropy", art, rep, os.path.getsize(st), n * 4 + 1640)
    print("  entropy bound of these weights alone (random positions, uniform codes): %.0f B"
          % bound)


if __name__ == "__main__":
    main()
