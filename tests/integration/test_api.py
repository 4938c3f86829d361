#!/usr/bin/env python3
"""test_api.py - slimd's REST API end to end, over HTTP, against the real
daemon (issue 2, sections 3, 5, 7, 8, 9 and 11).

One daemon serves the whole file (--workers 1, so a second job stays
queued behind a running one); a few tests start a short-lived second
daemon of their own (upload limit, environment variables).  Tests run in
the order written: the restart test near the end checks that everything
the earlier tests left behind survives.

Run by hand:  SLIMD_BIN=./slimd /usr/bin/python3 tests/integration/test_api.py
"""

import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
from slimd_harness import check_error, test  # noqa: E402

D = None                      # the shared daemon
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
TERMINAL = ("succeeded", "failed", "canceled")
INT8_CH = {"op": "quantize", "dtype": "int8", "granularity": "channel", "symmetric": True}


def setup():
    global D
    D = h.Daemon(workers=1, name="main").start()


def teardown():
    D.stop()


# ---------------------------------------------------------------- fixtures

def small_tensors(seed=1):
    """A small model with every kind of tensor the default selection
    must handle: F32/F16/BF16 matrices, a 4-D conv kernel (quantized),
    1-D biases and norms and an I64 matrix (copied bit for bit)."""
    return [
        h.t_f32("layer0.weight", [64, 48], seed),
        h.t_f32("layer0.bias", [64], seed + 1, 0.1),
        h.t_f16("layer1.weight", [32, 64], seed + 2, 0.5),
        h.t_bf16("layer2.weight", [16, 32], seed + 3, 2.0),
        h.t_f32("conv.weight", [8, 3, 3, 3], seed + 4, 0.2),
        h.t_f32("norm.weight", [32], seed + 5),
        h.t_i64("positions", [4, 5]),
    ]


QUANTIZED = ("layer0.weight", "layer1.weight", "layer2.weight", "conv.weight")
COPIED = ("layer0.bias", "norm.weight", "positions")

_shared = {}


def shared_model():
    """Uploads the small model once; returns (id, {name: Tensor}, bytes)."""
    if "id" not in _shared:
        ts = small_tensors()
        data = h.safetensors_bytes(ts, {"source": "slimd integration test"})
        r = D.upload(data, name="shared")
        _shared.update(id=r.json["id"], tensors={t.name: t for t in ts}, data=data)
    return _shared["id"], _shared["tensors"], _shared["data"]


_big = {}


def big_model():
    """~52 MB of F32: a 3000x3000 matrix and four 1000x1000, plus a bias.
    Rows are tiled from a few Gaussian rows (cheap to build in Python);
    the daemon's work does not depend on the values."""
    if "data" not in _big:
        rows = [h.f32_bytes(h.gaussian(3000, 100 + k)) for k in range(16)]
        ts = [h.Tensor("big.weight", "F32", [3000, 3000],
                       b"".join(rows[i % 16] for i in range(3000)))]
        small_rows = [h.f32_bytes(h.gaussian(1000, 200 + k)) for k in range(8)]
        for j in range(4):
            ts.append(h.Tensor("blocks.%d.weight" % j, "F32", [1000, 1000],
                               b"".join(small_rows[(i + j) % 8] for i in range(1000))))
        ts.append(h.t_f32("big.bias", [3000], 7))
        _big["data"] = h.safetensors_bytes(ts)
    return _big["data"]


def tmp_entries(d=None):
    p = os.path.join((d or D).data_dir, "tmp")
    return sorted(os.listdir(p)) if os.path.isdir(p) else []


def blob_files(d=None):
    out = []
    for root, _, files in os.walk(os.path.join((d or D).data_dir, "blobs")):
        out += [os.path.join(root, f) for f in files]
    return sorted(out)


def model_ids(d=None):
    r = (d or D).get("/v1/models?limit=1000")
    assert r.status == 200, r
    return [m["id"] for m in r.json["models"]]


def job_total(state=None):
    r = D.get("/v1/jobs?limit=1000" + ("&state=" + state if state else ""))
    assert r.status == 200, r
    return r.json["total"]


def run_job(model_id, passes, output=None, timeout=60):
    """Submits, waits for success, returns (job, report, artifact bytes,
    artifact response)."""
    spec = {"model": model_id, "passes": passes}
    if output is not None:
        spec["output"] = output
    r = D.submit(spec)
    job = D.wait_job(r.json["id"], timeout=timeout)
    assert job["state"] == "succeeded", "job did not succeed: %s" % json.dumps(job)
    rep = D.get("/v1/jobs/%s/report" % job["id"])
    assert rep.status == 200, rep
    art = D.get("/v1/jobs/%s/artifact" % job["id"])
    assert art.status == 200, art
    return job, rep.json, art.body, art


def row_view(t):
    rows = t.shape[0] if t.shape else 1
    return rows, h.numel(t.shape) // rows if rows else 0


def expect_int8_symmetric(values, rows, cols, per_channel=True):
    """The contract's int8 symmetric quantization, computed here in
    float32 arithmetic: scale = max|w| / 127 per row (or per tensor),
    q = round-half-even(w / scale) clipped to [-127, 127]."""
    blocks = [(r * cols, (r + 1) * cols) for r in range(rows)] if per_channel \
        else [(0, rows * cols)]
    q, scales = [], []
    for a, b in blocks:
        amax = max(abs(v) for v in values[a:b])
        s = h.f32(amax / 127.0)
        if not s > 0:
            s = 1.0
        scales.append(s)
        for v in values[a:b]:
            x = round(h.f32(v / s))
            q.append(max(-127, min(127, x)))
    return q, scales


def assert_codes_match(got, want, what):
    """Quantized codes: equal, except that a handful may differ by one
    (a division done as multiplication by the reciprocal rounds a tie the
    other way); never by more."""
    assert len(got) == len(want), "%s: %d codes, expected %d" % (what, len(got), len(want))
    diffs = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    big = [d for d in diffs if abs(d[1] - d[2]) > 1]
    assert not big, "%s: codes differ by more than 1 at %s" % (what, big[:5])
    assert len(diffs) <= max(1, len(got) // 1000), \
        "%s: %d of %d codes differ from round(w/scale): %s" % (what, len(diffs), len(got),
                                                               diffs[:5])


def report_by_name(rep):
    out = {}
    for t in rep["tensors"]:
        out[t["name"]] = t
    return out


def check_job_object(j, model_id=None, listed=False):
    """listed: a row of GET /v1/jobs, which shows the spec's ops
    ("passes") in the place of the spec."""
    for k in ("id", "model", "state", "progress", "stage", "error", "attempts",
              "cancel_requested", "created_at", "started_at", "finished_at",
              "passes" if listed else "spec", "artifact"):
        assert k in j, "job object lacks %r: %s" % (k, json.dumps(j))
    if listed:
        assert "spec" not in j and all(isinstance(op, str) for op in j["passes"]), j
    assert j["id"].startswith("job_"), j["id"]
    if model_id:
        assert j["model"] == model_id, (j["model"], model_id)
    assert j["state"] in ("queued", "running") + TERMINAL, j["state"]
    assert isinstance(j["progress"], (int, float)) and 0 <= j["progress"] <= 1, j["progress"]
    assert j["stage"] is None or isinstance(j["stage"], str), j["stage"]
    assert isinstance(j["attempts"], int) and j["attempts"] >= 0, j["attempts"]
    assert isinstance(j["cancel_requested"], bool), j["cancel_requested"]
    assert RFC3339.match(j["created_at"]), j["created_at"]
    for k in ("started_at", "finished_at"):
        assert j[k] is None or RFC3339.match(j[k]), (k, j[k])
    if j["state"] in TERMINAL:
        assert j["finished_at"] is not None, "finished job without finished_at: %s" % j
    else:
        assert j["finished_at"] is None, j
    if j["state"] == "succeeded":
        a = j["artifact"]
        assert isinstance(a, dict) and re.match(r"^[0-9a-f]{64}$", a["sha256"]) and \
            isinstance(a["bytes"], int) and a["bytes"] > 0, a
        assert j["progress"] == 1, j
        assert j["error"] is None, j
        assert j["started_at"] is not None, j
    else:
        assert j["artifact"] is None, "artifact set on a %s job: %s" % (j["state"], j)


# ---------------------------------------------------------------- health, CLI

@test
def test_health():
    """GET /v1/health: 200 {"status": "ok", "version": "0.1.0", "node": {id, role, jobs}}"""
    r = D.get("/v1/health")
    assert r.status == 200, r
    node = r.json.pop("node", None)
    assert r.json == {"status": "ok", "version": "0.1.0"}, r.json
    # the default node id is HOSTNAME:PORT, role all; no job runs now
    assert node == {"id": "%s:%d" % (socket.gethostname(), D.port), "role": "all",
                    "jobs": []}, node
    assert r.header("Content-Type", "").startswith("application/json"), r.headers


@test
def test_cli_help_version():
    """slimd --help names the subcommands; slimd --version prints 0.1.0"""
    p = subprocess.run([h.slimd_bin(), "--version"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p
    assert "0.1.0" in p.stdout, p.stdout
    p = subprocess.run([h.slimd_bin(), "--help"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p
    for word in ("serve", "compress", "--listen", "--data-dir", "--workers",
                 "--max-upload-bytes"):
        assert word in p.stdout, "--help does not mention %s:\n%s" % (word, p.stdout)
    p = subprocess.run([h.slimd_bin(), "--no-such-flag"], capture_output=True, text=True,
                       timeout=10)
    assert p.returncode != 0, "an unknown flag must fail: %r" % p


# ---------------------------------------------------------------- models

def check_model_object(m, data, name, tensors):
    for k in ("id", "name", "kind", "format", "bytes", "sha256", "tensors", "params",
              "created_at"):
        assert k in m, "model object lacks %r: %s" % (k, m)
    assert m["id"].startswith("mdl_"), m
    assert m["name"] == name, (m["name"], name)
    assert m["kind"] == "model", m
    assert m["format"] == "safetensors", m
    assert m["bytes"] == len(data), (m["bytes"], len(data))
    assert m["sha256"] == hashlib.sha256(data).hexdigest(), m
    assert m["tensors"] == len(tensors), (m["tensors"], len(tensors))
    assert m["params"] == sum(h.numel(t.shape) for t in tensors), m
    assert RFC3339.match(m["created_at"]), m["created_at"]


@test
def test_upload_raw_and_multipart():
    """raw body and multipart field "file" both give 201, hashlib's sha256, Location"""
    ts = small_tensors(seed=11)
    data = h.safetensors_bytes(ts)
    r = D.upload(data, name="raw-model")
    check_model_object(r.json, data, "raw-model", ts)
    assert r.header("Location") == "/v1/models/" + r.json["id"], r.headers
    raw_id = r.json["id"]

    body, ctype = h.multipart([("file", "tiny.safetensors", data)])
    r = D.request("POST", "/v1/models", body=body, headers={"Content-Type": ctype})
    assert r.status == 201, r
    check_model_object(r.json, data, "tiny.safetensors", ts)   # filename as the name
    assert r.header("Location") == "/v1/models/" + r.json["id"], r.headers
    mp_id = r.json["id"]

    body, ctype = h.multipart([("comment", "hello"), ("file", "x.safetensors", data)])
    r = D.request("POST", "/v1/models?name=named-mp", body=body,
                  headers={"Content-Type": ctype})
    assert r.status == 201, r
    check_model_object(r.json, data, "named-mp", ts)           # ?name= wins

    # curl --data-binary sends application/x-www-form-urlencoded by default
    r = D.request("POST", "/v1/models?name=curl-default", body=data,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 201, r
    check_model_object(r.json, data, "curl-default", ts)

    for mid in (raw_id, mp_id):
        r = D.get("/v1/models/" + mid)
        assert r.status == 200, r
        assert r.json["sha256"] == hashlib.sha256(data).hexdigest(), r.json


@test
def test_model_list_get_file():
    """GET /v1/models lists, GET one, GET /file returns identical bytes with an ETag"""
    ts = small_tensors(seed=21)
    data = h.safetensors_bytes(ts, {"k": "v"})
    up = D.upload(data, name="listed").json
    r = D.get("/v1/models")
    assert r.status == 200, r
    for k in ("models", "total", "limit", "offset"):
        assert k in r.json, r.json
    assert isinstance(r.json["models"], list) and r.json["offset"] == 0, r.json
    assert r.json["total"] >= 1 and r.json["limit"] >= 1, r.json
    full = D.get("/v1/models?limit=1000").json
    assert up["id"] in [m["id"] for m in full["models"]], "uploaded model not listed"
    assert full["total"] == len(full["models"]), full["total"]
    listed = [m for m in full["models"] if m["id"] == up["id"]][0]
    assert listed == up, (listed, up)
    # paging
    p = D.get("/v1/models?limit=1&offset=0").json
    assert len(p["models"]) == 1 and p["limit"] == 1 and p["total"] == full["total"], p
    check_error(D.get("/v1/models?limit=-3"), 400, "INVALID_ARGUMENT")
    check_error(D.get("/v1/models?limit=abc"), 400, "INVALID_ARGUMENT")

    r = D.get("/v1/models/" + up["id"])
    assert r.status == 200 and r.json == up, (r, up)
    r = D.get("/v1/models/%s/file" % up["id"])
    assert r.status == 200, r
    assert r.body == data, "downloaded file differs from the upload"
    assert r.header("Content-Type") == "application/octet-stream", r.headers
    assert r.header("Content-Length") == str(len(data)), r.headers
    assert r.header("ETag") == '"%s"' % hashlib.sha256(data).hexdigest(), r.header("ETag")
    check_error(D.get("/v1/models/mdl_doesnotexist"), 404, "NOT_FOUND")
    check_error(D.get("/v1/models/mdl_doesnotexist/file"), 404, "NOT_FOUND")
    # %00 does not cut a path short; other escapes decode as usual
    check_error(D.get("/v1/health%00x"), 404, "NOT_FOUND")
    assert D.get("/v1/he%61lth").status == 200


def failed_upload(data, status, code, contains_any=None, headers=None, path="/v1/models",
                  d=None, chunked=False):
    """Uploads data expecting an error; checks the envelope, that no
    model appeared and that tmp/ is empty afterwards."""
    d = d or D
    before = model_ids(d)
    hdrs = {"Content-Type": "application/octet-stream"}
    hdrs.update(headers or {})
    if chunked:
        r = d.request("POST", path, body=iter([data[i:i + 8192]
                                               for i in range(0, len(data), 8192)]),
                      headers=hdrs, chunked=True)
    else:
        r = d.request("POST", path, body=data, headers=hdrs)
    msg = check_error(r, status, code)
    if contains_any:
        assert any(c.lower() in msg.lower() for c in contains_any), \
            "message %r names none of %s" % (msg, contains_any)
    after = model_ids(d)
    assert after == before, "a failed upload left a model behind: %s" % (
        set(after) - set(before))
    assert tmp_entries(d) == [], "tmp/ not empty after a failed upload: %s" % tmp_entries(d)
    return msg


@test
def test_upload_errors():
    """empty 400, garbage 415, malformed safetensors 400 naming the problem; nothing left behind"""
    good = h.safetensors_bytes([h.t_f32("a.weight", [8, 8], 1), h.t_f32("b.weight", [8, 8], 2)])
    failed_upload(b"", 400, "INVALID_MODEL", ["empty"])
    failed_upload(b"this is definitely not a model file\n" * 50, 415, "UNSUPPORTED_MEDIA")
    failed_upload(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, 415, "UNSUPPORTED_MEDIA")
    # truncated: the last tensor's data is cut short
    failed_upload(good[:-100], 400, "INVALID_MODEL",
                  ["b.weight", "truncat", "short", "past the end", "outside", "beyond",
                   "exceed"])
    # header length that runs past the end of the file
    hdr = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    failed_upload(h.raw_safetensors(hdr, b"\0" * 8, header_len=5000), 400, "INVALID_MODEL",
                  ["header"])
    # overlapping offsets
    hdr = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
           "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    failed_upload(h.raw_safetensors(hdr, b"\0" * 24), 400, "INVALID_MODEL", ["overlap"])
    # unknown dtype
    hdr = {"a": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 4]}}
    failed_upload(h.raw_safetensors(hdr, b"\0" * 4), 400, "INVALID_MODEL", ["Q7"])
    # shape x dtype size does not match the byte span
    hdr = {"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}}
    failed_upload(h.raw_safetensors(hdr, b"\0" * 32), 400, "INVALID_MODEL", ["'a'", "a:",
                                                                             "shape", "span"])
    # a gap after the last tensor (data not covered exactly)
    hdr = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    failed_upload(h.raw_safetensors(hdr, b"\0" * 16), 400, "INVALID_MODEL")
    # a header that is not JSON
    failed_upload(b"\x10\0\0\0\0\0\0\0{not json at all", 400, "INVALID_MODEL", ["json"])
    # __metadata__ values must be strings
    hdr = {"__metadata__": {"n": 3}, "a": {"dtype": "F32", "shape": [1],
                                           "data_offsets": [0, 4]}}
    failed_upload(h.raw_safetensors(hdr, b"\0" * 4), 400, "INVALID_MODEL", ["metadata"])
    # multipart without a "file" field
    body, ctype = h.multipart([("model", "m.safetensors", good)])
    failed_upload(body, 400, "INVALID_ARGUMENT", ["file"], headers={"Content-Type": ctype})
    # multipart whose file is garbage
    body, ctype = h.multipart([("file", "m.safetensors", b"garbage garbage garbage" * 10)])
    failed_upload(body, 415, "UNSUPPORTED_MEDIA", headers={"Content-Type": ctype})
    # an empty or overlong ?name=
    failed_upload(good, 400, "INVALID_ARGUMENT", ["name"], path="/v1/models?name=")
    failed_upload(good, 400, "INVALID_ARGUMENT", ["name"], path="/v1/models?name=" + "n" * 201)
    # invalid UTF-8 and control characters: refused before anything is
    # stored (no model, no blob)
    unique = h.safetensors_bytes([h.t_f32("only.here.weight", [3, 5], 98765)])
    blobs_before = blob_files(D)
    for bad in ("%FF%FE", "a%0Ab", "tab%09", "del%7F"):
        failed_upload(unique, 400, "INVALID_ARGUMENT", ["name"],
                      path="/v1/models?name=" + bad)
    assert blob_files(D) == blobs_before, "a refused upload left a blob behind"
    # and a good one still works after all that
    D.upload(good, name="after-errors")


@test
def test_upload_too_large():
    """--max-upload-bytes: 413 for a bigger body (Content-Length, chunked, multipart), nothing left"""
    d = h.Daemon(workers=1, max_upload=65536, name="limit").start()
    try:
        big = h.safetensors_bytes([h.t_f32("w", [130, 128], 3)])      # 66 KiB
        small = h.safetensors_bytes([h.t_f32("w", [32, 32], 3)])
        assert len(big) > 65536
        failed_upload(big, 413, "PAYLOAD_TOO_LARGE", d=d)
        failed_upload(big, 413, "PAYLOAD_TOO_LARGE", d=d, chunked=True)
        body, ctype = h.multipart([("file", "big.safetensors", big)])
        failed_upload(body, 413, "PAYLOAD_TOO_LARGE", headers={"Content-Type": ctype}, d=d)
        r = d.upload(small, name="small")
        assert r.json["bytes"] == len(small), r.json
        # a chunked upload under the limit is fine too
        r = d.request("POST", "/v1/models", body=iter([small[:1000], small[1000:]]),
                      headers={"Content-Type": "application/octet-stream"}, chunked=True)
        assert r.status == 201 and r.json["sha256"] == hashlib.sha256(small).hexdigest(), r
    finally:
        d.stop()


def rss_anon(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return None


@test
def test_upload_streams_to_disk():
    """a 64 MiB upload: the daemon's anonymous memory stays flat (the body streams to disk)"""
    if rss_anon(D.proc.pid) is None:
        h.skip("no /proc/PID/status RssAnon on this system")
    data = h.safetensors_bytes([h.Tensor("huge.weight", "F32", [4096, 4096],
                                         b"\0" * (4096 * 4096 * 4))])
    base = rss_anon(D.proc.pid)
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            v = rss_anon(D.proc.pid)
            peak[0] = max(peak[0], v or 0)
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        r = D.upload(data, name="huge")
    finally:
        done.set()
        th.join()
    assert r.json["sha256"] == hashlib.sha256(data).hexdigest(), r.json
    grew = peak[0] - base
    assert grew < 16 << 20, "daemon memory grew by %d MiB during a 64 MiB upload" % (grew >> 20)
    r = D.request("DELETE", "/v1/models/" + r.json["id"])
    assert r.status == 204, r


@test
def test_env_configuration():
    """SLIMD_LISTEN, SLIMD_DATA_DIR, SLIMD_WORKERS, SLIMD_MAX_UPLOAD_BYTES configure serve"""
    d = h.Daemon(workers=1, max_upload=4096, use_flags=False, name="env").start()
    try:
        assert os.path.exists(os.path.join(d.data_dir, "slimd.db")) or \
            os.listdir(d.data_dir), "nothing written to SLIMD_DATA_DIR %s" % d.data_dir
        failed_upload(h.safetensors_bytes([h.t_f32("w", [40, 40], 3)]), 413,
                      "PAYLOAD_TOO_LARGE", d=d)
        d.upload(h.safetensors_bytes([h.t_f32("w", [8, 8], 3)]))
    finally:
        d.stop()


@test
def test_delete_model():
    """DELETE: 204, then GET/file/DELETE 404; a blob shared by two uploads survives one delete"""
    data = h.safetensors_bytes(small_tensors(seed=31))
    a = D.upload(data, name="dup-a").json
    b = D.upload(data, name="dup-b").json
    assert a["sha256"] == b["sha256"]
    r = D.request("DELETE", "/v1/models/" + a["id"])
    assert r.status == 204, r
    assert r.body == b"", r
    check_error(D.get("/v1/models/" + a["id"]), 404, "NOT_FOUND")
    check_error(D.get("/v1/models/%s/file" % a["id"]), 404, "NOT_FOUND")
    check_error(D.request("DELETE", "/v1/models/" + a["id"]), 404, "NOT_FOUND")
    assert a["id"] not in model_ids()
    if b["id"] != a["id"]:
        r = D.get("/v1/models/%s/file" % b["id"])
        assert r.status == 200 and r.body == data, \
            "deleting one model broke another with the same content: %r" % r
        # a job on the survivor still works
        run_job(b["id"], [INT8_CH])


# ---------------------------------------------------------------- jobs: results

@test
def test_job_int8_channel():
    """int8 channel symmetric: 202+Location, succeeded, report and artifact exact"""
    mid, ts, _ = shared_model()
    spec = {"model": mid, "passes": [INT8_CH]}
    r = D.submit(spec)
    check_job_object(r.json, mid)
    assert r.json["state"] in ("queued", "running", "succeeded"), r.json
    assert r.header("Location") == "/v1/jobs/" + r.json["id"], r.headers
    job = D.wait_job(r.json["id"])
    check_job_object(job, mid)
    assert job["state"] == "succeeded", job
    assert job["spec"]["passes"][0]["op"] == "quantize", job["spec"]
    assert job["spec"]["passes"][0]["dtype"] == "int8", job["spec"]

    rep = D.get("/v1/jobs/%s/report" % job["id"])
    assert rep.status == 200, rep
    rep = rep.json
    art = D.get("/v1/jobs/%s/artifact" % job["id"])
    assert art.status == 200, art
    body = art.body
    sha = hashlib.sha256(body).hexdigest()
    assert art.header("Content-Type") == "application/octet-stream", art.headers
    assert art.header("Content-Length") == str(len(body)), art.headers
    assert art.header("ETag") == '"%s"' % sha, (art.header("ETag"), sha)
    cd = art.header("Content-Disposition", "")
    assert re.match(r'^attachment;\s*filename="[^"/\\]+"$', cd), cd
    assert job["artifact"] == {"sha256": sha, "bytes": len(body)}, job["artifact"]

    f = h.SafetensorsFile(body)
    # artifact layout
    expected_names = set(COPIED)
    for n in QUANTIZED:
        expected_names |= {n, n + "_scale"}
    assert f.names() == expected_names, "artifact tensors %s, expected %s" % (
        sorted(f.names()), sorted(expected_names))
    for n in COPIED:
        assert f[n].dtype == ts[n].dtype and f[n].shape == ts[n].shape, (n, f[n].dtype)
        assert f[n].raw == ts[n].raw, "%s not copied bit for bit" % n
    reprow = report_by_name(rep)
    for n in QUANTIZED:
        orig = ts[n]
        rows, cols = row_view(orig)
        assert f[n].dtype == "I8" and f[n].shape == orig.shape, (n, f[n].dtype, f[n].shape)
        sc = f[n + "_scale"]
        assert sc.dtype == "F32" and sc.shape == [rows, 1], (n, sc.dtype, sc.shape)
        q, scales = h.decode("I8", f[n].raw), sc.decoded()
        want_q, want_scales = expect_int8_symmetric(orig.decoded(), rows, cols)
        assert scales == want_scales, "%s: scales %s, expected %s" % (n, scales[:4],
                                                                       want_scales[:4])
        assert_codes_match(q, want_q, n)
        assert min(q) >= -127, "%s: symmetric int8 used -128" % n
        deq = [qq * scales[i // cols] for i, qq in enumerate(q)]
        err = h.rel_error(orig.decoded(), deq)
        assert err < 0.01, "%s: rel error %.4f" % (n, err)
        row = reprow[n]
        assert row["shape"] == orig.shape, row
        assert row["dtype_before"] == orig.dtype and row["dtype_after"] == "I8", row
        assert row["bytes_before"] == len(orig.raw), row
        assert row["bytes_after"] == h.numel(orig.shape) + 4 * rows, row
        assert abs(row["rel_error"] - err) <= 1e-6 + 1e-4 * err, (n, row["rel_error"], err)
        assert abs(row["snr_db"] - (-20 * math.log10(err))) < 0.01, (n, row["snr_db"], err)
        assert 0 < row["rel_error"] < 0.01, row
        assert isinstance(row.get("scheme"), str) and row["scheme"], row
    for n in COPIED:
        row = reprow.get(n)
        if row is not None:       # copies, when listed, are exact
            assert row["rel_error"] == 0 and row["snr_db"] is None, row
            assert row["bytes_after"] == row["bytes_before"] == len(ts[n].raw), row
            assert row["dtype_after"] == row["dtype_before"] == ts[n].dtype, row
    for row in rep["tensors"]:
        for k in ("name", "shape", "dtype_before", "dtype_after", "bytes_before",
                  "bytes_after", "rel_error", "snr_db", "scheme"):
            assert k in row, "report row lacks %r: %s" % (k, row)
    tot = rep["totals"]
    before = sum(len(t.raw) for t in ts.values())
    after = sum(len(f[n].raw) for n in f.names())
    assert tot["bytes_before"] == before, (tot, before)
    assert tot["bytes_after"] == after, (tot, after)
    assert abs(tot["ratio"] - before / after) < 1e-3, tot
    assert tot["params"] == sum(h.numel(t.shape) for t in ts.values()), tot
    assert isinstance(rep["passes"], list) and len(rep["passes"]) == 1, rep["passes"]
    p = rep["passes"][0]
    assert p["op"] == "quantize" and isinstance(p["seconds"], (int, float)) and \
        0 <= p["seconds"] < 60, p
    # metadata
    md = f.metadata
    q = json.loads(md["slimd.quantization"])
    qs = q if isinstance(q, list) else [q]
    assert any(x.get("op") == "quantize" and x.get("dtype") == "int8" for x in qs), q
    assert md["slimd.version"] == "0.1.0", md


@test
def test_artifact_range_and_etag():
    """artifact Range: bytes=a-b gives 206 with the slice; If-None-Match gives 304"""
    mid, _, _ = shared_model()
    job, _, body, art = run_job(mid, [{"op": "quantize", "dtype": "fp16"}])
    etag = art.header("ETag")
    r = D.get("/v1/jobs/%s/artifact" % job["id"], headers={"Range": "bytes=10-99"})
    assert r.status == 206, r
    assert r.body == body[10:100], "range body differs"
    assert r.header("Content-Range") == "bytes 10-99/%d" % len(body), r.headers
    assert r.header("Content-Length") == "90", r.headers
    r = D.get("/v1/jobs/%s/artifact" % job["id"], headers={"Range": "bytes=%d-" %
                                                             (len(body) - 5)})
    assert r.status == 206 and r.body == body[-5:], r
    r = D.get("/v1/jobs/%s/artifact" % job["id"], headers={"If-None-Match": etag})
    assert r.status == 304, r
    assert r.body == b"", r
    r = D.get("/v1/jobs/%s/artifact" % job["id"], headers={"If-None-Match": '"0000"'})
    assert r.status == 200 and r.body == body, r
    # the model file has the same machinery
    r = D.get("/v1/models/%s/file" % mid, headers={"Range": "bytes=0-7"})
    assert r.status == 206 and r.body == _shared["data"][:8], r
    # a malformed range is ignored (the whole file, 200), never a 206 of it
    for bad in ("bytes=0--1", "bytes=+1-2", "bytes= 1-2", "bytes=1-2-3", "bytes=-+5"):
        r = D.get("/v1/jobs/%s/artifact" % job["id"], headers={"Range": bad})
        assert r.status == 200 and r.body == body, (bad, r)
    # past the end: 416 with the JSON envelope and the file's size
    r = D.get("/v1/jobs/%s/artifact" % job["id"], headers={"Range": "bytes=%d-" % len(body)})
    check_error(r, 416, "RANGE_NOT_SATISFIABLE", "outside")
    assert r.header("Content-Range") == "bytes */%d" % len(body), r.headers


@test
def test_report_html():
    """GET /v1/jobs/{id}/report.html: an HTML page naming every tensor (a page for every state: test_dashboard.py)"""
    mid, ts, _ = shared_model()
    job, rep, _, _ = run_job(mid, [INT8_CH])
    r = D.get("/v1/jobs/%s/report.html" % job["id"])
    assert r.status == 200, r
    assert r.header("Content-Type", "").startswith("text/html"), r.headers
    page = r.body.decode("utf-8")
    assert job["id"] in page and "<svg" in page, page[:300]
    for t in rep["tensors"]:
        assert t["name"] in page, "report page lacks %s" % t["name"]
    check_error(D.get("/v1/jobs/job_nosuch/report.html"), 404, "NOT_FOUND")


@test
def test_job_int8_asymmetric_tensor():
    """int8 per-tensor asymmetric: W_scale [1], W_zero_point I8 [1], within half a step"""
    mid, ts, _ = shared_model()
    job, rep, body, _ = run_job(mid, [{"op": "quantize", "dtype": "int8",
                                       "granularity": "tensor", "symmetric": False}])
    f = h.SafetensorsFile(body)
    reprow = report_by_name(rep)
    for n in QUANTIZED:
        orig = ts[n].decoded()
        assert f[n].dtype == "I8" and f[n].shape == ts[n].shape, (n, f[n].dtype)
        sc, zp = f[n + "_scale"], f[n + "_zero_point"]
        assert sc.dtype == "F32" and sc.shape == [1], (n, sc.dtype, sc.shape)
        assert zp.dtype == "I8" and zp.shape == [1], (n, zp.dtype, zp.shape)
        s, z = sc.decoded()[0], zp.decoded()[0]
        lo, hi = min(min(orig), 0.0), max(max(orig), 0.0)
        assert abs(s - (hi - lo) / 255) <= 1e-5 * s, (n, s, (hi - lo) / 255)
        q = h.decode("I8", f[n].raw)
        assert min(q) >= -128 and max(q) <= 127
        assert min(q) <= -127 and max(q) >= 126, "%s: range not used (%d..%d)" % (
            n, min(q), max(q))
        deq = [(qq - z) * s for qq in q]
        worst = max(abs(a - b) for a, b in zip(orig, deq))
        assert worst <= 0.5 * s * 1.001 + 1e-7, "%s: error %.3g > half step %.3g" % (
            n, worst, s / 2)
        err = h.rel_error(orig, deq)
        assert err < 0.015, (n, err)
        assert abs(reprow[n]["rel_error"] - err) <= 1e-6 + 1e-4 * err, (reprow[n], err)
        assert reprow[n]["bytes_after"] == h.numel(ts[n].shape) + 4 + 1, reprow[n]
    for n in COPIED:
        assert f[n].raw == ts[n].raw, n
    assert set(f.names()) == set(COPIED) | {n + s for n in QUANTIZED
                                            for s in ("", "_scale", "_zero_point")}


@test
def test_job_int8_channel_asymmetric():
    """int8 channel asymmetric: W_zero_point I8 [rows, 1]"""
    mid, ts, _ = shared_model()
    job, rep, body, _ = run_job(mid, [{"op": "quantize", "dtype": "int8",
                                       "symmetric": False}])      # channel is the default
    f = h.SafetensorsFile(body)
    for n in QUANTIZED:
        rows, cols = row_view(ts[n])
        sc, zp = f[n + "_scale"], f[n + "_zero_point"]
        assert sc.shape == [rows, 1] and zp.shape == [rows, 1] and zp.dtype == "I8", (
            n, sc.shape, zp.shape, zp.dtype)
        q, s, z = h.decode("I8", f[n].raw), sc.decoded(), zp.decoded()
        deq = [(qq - z[i // cols]) * s[i // cols] for i, qq in enumerate(q)]
        err = h.rel_error(ts[n].decoded(), deq)
        assert err < 0.01, (n, err)


@test
def test_job_fp16_bf16():
    """fp16 / bf16 jobs: floating matrices become F16 / BF16, rounded to nearest even"""
    mid, ts, _ = shared_model()
    for dtype, st_dtype, enc in (("fp16", "F16", h.f16_bytes), ("bf16", "BF16", h.bf16_bytes)):
        job, rep, body, _ = run_job(mid, [{"op": "quantize", "dtype": dtype}])
        f = h.SafetensorsFile(body)
        assert f.names() == set(ts.keys()), (dtype, sorted(f.names()))
        reprow = report_by_name(rep)
        for n in QUANTIZED:
            assert f[n].dtype == st_dtype and f[n].shape == ts[n].shape, (n, f[n].dtype)
            want = enc(ts[n].decoded())
            assert f[n].raw == want, "%s %s: not round-to-nearest-even of the original" % (
                dtype, n)
            assert reprow[n]["dtype_after"] == st_dtype, reprow[n]
            assert reprow[n]["bytes_after"] == 2 * h.numel(ts[n].shape), reprow[n]
            err = h.rel_error(ts[n].decoded(), f[n].decoded())
            if err == 0:
                assert reprow[n]["rel_error"] == 0 and reprow[n]["snr_db"] is None, reprow[n]
            else:
                assert abs(reprow[n]["rel_error"] - err) <= 1e-6 + 1e-4 * err, (reprow[n], err)
                assert err < (0.001 if dtype == "fp16" else 0.005), (dtype, n, err)
        for n in COPIED:
            assert f[n].raw == ts[n].raw, (dtype, n)
        q = json.loads(f.metadata["slimd.quantization"])
        qs = q if isinstance(q, list) else [q]
        assert any(x.get("dtype") == dtype for x in qs), q


@test
def test_job_dequantize_output():
    """"output": {"dequantize": true} writes plain F32 (q * scale), no scale tensors"""
    mid, ts, _ = shared_model()
    job, rep, body, _ = run_job(mid, [INT8_CH], output={"dequantize": True})
    f = h.SafetensorsFile(body)
    assert f.names() == set(ts.keys()), sorted(f.names())
    reprow = report_by_name(rep)
    for n in QUANTIZED:
        rows, cols = row_view(ts[n])
        assert f[n].dtype == "F32" and f[n].shape == ts[n].shape, (n, f[n].dtype)
        want_q, scales = expect_int8_symmetric(ts[n].decoded(), rows, cols)
        want = [h.f32(qq * scales[i // cols]) for i, qq in enumerate(want_q)]
        got = f[n].decoded()
        bad = [i for i, (a, b) in enumerate(zip(got, want))
               if a != b and abs(a - b) > scales[i // cols] * 1.0001]
        assert not bad, "%s: dequantized values off at %s" % (n, bad[:5])
        mism = sum(1 for a, b in zip(got, want) if a != b)
        assert mism <= max(1, len(got) // 1000), (n, mism)
        assert reprow[n]["dtype_after"] == "F32", reprow[n]
        assert reprow[n]["bytes_after"] == 4 * h.numel(ts[n].shape), reprow[n]
        assert 0 < reprow[n]["rel_error"] < 0.01, reprow[n]
    for n in COPIED:
        assert f[n].raw == ts[n].raw, n


@test
def test_job_include_exclude():
    """include/exclude globs choose the tensors; the rest are copied bit for bit"""
    mid, ts, _ = shared_model()
    job, rep, body, _ = run_job(mid, [{"op": "quantize", "dtype": "int8",
                                       "include": ["layer0.*", "conv.*"],
                                       "exclude": ["conv.*"]}])
    f = h.SafetensorsFile(body)
    assert f["layer0.weight"].dtype == "I8" and "layer0.weight_scale" in f
    for n in ("layer0.bias", "layer1.weight", "layer2.weight", "conv.weight", "norm.weight",
              "positions"):
        assert f[n].dtype == ts[n].dtype and f[n].raw == ts[n].raw, "%s was touched" % n
        assert n + "_scale" not in f, n
    assert report_by_name(rep)["layer0.weight"]["dtype_after"] == "I8"


@test
def test_job_failed():
    """a model with NaN weights: the job fails with an error; report/artifact 409"""
    w = h.gaussian(64, 5)
    w[17] = float("nan")
    data = h.safetensors_bytes([h.Tensor("w", "F32", [8, 8], h.f32_bytes(w))])
    mid = D.upload(data, name="nan").json["id"]
    r = D.submit({"model": mid, "passes": [INT8_CH]})
    job = D.wait_job(r.json["id"])
    check_job_object(job, mid)
    assert job["state"] == "failed", "quantizing NaN weights should fail the job: %s" % job
    assert isinstance(job["error"], dict) and job["error"]["code"] == "NUMERIC_ERROR", job
    assert job["error"]["message"] and job["error_message"] == job["error"]["message"], job
    check_error(D.get("/v1/jobs/%s/report" % job["id"]), 409, "CONFLICT")
    check_error(D.get("/v1/jobs/%s/artifact" % job["id"]), 409, "CONFLICT")
    check_error(D.request("POST", "/v1/jobs/%s/cancel" % job["id"]), 409, "CONFLICT")
    assert tmp_entries() == [], tmp_entries()


# ---------------------------------------------------------------- jobs: errors

@test
def test_spec_errors():
    """bad specs: 400 INVALID_SPEC naming the field, 404 for a missing model; nothing queued"""
    mid, _, _ = shared_model()
    before = job_total()

    def bad(spec, status, code, *contains, raw=None):
        if raw is not None:
            r = D.request("POST", "/v1/jobs", body=raw,
                          headers={"Content-Type": "application/json"})
        else:
            r = D.post_json("/v1/jobs", spec)
        check_error(r, status, code, list(contains))

    q = dict(INT8_CH)
    bad({"model": mid, "passes": [{"op": "prun", "sparsity": 0.5}]}, 400, "INVALID_SPEC",
        "passes[0].op", "prun")
    bad({"model": mid, "passes": [dict(q, bits=8)]}, 400, "INVALID_SPEC", "passes[0]", "bits")
    bad({"model": mid, "passes": [dict(q, dtype="int3")]}, 400, "INVALID_SPEC",
        "passes[0]", "dtype")
    bad({"model": mid, "passes": [dict(q, dtype=8)]}, 400, "INVALID_SPEC", "dtype")
    bad({"model": mid, "passes": [dict(q, granularity="row")]}, 400, "INVALID_SPEC",
        "passes[0]", "granularity")
    bad({"model": mid, "passes": [dict(q, symmetric="yes")]}, 400, "INVALID_SPEC",
        "symmetric")
    bad({"model": mid, "passes": [{"op": "quantize"}]}, 400, "INVALID_SPEC", "dtype")
    bad({"model": mid, "passes": [dict(q, include="*.weight")]}, 400, "INVALID_SPEC",
        "include")
    bad({"model": mid, "passes": [q, {"op": "quantize", "dtype": "int8", "size": 1}]}, 400,
        "INVALID_SPEC", "passes[1]")
    bad({"model": mid, "passes": [{"dtype": "int8"}]}, 400, "INVALID_SPEC", "op")
    bad({"passes": [q]}, 400, "INVALID_SPEC", "model")
    bad({"model": 42, "passes": [q]}, 400, "INVALID_SPEC", "model")
    bad({"model": mid, "passes": []}, 400, "INVALID_SPEC", "passes")
    bad({"model": mid}, 400, "INVALID_SPEC", "passes")
    bad({"model": mid, "passes": {"op": "quantize"}}, 400, "INVALID_SPEC", "passes")
    bad({"model": mid, "passes": [q], "colour": "red"}, 400, "INVALID_SPEC", "colour")
    bad({"model": mid, "passes": [q], "output": {"dequantize": "yes"}}, 400, "INVALID_SPEC",
        "dequantize")
    bad({"model": mid, "passes": [q], "output": {"zip": True}}, 400, "INVALID_SPEC", "zip")
    bad(None, 400, "INVALID_SPEC", raw=b'{"model": "%s", "passes": [' % mid.encode())
    bad(None, 400, "INVALID_SPEC", raw=b"")
    bad(None, 400, "INVALID_SPEC", raw=b'["not", "an", "object"]')
    bad({"model": "mdl_nosuchmodel", "passes": [q]}, 404, "NOT_FOUND", "mdl_nosuchmodel")
    assert job_total() == before, "a rejected spec created a job"


# ---------------------------------------------------------------- jobs: listing

@test
def test_job_list_and_filters():
    """GET /v1/jobs: newest first, ?state= filter, bad state 400, limit/offset paging"""
    mid, _, _ = shared_model()
    ids = [D.submit({"model": mid, "passes": [{"op": "quantize", "dtype": d}]}).json["id"]
           for d in ("fp16", "bf16", "int8")]
    for j in ids:
        assert D.wait_job(j)["state"] == "succeeded"
    r = D.get("/v1/jobs?limit=1000")
    assert r.status == 200, r
    for k in ("jobs", "total", "limit", "offset"):
        assert k in r.json, r.json
    jobs = r.json["jobs"]
    assert r.json["total"] == len(jobs) and r.json["offset"] == 0, r.json
    pos = [[j["id"] for j in jobs].index(i) for i in ids]
    assert pos[2] < pos[1] < pos[0], "not newest first: positions %s" % pos
    assert pos[2] == 0, "the newest job is not first"
    for j in jobs:
        check_job_object(j, listed=True)
    times = [j["created_at"] for j in jobs]
    assert times == sorted(times, reverse=True), "created_at not descending"

    r = D.get("/v1/jobs?state=succeeded&limit=1000")
    assert r.status == 200, r
    succ = r.json["jobs"]
    assert succ and all(j["state"] == "succeeded" for j in succ), [j["state"] for j in succ]
    assert set(ids) <= {j["id"] for j in succ}
    assert r.json["total"] == sum(1 for j in jobs if j["state"] == "succeeded"), r.json["total"]
    r = D.get("/v1/jobs?state=canceled&limit=1000")
    assert r.status == 200 and all(j["state"] == "canceled" for j in r.json["jobs"]), r

    r = D.get("/v1/jobs?limit=1&offset=1")
    assert r.status == 200, r
    assert r.json["limit"] == 1 and r.json["offset"] == 1, r.json
    assert r.json["total"] == len(jobs), r.json
    assert [j["id"] for j in r.json["jobs"]] == [jobs[1]["id"]], r.json
    r = D.get("/v1/jobs?limit=2&offset=%d" % (len(jobs) + 5))
    assert r.status == 200 and r.json["jobs"] == [], r

    check_error(D.get("/v1/jobs?state=bogus"), 400, "INVALID_ARGUMENT", "state")
    check_error(D.get("/v1/jobs?limit=0"), 400, "INVALID_ARGUMENT", "limit")
    check_error(D.get("/v1/jobs?limit=ten"), 400, "INVALID_ARGUMENT", "limit")
    check_error(D.get("/v1/jobs?offset=-1"), 400, "INVALID_ARGUMENT", "offset")


@test
def test_job_not_found_and_finished_conflicts():
    """unknown job 404 everywhere; cancel of a finished job 409"""
    for path in ("/v1/jobs/job_nosuch", "/v1/jobs/job_nosuch/report",
                 "/v1/jobs/job_nosuch/artifact"):
        check_error(D.get(path), 404, "NOT_FOUND")
    check_error(D.request("POST", "/v1/jobs/job_nosuch/cancel"), 404, "NOT_FOUND")
    mid, _, _ = shared_model()
    job, _, _, _ = run_job(mid, [{"op": "quantize", "dtype": "bf16"}])
    check_error(D.request("POST", "/v1/jobs/%s/cancel" % job["id"]), 409, "CONFLICT")
    again = D.get("/v1/jobs/" + job["id"]).json
    assert again["state"] == "succeeded" and again["cancel_requested"] is False, again


# ---------------------------------------------------------------- cancel, delete while busy

@test
def test_cancel_queued_and_running():
    """--workers 1: queued job cancels at once; running one is canceled within 2 s; DELETE 409 while busy"""
    data = big_model()
    mid = D.upload(data, name="big").json["id"]
    ids = [D.submit({"model": mid, "passes": [INT8_CH]}).json["id"] for _ in range(5)]
    last = ids[-1]
    j = D.get("/v1/jobs/" + last).json
    assert j["state"] == "queued", "with --workers 1 the fifth job must wait: %s" % j
    check_job_object(j, mid)
    assert j["started_at"] is None and j["progress"] == 0, j
    check_error(D.get("/v1/jobs/%s/report" % last), 409, "CONFLICT")
    check_error(D.get("/v1/jobs/%s/artifact" % last), 409, "CONFLICT")
    check_error(D.request("DELETE", "/v1/models/" + mid), 409, "CONFLICT")

    r = D.request("POST", "/v1/jobs/%s/cancel" % last)
    assert r.status == 200, r
    assert r.json["id"] == last and r.json["state"] == "canceled", r.json
    j = D.get("/v1/jobs/" + last).json
    check_job_object(j, mid)
    assert j["state"] == "canceled" and j["started_at"] is None, j
    check_error(D.request("POST", "/v1/jobs/%s/cancel" % last), 409, "CONFLICT")

    # catch one of the others while it runs, and cancel it
    canceled = None
    saw_running = []
    deadline = time.time() + 60
    while canceled is None and time.time() < deadline:
        states = {}
        for jid in ids[:-1]:
            jj = D.get("/v1/jobs/" + jid).json
            states[jid] = jj["state"]
            if jj["state"] != "running":
                continue
            saw_running.append(jj)
            if len(saw_running) == 1:
                # a model in use by a running job cannot go either
                check_error(D.request("DELETE", "/v1/models/" + mid), 409, "CONFLICT")
            r = D.request("POST", "/v1/jobs/%s/cancel" % jid)
            if r.status == 409:          # it finished in between: try the next
                continue
            assert r.status == 200, r
            assert r.json["state"] == "canceled" or r.json["cancel_requested"] is True, r.json
            t0 = time.time()
            jj = D.wait_job(jid, timeout=10, interval=0.02)
            took = time.time() - t0
            assert jj["state"] == "canceled", "running job not canceled: %s" % jj
            assert took < 2.0, "cancel of a running job took %.2fs" % took
            check_job_object(jj, mid)
            canceled = jid
            break
        if all(s in TERMINAL for s in states.values()):
            break
        time.sleep(0.01)
    assert canceled, "never caught a job running to cancel it (states: %s)" % states
    for jj in saw_running:
        assert 0 <= jj["progress"] <= 1 and jj["started_at"] is not None, jj
        assert jj["stage"] is None or isinstance(jj["stage"], str), jj
    check_error(D.get("/v1/jobs/%s/report" % canceled), 409, "CONFLICT")
    check_error(D.get("/v1/jobs/%s/artifact" % canceled), 409, "CONFLICT")
    for jid in ids:
        jj = D.wait_job(jid, timeout=60)
        want = ("canceled",) if jid in (canceled, last) else ("succeeded",)
        assert jj["state"] in want, (jid, jj)
    assert tmp_entries() == [], "tmp/ not empty after a canceled job: %s" % tmp_entries()
    _big["id"] = mid
    _big["jobs"] = ids


@test
def test_sigterm_during_job():
    """SIGTERM while a job runs: exit 0; after restart the job ends succeeded with a good artifact"""
    data = big_model()
    mid = D.upload(data, name="big-again").json["id"]
    jid = D.submit({"model": mid, "passes": [INT8_CH]}).json["id"]
    D.wait_job(jid, states=("running",) + TERMINAL, timeout=30, interval=0.01)
    D.restart()                      # asserts exit status 0
    job = D.wait_job(jid, timeout=60)
    assert job["state"] == "succeeded", "job interrupted by SIGTERM did not complete: %s" % job
    art = D.get("/v1/jobs/%s/artifact" % jid)
    assert art.status == 200 and hashlib.sha256(art.body).hexdigest() == \
        job["artifact"]["sha256"], art
    f = h.SafetensorsFile(art.body)
    assert f["big.weight"].dtype == "I8" and f["big.weight_scale"].shape == [3000, 1]


@test
def test_crash_requeues_running_job():
    """kill -9 while a job runs: on restart it is re-queued (attempts 2) and succeeds"""
    mid = D.upload(big_model(), name="big-crash").json["id"]
    jid = D.submit({"model": mid, "passes": [INT8_CH]}).json["id"]
    job = D.wait_job(jid, states=("running",) + TERMINAL, timeout=30, interval=0.01)
    if job["state"] != "running":
        h.skip("the job finished before it could be interrupted")
    D.kill()                         # SIGKILL: no chance to re-queue it itself
    D.start()
    assert "re-queued" in D.stderr_text(), D.stderr_tail()
    job = D.wait_job(jid, timeout=60)
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2, job
    art = D.get("/v1/jobs/%s/artifact" % jid)
    assert hashlib.sha256(art.body).hexdigest() == job["artifact"]["sha256"]
    assert tmp_entries() == [], tmp_entries()


@test
def test_delete_model_after_jobs():
    """DELETE a model whose jobs are all finished: 204, then 404; the jobs stay readable"""
    mid = _big.get("id")
    if not mid:
        h.skip("the cancel test did not leave its model")
    r = D.request("DELETE", "/v1/models/" + mid)
    assert r.status == 204, r
    check_error(D.get("/v1/models/" + mid), 404, "NOT_FOUND")
    for jid in _big["jobs"]:
        r = D.get("/v1/jobs/" + jid)
        assert r.status == 200 and r.json["state"] in TERMINAL, r


# ---------------------------------------------------------------- routing

@test
def test_method_not_allowed_and_unknown_paths():
    """wrong method: 405 METHOD_NOT_ALLOWED with Allow; unknown path: 404 NOT_FOUND"""
    mid, _, _ = shared_model()
    cases = [("PUT", "/v1/models", {"GET", "POST"}),
             ("DELETE", "/v1/jobs", {"GET", "POST"}),
             ("POST", "/v1/health", {"GET"}),
             ("PATCH", "/v1/models/" + mid, {"GET", "DELETE"}),
             ("GET", "/v1/jobs/job_x/cancel", {"POST"}),
             ("POST", "/metrics", {"GET"})]
    for method, path, allowed in cases:
        r = D.request(method, path, body=b"" if method in ("PUT", "POST", "PATCH") else None)
        check_error(r, 405, "METHOD_NOT_ALLOWED")
        allow = {m.strip() for m in (r.header("Allow") or "").split(",") if m.strip()}
        assert allowed <= allow, "%s %s: Allow %r lacks %s" % (method, path, r.header("Allow"),
                                                                allowed)
        assert method not in allow, (method, path, allow)
    for path in ("/v1/nope", "/v2/models", "/v1/models/%s/nope" % mid, "/v1/jobs/x/y/z",
                 "/favicon.ico.nope"):
        check_error(D.get(path), 404, "NOT_FOUND")


@test
def test_dashboard():
    """GET / serves an HTML page"""
    r = D.get("/")
    assert r.status == 200, r
    assert r.header("Content-Type", "").startswith("text/html"), r.headers
    assert b"<html" in r.body.lower() or b"<!doctype html" in r.body.lower(), r.body[:200]


# ---------------------------------------------------------------- metrics, logs

# label values are quoted and may hold braces (route="/v1/jobs/{id}")
METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})?'
                         r'\s+(\S+)(\s+\d+)?$')


def scrape():
    r = D.get("/metrics")
    assert r.status == 200, r
    assert r.header("Content-Type", "").startswith("text/plain"), r.headers
    samples = {}
    for line in r.body.decode().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        assert m, "not Prometheus text: %r" % line
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


@test
def test_metrics():
    """GET /metrics: slimd_jobs{state=...} match the job list; request counter grows"""
    s = scrape()
    for state in ("queued", "running", "succeeded", "failed", "canceled"):
        key = 'slimd_jobs{state="%s"}' % state
        assert key in s, "metrics lack %s: %s" % (key, sorted(s)[:30])
        assert s[key] == job_total(state), (key, s[key], job_total(state))
    assert s['slimd_jobs{state="succeeded"}'] >= 5
    req = [k for k in s if k.startswith("slimd_http_requests_total")]
    assert req, "no slimd_http_requests_total: %s" % sorted(s)
    n1 = sum(s[k] for k in req)
    for _ in range(5):
        D.get("/v1/health")
    time.sleep(0.2)               # counted when the request completes
    s2 = scrape()
    n2 = sum(v for k, v in s2.items() if k.startswith("slimd_http_requests_total"))
    assert n2 >= n1 + 5, (n1, n2)


@test
def test_one_log_line_per_request():
    """stderr: exactly one line per request (method, path, status), and job state changes"""
    marker = "zz" + uuid.uuid4().hex[:12]
    for _ in range(3):
        check_error(D.get("/v1/" + marker), 404, "NOT_FOUND")
    mid, _, _ = shared_model()
    job, _, _, _ = run_job(mid, [{"op": "quantize", "dtype": "fp16"}])
    time.sleep(0.3)
    text = D.stderr_text()
    lines = [ln for ln in text.splitlines() if marker in ln]
    assert len(lines) == 3, "expected 3 log lines for 3 requests, got %d:\n%s" % (
        len(lines), "\n".join(lines))
    for ln in lines:
        assert "GET" in ln and "404" in ln, ln
    jl = [ln for ln in text.splitlines() if job["id"] in ln and "/v1/jobs" not in ln]
    assert any("succeeded" in ln for ln in jl), \
        "no log line of job %s succeeding:\n%s" % (job["id"], "\n".join(jl))


# ---------------------------------------------------------------- restart

def snapshot():
    models = D.get("/v1/models?limit=1000").json
    jobs = D.get("/v1/jobs?limit=1000").json
    snap = {"models": models, "jobs": jobs, "files": {}, "reports": {}, "artifacts": {}}
    for m in models["models"]:
        r = D.get("/v1/models/%s/file" % m["id"])
        assert r.status == 200, r
        snap["files"][m["id"]] = hashlib.sha256(r.body).hexdigest()
    for j in jobs["jobs"]:
        assert j["state"] in TERMINAL, "job still active before restart: %s" % j
        if j["state"] == "succeeded":
            r = D.get("/v1/jobs/%s/report" % j["id"])
            assert r.status == 200, r
            snap["reports"][j["id"]] = r.json
            r = D.get("/v1/jobs/%s/artifact" % j["id"])
            assert r.status == 200, r
            snap["artifacts"][j["id"]] = (hashlib.sha256(r.body).hexdigest(),
                                          r.header("ETag"))
    return snap


@test
def test_restart_keeps_everything():
    """SIGTERM exits 0; on the same data dir every model, job, report and artifact is identical"""
    before = snapshot()
    assert len(before["models"]["models"]) >= 5 and len(before["reports"]) >= 5, \
        "too little state to make the test meaningful"
    D.restart()
    after = snapshot()
    assert after["models"] == before["models"], "model list changed across restart"
    assert after["jobs"] == before["jobs"], "job list changed across restart"
    assert after["files"] == before["files"], "model files changed across restart"
    assert after["reports"] == before["reports"], "reports changed across restart"
    assert after["artifacts"] == before["artifacts"], "artifacts changed across restart"
    for jid, (sha, etag) in after["artifacts"].items():
        assert etag == '"%s"' % sha, (jid, etag, sha)
    # and it still works
    mid, _, _ = shared_model()
    run_job(mid, [INT8_CH])


if __name__ == "__main__":
    h.run(setup=setup, teardown=teardown, daemons=lambda: [D] if D else [])
