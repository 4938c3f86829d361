#!/usr/bin/env python3
"""train_peer.py - torch's side of the training benchmark (bench_train.sh).

    /usr/bin/python3 train_peer.py prep OUTDIR [--data DIR]
        writes fashion-train.safetensors and fashion-test.safetensors (the
        Fashion-MNIST IDX files of Debian's dataset-fashion-mnist as
        `input` F32 (N, 1, 28, 28), uint8 / 255, and `labels` I64), and the
        two models torch initialises with seed 0, exported to ONNX (opset
        17, dynamic batch) so that slimd trains the same starting weights:
          mlp_train.onnx  784-300-100-10, ReLU
          cnn_train.onnx  Conv(1->32, 3x3, pad 1)+ReLU+MaxPool(2),
                          Conv(32->64, 3x3, pad 1)+ReLU+MaxPool(2),
                          Linear(3136->128)+ReLU, Linear(128->10)
    /usr/bin/python3 train_peer.py run OUTDIR MODEL [--samples N]
        [--epochs E] [--batch B] [--threads T]
        trains MODEL (mlp or cnn) from the same initial weights with Adam
        (lr 1e-3), shuffled mini-batches, on the first N training images,
        and prints one JSON line: samples_per_s of the last epoch and the
        test accuracy after it.

torch.set_num_threads(T) (default 2); the batches are index slices of
one tensor (no DataLoader), which is torch's fastest way to feed them.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_prep import idx, write_st  # noqa: E402


def models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
                        nn.ReLU(), nn.Linear(100, 10))
    cnn = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    return {"mlp": mlp, "cnn": cnn}


def load(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for k, v in h.items():
            if k == "__metadata__":
                continue
            f.seek(base + v["data_offsets"][0])
            dt = {"F32": np.float32, "I64": np.int64}[v["dtype"]]
            cnt = int(np.prod(v["shape"]))
            out[k] = np.frombuffer(f.read(cnt * np.dtype(dt).itemsize), dt).reshape(v["shape"])
    return out


def prep(a):
    os.makedirs(a.out, exist_ok=True)
    for split, pre in (("train", "train"), ("test", "t10k")):
        x = idx(os.path.join(a.data, "%s-images-idx3-ubyte.gz" % pre))
        y = idx(os.path.join(a.data, "%s-labels-idx1-ubyte.gz" % pre))
        write_st(os.path.join(a.out, "fashion-%s.safetensors" % split),
                 [("input", (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)),
                  ("labels", y.astype(np.int64))])
    for name, m in models().items():
        m.eval()
        torch.onnx.export(m, torch.zeros(1, 1, 28, 28), os.path.join(a.out, name + "_train.onnx"),
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)


def run(a):
    torch.set_num_threads(a.threads)
    m = models()[a.model]
    tr = load(os.path.join(a.out, "fashion-train.safetensors"))
    te = load(os.path.join(a.out, "fashion-test.safetensors"))
    x = torch.from_numpy(tr["input"][:a.samples].copy())
    y = torch.from_numpy(tr["labels"][:a.samples].copy())
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    n = x.shape[0]
    rate = 0.0
    for _ in range(a.epochs):
        m.train()
        perm = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        for i in range(0, n, a.batch):
            j = perm[i:i + a.batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(m(x[j]), y[j])
            loss.backward()
            opt.step()
        rate = n / (time.perf_counter() - t0)
    m.eval()
    with torch.no_grad():
        xt = torch.from_numpy(te["input"].copy())
        acc = float((m(xt).argmax(1).numpy() == te["labels"]).mean())
    print(json.dumps({"model": a.model, "samples": n, "batch": a.batch, "threads": a.threads,
                      "samples_per_s": round(rate, 1), "test_accuracy": round(acc, 5),
                      "torch": torch.__version__}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep")
    p.add_argument("out")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    r = sub.add_parser("run")
    r.add_argument("out")
    r.add_argument("model", choices=["mlp", "cnn"])
    r.add_argument("--samples", type=int, default=60000)
    r.add_argument("--epochs", type=int, default=1)
    r.add_argument("--batch", type=int, default=128)
    r.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    prep(a) if a.cmd == "prep" else run(a)


if __name__ == "__main__":
    main()
