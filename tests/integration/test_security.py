#!/usr/bin/env python3
"""test_security.py - who may ask slimd what, tried from outside.

Bearer tokens made with `slimd token` (create shows the token once,
list, revoke, a revocation counts at once in a running daemon); 401
without a valid token and 403 for a missing scope, both JSON with
WWW-Authenticate; ownership (a submit token sees, deletes and cancels
only its own models, datasets and jobs; admin all of them); refusing to
start on a non-loopback address with --auth none or without a token;
the Host check (DNS rebinding); requests a web form could send (415 on
JSON endpoints, 403 for a browser's form upload or cancel, while curl's
-F and --data-binary keep working); nosniff and a CSP whose hashes match
the pages' inline script and style; no CORS headers unless
--cors-origin, and then a proper preflight for that origin only; HTTPS
with a self-signed certificate (openssl req -x509) through Python's ssl
module and curl --cacert; no absolute server path in an error message.
"""

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import slimd_harness as h
from slimd_harness import check_error, test

ADMIN = READER = SUBMIT_A = SUBMIT_B = SUBMIT_ONLY = None
T = None        # the --auth token daemon on loopback
OPEN = None     # an --auth none daemon (the default on loopback)


def slimd(*args, data_dir=None, timeout=30):
    """Runs the slimd binary; returns (exit status, stdout, stderr)."""
    argv = [h.slimd_bin()] + list(args)
    if data_dir:
        argv += ["--data-dir", data_dir] + h.store_flags(data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMD_")}
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                       env=env)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def make_token(data_dir, scope, name):
    rc, out, err = slimd("token", "create", "--scope", scope, "--name", name, data_dir=data_dir)
    assert rc == 0, (rc, out, err)
    return out.strip()


def bearer(tok, **more):
    hdrs = {"Authorization": "Bearer " + tok}
    hdrs.update(more)
    return hdrs


def model_bytes(seed):
    return h.safetensors_bytes([h.t_f32("w.weight", [16, 32], seed), h.t_f32("w.bias", [16], 1)])


def dataset_bytes(n=6, feat=32):
    ys = [i % 3 for i in range(n)]
    return h.safetensors_bytes([h.t_f32("input", [n, feat], 5),
                                h.Tensor("labels", "I64", [n], h.i64_bytes(ys), ys)])


def upload(d, tok, data, name, path="/v1/models", expect=201):
    hdrs = {"Content-Type": "application/octet-stream"}
    if tok:
        hdrs["Authorization"] = "Bearer " + tok
    r = d.request("POST", path + "?name=" + name, body=data, headers=hdrs)
    assert r.status == expect, r
    return r.json


def stored_files(data_dir):
    """Files under blobs/ and tmp/ (an upload refused early leaves none)."""
    out = []
    for sub in ("blobs", "tmp"):
        for root, _, files in os.walk(os.path.join(data_dir, sub)):
            out += [os.path.join(root, f) for f in files]
    return sorted(out)


def setup():
    global T, OPEN, ADMIN, READER, SUBMIT_A, SUBMIT_B, SUBMIT_ONLY
    data = h.make_tmpdir()
    ADMIN = make_token(data, "admin", "ops")
    READER = make_token(data, "read", "dashboard")
    SUBMIT_A = make_token(data, "read,submit", "ci-a")
    SUBMIT_B = make_token(data, "read,submit", "ci-b")
    SUBMIT_ONLY = make_token(data, "submit", "timer")
    T = h.Daemon(data_dir=data, workers=1, name="token", args=["--auth", "token"]).start()
    OPEN = h.Daemon(workers=1, name="open").start()


def teardown():
    T.stop()
    OPEN.stop()


# ---------------------------------------------------------------- the CLI

@test
def test_cli_token_create_list_revoke():
    """slimd token: create prints the token alone, once; list shows no secret; revoke; bad input exits 2"""
    d = h.make_tmpdir()
    rc, out, err = slimd("token", "create", "--scope", "read,submit", "--name", "ci",
                         data_dir=d)
    assert rc == 0, (rc, out, err)
    tok = out.strip()
    assert re.fullmatch(r"slimd_[0-9a-f]{64}", tok) and out == tok + "\n", repr(out)
    m = re.search(r"token (tok_[0-9a-f]{16}) \(ci, scopes read,submit\)", err)
    assert m and "only" in err, err
    tid = m.group(1)

    rc, out, err = slimd("token", "list", "--json", data_dir=d)
    assert rc == 0, err
    rows = json.loads(out)["tokens"]
    assert len(rows) == 1, rows
    assert rows[0]["id"] == tid and rows[0]["name"] == "ci", rows
    assert rows[0]["scopes"] == ["read", "submit"] and rows[0]["revoked"] is False, rows
    assert rows[0]["last_used_at"] is None, rows
    rc, table, err = slimd("token", "list", data_dir=d)
    assert rc == 0 and tid in table and "read,submit" in table, table
    assert tok not in table and tok[6:] not in out and tok[6:] not in table, "a secret was listed"
    # the database keeps the hash only
    if h.PG:   # every column of the row, as PostgreSQL gives it
        db = "\n".join("|".join(r) for r in h.store_query(d, "SELECT * FROM tokens")).encode()
    else:
        with open(os.path.join(d, "slimd.db"), "rb") as f:
            db = f.read()
        if os.path.exists(os.path.join(d, "slimd.db-wal")):
            with open(os.path.join(d, "slimd.db-wal"), "rb") as f:
                db += f.read()
    assert tok[6:].encode() not in db, "the secret is in slimd.db"
    assert hashlib.sha256(tok.encode()).hexdigest().encode() in db, "the hash is not in slimd.db"

    rc, out, err = slimd("token", "revoke", tid, data_dir=d)
    assert rc == 0 and "revoked" in err, (rc, err)
    rc, out, err = slimd("token", "revoke", tid, data_dir=d)
    assert rc == 0 and "already" in err, (rc, err)
    rc, out, err = slimd("token", "list", "--json", data_dir=d)
    assert json.loads(out)["tokens"][0]["revoked"] is True, out
    rc, out, err = slimd("token", "revoke", "tok_0000000000000000", data_dir=d)
    assert rc == 1 and "does not exist" in err, (rc, err)

    for args, want in ((["create", "--scope", "root", "--name", "x"], "'root'"),
                       (["create", "--scope", "read"], "--name"),
                       (["create", "--name", "x"], "--scope"),
                       (["create", "--scope", "read", "--name", "bad\x01name"], "--name"),
                       (["frobnicate"], "usage"),
                       (["revoke"], "usage")):
        rc, out, err = slimd("token", *args, data_dir=d)
        assert rc == 2 and want in err and out == "", (args, rc, out, err)


@test
def test_cli_changes_count_at_once():
    """a token made or revoked with the CLI while the daemon runs counts at the next request"""
    tok = make_token(T.data_dir, "read", "late")
    r = T.get("/v1/models", headers=bearer(tok))
    assert r.status == 200, r
    rc, out, err = slimd("token", "list", "--json", data_dir=T.data_dir)
    row = [t for t in json.loads(out)["tokens"] if t["name"] == "late"][0]
    assert row["last_used_at"] is not None, row
    rc, out, err = slimd("token", "revoke", row["id"], data_dir=T.data_dir)
    assert rc == 0, err
    check_error(T.get("/v1/models", headers=bearer(tok)), 401, "UNAUTHORIZED", "revoked")


# ---------------------------------------------------------------- refusing to start

def local_non_loopback_ip():
    """An address of this machine that is not loopback, or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))    # TEST-NET-1: no packet is sent by connect()
        ip = s.getsockname()[0]
        return None if ip.startswith("127.") else ip
    except OSError:
        return None
    finally:
        s.close()


@test
def test_refuses_non_loopback_without_tokens():
    """0.0.0.0 (and this machine's own address) with --auth none exits 2, with --auth token and no token exits 1; both say how to make a token"""
    addrs = ["0.0.0.0"] + [a for a in (local_non_loopback_ip(),) if a]
    for addr in addrs:
        d = h.make_tmpdir()
        port = h.free_port()
        listen = "%s:%d" % (addr, port)
        rc, out, err = slimd("serve", "--listen", listen, "--auth", "none", data_dir=d)
        assert rc == 2, (addr, rc, err)
        assert "--auth none is only allowed on a loopback address" in err, err
        assert "slimd token create" in err, err
        for extra in ([], ["--auth", "token"]):    # token is the default off loopback
            rc, out, err = slimd("serve", "--listen", listen, *extra, data_dir=d)
            assert rc == 1, (addr, extra, rc, err)
            assert "no token" in err and "slimd token create" in err, err
        # a revoked token is no token either
        tok = make_token(d, "read", "gone")
        rc, out, err = slimd("token", "list", "--json", data_dir=d)
        slimd("token", "revoke", json.loads(out)["tokens"][0]["id"], data_dir=d)
        rc, out, err = slimd("serve", "--listen", listen, data_dir=d)
        assert rc == 1 and "no token" in err, (rc, err)
        assert tok not in err


@test
def test_non_loopback_with_a_token():
    """with a token it starts on 0.0.0.0, auth on by default: 401 without it, 200 with it, health open"""
    d = h.make_tmpdir()
    tok = make_token(d, "read", "r")
    w = h.Daemon(data_dir=d, host="0.0.0.0", name="any").start()
    try:
        check_error(w.get("/v1/jobs"), 401, "UNAUTHORIZED")
        assert w.get("/v1/jobs", headers=bearer(tok)).status == 200
        assert w.get("/v1/health").status == 200
        assert "auth token" in w.stderr_text(), w.stderr_tail()
        assert "clear text" in w.stderr_text(), w.stderr_tail()
    finally:
        w.stop()


@test
def test_loopback_auth_token_without_tokens_starts():
    """--auth token on loopback with no token starts (with a warning) and answers 401"""
    w = h.Daemon(name="empty", args=["--auth", "token"]).start()
    try:
        check_error(w.get("/v1/models"), 401, "UNAUTHORIZED")
        assert "no token yet" in w.stderr_text(), w.stderr_tail()
    finally:
        w.stop()


# ---------------------------------------------------------------- 401 and 403

@test
def test_401_without_a_valid_token():
    """every route but health and / is 401 JSON with WWW-Authenticate: Bearer, before an upload is stored"""
    before = stored_files(T.data_dir)
    routes = [("GET", "/v1/models"), ("GET", "/v1/models/mdl_0000000000000000"),
              ("GET", "/v1/models/mdl_0000000000000000/file"),
              ("DELETE", "/v1/models/mdl_0000000000000000"), ("GET", "/v1/datasets"),
              ("POST", "/v1/datasets"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/job_x"),
              ("POST", "/v1/jobs/job_x/cancel"), ("GET", "/v1/jobs/job_x/report"),
              ("GET", "/v1/jobs/job_x/report.html"), ("GET", "/v1/jobs/job_x/artifact"),
              ("GET", "/metrics"), ("GET", "/v1/tokens"), ("POST", "/v1/tokens"),
              ("DELETE", "/v1/tokens/tok_x")]
    for method, path in routes:
        r = T.request(method, path)
        check_error(r, 401, "UNAUTHORIZED", "bearer token")
        assert r.header("WWW-Authenticate", "").startswith("Bearer"), (path, r.headers)
    # an upload without a token: refused before a byte is stored
    r = T.request("POST", "/v1/models?name=x", body=model_bytes(1),
                  headers={"Content-Type": "application/octet-stream"})
    check_error(r, 401, "UNAUTHORIZED")
    r = T.post_json("/v1/jobs", {"model": "mdl_0000000000000000", "passes": []})
    check_error(r, 401, "UNAUTHORIZED")
    # bad tokens
    fake = "slimd_" + "0" * 64
    for hdr in ("Bearer " + fake, "Bearer slimd_short", "Basic dXNlcjpwYXNz", "Bearer",
                "bearer  " + fake, ADMIN):
        r = T.get("/v1/models", headers={"Authorization": hdr})
        check_error(r, 401, "UNAUTHORIZED")
        assert r.header("WWW-Authenticate", "").startswith("Bearer realm="), r.headers
        assert fake not in r.body.decode(), r
    r = T.get("/v1/models", headers=bearer(fake))
    assert 'error="invalid_token"' in r.header("WWW-Authenticate"), r.headers
    # the scheme is case-insensitive
    assert T.get("/v1/models", headers={"Authorization": "bearer " + READER}).status == 200
    # open: liveness and the (data-less) dashboard page
    assert T.get("/v1/health").status == 200
    assert T.get("/").status == 200
    assert stored_files(T.data_dir) == before, "a refused request stored something"


@test
def test_403_for_a_missing_scope():
    """a token without the route's scope is 403 naming the scope; admin implies the others"""
    data = model_bytes(2)
    r = T.request("POST", "/v1/models?name=x", body=data, headers=bearer(READER))
    msg = check_error(r, 403, "FORBIDDEN", ["'submit'", "read"])
    assert 'error="insufficient_scope"' in r.header("WWW-Authenticate"), r.headers
    assert 'scope="submit"' in r.header("WWW-Authenticate"), r.headers
    check_error(T.post_json("/v1/jobs", {"model": "m", "passes": []}, headers=bearer(READER)),
                403, "FORBIDDEN", "'submit'")
    check_error(T.request("POST", "/v1/jobs/job_x/cancel", headers=bearer(READER)), 403,
                "FORBIDDEN", "'submit'")
    check_error(T.request("DELETE", "/v1/models/mdl_0000000000000000", headers=bearer(READER)),
                403, "FORBIDDEN", "'submit'")
    # submit without read: it can upload but not list
    mid = upload(T, SUBMIT_ONLY, data, "timer-model")["id"]
    check_error(T.get("/v1/models", headers=bearer(SUBMIT_ONLY)), 403, "FORBIDDEN", "'read'")
    check_error(T.get("/v1/models/" + mid, headers=bearer(SUBMIT_ONLY)), 403, "FORBIDDEN")
    check_error(T.get("/metrics", headers=bearer(SUBMIT_ONLY)), 403, "FORBIDDEN", "'read'")
    # tokens are admin's
    for tok in (READER, SUBMIT_A):
        check_error(T.get("/v1/tokens", headers=bearer(tok)), 403, "FORBIDDEN", "'admin'")
        check_error(T.post_json("/v1/tokens", {"name": "x", "scopes": ["admin"]},
                                headers=bearer(tok)), 403, "FORBIDDEN", "'admin'")
    # admin does everything the others may
    assert T.get("/v1/models/" + mid, headers=bearer(ADMIN)).status == 200
    assert T.get("/metrics", headers=bearer(READER)).status == 200
    r = T.request("DELETE", "/v1/models/" + mid, headers=bearer(SUBMIT_ONLY))
    assert r.status == 204, r      # its own


@test
def test_ownership_models_and_datasets():
    """a submit token lists, gets, downloads and deletes only its own models and datasets; admin all"""
    a = upload(T, SUBMIT_A, model_bytes(10), "a-model")
    b = upload(T, SUBMIT_B, model_bytes(11), "b-model")
    assert a["owner"] != b["owner"] and a["owner"].startswith("tok_"), (a, b)
    da = upload(T, SUBMIT_A, dataset_bytes(), "a-data", path="/v1/datasets")
    assert da["owner"] == a["owner"], da

    def listed(tok, what="models"):
        r = T.get("/v1/%s?limit=1000" % what, headers=bearer(tok))
        assert r.status == 200, r
        return {m["id"] for m in r.json[what]}, r.json["total"]

    ids, total = listed(SUBMIT_A)
    assert a["id"] in ids and b["id"] not in ids, ids
    assert total == len(ids), (total, ids)
    ids, _ = listed(SUBMIT_B)
    assert b["id"] in ids and a["id"] not in ids, ids
    ids, _ = listed(ADMIN)
    assert {a["id"], b["id"]} <= ids, ids
    ids, _ = listed(READER)      # a read-only token owns nothing
    assert not ids, ids
    assert listed(SUBMIT_A, "datasets")[0] == {da["id"]}
    assert da["id"] not in listed(SUBMIT_B, "datasets")[0]
    assert da["id"] in listed(ADMIN, "datasets")[0]

    for path in ("/v1/models/" + a["id"], "/v1/models/%s/file" % a["id"],
                 "/v1/datasets/" + da["id"], "/v1/datasets/%s/file" % da["id"]):
        check_error(T.get(path, headers=bearer(SUBMIT_B)), 404, "NOT_FOUND", "does not exist")
        assert T.get(path, headers=bearer(SUBMIT_A)).status == 200, path
        assert T.get(path, headers=bearer(ADMIN)).status == 200, path
    check_error(T.request("DELETE", "/v1/models/" + a["id"], headers=bearer(SUBMIT_B)), 404,
                "NOT_FOUND")
    check_error(T.request("DELETE", "/v1/datasets/" + da["id"], headers=bearer(SUBMIT_B)), 404,
                "NOT_FOUND")
    assert T.get("/v1/models/" + a["id"], headers=bearer(SUBMIT_A)).status == 200
    # a job may not name another token's model or dataset
    check_error(T.post_json("/v1/jobs", {"model": a["id"], "passes": [
        {"op": "quantize", "dtype": "int8"}]}, headers=bearer(SUBMIT_B)), 404, "NOT_FOUND",
        a["id"])
    check_error(T.post_json("/v1/jobs", {"model": b["id"], "passes": [
        {"op": "quantize", "dtype": "int8"}], "eval": {"dataset": da["id"]}},
        headers=bearer(SUBMIT_B)), 404, "NOT_FOUND", ["eval.dataset", da["id"]])
    # deletes: its own, and admin anyone's
    assert T.request("DELETE", "/v1/datasets/" + da["id"], headers=bearer(SUBMIT_A)).status == 204
    assert T.request("DELETE", "/v1/models/" + a["id"], headers=bearer(SUBMIT_A)).status == 204
    assert T.request("DELETE", "/v1/models/" + b["id"], headers=bearer(ADMIN)).status == 204


def big_model():
    """~9 MB: enough that with --workers 1 later jobs wait in the queue."""
    rows = [h.f32_bytes(h.gaussian(1500, 100 + k)) for k in range(8)]
    ts = [h.Tensor("big.weight", "F32", [1500, 1500],
                   b"".join(rows[i % 8] for i in range(1500)))]
    return h.safetensors_bytes(ts)


@test
def test_ownership_jobs():
    """jobs: a submit token lists, gets and cancels only its own; admin sees and cancels anyone's"""
    mid = upload(T, SUBMIT_A, big_model(), "a-big")["id"]
    spec = {"model": mid, "passes": [{"op": "lowrank", "rank": 64, "algorithm": "exact"}]}
    jobs = []
    for _ in range(3):
        r = T.post_json("/v1/jobs", spec, headers=bearer(SUBMIT_A))
        assert r.status == 202, r
        jobs.append(r.json)
    owner = jobs[0]["owner"]
    assert owner.startswith("tok_"), jobs[0]
    last = jobs[-1]["id"]

    # B neither sees nor cancels A's job: 404 as if it did not exist
    for path in ("/v1/jobs/" + last, "/v1/jobs/%s/report" % last,
                 "/v1/jobs/%s/report.html" % last, "/v1/jobs/%s/artifact" % last):
        check_error(T.get(path, headers=bearer(SUBMIT_B)), 404, "NOT_FOUND")
    check_error(T.request("POST", "/v1/jobs/%s/cancel" % last, headers=bearer(SUBMIT_B)), 404,
                "NOT_FOUND")
    r = T.get("/v1/jobs?limit=1000", headers=bearer(SUBMIT_B))
    assert r.status == 200 and not [j for j in r.json["jobs"] if j["owner"] == owner], r.json
    r = T.get("/v1/jobs?state=queued", headers=bearer(SUBMIT_B))
    assert r.status == 200 and last not in {j["id"] for j in r.json["jobs"]}, r
    # A does, and so does admin
    r = T.get("/v1/jobs?limit=1000", headers=bearer(SUBMIT_A))
    assert {j["id"] for j in jobs} <= {j["id"] for j in r.json["jobs"]}, r.json
    assert all(j["owner"] == owner for j in r.json["jobs"]), r.json
    assert r.json["total"] == len(r.json["jobs"]), r.json
    r = T.get("/v1/jobs?limit=1000", headers=bearer(ADMIN))
    assert {j["id"] for j in jobs} <= {j["id"] for j in r.json["jobs"]}, r.json

    # admin cancels A's queued job; A cancels its own
    r = T.request("POST", "/v1/jobs/%s/cancel" % last, headers=bearer(ADMIN))
    assert r.status == 200 and r.json["state"] == "canceled", r
    r = T.request("POST", "/v1/jobs/%s/cancel" % jobs[1]["id"], headers=bearer(SUBMIT_A))
    assert r.status == 200, r
    r = T.request("POST", "/v1/jobs/%s/cancel" % jobs[0]["id"], headers=bearer(SUBMIT_A))
    assert r.status in (200, 409), r
    deadline = time.time() + 60
    while time.time() < deadline:
        j = T.get("/v1/jobs/" + jobs[0]["id"], headers=bearer(SUBMIT_A)).json
        if j["state"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    assert j["state"] in ("canceled", "succeeded"), j


@test
def test_tokens_over_http():
    """admin: POST /v1/tokens shows the secret once, GET lists without secrets, DELETE revokes"""
    r = T.post_json("/v1/tokens", {"name": "made-over-http", "scopes": ["read"]},
                    headers=bearer(ADMIN))
    assert r.status == 201, r
    tok, tid = r.json["token"], r.json["id"]
    assert re.fullmatch(r"slimd_[0-9a-f]{64}", tok), r.json
    assert r.header("Location") == "/v1/tokens/" + tid, r.headers
    assert T.get("/v1/models", headers=bearer(tok)).status == 200
    r = T.get("/v1/tokens", headers=bearer(ADMIN))
    assert r.status == 200 and tid in {t["id"] for t in r.json["tokens"]}, r
    assert tok[6:] not in r.body.decode() and "hash" not in r.body.decode(), r
    for bad in ({"name": "x"}, {"name": "x", "scopes": []}, {"name": "x", "scopes": ["root"]},
                {"name": "", "scopes": ["read"]}, {"name": "x", "scopes": ["read,admin"]},
                {"name": "x", "scopes": ["read"], "extra": 1}):
        check_error(T.post_json("/v1/tokens", bad, headers=bearer(ADMIN)), 400,
                    "INVALID_ARGUMENT")
    assert T.request("DELETE", "/v1/tokens/" + tid, headers=bearer(ADMIN)).status == 204
    check_error(T.get("/v1/models", headers=bearer(tok)), 401, "UNAUTHORIZED", "revoked")
    check_error(T.request("DELETE", "/v1/tokens/tok_0000000000000000", headers=bearer(ADMIN)),
                404, "NOT_FOUND")


# ---------------------------------------------------------------- Host, forms, cross-site

def raw_request(port, data):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


@test
def test_host_header():
    """Host other than the address, localhost or --allowed-host is 403 JSON (DNS rebinding)"""
    for d in (OPEN, T):
        for host in ("evil.example", "evil.example:%d" % d.port, "127.0.0.1.evil.example",
                     "localhost.evil.example", "10.1.2.3:%d" % d.port, "[::1]x"):
            r = d.get("/v1/health", headers={"Host": host})
            check_error(r, 403, "FORBIDDEN", ["Host", "--allowed-host"])
            assert r.header("X-Content-Type-Options") == "nosniff", r.headers
        for host in ("127.0.0.1:%d" % d.port, "localhost:%d" % d.port, "LOCALHOST",
                     "localhost.", "app.localhost:%d" % d.port, "127.0.0.1"):
            assert d.get("/v1/health", headers={"Host": host}).status == 200, host
    # the check comes first: an upload with a foreign Host stores nothing
    before = stored_files(OPEN.data_dir)
    r = OPEN.request("POST", "/v1/models", body=model_bytes(3),
                     headers={"Host": "evil.example", "Content-Type": "application/octet-stream"})
    check_error(r, 403, "FORBIDDEN")
    assert stored_files(OPEN.data_dir) == before
    # HTTP/1.0 without a Host is not a browser's
    out = raw_request(OPEN.port, b"GET /v1/health HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.0 200") or out.startswith(b"HTTP/1.1 200"), out[:100]
    # --allowed-host adds names
    w = h.Daemon(name="named", args=["--allowed-host", "slimd.internal",
                                     "--allowed-host", "Build.Example.COM"]).start()
    try:
        for host in ("slimd.internal", "slimd.internal:%d" % w.port, "build.example.com"):
            assert w.get("/v1/health", headers={"Host": host}).status == 200, host
        check_error(w.get("/v1/health", headers={"Host": "other.internal"}), 403, "FORBIDDEN")
    finally:
        w.stop()


def job_total(d):
    return d.get("/v1/jobs?limit=1").json["total"]


@test
def test_form_content_types_refused():
    """JSON endpoints refuse what a form can send (415); a browser's form upload or cancel is 403; curl's -F, --data-binary and -T still work"""
    mid = upload(OPEN, None, model_bytes(4), "forms")["id"]
    spec = json.dumps({"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}]}).encode()
    before = job_total(OPEN)
    for ct in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
               " Text/Plain"):
        r = OPEN.request("POST", "/v1/jobs", body=spec, headers={"Content-Type": ct})
        check_error(r, 415, "UNSUPPORTED_MEDIA", "application/json")
    # multipart is upload-and-submit (issue 10): an upload's rules, so a
    # JSON body sent as multipart is malformed, not queued
    r = OPEN.request("POST", "/v1/jobs", body=spec,
                     headers={"Content-Type": "multipart/form-data; boundary=x"})
    check_error(r, 400, "INVALID_ARGUMENT", "multipart")
    check_error(T.request("POST", "/v1/jobs", body=spec,
                          headers=bearer(SUBMIT_A, **{"Content-Type": "text/plain"})),
                415, "UNSUPPORTED_MEDIA")
    assert job_total(OPEN) == before, "a form-typed spec was queued"
    r = OPEN.request("POST", "/v1/jobs", body=spec, headers={"Content-Type": "application/json"})
    assert r.status == 202, r
    job = r.json["id"]
    OPEN.wait_job(job)      # its artifact is stored before the snapshot below

    # what a browser sends when a page of another site submits a form
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
               "Origin": "http://evil.example", "Referer": "http://evil.example/page"}
    body, ctype = h.multipart([("file", "m.safetensors", model_bytes(5))])
    models_before = OPEN.get("/v1/models?limit=1").json["total"]
    files_before = stored_files(OPEN.data_dir)
    variants = [dict(browser),
                {"User-Agent": browser["User-Agent"], "Referer": browser["Referer"]},  # no Origin
                {"User-Agent": browser["User-Agent"]},                                # old browser
                {"Origin": "null"},
                {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}]
    for extra in variants:
        for ct, data in ((ctype, body), ("application/x-www-form-urlencoded", model_bytes(5)),
                         ("text/plain", model_bytes(5))):
            r = OPEN.request("POST", "/v1/models", body=data,
                             headers=dict(extra, **{"Content-Type": ct}))
            check_error(r, 403, "FORBIDDEN")
        r = OPEN.request("POST", "/v1/jobs/%s/cancel" % job,
                         headers=dict(extra, **{"Content-Type": "application/x-www-form-urlencoded"}))
        check_error(r, 403, "FORBIDDEN")
        # upload-and-submit from a page's form is a form upload: refused too
        jb, jct = h.multipart([("spec", json.dumps({"passes": [{"op": "quantize",
                                                                  "dtype": "int8"}]})),
                               ("model", "m.safetensors", model_bytes(5))])
        r = OPEN.request("POST", "/v1/jobs", body=jb, headers=dict(extra, **{"Content-Type": jct}))
        check_error(r, 403, "FORBIDDEN")
    assert OPEN.get("/v1/models?limit=1").json["total"] == models_before
    assert stored_files(OPEN.data_dir) == files_before
    assert OPEN.get("/v1/jobs/" + job).json["cancel_requested"] is False

    # a DELETE from another site's page (only fetch can send one) is refused too
    check_error(OPEN.request("DELETE", "/v1/models/" + mid, headers={"Origin": "https://evil.example"}),
                403, "FORBIDDEN", "cross-site")
    # what curl sends: -F (multipart), --data-binary (urlencoded), -T (no type)
    curl_ua = {"User-Agent": "curl/7.88.1"}
    assert OPEN.request("POST", "/v1/models?name=f", body=body,
                        headers=dict(curl_ua, **{"Content-Type": ctype})).status == 201
    assert OPEN.request("POST", "/v1/models?name=d", body=model_bytes(6), headers=dict(
        curl_ua, **{"Content-Type": "application/x-www-form-urlencoded"})).status == 201
    assert OPEN.request("POST", "/v1/models?name=t", body=model_bytes(7),
                        headers=curl_ua).status == 201
    # a browser page that says X-Slimd-Client (which a form cannot) may post a form type
    r = OPEN.request("POST", "/v1/models?name=x", body=body, headers={
        "User-Agent": browser["User-Agent"], "Content-Type": ctype, "X-Slimd-Client": "1"})
    assert r.status == 201, r
    # this daemon's own page (same origin) may cancel
    r = OPEN.request("POST", "/v1/jobs/%s/cancel" % job, headers={
        "Origin": "http://127.0.0.1:%d" % OPEN.port, "Sec-Fetch-Site": "same-origin",
        "X-Slimd-Client": "dashboard"})
    check_error(r, 409, "CONFLICT", "succeeded")


# ---------------------------------------------------------------- headers, CSP, CORS

def csp_hash(text):
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def directives(csp):
    out = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


@test
def test_security_headers_and_csp():
    """nosniff everywhere; the dashboard's and report's CSP allow exactly their inline scripts and style"""
    mid = upload(OPEN, None, model_bytes(8), "hdrs")["id"]
    job = OPEN.submit({"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}]}).json["id"]
    OPEN.wait_job(job)
    for path in ("/v1/health", "/v1/models", "/v1/nosuch", "/v1/models/%s/file" % mid,
                 "/v1/jobs/%s/artifact" % job, "/metrics", "/", "/v1/jobs/%s/report.html" % job):
        r = OPEN.get(path)
        assert r.header("X-Content-Type-Options") == "nosniff", (path, r.headers)
        csp = r.header("Content-Security-Policy")
        assert csp and "frame-ancestors 'none'" in csp, (path, csp)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, (path, csp)
        if not path.endswith(("/", ".html")):
            assert directives(csp)["default-src"] == ["'none'"], (path, csp)

    page = OPEN.get("/")
    html = page.body.decode()
    d = directives(page.header("Content-Security-Policy"))
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    # pages.js (table sorting, shared with the job pages) and dashboard.js
    assert len(scripts) == 2 and len(styles) == 1, html[:500]
    assert d["script-src"] == [csp_hash(s) for s in scripts], (d, [csp_hash(s) for s in scripts])
    assert d["style-src"] == [csp_hash(styles[0])], d
    assert d["default-src"] == ["'none'"] and d["connect-src"] == ["'self'"], d
    assert not re.search(r"<[^>]*\son\w+=", html), "an inline event handler would be blocked"

    rep = OPEN.get("/v1/jobs/%s/report.html" % job)
    d = directives(rep.header("Content-Security-Policy"))
    body = rep.body.decode()
    styles = re.findall(r"<style>(.*?)</style>", body, re.S)
    scripts = re.findall(r"<script>(.*?)</script>", body, re.S)
    assert len(styles) == 1 and d["style-src"] == [csp_hash(styles[0])], d
    # its one script sorts the tensor table
    assert len(scripts) == 1 and d["script-src"] == [csp_hash(scripts[0])], d
    assert d["default-src"] == ["'none'"] and "connect-src" not in d, d
    assert body.count("<script") == 1 and not re.search(r"<[^>]*\son\w+=", body)


@test
def test_no_cors_by_default():
    """without --cors-origin: no Access-Control-* header on any answer, preflights fail"""
    for d in (OPEN, T):
        r = d.get("/v1/health", headers={"Origin": "https://ci.example.com"})
        assert r.status == 200, r
        assert not [k for k in r.headers.keys() if k.lower().startswith("access-control")], \
            r.headers
        r = d.request("OPTIONS", "/v1/jobs", headers={
            "Origin": "https://ci.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert r.status >= 400, r
        assert not [k for k in r.headers.keys() if k.lower().startswith("access-control")], \
            r.headers


@test
def test_cors_origin():
    """--cors-origin: that origin's preflight is 204 with the methods and headers; it may read and post; other origins get nothing"""
    good, bad = "https://ci.example.com", "https://evil.example"
    d = h.make_tmpdir()
    tok = make_token(d, "read,submit", "page")
    w = h.Daemon(data_dir=d, name="cors", args=["--auth", "token", "--cors-origin", good]).start()
    try:
        r = w.request("OPTIONS", "/v1/jobs", headers={
            "Origin": good, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert r.status == 204, r           # no token: browsers send none on a preflight
        assert r.header("Access-Control-Allow-Origin") == good, r.headers
        assert "POST" in r.header("Access-Control-Allow-Methods"), r.headers
        allowed = r.header("Access-Control-Allow-Headers").lower()
        assert "authorization" in allowed and "content-type" in allowed, r.headers
        assert "Origin" in r.header("Vary", ""), r.headers
        assert r.header("Access-Control-Allow-Credentials") is None, r.headers
        for origin in (bad, "https://ci.example.com.evil.example", "null"):
            r = w.request("OPTIONS", "/v1/jobs", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST"})
            check_error(r, 403, "FORBIDDEN", "--cors-origin")
            assert r.header("Access-Control-Allow-Origin") is None, r.headers
        r = w.request("OPTIONS", "/v1/nosuch", headers={
            "Origin": good, "Access-Control-Request-Method": "GET"})
        assert r.status == 403 and r.header("Access-Control-Allow-Methods") is None, r
        # the real requests
        r = w.get("/v1/models", headers=bearer(tok, Origin=good, **{"Sec-Fetch-Site": "cross-site"}))
        assert r.status == 200 and r.header("Access-Control-Allow-Origin") == good, r.headers
        assert "Location" in r.header("Access-Control-Expose-Headers"), r.headers
        r = w.get("/v1/models", headers=bearer(tok, Origin=bad))
        assert r.status == 200 and r.header("Access-Control-Allow-Origin") is None, r.headers
        r = w.get("/v1/models", headers={"Origin": good})      # errors are readable too
        check_error(r, 401, "UNAUTHORIZED")
        assert r.header("Access-Control-Allow-Origin") == good, r.headers
        r = w.request("POST", "/v1/models?name=c", body=model_bytes(9), headers=bearer(
            tok, Origin=good, **{"Sec-Fetch-Site": "cross-site",
                                 "Content-Type": "application/octet-stream"}))
        assert r.status == 201, r
        r = w.request("POST", "/v1/models?name=c", body=model_bytes(9), headers=bearer(
            tok, Origin=bad, **{"Sec-Fetch-Site": "cross-site",
                                "Content-Type": "application/octet-stream"}))
        check_error(r, 403, "FORBIDDEN", "cross-site")
    finally:
        w.stop()
    rc, out, err = slimd("serve", "--listen", "127.0.0.1:%d" % h.free_port(), "--cors-origin",
                         "ci.example.com", data_dir=h.make_tmpdir())
    assert rc == 2 and "--cors-origin" in err, (rc, err)


# ---------------------------------------------------------------- TLS

class TLSDaemon(h.Daemon):
    """A daemon spoken to over HTTPS, its certificate checked against
    cafile."""

    def __init__(self, cafile, **kw):
        super().__init__(**kw)
        self.ctx = ssl.create_default_context(cafile=cafile)

    def request(self, method, path, body=None, headers=None, json_body=None, timeout=60,
                chunked=False):
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        # checked against the certificate's IP:127.0.0.1 (curl below checks its DNS name)
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                           context=self.ctx)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return h.Response(r.status, r.reason, r.headers, r.read())
        finally:
            conn.close()


def openssl_cert(d, name="server"):
    key, cert = os.path.join(d, name + ".key"), os.path.join(d, name + ".crt")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", key, "-out", cert], capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    return cert, key


@test
def test_tls():
    """--tls-cert/--tls-key: HTTPS with a self-signed certificate (Python ssl, curl --cacert); plain HTTP is refused; bad files stop the start"""
    if not shutil.which("openssl"):
        h.skip("openssl is not installed (scripts/deps.sh installs it)")
    d = h.make_tmpdir("slimd-tls-")
    cert, key = openssl_cert(d)
    data = h.make_tmpdir()
    tok = make_token(data, "read,submit", "tls")
    w = TLSDaemon(cert, data_dir=data, name="tls", args=["--auth", "token", "--tls-cert", cert,
                                                         "--tls-key", key]).start()
    try:
        r = w.get("/v1/health")
        assert r.status == 200 and r.json["status"] == "ok", r
        assert r.header("X-Content-Type-Options") == "nosniff", r.headers
        check_error(w.get("/v1/models"), 401, "UNAUTHORIZED")
        up = w.request("POST", "/v1/models?name=tls", body=model_bytes(12), headers=bearer(
            tok, **{"Content-Type": "application/octet-stream"}))
        assert up.status == 201, up
        r = w.get("/v1/models/%s/file" % up.json["id"], headers=bearer(tok))
        assert r.status == 200 and r.body == model_bytes(12), r
        assert "https://" in w.stderr_text(), w.stderr_tail()
        # a client that does not trust the certificate gets no answer
        try:
            http.client.HTTPSConnection("127.0.0.1", w.port, timeout=10,
                                        context=ssl.create_default_context()).request(
                "GET", "/v1/health")
            raise AssertionError("an untrusted certificate was accepted")
        except ssl.SSLError:
            pass
        # plain HTTP on the TLS port is not served
        try:
            out = raw_request(w.port, b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        except OSError:
            out = b""
        assert b'"status": "ok"' not in out, out[:200]
        if shutil.which("curl"):
            p = subprocess.run(["curl", "-sS", "--fail-with-body", "--cacert", cert,
                                "-H", "Authorization: Bearer " + tok,
                                "https://localhost:%d/v1/models" % w.port,
                                "--resolve", "localhost:%d:127.0.0.1" % w.port],
                               capture_output=True, timeout=30)
            assert p.returncode == 0, p.stderr.decode()
            assert up.json["id"] in p.stdout.decode(), p.stdout
            p = subprocess.run(["curl", "-sS", "https://127.0.0.1:%d/v1/health" % w.port],
                               capture_output=True, timeout=30)
            assert p.returncode != 0, "curl trusted a self-signed certificate"
    finally:
        w.stop()
    # a key that is not the certificate's, a file that is not PEM, one flag alone
    cert2, key2 = openssl_cert(d, "other")
    port = h.free_port()
    rc, out, err = slimd("serve", "--listen", "127.0.0.1:%d" % port, "--tls-cert", cert,
                         "--tls-key", key2, data_dir=h.make_tmpdir())
    assert rc == 1 and "TLS" in err, (rc, err)
    notpem = os.path.join(d, "notpem")
    with open(notpem, "w") as f:
        f.write("hello\n")
    rc, out, err = slimd("serve", "--listen", "127.0.0.1:%d" % port, "--tls-cert", notpem,
                         "--tls-key", key, data_dir=h.make_tmpdir())
    assert rc == 2 and "PEM" in err, (rc, err)
    rc, out, err = slimd("serve", "--listen", "127.0.0.1:%d" % port, "--tls-cert", cert,
                         data_dir=h.make_tmpdir())
    assert rc == 2 and "--tls-key" in err, (rc, err)


# ---------------------------------------------------------------- paths

@test
def test_no_absolute_paths_in_errors():
    """an I/O error during an upload names the file inside the data dir, never the server's path"""
    data = model_bytes(13)
    sha = hashlib.sha256(data).hexdigest()
    fan = os.path.join(OPEN.data_dir, "blobs", sha[:2])
    if os.path.isdir(fan):
        h.skip("the fan-out folder %s exists already" % sha[:2])
    with open(fan, "w") as f:       # a file where the folder should be: rename fails
        f.write("not a folder")
    try:
        r = OPEN.request("POST", "/v1/models?name=p", body=data,
                         headers={"Content-Type": "application/octet-stream"})
        msg = check_error(r, 500, "IO_ERROR", "blobs/%s/%s" % (sha[:2], sha))
        assert OPEN.data_dir not in msg and os.path.realpath(OPEN.data_dir) not in msg, msg
        assert not msg.startswith("/") and " /" not in msg, msg
    finally:
        os.unlink(fan)


if __name__ == "__main__":
    h.run(setup=setup, teardown=teardown, daemons=lambda: [T, OPEN])
