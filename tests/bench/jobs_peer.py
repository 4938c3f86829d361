"""jobs_peer.py - the Python half of the whole-job benchmark (issue 8).

The kernel benchmark (run_bench.sh) times passes on arrays in memory; a
user waits for a whole job: read a model, run the passes, measure what
was lost, write and fsync an artifact.  This file times exactly that, for
`slimd compress`, for the same job submitted to a running daemon, and for
the same work written as a numpy (and, where torch imports, a torch)
script, each in a process of its own so that its wall time and peak RSS
(os.wait4's ru_maxrss) are its own.  bench_jobs.sh runs it under
/usr/bin/python3 and owns the clean-up of the run directory.

    jobs_peer.py bench --slimd BIN --workdir DIR --tmp RUNDIR
    jobs_peer.py gen MODEL            (the 1 GiB fp32 model)
    jobs_peer.py gen-big DIR          (the 8 GiB bf16 sharded checkpoint)
    jobs_peer.py peer numpy|torch SPEC MODEL OUTDIR   (one peer job)

The peers are written the way a careful numpy user would: np.memmap the
file, work one tensor at a time, compute the same rel_error as slimd's
report (||W - W^||_F / ||W||_F, float64 sums of squares), write codes
and scales as a safetensors file whose header is known up front, fsync,
rename.  They are not slimd's algorithms where slimd is cleverer: the
cluster peer is plain Lloyd from quantiles where slimd starts from an
exact dynamic program, so its error is higher; the low-rank peer is
Halko's randomized SVD with 4 power iterations.  Rejected: timing the
peers inside this process (the RSS would be this process's, and the
imports would be hidden), and scikit-learn's KMeans (minutes on 16 M
weights, see run_bench.sh).
"""

import json
import os
import signal
import struct
import subprocess
import sys
import time

T_START = time.perf_counter()

# ---------------------------------------------------------------- specs

SPECS = [
    ("int8", [{"op": "quantize", "dtype": "int8", "granularity": "channel"}]),
    ("int4-g128", [{"op": "quantize", "dtype": "int4", "granularity": "group",
                    "group_size": 128}]),
    ("prune50", [{"op": "prune", "sparsity": 0.5}]),
    ("2:4+int8", [{"op": "prune", "pattern": "2:4"}, {"op": "quantize", "dtype": "int8"}]),
    ("cluster16", [{"op": "cluster", "clusters": 16}]),
    ("lowrank256", [{"op": "lowrank", "rank": 256}]),
    ("prune50-global", [{"op": "prune", "sparsity": 0.5, "scope": "global"}]),
]

PEER_WHAT = {
    ("numpy", "int8"): "per-row symmetric int8, scale max|w|/127, rint, clip +-127",
    ("numpy", "int4-g128"): "groups of 128, symmetric (zero point 8, scale max|w|/7) as "
                            "slimd's default, two codes per byte",
    ("numpy", "prune50"): "np.partition threshold on |w| per tensor, exactly n/2 zeroed",
    ("numpy", "2:4+int8"): "np.argpartition in groups of 4 along rows, then int8 per row",
    ("numpy", "cluster16"): "1-D Lloyd per tensor on the sorted weights with prefix sums, "
                            "16 centroids from quantiles, 10 iterations (slimd: exact DP, "
                            "then Lloyd), 4-bit codes",
    ("numpy", "lowrank256"): "randomized SVD (Halko 2011), rank 256 + 10 oversampling, "
                             "4 power iterations with QR, W_u/W_v = U.sqrt(S), sqrt(S).V^T",
    ("numpy", "prune50-global"): "np.partition on all |w| at once (1 GiB), one threshold",
    ("torch", "int8"): "torch.from_numpy(memmap): per-row absmax, round, clamp",
    ("torch", "prune50"): "torch.kthvalue threshold on |w| per tensor",
    ("torch", "lowrank256"): "torch.svd_lowrank(q=266, niter=4), rank 256",
}

ROWS, COLS, NTENSORS, SEED = 4096, 4096, 16, 20240808


def tensor_name(i):
    return "layers.%02d.weight" % i


# ---------------------------------------------------------------- safetensors


def header_bytes(entries, metadata=None):
    """The safetensors header for entries [(name, dtype, shape, nbytes)],
    laid out in that order, padded with spaces to a multiple of 8."""
    head, off = {}, 0
    if metadata:
        head["__metadata__"] = metadata
    for name, dtype, shape, nbytes in entries:
        head[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, off


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
    head.pop("__metadata__", None)
    return 8 + n, head


class Writer:
    """Writes a safetensors file whose tensors are known in advance, one
    tensor at a time, into PATH.tmp; close() fsyncs and renames it, abort()
    removes it."""

    def __init__(self, path, layout):
        self.path, self.tmp = path, path + ".tmp"
        self.layout = list(layout)
        raw, self.total = header_bytes(self.layout, {"format": "pt"})
        self.f = open(self.tmp, "wb")
        self.f.write(raw)
        self.next = 0

    def put(self, name, arr):
        want = self.layout[self.next]
        assert want[0] == name and want[3] == arr.nbytes, (want, name, arr.nbytes)
        self.f.write(memoryview(arr.reshape(-1)).cast("B"))
        self.next += 1

    def close(self):
        assert self.next == len(self.layout)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.rename(self.tmp, self.path)

    def abort(self):
        self.f.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def write_model(path, tensors, dtype, make):
    """Writes the tensors [(name, shape)] of one dtype, each made by
    make(i) as a contiguous array, to path (temp file, fsync, rename)."""
    size = 2 if dtype == "BF16" else 4
    layout = [(n, dtype, s, s[0] * s[1] * size) for n, s in tensors]
    w = Writer(path, layout)
    try:
        for i, (n, _) in enumerate(tensors):
            w.put(n, make(i))
        w.close()
    except BaseException:
        w.abort()
        raise


def model_size():
    raw, total = header_bytes([(tensor_name(i), "F32", (ROWS, COLS), ROWS * COLS * 4)
                               for i in range(NTENSORS)], {"format": "pt"})
    return len(raw) + total


def gen_model(path):
    import numpy as np
    rng = np.random.default_rng(SEED)

    def make(i):
        return rng.standard_normal((ROWS, COLS), dtype=np.float32) * np.float32(0.02)

    write_model(path, [(tensor_name(i), (ROWS, COLS)) for i in range(NTENSORS)], "F32", make)


BIG_SHARDS, BIG_PER_SHARD = 4, 64   # 256 bf16 4096x4096 matrices: 8 GiB


def big_layout():
    shards = []
    for s in range(BIG_SHARDS):
        fname = "model-%05d-of-%05d.safetensors" % (s + 1, BIG_SHARDS)
        names = ["model.layers.%03d.weight" % (s * BIG_PER_SHARD + i) for i in range(BIG_PER_SHARD)]
        shards.append((fname, names))
    return shards


def big_ready(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(index):
        return False
    for fname, names in big_layout():
        raw, total = header_bytes([(n, "BF16", (ROWS, COLS), ROWS * COLS * 2) for n in names],
                                  {"format": "pt"})
        p = os.path.join(d, fname)
        if not os.path.exists(p) or os.path.getsize(p) != len(raw) + total:
            return False
    return True


def gen_big(d):
    """Four bf16 shards and model.safetensors.index.json as Hugging Face
    writes them: {"metadata": {"total_size": N}, "weight_map": {...}}."""
    import numpy as np
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(SEED + 1)
    weight_map, total = {}, 0

    def make(_):
        x = (rng.standard_normal((ROWS, COLS), dtype=np.float32) * np.float32(0.02)).view(np.uint32)
        x += 0x7FFF + ((x >> 16) & 1)           # round to nearest even
        return (x >> 16).astype(np.uint16)

    for fname, names in big_layout():
        write_model(os.path.join(d, fname), [(n, (ROWS, COLS)) for n in names], "BF16", make)
        for n in names:
            weight_map[n] = fname
            total += ROWS * COLS * 2
    index = os.path.join(d, "model.safetensors.index.json")
    with open(index + ".tmp", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.rename(index + ".tmp", index)


# ---------------------------------------------------------------- peers


def rel_sq(d):
    """Sum of squares of a float32 array, accumulated in float64."""
    import numpy as np
    return float(np.sum(np.square(d), dtype=np.float64))


class NumpyPeer:
    """Each method: (name, w) -> [(out name, array)], rel_error, nonzeros.
    layout(spec, name, shape) gives the outputs before any work."""

    def __init__(self, np):
        self.np = np

    def layout(self, spec, name, shape):
        r, c = shape
        return {
            "int8": [(name, "I8", (r, c), r * c), (name + "_scale", "F32", (r, 1), 4 * r)],
            "int4-g128": [(name, "U8", (r, c // 2), r * c // 2),
                          (name + "_scale", "F32", (r, c // 128), 4 * r * c // 128),
                          (name + "_zero_point", "U8", (r, c // 128), r * c // 128)],
            "prune50": [(name, "F32", (r, c), 4 * r * c)],
            "prune50-global": [(name, "F32", (r, c), 4 * r * c)],
            "2:4+int8": [(name, "I8", (r, c), r * c), (name + "_scale", "F32", (r, 1), 4 * r)],
            "cluster16": [(name, "U8", (r, c // 2), r * c // 2),
                          (name + "_codebook", "F32", (16,), 64)],
            "lowrank256": [(name + "_u", "F32", (r, 256), 4 * r * 256),
                           (name + "_v", "F32", (256, c), 4 * 256 * c)],
        }[spec]

    def int8_rows(self, name, w, ref=None):
        np = self.np
        amax = np.abs(w).max(axis=1, keepdims=True)
        scale = amax / np.float32(127)
        scale[scale == 0] = 1
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        d = (ref if ref is not None else w) - q * scale
        ref = ref if ref is not None else w
        err = (rel_sq(d) / rel_sq(ref)) ** 0.5
        return [(name, q), (name + "_scale", scale)], err, int(np.count_nonzero(q))

    def int8(self, name, w):
        return self.int8_rows(name, w)

    def int4_g128(self, name, w):
        np = self.np
        r, c = w.shape
        g = w.reshape(r, c // 128, 128)
        scale = np.abs(g).max(axis=2, keepdims=True) / np.float32(7)
        scale[scale == 0] = 1
        q = (np.clip(np.rint(g / scale), -8, 7) + 8).astype(np.uint8)
        d = w - ((q.astype(np.float32) - 8) * scale).reshape(r, c)
        err = (rel_sq(d) / rel_sq(w)) ** 0.5
        nnz = int(np.count_nonzero(q != 8))
        q = q.reshape(r, c)
        packed = q[:, 0::2] | (q[:, 1::2] << 4)
        zp = np.full((r, c // 128), 8, dtype=np.uint8)
        return [(name, packed), (name + "_scale", scale.reshape(r, c // 128)),
                (name + "_zero_point", zp)], err, nnz

    def prune50(self, name, w, thr=None, budget=None):
        np = self.np
        a = np.abs(w)
        if thr is None:
            k = round(0.5 * w.size)
            thr = np.partition(a.ravel(), k - 1)[k - 1]
            budget = [k - int(np.count_nonzero(a < thr))]
        p = w.copy()
        p[a < thr] = 0
        if budget[0] > 0:                     # ties at the threshold: exactly k zeroed
            ties = np.flatnonzero(a == thr)[:budget[0]]
            p.ravel()[ties] = 0
            budget[0] -= len(ties)
        err = (rel_sq(w - p) / rel_sq(w)) ** 0.5
        return [(name, p)], err, int(np.count_nonzero(p))

    def two_four_int8(self, name, w):
        np = self.np
        p = w.copy()
        g = p.reshape(-1, 4)
        idx = np.argpartition(np.abs(g), 1, axis=1)[:, :2]
        np.put_along_axis(g, idx, 0, axis=1)
        return self.int8_rows(name, p, ref=w)

    def cluster16(self, name, w, k=16, iters=10):
        # Lloyd on the sorted weights: a cluster is a run of them, so each
        # iteration is k binary searches and prefix sums, not a pass over n.
        np = self.np
        x = w.ravel()
        xs = np.sort(x)
        pre = np.concatenate(([0.0], np.cumsum(xs, dtype=np.float64)))
        c = xs[((np.arange(k) + 0.5) / k * len(xs)).astype(np.int64)].astype(np.float64)
        for _ in range(iters):
            cut = np.concatenate(([0], np.searchsorted(xs, (c[1:] + c[:-1]) / 2), [len(xs)]))
            n = np.diff(cut)
            c = np.where(n > 0, np.diff(pre[cut]) / np.maximum(n, 1), c)
        book = c.astype(np.float32)
        idx = np.searchsorted((book[1:] + book[:-1]) / 2, x).astype(np.uint8)
        deq = book[idx]
        err = (rel_sq(x - deq) / rel_sq(x)) ** 0.5
        nnz = int(np.count_nonzero(deq))
        codes = idx.reshape(w.shape)
        packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
        return [(name, packed), (name + "_codebook", book)], err, nnz

    def lowrank256(self, name, w, rank=256, over=10, iters=4):
        np = self.np
        a = np.asarray(w)
        rng = np.random.default_rng(0)
        # np.linalg.qr works in float64: cast back, or every GEMM with the
        # 64 MB weight is upcast to float64 too (4x slower).
        orth = lambda m: np.linalg.qr(m)[0].astype(np.float32)
        q = orth(a @ rng.standard_normal((a.shape[1], rank + over), dtype=np.float32))
        for _ in range(iters):
            q = orth(a.T @ q)
            q = orth(a @ q)
        ub, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)
        sq = np.sqrt(s[:rank])
        wu = np.ascontiguousarray((q @ ub[:, :rank]) * sq)
        wv = np.ascontiguousarray(sq[:, None] * vt[:rank])
        err = (rel_sq(a - wu @ wv) / rel_sq(a)) ** 0.5
        return [(name + "_u", wu), (name + "_v", wv)], err, int(wu.size + wv.size)


class TorchPeer(NumpyPeer):
    """int8, prune50 and lowrank256 in torch ops; writes through numpy."""

    def __init__(self, np, torch):
        super().__init__(np)
        self.torch = torch

    def int8(self, name, w):
        torch = self.torch
        t = torch.from_numpy(w)
        scale = t.abs().amax(dim=1, keepdim=True) / 127
        scale[scale == 0] = 1
        q = torch.clamp(torch.round(t / scale), -127, 127).to(torch.int8)
        d = t - q.float() * scale
        err = (torch.sum(d * d, dtype=torch.float64) / torch.sum(t * t, dtype=torch.float64)).sqrt()
        return ([(name, q.numpy()), (name + "_scale", scale.numpy())], float(err),
                int(torch.count_nonzero(q)))

    def prune50(self, name, w):
        torch = self.torch
        t = torch.from_numpy(w)
        a = t.abs()
        k = round(0.5 * t.numel())
        thr = torch.kthvalue(a.flatten(), k).values
        keep = a > thr
        budget = k - int(torch.count_nonzero(a < thr))
        ties = torch.nonzero((a == thr).flatten()).flatten()
        keep.view(-1)[ties[budget:]] = True   # ties beyond the budget stay
        p = t * keep
        d = t - p
        err = (torch.sum(d * d, dtype=torch.float64) / torch.sum(t * t, dtype=torch.float64)).sqrt()
        return [(name, p.numpy())], float(err), int(torch.count_nonzero(p))

    def lowrank256(self, name, w, rank=256):
        torch = self.torch
        torch.manual_seed(0)
        t = torch.from_numpy(w)
        u, s, v = torch.svd_lowrank(t, q=rank + 10, niter=4)
        sq = s[:rank].sqrt()
        wu = (u[:, :rank] * sq).contiguous()
        wv = (sq[:, None] * v[:, :rank].T).contiguous()
        d = t - wu @ wv
        err = (torch.sum(d * d, dtype=torch.float64) / torch.sum(t * t, dtype=torch.float64)).sqrt()
        return ([(name + "_u", wu.numpy()), (name + "_v", wv.numpy())], float(err),
                int(wu.numel() + wv.numel()))


TORCH_SPECS = ("int8", "prune50", "lowrank256")


def peer_main(impl, spec, model, outdir):
    """One peer job in this process; prints one JSON line of results."""
    import warnings
    import numpy as np
    if impl == "torch":
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        warnings.filterwarnings("ignore", message=".*not writable.*")
        peer = TorchPeer(np, torch)
    else:
        peer = NumpyPeer(np)
    t_import = time.perf_counter() - T_START
    base, head = read_header(model)
    mm = np.memmap(model, dtype=np.uint8, mode="r")
    tensors = []
    for name, e in head.items():
        assert e["dtype"] == "F32" and len(e["shape"]) == 2, name
        b, end = e["data_offsets"]
        tensors.append((name, mm[base + b:base + end].view(np.float32).reshape(e["shape"])))
    layout = [x for name, w in tensors for x in peer.layout(spec, name, w.shape)]
    stem = os.path.basename(model).rsplit(".", 1)[0]
    out = Writer(os.path.join(outdir, stem + ".%s.safetensors" % impl), layout)
    first, nnz, thr, budget = None, 0, None, None
    try:
        if spec == "prune50-global":            # one threshold over every tensor
            total = sum(w.size for _, w in tensors)
            a, off = np.empty(total, dtype=np.float32), 0
            for _, w in tensors:
                np.abs(w.ravel(), out=a[off:off + w.size])
                off += w.size
            k = round(0.5 * total)
            a.partition(k - 1)
            thr = a[k - 1]
            budget = [k - int(np.count_nonzero(a[:k] < thr))]
            del a
        fn = {"int8": peer.int8, "int4-g128": peer.int4_g128, "prune50": peer.prune50,
              "2:4+int8": peer.two_four_int8, "cluster16": peer.cluster16,
              "lowrank256": peer.lowrank256, "prune50-global": peer.prune50}[spec]
        for name, w in tensors:
            if spec == "prune50-global":
                outs, err, n = peer.prune50(name, w, thr, budget)
            else:
                outs, err, n = fn(name, w)
            for oname, arr in outs:
                out.put(oname, np.ascontiguousarray(arr))
            first = err if first is None else first
            nnz += n
        out.close()
    except BaseException:
        out.abort()
        raise
    print(json.dumps({"rel_error": first, "nonzero": nnz, "import_seconds": t_import,
                      "work_seconds": time.perf_counter() - T_START - t_import}))


# ---------------------------------------------------------------- the benchmark

_child = None       # the process being timed, killed on the way out
_stopping = False


def _on_term(signum, frame):
    global _stopping
    if _stopping:
        return
    _stopping = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def kill(p, grace):
    """Ends p and its process group (p leads one)."""
    if p is None or p.returncode is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        pass


def gnu_time():
    """/usr/bin/time if it is GNU time, else None."""
    try:
        p = subprocess.run(["/usr/bin/time", "--version"], capture_output=True, text=True)
    except OSError:
        return None
    return "/usr/bin/time" if "GNU" in p.stdout + p.stderr else None


GNU_TIME = gnu_time()


def timed(argv, env, out_path, pidfile):
    """Runs argv to completion in a process group of its own (recorded in
    pidfile for bench_jobs.sh); returns (rc, wall seconds, peak RSS MiB,
    stdout+stderr text).

    The peak RSS comes from GNU time when there is one: ru_maxrss from
    wait4 also counts the RSS of this process at the time of the spawn
    (Linux carries the old mm's high-water mark across exec, and Python
    spawns with vfork), so it is kept for machines without GNU time and
    its floor is printed in the header."""
    global _child
    rss_path = out_path + ".rss"
    if GNU_TIME:
        argv = [GNU_TIME, "-f", "%M", "-o", rss_path] + list(argv)
    with open(out_path, "wb") as out:
        t0 = time.perf_counter()
        _child = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        with open(pidfile, "w") as f:
            f.write("%d\n" % _child.pid)
        _, status, ru = os.wait4(_child.pid, 0)
        wall = time.perf_counter() - t0
        _child.returncode = os.waitstatus_to_exitcode(status)
    rc, _child = _child.returncode, None
    os.unlink(pidfile)
    kib = ru.ru_maxrss
    if GNU_TIME:
        with open(rss_path) as f:
            kib = int(f.read().split()[-1])
    with open(out_path, errors="replace") as f:
        text = f.read()
    return rc, wall, kib / 1024, text


class Daemon:
    def __init__(self, slimd, data_dir, env, pidfile):
        import socket
        self.proc, self.port = None, None
        for _ in range(3):                    # the free port may be taken in between
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            self.log = open(data_dir + ".log", "ab")
            self.proc = subprocess.Popen(
                [slimd, "serve", "--listen", "127.0.0.1:%d" % port, "--data-dir", data_dir,
                 "--workers", "1"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
            # Its own session: a Ctrl-C meant for the benchmark must not stop
            # it under a job being polled; stop() and bench_jobs.sh end it.
            with open(pidfile, "w") as f:
                f.write("%d\n" % self.proc.pid)
            self.port = port
            deadline = time.time() + 20
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    if self.request("GET", "/v1/health")[0] == 200:
                        return
                except OSError:
                    time.sleep(0.05)
            kill(self.proc, 5)
        raise RuntimeError("slimd serve would not start; see %s.log" % data_dir)

    def request(self, method, path, body=None, headers=None, timeout=600):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                       blocksize=1 << 20)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            try:
                js = json.loads(data) if data else None
            except ValueError:
                js = None
            return r.status, js
        finally:
            c.close()

    def hwm_mib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        kill(self.proc, 30)
        self.log.close()


def fmt_time(walls, gbytes=None):
    if not walls:
        return "-"
    best = min(walls)
    s = "%.2f" % best
    if len(walls) > 1:
        s += " (%.2f-%.2f)" % (best, max(walls))
    if gbytes:
        s += " %.3f GB/s" % (gbytes / best)
    return s


def fmt_num(x, f="%.0f"):
    return "-" if x is None else f % x


def print_table(head, rows):
    w = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |"
    print(line(head))
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in rows:
        print(line(r))


def bench_main(slimd, workdir, tmp):
    global _stopping
    import shutil
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    repeat = int(os.environ.get("SLIMD_BENCH_REPEAT", "2"))
    names = [n for n, _ in SPECS]
    want = [s.strip() for s in os.environ.get("SLIMD_BENCH_SPECS", ",".join(names)).split(",")
            if s.strip()]
    bad = [s for s in want if s not in names]
    if bad:
        log("bench_jobs: unknown spec %s; known: %s" % (", ".join(bad), ", ".join(names)))
        return 2
    specs = [(n, p) for n, p in SPECS if n in want]
    threads = len(os.sched_getaffinity(0))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    os.makedirs(tmp, exist_ok=True)
    daemon = None
    try:
        model = os.path.join(workdir, "bench-16x4096x4096-f32.safetensors")
        if os.path.exists(model) and os.path.getsize(model) == model_size():
            log("reusing %s" % model)
        else:
            log("generating %s (1 GiB, seed %d) ..." % (model, SEED))
            # in a child: this process stays small (see timed())
            subprocess.run([sys.executable, os.path.abspath(__file__), "gen", model], check=True)
        size = os.path.getsize(model)
        gb = size / 1e9
        version = subprocess.run([slimd, "--version"], capture_output=True,
                                 text=True).stdout.strip()
        versions = {}
        for mod in ("numpy", "torch"):
            probe = subprocess.run([sys.executable, "-c", "import %s; print(%s.__version__)" %
                                    (mod, mod)], capture_output=True, text=True, env=env)
            versions[mod] = probe.stdout.strip() if probe.returncode == 0 else None
        torch_version = versions["torch"]
        cpid = os.path.join(tmp, "child.pid")
        floor = timed(["true"], env, os.path.join(tmp, "true.log"), cpid)[2]

        print("# slimd whole-job benchmark (issue 8) on %s: nproc %d, %s" %
              (os.uname().nodename, threads, " ".join(os.uname()[2:3])))
        print("# model %s: %d bytes (%.3f GB), %d fp32 %dx%d matrices, N(0, 0.02), seed %d" %
              (model, size, gb, NTENSORS, ROWS, COLS, SEED))
        print("# slimd %s (%s); python %s, numpy %s, torch %s" %
              (slimd, version, sys.version.split()[0], versions["numpy"],
               torch_version or "not importable (torch columns empty)"))
        print("# peak RSS from %s (floor: %.0f MB for `true`)" %
              ("GNU time %M" if GNU_TIME else "wait4 ru_maxrss, which counts this script's own RSS",
               floor))
        for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
            if k in os.environ:
                print("# %s=%s (left as set)" % (k, os.environ[k]))
        print("# threads %d everywhere: slimd compress --threads %d, slimd serve --workers 1 "
              "(cores/workers), OMP/OPENBLAS/MKL_NUM_THREADS=%d for the peers" %
              (threads, threads, threads))
        print("# warm runs: nothing is dropped from the page cache; best of %d with the range"
              % repeat, flush=True)

        rows = {n: {} for n, _ in specs}
        for name, passes in specs:
            spec_path = os.path.join(tmp, "spec-%s.json" % name.replace(":", "").replace("+", "-"))
            with open(spec_path, "w") as f:
                json.dump({"passes": passes}, f)
            r = rows[name]

            # slimd compress
            walls, rss = [], []
            for i in range(repeat):
                out = os.path.join(tmp, "out-compress")
                shutil.rmtree(out, ignore_errors=True)
                rc, wall, mib, text = timed([slimd, "compress", model, "--spec", spec_path,
                                             "-o", out, "--threads", str(threads)], env,
                                            os.path.join(tmp, "compress.log"), cpid)
                if rc != 0:
                    log("%s: slimd compress failed (exit %d): %s" % (name, rc, text.strip()))
                    r["compress_err"] = "failed"
                    break
                walls.append(wall)
                rss.append(mib)
                with open(os.path.join(out, "report.json")) as f:
                    rep = json.load(f)
                r["compress_rel"] = next(t["rel_error"] for t in rep["tensors"]
                                         if t["name"] == tensor_name(0))
                log("%-14s compress  run %d: %.2f s, peak RSS %.0f MiB, rel_error[0] %.6g" %
                    (name, i + 1, wall, mib, r["compress_rel"]))
                shutil.rmtree(out, ignore_errors=True)
            r["compress"], r["compress_rss"] = walls, max(rss) if rss else None

            # the same job on the daemon
            if daemon is None:
                daemon = Daemon(slimd, os.path.join(tmp, "daemon"), env,
                                os.path.join(tmp, "daemon.pid"))
                t0 = time.perf_counter()
                with open(model, "rb") as f:
                    st, js = daemon.request("POST", "/v1/models?name=bench", body=f,
                                            headers={"Content-Length": str(size),
                                                     "Content-Type": "application/octet-stream"})
                if st != 201:
                    raise RuntimeError("upload: HTTP %d %s" % (st, js))
                model_id = js["id"]
                log("daemon pid %d on port %d; upload %.2f s, VmHWM after upload %.0f MiB" %
                    (daemon.proc.pid, daemon.port, time.perf_counter() - t0, daemon.hwm_mib()))
            walls = []
            for i in range(repeat):
                body = json.dumps({"model": model_id, "passes": passes}).encode()
                t0 = time.perf_counter()
                st, js = daemon.request("POST", "/v1/jobs", body=body,
                                        headers={"Content-Type": "application/json"})
                if st != 202:
                    log("%s: POST /v1/jobs: HTTP %d %s" % (name, st, js))
                    break
                job = js["id"]
                while True:
                    st, js = daemon.request("GET", "/v1/jobs/" + job)
                    if js and js.get("state") in ("succeeded", "failed", "cancelled"):
                        break
                    if daemon.proc.poll() is not None:
                        raise RuntimeError("slimd serve died (exit %d)" % daemon.proc.returncode)
                    time.sleep(0.02)
                wall = time.perf_counter() - t0
                r["daemon_rss"] = daemon.hwm_mib()
                if js["state"] != "succeeded":
                    log("%s: daemon job %s %s: %s" % (name, job, js["state"], js.get("error")))
                    break
                walls.append(wall)
                st, rep = daemon.request("GET", "/v1/jobs/%s/report" % job)
                r["daemon_rel"] = next(t["rel_error"] for t in rep["tensors"]
                                       if t["name"] == tensor_name(0))
                log("%-14s daemon    run %d: %.2f s submit to succeeded, daemon VmHWM %.0f MiB "
                    "(cumulative since start), rel_error[0] %.6g" %
                    (name, i + 1, wall, r["daemon_rss"], r["daemon_rel"]))
            r["daemon"] = walls

            # the peers
            for impl in ("numpy", "torch"):
                if impl == "torch" and (torch_version is None or name not in TORCH_SPECS):
                    continue
                walls, rss = [], []
                for i in range(repeat):
                    out = os.path.join(tmp, "out-" + impl)
                    shutil.rmtree(out, ignore_errors=True)
                    os.makedirs(out)
                    rc, wall, mib, text = timed([sys.executable, os.path.abspath(__file__), "peer",
                                                 impl, name, model, out], env,
                                                os.path.join(tmp, impl + ".log"), cpid)
                    shutil.rmtree(out, ignore_errors=True)
                    if rc != 0:
                        log("%s: %s peer failed (exit %d):\n%s" % (name, impl, rc, text.strip()))
                        break
                    res = json.loads(text.strip().splitlines()[-1])
                    walls.append(wall)
                    rss.append(mib)
                    r[impl + "_rel"] = res["rel_error"]
                    log("%-14s %-6s    run %d: %.2f s (imports %.2f s), peak RSS %.0f MiB, "
                        "rel_error[0] %.6g" % (name, impl, i + 1, wall, res["import_seconds"], mib,
                                               res["rel_error"]))
                r[impl], r[impl + "_rss"] = walls, max(rss) if rss else None

        print()
        head = ["spec", "slimd compress s (GB/s)", "RSS MB", "daemon job s",
                "daemon RSS MB", "numpy s", "numpy RSS MB", "torch s", "torch RSS MB",
                "numpy/slimd"]
        table = []
        for name, _ in specs:
            r = rows[name]
            ratio = ("%.2fx" % (min(r["numpy"]) / min(r["compress"]))
                     if r.get("numpy") and r.get("compress") else "-")
            table.append([name, r.get("compress_err") or fmt_time(r.get("compress"), gb),
                          fmt_num(r.get("compress_rss")), fmt_time(r.get("daemon")),
                          fmt_num(r.get("daemon_rss")), fmt_time(r.get("numpy")),
                          fmt_num(r.get("numpy_rss")), fmt_time(r.get("torch")),
                          fmt_num(r.get("torch_rss")), ratio])
        print_table(head, table)
        print()
        head = ["spec", "rel_error[0] compress", "daemon", "numpy", "torch"]
        print_table(head, [[n] + [fmt_num(rows[n].get(k + "_rel"), "%.6g")
                                  for k in ("compress", "daemon", "numpy", "torch")]
                           for n, _ in specs])
        print()
        print("# s: wall seconds, best of %d (range); GB/s: model bytes / best time." % repeat)
        print("# RSS MB (2^20 bytes): peak RSS of the process (source in the header); it counts "
              "the model's file pages that a process maps (numpy/torch memmap it).")
        print("# daemon job s: POST /v1/jobs to state 'succeeded', polled every 20 ms. daemon RSS: "
              "VmHWM after the spec's last job, cumulative since the daemon started (it never "
              "goes down).")
        print("# numpy/torch s: the whole process: interpreter start, imports, memmap, work, "
              "write, fsync, rename. rel_error[0]: ||W-W^||/||W|| of %s." % tensor_name(0))
        for name, _ in specs:
            for impl in ("numpy", "torch"):
                if (impl, name) in PEER_WHAT and rows[name].get(impl):
                    print("# %s peer, %s: %s" % (impl, name, PEER_WHAT[(impl, name)]))
        sys.stdout.flush()

        if os.environ.get("SLIMD_BENCH_BIG") == "1":
            big = os.path.join(workdir, "big-bf16")
            if big_ready(big):
                log("reusing %s" % big)
            else:
                log("generating %s (8 GiB bf16, 4 shards) ..." % big)
                subprocess.run([sys.executable, os.path.abspath(__file__), "gen-big", big],
                               check=True)
            spec_path = os.path.join(tmp, "spec-int8.json")
            with open(spec_path, "w") as f:
                json.dump({"passes": SPECS[0][1]}, f)
            out = os.path.join(tmp, "out-big")
            index = os.path.join(big, "model.safetensors.index.json")
            rc, wall, mib, text = timed([slimd, "compress", index, "--spec", spec_path, "-o", out,
                                         "--threads", str(threads)], env,
                                        os.path.join(tmp, "big.log"), cpid)
            print()
            print("# big: slimd compress %s (4 shards, 256 bf16 4096x4096, %d bytes) int8:" %
                  (index, sum(os.path.getsize(os.path.join(big, f)) for f, _ in big_layout())))
            print("#   exit %d, %.2f s, peak RSS %.0f MB%s" %
                  (rc, wall, mib, "; said: " + text.strip().replace("\n", " / ") if rc else ""))
            shutil.rmtree(out, ignore_errors=True)
        return 0
    finally:
        _stopping = True                      # a second signal must not cut the clean-up short
        kill(_child, 5)
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv):
    if len(argv) >= 2 and argv[1] == "peer" and len(argv) == 6:
        peer_main(*argv[2:])
        return 0
    if len(argv) == 3 and argv[1] == "gen":
        gen_model(argv[2])
        return 0
    if len(argv) == 3 and argv[1] == "gen-big":
        gen_big(argv[2])
        return 0
    if len(argv) == 8 and argv[1] == "bench":
        opts = dict(zip(argv[2::2], argv[3::2]))
        try:
            return bench_main(opts["--slimd"], opts["--workdir"], opts["--tmp"])
        except KeyboardInterrupt:
            log("bench_jobs: interrupted")
            return 130
    print(__doc__.split("\n\n")[2], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
