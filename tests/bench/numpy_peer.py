#!/usr/bin/env python3
"""numpy_peer.py DIR - the same work as tests/bench/bench_passes.c, done
the way a numpy / scikit-learn user would, on the inputs that
`bench_passes gen DIR` wrote.  Prints "key value" lines (and one "#"
description line) for `bench_passes run DIR PEERFILE`.  Run by
run_bench.sh under /usr/bin/python3.

Timings are the best of a few runs, excluding the copy an in-place
operation needs.  The k-means peer on 16M weights takes minutes, so it
runs only with SLIMD_BENCH_FULL=1.  numpy's own thread count is whatever
its BLAS uses (OpenBLAS: all cores); the element-wise numpy code is single
threaded, as numpy is.
"""

import os
import sys
import time

import numpy as np

DIR = sys.argv[1]
N = 4096


def load(name, shape):
    return np.fromfile(os.path.join(DIR, name + ".f32"), dtype="<f4").reshape(shape)


def best(fn, reps=3, setup=None):
    t = float("inf")
    out = None
    for _ in range(reps):
        arg = setup() if setup else None
        t0 = time.perf_counter()
        out = fn(arg) if setup else fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def rel(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def emit(key, value):
    print("%s %.9g" % (key, value), flush=True)


def main():
    import sklearn
    print("# numpy %s, scikit-learn %s" % (np.__version__, sklearn.__version__))
    w = load("w4096", (N, N))
    gb = w.nbytes / 1e9

    # int8 per channel
    def q8_sym():
        amax = np.abs(w).max(axis=1, keepdims=True)
        scale = amax / 127
        scale[scale == 0] = 1
        return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale

    t, (q, s) = best(q8_sym)
    emit("int8_gbps", gb / t)
    emit("int8_err", rel(q * s, w))

    def q8_asym():
        lo = np.minimum(w.min(axis=1, keepdims=True), 0)
        hi = np.maximum(w.max(axis=1, keepdims=True), 0)
        scale = (hi - lo) / 255
        scale[scale == 0] = 1
        zp = np.clip(np.rint(-128 - lo / scale), -128, 127)
        q = np.clip(np.rint(w / scale) + zp, -128, 127).astype(np.int8)
        return q, scale, zp

    t, (q, s, z) = best(q8_asym)
    emit("int8a_gbps", gb / t)
    emit("int8a_err", rel((q - z) * s, w))

    # int4, groups of 128, packed two per byte
    def q4(sym):
        g = w.reshape(N, -1, 128)
        if sym:
            scale = np.abs(g).max(axis=-1, keepdims=True) / 7
            scale[scale == 0] = 1
            zp = np.full_like(scale, 8)
            q = np.clip(np.rint(g / scale), -8, 7) + 8
        else:
            lo = np.minimum(g.min(axis=-1, keepdims=True), 0)
            hi = np.maximum(g.max(axis=-1, keepdims=True), 0)
            scale = (hi - lo) / 15
            scale[scale == 0] = 1
            zp = np.clip(np.rint(-lo / scale), 0, 15)
            q = np.clip(np.rint(g / scale) + zp, 0, 15)
        q = q.astype(np.uint8).reshape(N, N)
        packed = q[:, 0::2] | (q[:, 1::2] << 4)
        return packed, q, scale, zp

    for sym, key in ((0, "int4"), (1, "int4s")):
        t, (packed, q, s, z) = best(lambda: q4(sym))
        emit(key + "_gbps", gb / t)
        emit(key + "_err", rel(((q.reshape(N, -1, 128) - z) * s).reshape(N, N), w))

    # ternary and binary per row
    def ternary():
        a = np.abs(w)
        t = 0.7 * a.mean(axis=1, keepdims=True)
        mask = a > t
        scale = (a * mask).sum(axis=1, keepdims=True) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        codes = (w > t).astype(np.uint8) | ((w < -t).astype(np.uint8) << 1)
        c = codes.reshape(N, -1, 4)
        packed = c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)
        return packed, codes, scale

    t, (packed, codes, s) = best(ternary)
    emit("ternary_gbps", gb / t)
    emit("ternary_err", rel(np.where(codes == 1, s, np.where(codes == 2, -s, 0)), w))

    def binary():
        scale = np.abs(w).mean(axis=1, keepdims=True)
        bits = w >= 0
        return np.packbits(bits, axis=1, bitorder="little"), bits, scale

    t, (packed, bits, s) = best(binary)
    emit("binary_gbps", gb / t)
    emit("binary_err", rel(np.where(bits, s, -s), w))

    # pruning, in place on a copy made outside the timing
    k = w.size // 2

    def prune50(x):
        a = np.abs(x).ravel()
        thr = np.partition(a, k - 1)[k - 1]
        x[np.abs(x) <= thr] = 0
        return x

    t, x = best(prune50, setup=w.copy)
    emit("prune50_gbps", gb / t)
    emit("prune50_zeroed", int(np.count_nonzero(x == 0)))

    def prune24(x):
        g = x.reshape(-1, 4)
        idx = np.argsort(np.abs(g), axis=1)[:, :2]
        np.put_along_axis(g, idx, 0, axis=1)
        return x

    t, x = best(prune24, setup=w.copy)
    emit("prune24_gbps", gb / t)
    emit("prune24_zeroed", int(np.count_nonzero(x == 0)))

    def rows(x):
        norms = np.linalg.norm(x, axis=1)
        x[np.argpartition(norms, N // 2)[:N // 2]] = 0
        return x

    t, x = best(rows, setup=w.copy)
    emit("rows_gbps", gb / t)
    emit("rows_zeroed", N // 2)
    del w, x

    # low rank
    from sklearn.utils.extmath import randomized_svd

    def lowrank(name, n, r, key, reps=3, exact=False):
        a = load(name, (n, n))
        if exact:
            t, (u, s, vt) = best(lambda: np.linalg.svd(a, full_matrices=False), reps)
        else:
            t, (u, s, vt) = best(lambda: randomized_svd(a, r, n_iter=4, random_state=0), reps)
        emit(key + "_s", t)
        emit(key + "_err", rel((u[:, :r] * s[:r]) @ vt[:r], a))

    lowrank("lr1024", 1024, 64, "lr64")
    lowrank("lr1024", 1024, 64, "lr64x", reps=1, exact=True)
    lowrank("lr4096", N, 256, "lr256", reps=2)
    lowrank("g4096", N, 256, "lr256g", reps=1)

    # k-means
    from sklearn.cluster import KMeans

    def kmeans(x, key):
        t0 = time.perf_counter()
        km = KMeans(n_clusters=256, n_init=1, random_state=0).fit(x.reshape(-1, 1))
        emit(key + "_s", time.perf_counter() - t0)
        d = x.astype(np.float64) - km.cluster_centers_.ravel().astype(np.float64)[km.labels_]
        emit(key + "_inertia", float(np.dot(d, d)))

    kmeans(load("km1m", (-1,)), "km1m")
    if os.environ.get("SLIMD_BENCH_FULL") == "1":
        kmeans(load("w4096", (-1,)), "km16m")


if __name__ == "__main__":
    main()
