#!/usr/bin/env python3
"""test_ci.py - what CI scripts rely on (issue 10): ?wait, the event
stream, webhooks, quality gates, error codes on failed jobs and the
report's warnings.

- GET /v1/jobs/{id}?wait=S answers when the job ends or S passes; 50
  clients waiting at once all get their answer while other requests stay
  fast; bad values are a 400 naming `wait`.
- GET /v1/jobs/{id}/events is read line by line with http.client: the
  current state first, ids that grow (and continue from Last-Event-ID),
  progress at most every 250 ms with an ETA, an `end` event with the
  final job, then the stream closes.
- Webhooks go to an http.server on loopback: signed with HMAC-SHA256 over
  "<timestamp>.<body>", retried after failures (a receiver that fails
  twice, then answers 200), and kept across a restart.
- Gates: a missed gate fails the job with GATE_FAILED naming the gate,
  its value and bound; report and artifact stay; accuracy gates on an
  ONNX model with a dataset; the spec checks.
- error {code, message} on failed and canceled jobs; warnings[] for a
  selection that matched nothing, a skipped tensor, a 2:4 pattern that a
  later lowrank broke, a tensor pruned to nothing.

Run by hand:  SLIMD_BIN=./slimd /usr/bin/python3 tests/integration/test_ci.py
"""

import hashlib
import hmac
import http.client
import http.server
import json
import os
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
from slimd_harness import check_error, test  # noqa: E402

SRC = os.environ.get("SLIMD_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(SRC, "tests", "fixtures")
SECRET = "s3cret-for-tests"
SIGN_EXP = bytes(0x3F if b < 128 else 0xBF for b in range(256))
MANT_HI = bytes(0x80 | (b & 0x7F) for b in range(256))

D = None          # workers=1: a slow job keeps others queued
SMALL = None      # a small model id
SLOW = None       # a model whose exact SVD takes a few seconds (12 x 0.3 s here, idle)
WORK = None


def random_f32(n):
    """n float32, uniform in +-[1, 2): full rank as a matrix."""
    r = bytearray(os.urandom(4 * n))
    r[3::4] = r[3::4].translate(SIGN_EXP)
    r[2::4] = r[2::4].translate(MANT_HI)
    return bytes(r)


def setup():
    global D, SMALL, SLOW, WORK
    WORK = h.make_tmpdir("slimd-ci-")
    secret_file = os.path.join(WORK, "secret")
    with open(secret_file, "w") as f:
        f.write(SECRET + "\n")
    D = h.Daemon(workers=1, args=["--webhook-secret-file", secret_file])
    D.start()
    SMALL = D.upload(h.safetensors_bytes([
        h.t_f32("layers.0.weight", [64, 64], 1), h.t_f32("layers.0.bias", [64], 2),
        h.t_f32("layers.1.weight", [32, 64], 3), h.t_f32("tiny.weight", [2, 2], 4)]),
        name="small").json["id"]
    SLOW = D.upload(h.safetensors_bytes([
        h.Tensor("layers.%d.weight" % i, "F32", [768, 768], random_f32(768 * 768))
        for i in range(12)]), name="slow").json["id"]


def slow_spec():
    return {"model": SLOW, "passes": [{"op": "lowrank", "rank": 64, "algorithm": "exact"}]}


def run_job(spec):
    r = D.submit(spec)
    return D.get("/v1/jobs/%s?wait=120" % r.json["id"], timeout=150).json


# ------------------------------------------------------------------ ?wait

@test
def test_wait_bad_values():
    jid = D.submit({"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}]}).json["id"]
    for bad in ("abc", "-1", "301", "", "1e9", "nan", "5s"):
        r = D.get("/v1/jobs/%s?wait=%s" % (jid, bad))
        check_error(r, 400, "INVALID_ARGUMENT", "wait")
    r = D.get("/v1/jobs/job_nope?wait=1")
    check_error(r, 404, "NOT_FOUND")
    j = D.get("/v1/jobs/%s?wait=60" % jid).json
    assert j["state"] == "succeeded", j
    t0 = time.monotonic()
    j2 = D.get("/v1/jobs/%s?wait=300" % jid).json     # already over: at once
    assert time.monotonic() - t0 < 1.0 and j2["state"] == "succeeded", j2


@test
def test_wait_times_out_on_queued_job():
    slow = D.submit(slow_spec()).json["id"]
    queued = D.submit({"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}]}).json["id"]
    t0 = time.monotonic()
    j = D.get("/v1/jobs/%s?wait=1" % queued).json
    took = time.monotonic() - t0
    assert j["state"] == "queued", j
    assert 0.9 <= took < 3.0, took
    t0 = time.monotonic()
    j = D.get("/v1/jobs/%s?wait=0.5" % queued).json
    assert j["state"] == "queued" and 0.4 <= time.monotonic() - t0 < 2.5, j
    # a wait that ends when the job does, not at its bound
    j = D.get("/v1/jobs/%s?wait=120" % slow, timeout=150).json
    assert j["state"] == "succeeded", j
    j = D.get("/v1/jobs/%s?wait=60" % queued, timeout=90).json
    assert j["state"] == "succeeded", j


@test
def test_fifty_waiters():
    """50 clients wait on one job at once; each gets the finished job,
    and /v1/health and GET /v1/jobs answer fast meanwhile."""
    jid = D.submit(slow_spec()).json["id"]
    results, errors = {}, []

    def waiter(i):
        try:
            r = D.get("/v1/jobs/%s?wait=200" % jid, timeout=240)
            results[i] = (r.status, r.json["state"], time.monotonic())
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    lat = []
    while D.get("/v1/jobs/" + jid).json["state"] in ("queued", "running"):
        t0 = time.monotonic()
        assert D.get("/v1/health").status == 200
        assert D.get("/v1/jobs?limit=5").status == 200
        lat.append(time.monotonic() - t0)
        time.sleep(0.1)
    ended = time.monotonic()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert len(results) == 50, len(results)
    assert all(s == 200 and st == "succeeded" for s, st, _ in results.values()), results
    late = max(at for _, _, at in results.values()) - ended
    assert late < 2.0, "a waiter answered %.2f s after the job ended" % late
    assert lat and max(lat) < 1.0, "other requests took up to %.3f s" % max(lat)
    h._diag("50 waiters: the last answered %.2f s after a poller saw the end; health+list while waiting "
            "max %.0f ms over %d probes" % (late, max(lat) * 1000, len(lat)))


# ------------------------------------------------------------------ events

def sse(jid, headers=None):
    """Reads a job's event stream to its end, line by line as it comes:
    [(id, event, data, monotonic time of arrival)]."""
    conn = http.client.HTTPConnection("127.0.0.1", D.port, timeout=120)
    conn.request("GET", "/v1/jobs/%s/events" % jid, headers=headers or {})
    r = conn.getresponse()
    assert r.status == 200, (r.status, r.read())
    assert r.headers["Content-Type"].startswith("text/event-stream"), r.headers
    events, cur, buf = [], {}, b""
    while True:
        chunk = r.read1(65536)      # decodes the chunked body as it comes
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            line = line.decode()
            if line.startswith(":"):
                continue
            if line == "":
                if cur:
                    events.append((int(cur["id"]), cur["event"], json.loads(cur["data"]),
                                   time.monotonic()))
                    cur = {}
            else:
                k, _, v = line.partition(": ")
                cur[k] = v
    conn.close()
    return events


@test
def test_events_stream():
    jid = D.submit(slow_spec()).json["id"]
    events = sse(jid)
    names = [e[1] for e in events]
    assert names[0] == "state" and names[-1] == "end", names
    ids = [e[0] for e in events]
    assert ids == list(range(1, len(ids) + 1)), ids
    states = [e[2]["state"] for e in events if e[1] == "state"]
    assert "running" in states, names
    assert events[-1][2]["state"] == "succeeded" and "artifact" in events[-1][2], events[-1]
    prog = [e for e in events if e[1] == "progress"]
    assert len(prog) >= 3, names
    ps = [e[2]["progress"] for e in prog]
    assert ps == sorted(ps), ps
    gaps = [b[3] - a[3] for a, b in zip(prog, prog[1:])]
    # at most one per 250 ms: arrival times carry the reader's jitter (a
    # late read, then a prompt one), so the count over the span is checked
    span = prog[-1][3] - prog[0][3]
    assert len(prog) - 1 <= span / 0.25 + 1 and min(gaps) >= 0.1, gaps
    etas = [e[2]["eta_seconds"] for e in prog if e[2]["eta_seconds"] is not None]
    assert etas and all(x >= 0 for x in etas), prog[:3]
    assert any(e[1] == "stage" for e in events) or len(set(
        e[2]["stage"] for e in events if e[1] != "end")) >= 1, names
    h._diag("events: %d (%s), %d progress, ETA first %.1f s" % (
        len(events), ",".join(sorted(set(names))), len(prog), etas[0]))


@test
def test_events_finished_and_last_event_id():
    jid = D.submit({"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}]}).json["id"]
    D.get("/v1/jobs/%s?wait=60" % jid)
    events = sse(jid, {"Last-Event-ID": "41"})
    assert [e[1] for e in events] == ["state", "end"], events
    assert [e[0] for e in events] == [42, 43], events
    assert events[0][2]["state"] == "succeeded" and events[0][2]["eta_seconds"] == 0, events
    check_error(D.get("/v1/jobs/%s/events" % jid, headers={"Last-Event-ID": "x"}), 400,
                "INVALID_ARGUMENT", "Last-Event-ID")
    check_error(D.get("/v1/jobs/job_nope/events"), 404, "NOT_FOUND")
    check_error(D.request("POST", "/v1/jobs/%s/events" % jid), 405)


@test
def test_events_queued_then_canceled():
    slow = D.submit(slow_spec()).json["id"]
    jid = D.submit({"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}]}).json["id"]
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("ev", sse(jid)))
    t.start()
    time.sleep(0.5)
    assert D.request("POST", "/v1/jobs/%s/cancel" % jid).status == 200
    t.join(30)
    ev = out["ev"]
    assert ev[0][1] == "state" and ev[0][2]["state"] == "queued", ev
    assert ev[-1][1] == "end" and ev[-1][2]["state"] == "canceled", ev
    assert ev[-1][2]["error"]["code"] == "CANCELED", ev[-1]
    D.request("POST", "/v1/jobs/%s/cancel" % slow)


@test
def test_events_and_wait_need_the_job_scope():
    """/events and ?wait answer only who may GET the job: no token 401,
    another submit token's job 404, the owner and an admin 200."""
    import subprocess
    data = h.make_tmpdir("slimd-ci-auth-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMD_")}

    def token(scope, name):
        p = subprocess.run([h.slimd_bin(), "token", "create", "--scope", scope, "--name", name,
                            "--data-dir", data] + h.store_flags(data), capture_output=True,
                           text=True, env=env,
                           timeout=30)
        assert p.returncode == 0, p.stderr
        return {"Authorization": "Bearer " + p.stdout.strip()}

    alice, bob, admin = token("read,submit", "alice"), token("read,submit", "bob"), \
        token("admin", "admin")
    d = h.Daemon(data_dir=data, workers=1, args=["--auth", "token"], name="auth").start()
    try:
        r = d.request("POST", "/v1/models", body=h.safetensors_bytes(
            [h.t_f32("w.weight", [16, 32], 1)]), headers=dict(
            alice, **{"Content-Type": "application/octet-stream"}))
        assert r.status == 201, r
        r = d.post_json("/v1/jobs", {"model": r.json["id"], "passes": [
            {"op": "quantize", "dtype": "int8"}]}, headers=alice)
        jid = r.json["id"]
        check_error(d.get("/v1/jobs/%s/events" % jid), 401, "UNAUTHORIZED")
        check_error(d.get("/v1/jobs/%s?wait=1" % jid), 401, "UNAUTHORIZED")
        check_error(d.get("/v1/jobs/%s/events" % jid, headers=bob), 404, "NOT_FOUND")
        check_error(d.get("/v1/jobs/%s?wait=1" % jid, headers=bob), 404, "NOT_FOUND")
        t0 = time.monotonic()
        j = d.get("/v1/jobs/%s?wait=60" % jid, headers=alice).json
        assert j["state"] == "succeeded", (time.monotonic() - t0, j, d.stderr_tail())
        for who in (alice, admin):
            r = d.get("/v1/jobs/%s/events" % jid, headers=who)
            assert r.status == 200 and b"event: end" in r.body, r
    finally:
        d.stop()


@test
def test_events_keepalive_and_long_wait_past_conn_timeout():
    """--conn-timeout 2: a wait and a stream that last longer still get
    their answer; the stream sends ': keep-alive' comments meanwhile."""
    d = h.Daemon(workers=1, args=["--conn-timeout", "2"], name="short").start()
    try:
        slow = d.upload(h.safetensors_bytes([
            h.Tensor("l%d.weight" % i, "F32", [768, 768], random_f32(768 * 768))
            for i in range(30)])).json["id"]
        small = d.upload(h.safetensors_bytes([h.t_f32("w", [8, 8], 1)])).json["id"]
        # three blockers ahead of b (about 4 s each on an idle machine, so
        # b's stream outlasts --conn-timeout whatever the machine's speed)
        a = [d.post_json("/v1/jobs", {"model": slow, "passes": [
            {"op": "lowrank", "rank": 64, "algorithm": "exact"}]}).json["id"]
            for _ in range(3)]
        b = d.post_json("/v1/jobs", {"model": small, "passes": [
            {"op": "quantize", "dtype": "int8"}]}).json["id"]
        t0 = time.monotonic()
        j = d.get("/v1/jobs/%s?wait=2.5" % b, timeout=30).json
        assert j["state"] == "queued" and time.monotonic() - t0 >= 2.4, j
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120)
        conn.request("GET", "/v1/jobs/%s/events" % b)
        r = conn.getresponse()
        data, t0 = b"", time.monotonic()
        while True:
            chunk = r.read1(65536)
            if not chunk:
                break
            data += chunk
        took = time.monotonic() - t0
        conn.close()
        text = data.decode()
        assert "\x00" not in text, "a NUL byte in the event stream: %r" % text[:300]
        assert text.rstrip().split("\n\n")[-1].startswith("id: "), text[-300:]
        assert "event: end" in text and '"state":"succeeded"' in text.split("event: end")[1], text
        assert took > 2.5 and ": keep-alive" in text, (took, text[:300])
        h._diag("stream of a queued job under --conn-timeout 2: %.1f s, %d keep-alive(s)" % (
            took, text.count(": keep-alive")))
        for jid in a:
            assert d.get("/v1/jobs/%s?wait=60" % jid, timeout=90).json["state"] == "succeeded"
    finally:
        d.stop()


# ------------------------------------------------------------------ webhooks

class Receiver:
    """An HTTP server on loopback recording POSTs; answers `fail` times
    with 500, then 200."""

    def __init__(self, fail=0, port=0):
        self.got, self.fail = [], fail
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rec.got.append((dict(self.headers), body, time.monotonic()))
                code = 500 if rec.fail > 0 else 200
                rec.fail -= 1
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        self.port = self.srv.server_address[1]
        self.url = "http://127.0.0.1:%d/hook" % self.port
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def wait(self, n, timeout=30):
        deadline = time.time() + timeout
        while len(self.got) < n and time.time() < deadline:
            time.sleep(0.05)
        assert len(self.got) >= n, "%d of %d deliveries" % (len(self.got), n)
        return self.got

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def check_signature(headers, body):
    ts = headers["X-Slimd-Timestamp"]
    want = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + body,
                                hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Slimd-Signature"], want), (headers, want)
    assert abs(time.time() - int(ts)) < 120, ts


@test
def test_webhook_signed():
    rx = Receiver()
    try:
        jid = D.submit({"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}],
                        "notify": {"url": rx.url}}).json["id"]
        headers, body, _ = rx.wait(1)[0]
        check_signature(headers, body)
        job = json.loads(body)
        assert job["id"] == jid and job["state"] == "succeeded", job
        assert headers["X-Slimd-Event"] == "job.finished" and headers["X-Slimd-Job"] == jid
        assert headers["Content-Type"] == "application/json"
        # a forged body does not verify
        bad = body.replace(b"succeeded", b"failed")
        try:
            check_signature(headers, bad)
            raise AssertionError("a changed body verified")
        except AssertionError as e:
            assert "verified" not in str(e)
        time.sleep(0.3)
        j = D.get("/v1/jobs/" + jid).json
        assert j["notify"]["state"] == "delivered" and j["notify"]["attempts"] == 1, j["notify"]
        assert j["notify"]["last_status"] == 200, j["notify"]
    finally:
        rx.close()


@test
def test_webhook_retries_then_succeeds():
    rx = Receiver(fail=2)
    try:
        jid = D.submit({"model": SMALL, "passes": [{"op": "prune", "sparsity": 0.5}],
                        "notify": {"url": rx.url}}).json["id"]
        got = rx.wait(3, timeout=40)
        gaps = [b[2] - a[2] for a, b in zip(got, got[1:])]
        assert 0.8 <= gaps[0] < 2.5 and 1.8 <= gaps[1] < 3.5, gaps   # backoff 1 s, then 2 s
        for hdrs, body, _ in got:
            check_signature(hdrs, body)
        assert [g[0]["X-Slimd-Delivery"] for g in got] == ["%s/%d" % (jid, i)
                                                          for i in (1, 2, 3)], got
        time.sleep(0.3)
        n = D.get("/v1/jobs/" + jid).json["notify"]
        assert n["state"] == "delivered" and n["attempts"] == 3, n
        h._diag("webhook: 2 failures then 200; gaps %s s" % ", ".join("%.2f" % g for g in gaps))
    finally:
        rx.close()


@test
def test_webhook_survives_restart_and_fires_on_failure():
    # a port with nobody listening: the first attempt fails, then the
    # daemon stops; after the restart (receiver now up) it is delivered
    rx = Receiver()
    port = rx.port
    rx.close()
    spec = {"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}],
            "notify": {"url": "http://127.0.0.1:%d/later" % port}, "gates": {"min_ratio": 1000}}
    jid = D.submit(spec).json["id"]
    deadline = time.time() + 30
    while time.time() < deadline:
        n = D.get("/v1/jobs/" + jid).json.get("notify", {})
        if n.get("attempts", 0) >= 1:
            break
        time.sleep(0.1)
    assert n["state"] == "pending" and n["attempts"] >= 1 and n["last_error"], n
    D.restart()
    rx = Receiver(port=port)
    try:
        headers, body, _ = rx.wait(1, timeout=30)[-1]
        check_signature(headers, body)
        job = json.loads(body)
        assert job["state"] == "failed" and job["error"]["code"] == "GATE_FAILED", job
    finally:
        rx.close()


@test
def test_notify_validation():
    for notify, frag in ((5, "notify"), ({"url": 5}, "notify.url"), ({}, "notify.url"),
                         ({"url": "ftp://example.com/x"}, "notify.url"),
                         ({"url": "not a url"}, "notify.url"),
                         ({"url": "example.com/hook"}, "notify.url"),
                         ({"url": "http://"}, "notify.url"),
                         ({"url": "https://x.example/" + "a" * 3000}, "notify.url"),
                         ({"url": "http://x.example/", "secret": "s"}, "notify")):
        r = D.post_json("/v1/jobs", {"model": SMALL, "notify": notify,
                                     "passes": [{"op": "quantize", "dtype": "int8"}]})
        check_error(r, 400, "INVALID_SPEC", frag)
    # accepted: https, a port, a query (port 1 on loopback: nobody answers,
    # so the canceled job's webhook fails at once and nothing leaves the host)
    r = D.submit({"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}],
                  "notify": {"url": "https://127.0.0.1:1/hooks/slimd?x=1"}})
    D.request("POST", "/v1/jobs/%s/cancel" % r.json["id"])


@test
def test_webhook_on_cancel():
    rx = Receiver()
    try:
        slow = D.submit(slow_spec()).json["id"]
        jid = D.submit({"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}],
                        "notify": {"url": rx.url}}).json["id"]
        assert D.request("POST", "/v1/jobs/%s/cancel" % jid).status == 200
        headers, body, _ = rx.wait(1)[0]
        check_signature(headers, body)
        job = json.loads(body)
        assert job["id"] == jid and job["state"] == "canceled", job
        assert job["error"] == {"code": "CANCELED", "message": "canceled by request"}, job
        D.request("POST", "/v1/jobs/%s/cancel" % slow)
    finally:
        rx.close()


# ------------------------------------------------------------------ gates

@test
def test_gate_min_ratio_fails_keeps_artifact():
    job = run_job({"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}],
                   "gates": {"min_ratio": 10, "max_rel_error": 0.5}})
    assert job["state"] == "failed", job
    e = job["error"]
    assert e["code"] == "GATE_FAILED" and "min_ratio" in e["message"], e
    assert "10" in e["message"] and "under the bound" in e["message"], e
    assert job["error_code"] == "GATE_FAILED" and job["error_message"] == e["message"], job
    assert job["artifact"] and job["artifact"]["bytes"] > 0, job
    rep = D.get("/v1/jobs/%s/report" % job["id"])
    assert rep.status == 200, rep
    gates = {g["gate"]: g for g in rep.json["gates"]}
    assert not gates["min_ratio"]["passed"] and gates["min_ratio"]["bound"] == 10, gates
    assert 3 < gates["min_ratio"]["value"] < 4.1, gates
    assert gates["max_rel_error"]["passed"], gates
    art = D.get("/v1/jobs/%s/artifact" % job["id"])
    assert art.status == 200 and len(art.body) == job["artifact"]["bytes"], art
    assert D.get("/v1/jobs/%s/report.html" % job["id"]).status == 200


@test
def test_gate_max_rel_error_names_tensor():
    job = run_job({"model": SMALL, "passes": [{"op": "quantize", "dtype": "int4"}],
                   "gates": {"max_rel_error": 1e-6}})
    assert job["state"] == "failed" and job["error"]["code"] == "GATE_FAILED", job
    msg = job["error"]["message"]
    assert "max_rel_error" in msg and "tensor '" in msg and "1e-06" in msg, msg
    ok = run_job({"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}],
                  "gates": {"max_rel_error": 0.5, "min_ratio": 2}})
    assert ok["state"] == "succeeded", ok
    rep = D.get("/v1/jobs/%s/report" % ok["id"]).json
    assert all(g["passed"] for g in rep["gates"]), rep["gates"]


@test
def test_gate_validation():
    base = {"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}]}
    for gates, frag in (([1], "gates"), ({"min_ratoi": 2}, "min_ratoi"),
                        ({"min_ratio": 0}, "gates.min_ratio"),
                        ({"max_rel_error": -1}, "gates.max_rel_error"),
                        ({"max_rel_error": "0.1"}, "gates.max_rel_error"),
                        ({"min_accuracy": 0.9}, "gates.min_accuracy"),
                        ({"max_accuracy_drop": 0.01}, "gates.max_accuracy_drop"),
                        ({"min_accuracy": 1.5}, "gates.min_accuracy")):
        r = D.post_json("/v1/jobs", dict(base, gates=gates))
        msg = check_error(r, 400, "INVALID_SPEC", frag)
        if "accuracy" in frag and "1.5" not in json.dumps(gates):
            assert "eval" in msg, msg


@test
def test_accuracy_gates():
    images = os.path.join(FIX, "fashion-test-2000-images-idx3-ubyte.gz")
    labels = os.path.join(FIX, "fashion-test-2000-labels-idx1-ubyte.gz")
    if not os.path.exists(os.path.join(FIX, "mlp.onnx")) or not os.path.exists(images):
        h.skip("needs tests/fixtures/mlp.onnx and the fashion dataset")
    body, ctype = h.multipart([("images", "images.gz", open(images, "rb").read()),
                               ("labels", "labels.gz", open(labels, "rb").read())])
    r = D.request("POST", "/v1/datasets?name=fashion", body=body, headers={"Content-Type": ctype})
    assert r.status == 201, r
    ds = r.json["id"]
    mid = D.upload(open(os.path.join(FIX, "mlp.onnx"), "rb").read(), name="mlp").json["id"]
    spec = {"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}],
            "eval": {"dataset": ds, "max_samples": 500}}
    ok = run_job(dict(spec, gates={"min_accuracy": 0.05, "max_accuracy_drop": 0.5}))
    assert ok["state"] == "succeeded", ok
    rep = D.get("/v1/jobs/%s/report" % ok["id"]).json
    acc = rep["accuracy"]["after"]
    bad = run_job(dict(spec, gates={"min_accuracy": min(1.0, acc + 0.01)}))
    assert bad["state"] == "failed" and bad["error"]["code"] == "GATE_FAILED", bad
    assert "min_accuracy" in bad["error"]["message"] and "%.4f" % acc in bad["error"]["message"], bad
    drop = run_job(dict(spec, passes=[{"op": "quantize", "dtype": "ternary"}],
                        gates={"max_accuracy_drop": 0.0}))
    rep = D.get("/v1/jobs/%s/report" % drop["id"]).json
    d = rep["accuracy"]["before"] - rep["accuracy"]["after"]
    if d > 0:
        assert drop["state"] == "failed" and "max_accuracy_drop" in drop["error"]["message"], drop
    else:
        assert drop["state"] == "succeeded", drop
    h._diag("accuracy gates: int8 top-1 %.4f; ternary drop %.4f" % (acc, d))


# ------------------------------------------------------------------ errors, warnings

@test
def test_error_codes_on_failed_jobs():
    vals = [float(i) for i in range(16)]
    vals[5] = float("nan")
    nan_model = h.safetensors_bytes([h.Tensor("w", "F32", [4, 4], struct.pack("<16f", *vals))])
    mid = D.upload(nan_model, name="nan").json["id"]
    job = run_job({"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}]})
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "NUMERIC_ERROR" and job["error"]["message"], job
    assert job["error_code"] == "NUMERIC_ERROR" and job["error_message"] == job["error"]["message"]
    ok = run_job({"model": SMALL, "passes": [{"op": "quantize", "dtype": "int8"}]})
    assert ok["error"] is None and ok["error_code"] is None, ok
    lst = D.get("/v1/jobs?limit=50").json["jobs"]
    mine = [j for j in lst if j["id"] == job["id"]][0]
    assert mine["error"]["code"] == "NUMERIC_ERROR", mine


@test
def test_warnings():
    job = run_job({"model": SMALL, "passes": [
        {"op": "prune", "pattern": "2:4", "include": ["layers.0.weight"]},
        {"op": "prune", "sparsity": 1.0, "pattern": "rows", "include": ["layers.1.weight"]},
        {"op": "lowrank", "rank": 8, "include": ["layers.0.weight", "tiny.weight"]},
        {"op": "quantize", "dtype": "int8", "include": ["no.such.*"]}]})
    assert job["state"] == "succeeded", job
    rep = D.get("/v1/jobs/%s/report" % job["id"]).json
    w = rep["warnings"]
    assert job["warning_count"] == len(w), (job, w)
    by = {}
    for x in w:
        assert set(x) == {"code", "pass", "op", "tensor", "message"}, x
        by.setdefault(x["code"], []).append(x)
    empty = by["EMPTY_SELECTION"]
    assert [(x["pass"], x["op"]) for x in empty] == [(3, "quantize")], empty
    assert "no.such" in empty[0]["message"], empty
    skipped = by["TENSOR_SKIPPED"]
    assert [(x["tensor"], x["op"], x["pass"]) for x in skipped] == [
        ("tiny.weight", "lowrank", 2)], skipped
    lost = by["PATTERN_LOST"]
    assert [(x["tensor"], x["pass"]) for x in lost] == [("layers.0.weight", 2)], lost
    assert "2:4" in lost[0]["message"] and "lowrank" in lost[0]["message"], lost
    zeroed = by["TENSOR_ZEROED"]
    assert [x["tensor"] for x in zeroed] == ["layers.1.weight"], zeroed
    # a clean job: an empty list and a count of 0
    ok = run_job({"model": SMALL, "passes": [{"op": "prune", "pattern": "2:4"},
                                             {"op": "quantize", "dtype": "int8"}]})
    rep = D.get("/v1/jobs/%s/report" % ok["id"]).json
    assert rep["warnings"] == [] and ok["warning_count"] == 0, (rep["warnings"], ok)


@test
def test_stop_with_waiters_and_streams():
    """SIGTERM with event streams and waiters open: they end at once and
    the daemon exits 0 promptly (the running job is re-queued)."""
    jid = D.submit(slow_spec()).json["id"]
    out, threads = [], []

    def stream():
        try:
            out.append(("sse", len(sse(jid))))
        except Exception as e:   # noqa: BLE001 - the connection may be cut: fine
            out.append(("sse", repr(e)))

    def waiter():
        try:
            out.append(("wait", D.get("/v1/jobs/%s?wait=300" % jid, timeout=60).status))
        except Exception as e:   # noqa: BLE001
            out.append(("wait", repr(e)))

    for fn in (stream, stream, waiter, waiter):
        threads.append(threading.Thread(target=fn))
        threads[-1].start()
    time.sleep(1.0)
    t0 = time.monotonic()
    D.stop(timeout=15)
    took = time.monotonic() - t0
    for t in threads:
        t.join(15)
    assert len(out) == 4 and not any(t.is_alive() for t in threads), out
    # the waiters got the job as it was; the streams ended cleanly
    assert sorted(o[1] for o in out if o[0] == "wait") == [200, 200], out
    assert all(isinstance(o[1], int) and o[1] >= 1 for o in out if o[0] == "sse"), out
    assert took < 8, "stop took %.1f s with waiters open" % took
    D.start()
    j = D.get("/v1/jobs/%s?wait=120" % jid, timeout=150).json
    assert j["state"] == "succeeded", j
    h._diag("stop with 2 streams and 2 waiters open: %.2f s (%s)" % (took, out))


def teardown():
    if D:
        D.stop()


if __name__ == "__main__":
    h.run(setup=setup, teardown=teardown, daemons=lambda: [D])
