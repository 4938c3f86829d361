#!/usr/bin/env python3
"""test_stream.py - the streaming pipeline as the daemon runs it (issue 8):
memory bounded by one tensor, not the model; per-job memory budgets
(limits.memory_mb) and the daemon's --job-memory-mb; F16/BF16 models.

Each test starts the daemon it needs (their flags differ).

Run by hand:  SLIMD_BIN=./slimd /usr/bin/python3 tests/integration/test_stream.py
"""

import hashlib
import os
import sys
import time

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
from slimd_harness import check_error, test  # noqa: E402

INT8 = {"op": "quantize", "dtype": "int8"}
MiB = 1 << 20


def tiled(name, rows, cols, seed, dtype="F32"):
    """A rows x cols tensor tiled from 8 Gaussian rows (cheap in Python)."""
    enc = {"F32": h.f32_bytes, "F16": h.f16_bytes, "BF16": h.bf16_bytes}[dtype]
    base = [enc(h.gaussian(cols, seed + k, 0.02)) for k in range(8)]
    return h.Tensor(name, dtype, [rows, cols], b"".join(base[i % 8] for i in range(rows)))


def model(n=1, rows=1024, cols=1024, dtype="F32"):
    ts = [tiled("layers.%d.weight" % i, rows, cols, 10 * i, dtype) for i in range(n)]
    ts.append(h.t_f32("layers.0.bias", [rows], 3))
    return h.safetensors_bytes(ts)


def vm_hwm_kib(d):
    with open("/proc/%d/status" % d.proc.pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM for the daemon")


@test
def test_limits_checked_at_submission():
    """limits.memory_mb: bad values are 400; a budget below the largest tensor's need is 422 naming it"""
    d = h.Daemon(workers=1, name="limits").start()
    try:
        mid = d.upload(model(1), name="m").json["id"]
        for limits, msg in (({"memory_mb": 0}, "limits.memory_mb"),
                            ({"memory_mb": "64"}, "limits.memory_mb"),
                            ({"cpu": 2}, "unknown key 'cpu'"),
                            (7, "limits: expected an object")):
            r = d.submit({"model": mid, "passes": [INT8], "limits": limits}, expect=None)
            check_error(r, 400, "INVALID_SPEC", msg)
        r = d.submit({"model": mid, "passes": [INT8], "limits": {"memory_mb": 2}}, expect=None)
        check_error(r, 422, "OVER_MEMORY_BUDGET", "layers.0.weight")
        assert "limits.memory_mb" in r.json["error"]["message"], r.json
        # enough: accepted, reserves exactly its limit, and runs
        r = d.submit({"model": mid, "passes": [INT8], "limits": {"memory_mb": 64}})
        assert r.json["memory_bytes"] == 64 * MiB, r.json
        job = d.wait_job(r.json["id"])
        assert job["state"] == "succeeded", job
        # no limit: the job reserves the estimate, more than the tensor's bytes
        r = d.submit({"model": mid, "passes": [INT8]})
        assert 4 * MiB < r.json["memory_bytes"] < 64 * MiB, r.json
        assert d.wait_job(r.json["id"])["state"] == "succeeded"
    finally:
        d.stop()


@test
def test_daemon_budget():
    """--job-memory-mb: a job that can never fit is 422 at submission; small ones run"""
    d = h.Daemon(workers=1, env={"SLIMD_JOB_MEMORY_MB": "8"}, name="budget").start()
    try:
        big = d.upload(model(1, 1024, 1024), name="big").json["id"]
        small = d.upload(model(1, 256, 256), name="small").json["id"]
        r = d.submit({"model": big, "passes": [INT8]}, expect=None)
        check_error(r, 422, "OVER_MEMORY_BUDGET", "--job-memory-mb")
        assert "layers.0.weight" in r.json["error"]["message"], r.json
        r = d.submit({"model": small, "passes": [INT8], "limits": {"memory_mb": 9}}, expect=None)
        check_error(r, 422, "OVER_MEMORY_BUDGET", "--job-memory-mb")
        r = d.submit({"model": small, "passes": [INT8]})
        assert d.wait_job(r.json["id"])["state"] == "succeeded"
    finally:
        d.stop()


@test
def test_budgets_never_exceed_the_daemons():
    """--workers 2 but budgets for one at a time: no two jobs ever run together, all succeed"""
    d = h.Daemon(workers=2, env={"SLIMD_JOB_MEMORY_MB": "100"}, name="serial").start()
    try:
        mid = d.upload(model(4), name="m").json["id"]
        ids = [d.submit({"model": mid, "passes": [INT8], "limits": {"memory_mb": 60}}).json["id"]
               for _ in range(4)]
        most = 0
        deadline = time.time() + 120
        while time.time() < deadline:
            states = [d.get("/v1/jobs/" + j).json["state"] for j in ids]
            most = max(most, states.count("running"))
            if all(s in ("succeeded", "failed", "canceled") for s in states):
                break
        assert most <= 1, "two jobs of 60 MiB ran at once within 100 MiB"
        for j in ids:
            assert d.get("/v1/jobs/" + j).json["state"] == "succeeded", j
    finally:
        d.stop()


@test
def test_daemon_memory_bounded_by_a_tensor():
    """a 64 MiB model of 16 tensors: the daemon's peak memory grows by far less than the model"""
    d = h.Daemon(workers=1, name="rss").start()
    try:
        data = model(16)
        mid = d.upload(data, name="m16").json["id"]
        d.get("/v1/models")
        before = vm_hwm_kib(d)
        r = d.submit({"model": mid, "passes": [{"op": "prune", "sparsity": 0.5,
                                                   "scope": "global"}, INT8]})
        job = d.wait_job(r.json["id"], timeout=120)
        assert job["state"] == "succeeded", job
        grown = vm_hwm_kib(d) - before
        # one 4 MiB tensor's working set is ~20 MiB; the whole model is 64
        assert grown < 32 * 1024, "peak memory grew by %d KiB for a 64 MiB model" % grown
        art = d.get("/v1/jobs/%s/artifact" % job["id"])
        assert hashlib.sha256(art.body).hexdigest() == job["artifact"]["sha256"]
        rep = d.get("/v1/jobs/%s/report" % job["id"]).json
        assert rep["timings"]["streamed_header"] is True, rep["timings"]
        nz = rep["totals"]["nonzero_params"]
        assert abs(nz - (rep["totals"]["params"] - 16 * 1024 * 1024 // 2)) <= 2048, rep["totals"]
    finally:
        d.stop()


@test
def test_half_precision_models():
    """F16 and BF16 models stream through int8 and int4; the report measures against the inputs"""
    d = h.Daemon(workers=1, name="half").start()
    try:
        for dt in ("F16", "BF16"):
            mid = d.upload(model(2, 256, 384, dt), name=dt).json["id"]
            for q in (INT8, {"op": "quantize", "dtype": "int4"}):
                r = d.submit({"model": mid, "passes": [q]})
                job = d.wait_job(r.json["id"])
                assert job["state"] == "succeeded", job
                rep = d.get("/v1/jobs/%s/report" % job["id"]).json
                row = [t for t in rep["tensors"] if t["name"] == "layers.1.weight"][0]
                assert row["dtype_before"] == dt, row
                assert 0 < row["rel_error"] < (0.02 if q is INT8 else 0.2), row
    finally:
        d.stop()


if __name__ == "__main__":
    h.run()
