#!/usr/bin/env python3
"""test_cancel.py - cancels that hold (issue 9).

A cancel answered 200 ends the job `canceled`, whatever it was doing;
one that comes too late (the job already succeeded) is 409 and says so.
And a job ends within 1 s of its cancel's 200, in any pass on a large
tensor, exact SVD included, with real progress shown while it runs.

The jobs run on full-rank random matrices (a tiled one would be low rank,
and an SVD of it would deflate to nothing): random bytes with the sign
and exponent bits fixed give values uniform in +-[1, 2), made at C speed
by bytes.translate.  The daemon's stage and progress reach the API every
250 ms, so a test waits for the stage it wants and then cancels.

Run by hand:  SLIMD_BIN=./slimd /usr/bin/python3 tests/integration/test_cancel.py
"""

import json
import os
import sys
import time

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
from slimd_harness import check_error, test  # noqa: E402

SIGN_EXP = bytes(0x3F if b < 128 else 0xBF for b in range(256))
MANT_HI = bytes(0x80 | (b & 0x7F) for b in range(256))
TERMINAL = ("succeeded", "failed", "canceled")

D = None


def random_f32(n):
    """n little-endian float32, uniform in +-[1, 2), full rank as a matrix."""
    r = bytearray(os.urandom(4 * n))
    r[3::4] = r[3::4].translate(SIGN_EXP)
    r[2::4] = r[2::4].translate(MANT_HI)
    return bytes(r)


def big_model(shapes):
    ts = [h.Tensor("layers.%d.weight" % i, "F32", list(s), random_f32(s[0] * s[1]))
          for i, s in enumerate(shapes)]
    ts.append(h.t_f32("layers.0.bias", [shapes[0][0]], 3))
    return h.safetensors_bytes(ts)


_MODELS = {}


def model_id(key, shapes):
    if key not in _MODELS:
        _MODELS[key] = D.upload(big_model(shapes), name=key).json["id"]
    return _MODELS[key]


def setup():
    global D
    D = h.Daemon(workers=1, name="cancel").start()


def teardown():
    D.stop()


def wait_for(jid, pred, timeout=120, interval=0.01):
    """Polls the job until pred(job) or it is finished; returns the job."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = D.get("/v1/jobs/" + jid).json
        if pred(j) or j["state"] in TERMINAL:
            return j
        time.sleep(interval)
    raise AssertionError("job %s: condition not met in %ds: %s" % (jid, timeout, j))


def cancel_and_time(jid):
    """POST cancel; returns (status, seconds from the 200 to `canceled`,
    the final job)."""
    r = D.request("POST", "/v1/jobs/%s/cancel" % jid)
    t0 = time.monotonic()
    if r.status != 200:
        return r, None, D.get("/v1/jobs/" + jid).json
    j = D.wait_job(jid, timeout=60, interval=0.005)
    return r, time.monotonic() - t0, j


def cancel_in_stage(spec, stage, min_progress=0.0, limit=None):
    """Submits spec, waits for `stage` with progress >= min_progress,
    cancels, and checks the job is canceled within `limit` seconds of the
    200.  Returns (seconds, the job as last seen before the cancel)."""
    jid = D.submit(spec).json["id"]
    seen = wait_for(jid, lambda j: j["state"] == "running" and j["stage"] == stage and
                    j["progress"] >= min_progress)
    assert seen["state"] == "running", "job ended before stage %s: %s" % (stage, seen)
    r, took, j = cancel_and_time(jid)
    assert r.status == 200, r
    assert j["state"] == "canceled", "a cancel answered 200 ended %s: %s" % (j["state"], j)
    assert took < (limit or BOUND), "canceled %.2f s after the 200 (stage %s)" % (took, stage)
    assert j["artifact"] is None and j["progress"] <= 1, j
    return took, seen


# ---------------------------------------------------------------- every stage

def many_tensors(n):
    """A model of n small matrices: its plan ("load") and its report take
    long enough to be seen at the API's 250 ms updates."""
    raw = random_f32(64 * 64)
    return h.safetensors_bytes([h.Tensor("blocks.%d.weight" % i, "F32", [64, 64], raw)
                                for i in range(n)])


# The latency bound is 1 s on this machine.  The suite runs two tests at
# once (make -j2 check) and CI may share its host, so a cancel that took
# longer is tried again, up to TRIES times: the bound must hold at least
# once per case, and every answer must hold every time.  Under ASan+UBSan
# (tests/sanitize.sh) the code between two cancel checks runs two to four
# times slower, so the bound there is 4 s: what that run checks is the
# answers and that nothing breaks, not the latency.
TRIES = 3
BOUND = 4.0 if h.SANITIZED else 1.0


def cancel_when(spec, pred, what, tries=TRIES):
    """Submits spec until a run is caught in pred and canceled; checks the
    answer holds: 200 -> canceled (within 1 s in one of the tries), 409 ->
    succeeded and the message says it came too late.  Returns (status,
    seconds, job seen)."""
    slow = []
    for _ in range(2 * tries):
        if len(slow) >= tries:
            break
        jid = D.submit(spec).json["id"]
        seen = wait_for(jid, lambda j: j["state"] == "running" and pred(j), interval=0.005)
        if seen["state"] != "running":
            continue            # it ran through the stage unseen: try again
        r, took, j = cancel_and_time(jid)
        if r.status == 200:
            assert j["state"] == "canceled", "cancel answered 200 in %s ended %s: %s" % (
                what, j["state"], j)
            assert j["artifact"] is None, j
            check_error(D.get("/v1/jobs/%s/artifact" % jid), 409, "CONFLICT")
            if took >= BOUND:
                slow.append(took)
                continue
        else:
            check_error(r, 409, "CONFLICT", ["already succeeded", "too late"])
            assert j["state"] == "succeeded", j
        if slow:
            h._diag("%s: slower tries first (loaded machine?): %s" % (
                what, ", ".join("%.2f s" % t for t in slow)))
        return r.status, took, seen
    if slow:
        raise AssertionError("%s: every cancel took %.0f s or more: %s" % (
            what, BOUND, ", ".join("%.2f s" % t for t in slow)))
    raise AssertionError("never caught a job in %s in %d tries" % (what, tries))


@test
def test_cancel_in_each_stage():
    """a cancel in load, in a pass, and after the pipeline (hashing, recording the report) is 200 and ends canceled within 1 s, or 409 'too late' and succeeded"""
    mid = D.upload(many_tensors(50000), name="many").json["id"]
    spec = {"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}]}
    out = []
    for what, pred in (("load", lambda j: j["stage"] == "load"),
                       ("quantize", lambda j: j["stage"] == "quantize" and j["progress"] > 0.1),
                       ("write, after the pipeline",
                        lambda j: j["stage"] == "write" and j["progress"] >= 0.99)):
        status, took, seen = cancel_when(spec, pred, what)
        assert what != "load" or status == 200, "a cancel in load was %d" % status
        out.append("%s: %d%s" % (what, status, " in %.3f s" % took if took is not None else ""))
    h._diag("cancels by stage: " + "; ".join(out))


@test
def test_cancel_while_evaluating():
    """an ONNX job evaluating on a dataset: a cancel in stage evaluate ends it canceled within 1 s"""
    try:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        h.skip("needs python3-onnx and numpy: %s" % e)
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((2048, 2048)).astype(np.float32) * 0.02
    w2 = rng.standard_normal((10, 2048)).astype(np.float32) * 0.02
    g = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2"], ["logits"], transB=1)],
        "wide", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2048])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    mid = D.upload(m.SerializeToString(), name="wide.onnx").json["id"]
    n = 6000
    x = rng.standard_normal((n, 2048)).astype(np.float32)
    ys = [int(v) for v in rng.integers(0, 10, n)]
    ds = h.safetensors_bytes([h.Tensor("input", "F32", [n, 2048], x.tobytes()),
                              h.Tensor("labels", "I64", [n], h.i64_bytes(ys))])
    r = D.request("POST", "/v1/datasets?name=wide", body=ds,
                  headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, r
    spec = {"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}],
            "eval": {"dataset": r.json["id"]}}
    status, took, seen = cancel_when(spec, lambda j: j["stage"] == "evaluate", "evaluate")
    assert status == 200, status
    h._diag("cancel in evaluate: canceled %.3f s after the 200 (progress %.3f)"
            % (took, seen["progress"]))


@test
def test_cancel_at_random_moments():
    """40 cancels at random moments of short jobs: every 200 ends canceled, every 409 is a succeeded job and says 'too late'"""
    import random
    rng = random.Random(9)
    mid = model_id("sq2048", [(2048, 2048)])
    spec = {"model": mid, "passes": [{"op": "quantize", "dtype": "int8",
                                      "granularity": "channel", "calibration": "mse"}]}
    t0 = time.monotonic()
    jid = D.submit(spec).json["id"]
    D.wait_job(jid)
    run = time.monotonic() - t0
    tally = {200: 0, 409: 0}
    for _ in range(40):
        jid = D.submit(spec).json["id"]
        time.sleep(rng.uniform(0, run * 1.3))
        r = D.request("POST", "/v1/jobs/%s/cancel" % jid)
        j = D.wait_job(jid, timeout=60, interval=0.005)
        tally[r.status] = tally.get(r.status, 0) + 1
        if r.status == 200:
            assert j["state"] == "canceled", "a cancel answered 200 ended %s: %s" % (
                j["state"], j)
        else:
            check_error(r, 409, "CONFLICT", ["already succeeded", "too late"])
            assert j["state"] == "succeeded", j
    h._diag("a job takes %.2f s; 40 cancels: %d answered 200 (all canceled), %d 409 "
            "(all succeeded)" % (run, tally[200], tally[409]))
    assert set(tally) == {200, 409}, tally


# ---------------------------------------------------------------- long kernels

@test
def test_cancel_exact_svd_4096():
    """exact SVD of 4096x4096: progress moves under stage lowrank, and a cancel ends the job within 1 s"""
    mid = model_id("sq4096", [(4096, 4096)])
    spec = {"model": mid, "passes": [{"op": "lowrank", "rank": 512, "algorithm": "exact"}]}
    took, seen = cancel_in_stage(spec, "lowrank", min_progress=0.1)
    h._diag("exact SVD 4096x4096: canceled %.3f s after the 200 (progress was %.2f, stage %s)"
            % (took, seen["progress"], seen["stage"]))
    # the daemon runs the next job at once
    r = D.submit({"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}]})
    assert D.wait_job(r.json["id"], timeout=120)["state"] == "succeeded"


@test
def test_cancel_exact_svd_in_bidiagonal_phase():
    """exact SVD of 2048x2048 canceled late (the bidiagonal SVD, which cannot stop mid-call): canceled within 1 s; the next job runs"""
    mid = model_id("sq2048", [(2048, 2048)])
    spec = {"model": mid, "passes": [{"op": "lowrank", "rank": 256, "algorithm": "exact"}]}
    # the kernel's first 58 % is the bidiagonalisation, of the tensor's
    # share of the job (0.02 .. 0.98)
    took, seen = cancel_in_stage(spec, "lowrank", min_progress=0.02 + 0.96 * 0.6)
    h._diag("exact SVD 2048x2048 in its bidiagonal SVD: canceled %.3f s after the 200 "
            "(progress %.2f)" % (took, seen["progress"]))
    r = D.submit({"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}]})
    assert D.wait_job(r.json["id"], timeout=120)["state"] == "succeeded"


@test
def test_cancel_latency_of_each_pass():
    """int8, global prune, cluster, randomized lowrank on 4096x4096 tensors: each canceled within 1 s of its 200"""
    mid = model_id("four4096", [(4096, 4096)] * 4)
    cases = [("int8", {"op": "quantize", "dtype": "int8"}),
             ("prune global 50%", {"op": "prune", "sparsity": 0.5, "scope": "global"}),
             ("cluster k=256", {"op": "cluster", "clusters": 256}),
             ("lowrank rank 256 randomized",
              {"op": "lowrank", "rank": 256, "algorithm": "randomized"})]
    out = []
    for name, p in cases:
        spec = {"model": mid, "passes": [p]}
        # how long the job runs whole, then a cancel half-way through it
        jid = D.submit(spec).json["id"]
        j = wait_for(jid, lambda j: j["state"] == "running", interval=0.002)
        t0 = time.monotonic()
        j = D.wait_job(jid, timeout=300, interval=0.01)
        whole = time.monotonic() - t0
        assert j["state"] == "succeeded", j
        # cancels at three points of its run; the worst one counts
        worst = []
        for frac in (0.25, 0.5, 0.75):
            slow = []
            while len(slow) < TRIES:
                jid = D.submit(spec).json["id"]
                wait_for(jid, lambda j: j["state"] == "running", interval=0.002)
                time.sleep(whole * frac)
                r, took, j = cancel_and_time(jid)
                if r.status == 409:          # it finished first
                    assert j["state"] == "succeeded", j
                    break
                assert r.status == 200 and j["state"] == "canceled", (r, j)
                if took < BOUND:
                    worst.append(took)
                    break
                slow.append(took)
            assert len(slow) < TRIES, "%s: canceled %s after the 200 (at %d%% of its run)" % (
                name, ", ".join("%.2f s" % t for t in slow), frac * 100)
            if slow:
                h._diag("%s at %d%%: slower tries first: %s" % (
                    name, frac * 100, ", ".join("%.2f s" % t for t in slow)))
        assert worst, "%s: every cancel came too late" % name
        out.append("%s max %.3f s of %d (a %.2f s job)" % (name, max(worst), len(worst), whole))
    h._diag("cancel latency (200 to canceled): " + "; ".join(out))


if __name__ == "__main__":
    h.run(setup=setup, teardown=teardown, daemons=lambda: [D])
