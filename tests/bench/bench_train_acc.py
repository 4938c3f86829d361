#!/usr/bin/python3
"""bench_train_acc.py - issue 7's accuracy targets for the training passes,
on the full Fashion-MNIST of Debian's dataset-fashion-mnist
(/usr/share/datasets/fashion-mnist), printed next to torch.  A benchmark,
not a test: it prints figures and exits 0 when they were measured.

    make bench-train-acc          (or: /usr/bin/python3 tests/bench/bench_train_acc.py)

1. Distillation.  torch trains a CNN teacher (conv3x3 32, maxpool, conv3x3
   64, maxpool, fc 128, fc 10; Adam 1e-3, batch 128) and exports it (opset
   13).  A slimd daemon distills it into a 784-100-10 MLP ({"hidden":
   [100]}, T = 2, alpha = 0.5, 10 epochs, Adam 1e-3, batch 128) for seeds
   0, 1, 2, and trains the same student on labels alone (alpha = 0); the
   report's accuracy on the 10,000 test images is the figure.  torch runs
   the same recipe (same loss, same seeds) beside it.  Stretch: a longer
   schedule, and a student that is the teacher's low-rank factorisation.
2. Deep Compression.  torch trains a 784-300-100-10 MLP; slimd runs prune
   90 % global -> finetune 3 epochs -> cluster 16 -> finetune 1 epoch with
   "output": {"sparse": true} (and "entropy": true when this build has
   it): test accuracy beside the dense model's, and the artifact's size
   beside the fp32 ONNX file's.
3. Training throughput of the MLP student (batch 128): slimd's reported
   samples/s beside torch's on the same threads.

--quick cuts epochs and seeds (a smoke run); --cache DIR keeps the torch
models between runs (default: a temp dir).  Threads: torch and slimd use
2 (the development machine's cores).
"""

import argparse
import gzip
import io
import json
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import slimd_harness as h  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw[4 + 4 * ndim:], np.uint8).reshape(dims)


def load(data):
    xtr = read_idx(os.path.join(data, "train-images-idx3-ubyte.gz"))
    ytr = read_idx(os.path.join(data, "train-labels-idx1-ubyte.gz"))
    xte = read_idx(os.path.join(data, "t10k-images-idx3-ubyte.gz"))
    yte = read_idx(os.path.join(data, "t10k-labels-idx1-ubyte.gz"))
    f = lambda x: torch.from_numpy((x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28))
    return f(xtr), torch.from_numpy(ytr.astype(np.int64)), f(xte), torch.from_numpy(
        yte.astype(np.int64))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.f1 = nn.Linear(64 * 7 * 7, 128)
        self.f2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.f2(F.relu(self.f1(torch.flatten(x, 1))))


def mlp(sizes):
    layers = [nn.Flatten()]
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return float((torch.cat([model(x[i:i + 1000]) for i in range(0, len(x), 1000)])
                      .argmax(1) == y).float().mean())


def fit(model, x, y, epochs, seed, teacher=None, T=2.0, alpha=0.0, lr=1e-3, batch=128):
    """Adam, seeded shuffle; loss alpha T^2 KL(teacher || student) + (1 - alpha) CE."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(x)
    t0 = time.time()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            out = model(x[idx])
            loss = (1 - alpha) * F.cross_entropy(out, y[idx]) if alpha < 1 else 0
            if alpha > 0:
                kl = F.kl_div(F.log_softmax(out / T, 1), F.softmax(teacher[idx] / T, 1),
                              reduction="batchmean")
                loss = loss + alpha * T * T * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
    return n * epochs / (time.time() - t0)


def export(model, path):
    model.eval()
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), path, input_names=["input"],
                      output_names=["logits"], opset_version=13,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def upload_idx(d, images, labels, name):
    body, ctype = h.multipart([("images", "images.gz", open(images, "rb").read()),
                               ("labels", "labels.gz", open(labels, "rb").read())])
    r = d.request("POST", "/v1/datasets?name=" + name, body=body,
                  headers={"Content-Type": ctype}, timeout=600)
    assert r.status == 201, r
    return r.json["id"]


def run_job(d, spec, timeout=7200):
    r = d.submit(spec)
    job = d.wait_job(r.json["id"], timeout=timeout, interval=0.5)
    if job["state"] != "succeeded":
        raise RuntimeError("job %s %s: %s" % (job["id"], job["state"], job.get("error")))
    rep = d.get("/v1/jobs/%s/report" % job["id"]).json
    return job, rep


def mean_sd(v):
    return "%.2f %% (sd %.2f; %s)" % (100 * np.mean(v), 100 * np.std(v),
                                      ", ".join("%.2f" % (100 * a) for a in v))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--save", default=None, help="deep: keep each artifact in this folder")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--long-epochs", type=int, default=30,
                    help="stretch: the longer schedule (0: skip it)")
    ap.add_argument("--lowrank-epochs", type=int, default=3, help="stretch: the low-rank student")
    ap.add_argument("--no-variants", action="store_true", help="stretch: skip other T and alpha")
    ap.add_argument("--parts", default="distill,stretch,deep",
                    help="which of distill, stretch, deep to run (comma-separated)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    seeds = [0] if a.quick else [0, 1, 2]
    epochs = 2 if a.quick else 10
    cache = a.cache or tempfile.mkdtemp(prefix="slimd-bench-train-")
    os.makedirs(cache, exist_ok=True)
    xtr, ytr, xte, yte = load(a.data)
    print("Fashion-MNIST: %d training, %d test images (%s)" % (len(xtr), len(xte), a.data))

    # one worker: the job gets every core (2 on the development machine)
    d = h.Daemon(data_dir=os.path.join(cache, "slimd-data"), workers=1)
    d.start()
    try:
        ds_train = upload_idx(d, os.path.join(a.data, "train-images-idx3-ubyte.gz"),
                              os.path.join(a.data, "train-labels-idx1-ubyte.gz"), "fmnist-train")
        ds_test = upload_idx(d, os.path.join(a.data, "t10k-images-idx3-ubyte.gz"),
                             os.path.join(a.data, "t10k-labels-idx1-ubyte.gz"), "fmnist-test")
        parts = a.parts.split(",")
        if "distill" in parts or "stretch" in parts:
            distill(a, d, cache, seeds, epochs, xtr, ytr, xte, yte, ds_train, ds_test, parts)
        if "deep" in parts:
            deep(a, d, cache, xtr, ytr, xte, yte, ds_train, ds_test)
    finally:
        d.stop()


def distill(a, d, cache, seeds, epochs, xtr, ytr, xte, yte, ds_train, ds_test, parts):
    tpath = os.path.join(cache, "teacher_cnn.onnx")
    torch.manual_seed(0)
    teacher = CNN()
    tstate = os.path.join(cache, "teacher_cnn.pt")
    if os.path.exists(tstate):
        teacher.load_state_dict(torch.load(tstate))
    else:
        t0 = time.time()
        fit(teacher, xtr, ytr, 1 if a.quick else a.teacher_epochs, 0)
        torch.save(teacher.state_dict(), tstate)
        print("teacher CNN trained by torch in %.0f s" % (time.time() - t0))
    export(teacher, tpath)
    tacc = accuracy(teacher, xte, yte)
    print("\n== 1. distillation: CNN teacher %.2f %% on the test set -> MLP 784-100-10 ==" %
          (100 * tacc))
    tid = d.upload(open(tpath, "rb").read(), name="teacher-cnn").json["id"]
    teacher.eval()
    tlogits = None
    if "distill" in parts:
        with torch.no_grad():
            tlogits = torch.cat([teacher(xtr[i:i + 1000]) for i in range(0, len(xtr), 1000)])
    res = {}
    for alpha in ((0.5, 0.0) if "distill" in parts else ()):
        s_acc, t_acc, s_rate, t_rate = [], [], [], []
        for seed in seeds:
            job, rep = run_job(d, {"model": tid, "passes": [{
                "op": "distill", "student": {"hidden": [100]}, "dataset": ds_train,
                "temperature": 2, "alpha": alpha, "epochs": epochs, "batch_size": 128,
                "lr": 0.001, "optimizer": "adam", "seed": seed}],
                "eval": {"dataset": ds_test}})
            s_acc.append(rep["accuracy"]["after"])
            s_rate.append(rep["training"][0]["samples_per_s"])
            torch.manual_seed(seed)
            m = mlp([784, 100, 10])
            t_rate.append(fit(m, xtr, ytr, epochs, seed, teacher=tlogits, T=2.0, alpha=alpha))
            t_acc.append(accuracy(m, xte, yte))
        res[alpha] = (s_acc, t_acc, s_rate, t_rate)
        print("alpha %.1f%s: slimd %s | torch %s" % (
            alpha, " (labels alone)" if alpha == 0 else " (distilled)   ",
            mean_sd(s_acc), mean_sd(t_acc)))
    if res:
        s_rate = res[0.5][2] + res[0.0][2]
        t_rate = res[0.5][3] + res[0.0][3]
        print("training throughput, MLP 784-100-10, batch 128 (slimd: the fit alone, the "
              "teacher's outputs precomputed): slimd %.0f samples/s, torch %.0f samples/s" % (
                  np.mean(s_rate), np.mean(t_rate)))
    if "stretch" not in parts:
        return
    print("\n-- stretch: what else was tried (seed 0, slimd) --")
    long_ep = 4 if a.quick else a.long_epochs
    for alpha in ((0.5, 0.0) if long_ep > 0 else ()):
        _, rep = run_job(d, {"model": tid, "passes": [{
            "op": "distill", "student": {"hidden": [100]}, "dataset": ds_train,
            "temperature": 2, "alpha": alpha, "epochs": long_ep, "batch_size": 128,
            "lr": 0.001, "optimizer": "adam", "seed": 0}], "eval": {"dataset": ds_test}})
        print("%d epochs, alpha %.1f: %.2f %%" % (long_ep, alpha, 100 * rep["accuracy"]["after"]))
    for T, alpha in (() if a.no_variants else ((4, 0.9), (1, 0.5))):
        _, rep = run_job(d, {"model": tid, "passes": [{
            "op": "distill", "student": {"hidden": [100]}, "dataset": ds_train,
            "temperature": T, "alpha": alpha, "epochs": epochs, "batch_size": 128,
            "lr": 0.001, "optimizer": "adam", "seed": 0}], "eval": {"dataset": ds_test}})
        print("T %g, alpha %.1f, %d epochs: %.2f %%" % (T, alpha, epochs,
                                                       100 * rep["accuracy"]["after"]))
    _, rep = run_job(d, {"model": tid, "passes": [{
        "op": "distill", "student": {"from": "lowrank", "rank_ratio": 0.25},
        "dataset": ds_train, "temperature": 2, "alpha": 0.5,
        "epochs": 1 if a.quick else a.lowrank_epochs,
        "batch_size": 128, "lr": 0.0005, "optimizer": "adam", "seed": 0}],
        "eval": {"dataset": ds_test}})
    st = rep["training"][0]["student"]
    print("student = the teacher's low-rank factors (rank_ratio 0.25, %d params), %d "
          "epochs: %.2f %%, %d -> %d bytes" % (
              st["params"], rep["training"][0]["epochs"], 100 * rep["accuracy"]["after"],
              rep["totals"]["file_bytes_before"], rep["totals"]["file_bytes_after"]))


def deep(a, d, cache, xtr, ytr, xte, yte, ds_train, ds_test):
    path = os.path.join(cache, "mlp300.onnx")
    state = os.path.join(cache, "mlp300.pt")
    torch.manual_seed(0)
    m = mlp([784, 300, 100, 10])
    if os.path.exists(state):
        m.load_state_dict(torch.load(state))
    else:
        fit(m, xtr, ytr, 2 if a.quick else 10, 0)
        torch.save(m.state_dict(), state)
    export(m, path)
    dense = accuracy(m, xte, yte)
    fp32 = os.path.getsize(path)
    print("\n== 2. Deep Compression, MLP 784-300-100-10: dense fp32 %.2f %% (torch), %d bytes "
          "==" % (100 * dense, fp32))
    mid = d.upload(open(path, "rb").read(), name="mlp300").json["id"]
    ft = {"op": "finetune", "dataset": ds_train, "batch_size": 128, "lr": 0.001,
          "optimizer": "adam", "seed": 0}
    passes = [{"op": "prune", "sparsity": 0.9, "scope": "global"}, dict(ft, epochs=3),
              {"op": "cluster", "clusters": 16}, dict(ft, epochs=1, lr=0.0005)]
    _, rep = run_job(d, {"model": mid, "passes": [passes[0]], "eval": {"dataset": ds_test}})
    print("prune 90 %% global alone: %.2f %%" % (100 * rep["accuracy"]["after"]))
    # sparse clustered weights in ONNX: codes plus gap symbols or a bit
    # mask, expanded by the graph (docs/artifact-format.md); with entropy,
    # slimd's container
    for out in ({}, {"sparse": True}, {"sparse": True, "entropy": True}):
        r = d.request("POST", "/v1/jobs", json_body={"model": mid, "passes": passes,
                                                      "output": out,
                                                      "eval": {"dataset": ds_test}})
        if r.status == 400:
            print("output %s: not in this build (%s)" % (json.dumps(out),
                                                        r.json["error"]["message"]))
            continue
        job = d.wait_job(r.json["id"], timeout=7200, interval=0.5)
        if job["state"] != "succeeded":
            print("output %s: job %s: %s" % (json.dumps(out), job["state"], job.get("error")))
            continue
        rep = d.get("/v1/jobs/%s/report" % job["id"]).json
        acc = rep["accuracy"]
        size = job["artifact"]["bytes"]
        if a.save:
            name = "deep%s.bin" % "".join("_" + k for k in sorted(out))
            with open(os.path.join(a.save, name), "wb") as f:
                f.write(d.get("/v1/jobs/%s/artifact" % job["id"]).body)
        print("prune 90 %% -> finetune 3 -> cluster 16 -> finetune 1, output %s: %.2f %% "
              "(dense %.2f %% in slimd's engine; %+.2f points), %d bytes, %.1fx smaller than "
              "fp32; %.0f s" % (json.dumps(out), 100 * acc["after"], 100 * acc["before"],
                                100 * (acc["after"] - acc["before"]), size, fp32 / size,
                                rep["timings"]["total_seconds"]))
        for t in rep["training"]:
            print("  passes[%d] finetune: %d epochs, loss %.4f, %.0f samples/s, %.1f s" % (
                t["index"], t["epochs"], t["final_loss"], t["samples_per_s"], t["seconds"]))


if __name__ == "__main__":
    main()
