#!/usr/bin/env python3
"""test_limits.py - limits against exhaustion (issue 9): connection limits
per address and in total, the request-head deadline and idle timeout
(--conn-timeout) against idle and slowloris sockets, and the caps on what
a client can make the daemon store or return (the job spec's size, list
pages that carry summaries, not blobs).

The flood tests open 1,000+ sockets from 127.0.0.1 and measure
GET /v1/health from 127.0.0.2 (Linux routes all of 127/8 to lo, so a
client socket can bind to it): another client must get its answer within
100 ms.  Each test starts the daemon it needs (their flags differ).

Run by hand:  SLIMD_BIN=./slimd /usr/bin/python3 tests/integration/test_limits.py
"""

import http.client
import json
import os
import resource
import socket
import sys
import time

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
from slimd_harness import check_error, test  # noqa: E402

OTHER = "127.0.0.2"      # the bystander's source address
MiB = 1 << 20


def raise_nofile(need):
    """This process holds the flood's sockets: lift its own soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            h.skip("RLIMIT_NOFILE hard limit %d is below the %d sockets needed" % (hard, want))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def can_bind_other():
    s = socket.socket()
    try:
        s.bind((OTHER, 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def flood(port, n, payload=None):
    """n sockets connected from 127.0.0.1, each having sent payload."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        if payload:
            s.sendall(payload)
        socks.append(s)
    return socks


def still_open(s):
    """True while the server has neither closed nor reset s."""
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def health_from_other(port, n=20):
    """n GET /v1/health, each on a new connection from 127.0.0.2; returns
    the latencies in ms (connect to last byte)."""
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                       source_address=(OTHER, 0))
        try:
            c.request("GET", "/v1/health")
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status
        finally:
            c.close()
        out.append((time.monotonic() - t0) * 1000.0)
    return out


def closed_within(s, seconds):
    """Waits for the server to close s; returns the seconds it took, or
    None if it is still open after `seconds`."""
    t0 = time.monotonic()
    s.settimeout(seconds)
    try:
        while True:
            if s.recv(4096) == b"":
                return time.monotonic() - t0
    except socket.timeout:
        return None
    except OSError:
        return time.monotonic() - t0


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def daemon(name, **env):
    e = {"SLIMD_" + k.upper(): str(v) for k, v in env.items()}
    return h.Daemon(workers=1, name=name, env=e).start()


# ---------------------------------------------------------------- connections

@test
def test_idle_flood_one_address():
    """1,000 idle sockets from 127.0.0.1: 64 held (the per-address cap), the rest closed; 127.0.0.2 answered < 100 ms"""
    if not can_bind_other():
        h.skip("cannot bind a client socket to %s" % OTHER)
    raise_nofile(1000)
    d = daemon("idle")
    socks = []
    try:
        socks = flood(d.port, 1000)
        time.sleep(0.5)         # the daemon accepts (and refuses) them
        lat = health_from_other(d.port)
        h._diag("health from %s with 1,000 idle sockets open: max %.1f ms, median %.1f ms"
                % (OTHER, max(lat), sorted(lat)[len(lat) // 2]))
        assert max(lat) < 100.0, "health took up to %.1f ms: %s" % (max(lat), lat)
        held = sum(1 for s in socks if still_open(s))
        assert held == 64, "%d of 1,000 sockets from one address held, expected 64" % held
        assert d.alive()
    finally:
        close_all(socks)
        d.stop()


@test
def test_idle_flood_past_fd_setsize():
    """--max-conns-per-ip 0: 1,100 idle sockets all held (descriptors past FD_SETSIZE), health still < 100 ms"""
    if not can_bind_other():
        h.skip("cannot bind a client socket to %s" % OTHER)
    raise_nofile(1100)
    d = daemon("fdset", max_conns_per_ip=0, max_conns=2000)
    socks = []
    try:
        socks = flood(d.port, 1100)
        # a socket in the listen backlog looks open too: count what the
        # daemon accepted by its descriptors and threads
        deadline = time.time() + 20
        while time.time() < deadline:
            fds = len(os.listdir("/proc/%d/fd" % d.proc.pid))
            if fds > 1100:
                break
            time.sleep(0.2)
        threads = len(os.listdir("/proc/%d/task" % d.proc.pid))
        assert fds > 1100 and threads > 1100, \
            "daemon has %d descriptors and %d threads for 1,100 sockets" % (fds, threads)
        held = sum(1 for s in socks if still_open(s))
        assert held == 1100, "only %d of 1,100 sockets held" % held
        lat = health_from_other(d.port)
        h._diag("health with 1,100 held connections (%d descriptors, %d threads): max %.1f ms"
                % (fds, threads, max(lat)))
        assert max(lat) < 100.0, "health took up to %.1f ms: %s" % (max(lat), lat)
    finally:
        close_all(socks)
        d.stop()


@test
def test_slowloris_flood():
    """1,000 sockets trickling a request line from 127.0.0.1: 127.0.0.2 answered < 100 ms throughout"""
    if not can_bind_other():
        h.skip("cannot bind a client socket to %s" % OTHER)
    raise_nofile(1000)
    d = daemon("slowloris")
    socks = []
    try:
        socks = flood(d.port, 1000, b"GET /v1/hea")
        worst = 0.0
        for step, byte in enumerate(b"lth HTTP/1.1\r\nHost: x\r\n"[:6]):
            for s in socks:
                try:
                    s.send(bytes([byte]))
                except OSError:
                    pass        # one the per-address cap closed
            lat = health_from_other(d.port, n=5)
            worst = max(worst, max(lat))
            time.sleep(0.3)
        h._diag("health from %s during the slowloris flood: max %.1f ms" % (OTHER, worst))
        assert worst < 100.0, "health took up to %.1f ms" % worst
    finally:
        close_all(socks)
        d.stop()


@test
def test_head_deadline_and_idle_timeout():
    """--conn-timeout 2: idle, trickling and kept-alive-idle connections are closed after ~2 s; a whole request in time is served"""
    d = daemon("timeout", conn_timeout=2)
    try:
        idle = socket.create_connection(("127.0.0.1", d.port))
        took = closed_within(idle, 6)
        idle.close()
        assert took is not None and 1.5 <= took <= 3.5, "idle socket closed after %s s" % took
        # a trickle resets an idle timeout, not the head deadline
        s = socket.create_connection(("127.0.0.1", d.port))
        t0 = time.monotonic()
        closed = None
        for b in b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
            try:
                s.send(bytes([b]))
            except OSError:
                closed = time.monotonic() - t0
                break
            if not still_open(s):
                closed = time.monotonic() - t0
                break
            time.sleep(0.2)
        s.close()
        assert closed is not None and closed <= 3.5, \
            "a connection trickling its headers was still open after %.1f s" % (
                time.monotonic() - t0)
        # kept alive after a response: the next head has the same deadline
        c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
        c.request("GET", "/v1/health")
        r = c.getresponse()
        r.read()
        assert r.status == 200 and not r.will_close, r.status
        took = closed_within(c.sock, 6)
        c.close()
        assert took is not None and took <= 3.5, "kept-alive idle connection open after %s s" % took
        assert "sent no complete request within 2 s" in d.stderr_text(), d.stderr_tail()
    finally:
        d.stop()


@test
def test_uploads_outlive_the_timeout():
    """--conn-timeout 2: a body sent in pieces over 6 s, and a 256 MiB body, are both stored"""
    d = daemon("upload", conn_timeout=2)
    try:
        data = h.safetensors_bytes([h.t_f32("w", [256, 256], 1)])
        c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        c.putrequest("POST", "/v1/models?name=slow")
        c.putheader("Content-Type", "application/octet-stream")
        c.putheader("Content-Length", str(len(data)))
        c.endheaders()
        t0 = time.monotonic()
        pieces = 8
        for i in range(pieces):
            c.send(data[i * len(data) // pieces:(i + 1) * len(data) // pieces])
            time.sleep(0.8)     # under the idle timeout each time, 6 s in all
        r = c.getresponse()
        body = r.read()
        c.close()
        took = time.monotonic() - t0
        assert r.status == 201, (r.status, body[:300])
        assert took > 4, "the slow upload took only %.1f s" % took
        # a large body at full speed
        n = 256 * MiB // 4 // 4096
        big = h.safetensors_bytes([h.Tensor("big", "F32", [n, 4096], b"\0\0\x80?" * (n * 4096))])
        t0 = time.monotonic()
        r = d.upload(big, name="big")
        h._diag("256 MiB upload with --conn-timeout 2: %.1f s" % (time.monotonic() - t0))
        assert r.json["bytes"] == len(big), r.json
    finally:
        d.stop()


@test
def test_connection_flags_checked():
    """bad --max-conns / --max-conns-per-ip / --conn-timeout values exit 2 with a message"""
    import subprocess
    for flag, val in (("--max-conns", "0"), ("--max-conns", "x"), ("--max-conns-per-ip", "-1"),
                      ("--conn-timeout", "90000")):
        p = subprocess.run([h.slimd_bin(), "serve", flag, val], capture_output=True, timeout=20)
        assert p.returncode == 2 and flag.encode() in p.stderr, (flag, val, p.returncode,
                                                                 p.stderr[-300:])


# ---------------------------------------------------------------- caps

INT8 = {"op": "quantize", "dtype": "int8"}


def padded_spec(model_id, size):
    """A valid spec of about `size` bytes: an int8 pass whose exclude list
    names tensors the model does not have."""
    names, n = [], 0
    while n < size - 200:
        names.append("no.such.tensor.%06d.weight" % len(names))
        n += len(names[-1]) + 4
    return {"model": model_id, "passes": [dict(INT8, exclude=names)]}


@test
def test_spec_size_cap():
    """a job spec over 64 KiB is 413 naming the cap (Content-Length or chunked); one just under is queued"""
    d = daemon("spec")
    try:
        mid = d.upload(h.safetensors_bytes([h.t_f32("w", [64, 64], 1)]), name="m").json["id"]
        big = json.dumps(padded_spec(mid, 70000)).encode()
        r = d.request("POST", "/v1/jobs", body=big, headers={"Content-Type": "application/json"})
        check_error(r, 413, "PAYLOAD_TOO_LARGE", ["65536 bytes", str(len(big))])
        r = d.request("POST", "/v1/jobs", body=iter([big[:40000], big[40000:]]), chunked=True,
                      headers={"Content-Type": "application/json"})
        check_error(r, 413, "PAYLOAD_TOO_LARGE", "65536 bytes")
        ok = json.dumps(padded_spec(mid, 64000)).encode()
        assert 60000 < len(ok) <= 65536, len(ok)
        r = d.request("POST", "/v1/jobs", body=ok, headers={"Content-Type": "application/json"})
        assert r.status == 202, r
        assert d.wait_job(r.json["id"])["state"] == "succeeded"
        assert d.get("/v1/jobs?limit=10").json["total"] == 1   # the refused ones left nothing
    finally:
        d.stop()


@test
def test_list_limit_capped():
    """?limit= above 1000 (or below 1) is 400 naming the range, on every list"""
    d = daemon("paging")
    try:
        for path in ("/v1/jobs", "/v1/models", "/v1/datasets"):
            for bad in ("1001", "0", "100000", "-5", "x"):
                check_error(d.get(path + "?limit=" + bad), 400, "INVALID_ARGUMENT",
                            ["limit", "1 to 1000"])
            r = d.get(path + "?limit=1000")
            assert r.status == 200 and r.json["limit"] == 1000, r
    finally:
        d.stop()


@test
def test_job_list_carries_summaries():
    """100 jobs with 60 KB specs: GET /v1/jobs?limit=1000 lists their ops, not their specs, and stays small"""
    d = daemon("joblist")
    try:
        mid = d.upload(h.safetensors_bytes([h.t_f32("w", [64, 64], 1)]), name="m").json["id"]
        spec = padded_spec(mid, 60000)
        ids = [d.submit(spec).json["id"] for _ in range(100)]
        one = d.get("/v1/jobs/" + ids[0]).json
        assert one["spec"]["passes"][0]["exclude"] == spec["passes"][0]["exclude"], \
            "GET /v1/jobs/{id} lost the spec"
        t0 = time.monotonic()
        r = d.get("/v1/jobs?limit=1000")
        took = time.monotonic() - t0
        assert r.status == 200 and r.json["total"] == 100 and len(r.json["jobs"]) == 100, r
        h._diag("GET /v1/jobs?limit=1000 over 100 jobs with 60 KB specs: %d bytes in %.0f ms"
                % (len(r.body), took * 1000))
        assert len(r.body) < 100 * 1024, "a page of 100 jobs is %d bytes" % len(r.body)
        for j in r.json["jobs"]:
            assert "spec" not in j and j["passes"] == ["quantize"], j
            assert j["id"] in ids and j["model"] == mid, j
    finally:
        d.stop()


@test
def test_model_list_leaves_metadata_out():
    """16 models with ~1 MB of __metadata__: the list shows counts, not metadata or tensors, in < 200 ms"""
    d = daemon("modellist")
    try:
        md = {"k%04d" % i: "v" * 1000 for i in range(1000)}      # ~1 MB, 1,000 entries
        tensors = [h.t_f32("layers.%d.weight" % i, [4, 4], i) for i in range(200)]
        for i in range(16):
            d.upload(h.safetensors_bytes(tensors, metadata=dict(md, n=str(i))), name="m%d" % i)
        took = []
        for _ in range(3):
            t0 = time.monotonic()
            r = d.get("/v1/models?limit=1000")
            took.append(time.monotonic() - t0)
        h._diag("GET /v1/models over 16 models with 1 MB of metadata each: %d bytes in %.0f ms "
                "(best of 3)" % (len(r.body), min(took) * 1000))
        assert r.status == 200 and len(r.json["models"]) == 16, r
        assert len(r.body) < 16 * 1024, "a page of 16 models is %d bytes" % len(r.body)
        for m in r.json["models"]:
            assert m["tensors"] == 200 and "metadata" not in m, m
        # parsing each model's stored metadata took ~30 ms a model here
        assert min(took) < 0.2, "the list took %.0f ms" % (min(took) * 1000)
    finally:
        d.stop()


if __name__ == "__main__":
    h.run()
