#!/usr/bin/env python3
"""test_pgstore.py - slimd serve --store postgresql://... (storage/db_pg.c)
against a private PostgreSQL 15 that pg_harness.py starts (skipped when
its binaries are missing), whatever SLIMD_TEST_STORE says:

  * the driver's unit test (tests/unit/test_db) on a fresh database;
  * --store's bad values: an unknown scheme exits 2 naming the flag; a
    server that is not there exits 1 with "postgresql: cannot connect",
    and no password in the message;
  * two daemons with their own data dirs started at once on one empty
    database: the schema is made once (schema_version 8) and both serve
    it: a model and a job one makes the other lists, and a token made
    with `slimd token --store` works on both;
  * ?wait= on one daemon answers when a job that another daemon runs
    ends (the jobs trigger's NOTIFY, the store's listening thread);
  * a dropped connection (pg_terminate_backend): the daemon goes on, the
    request or background task that found it got a clear error
    ("postgresql: the connection to the server was lost"), and requests
    after it are answered.
"""

import os
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pg_harness  # noqa: E402
import slimd_harness as h  # noqa: E402
from slimd_harness import test  # noqa: E402

PG = None


def setup():
    global PG
    if pg_harness.available():
        try:
            PG = pg_harness.server()
        except pg_harness.PgError as e:
            raise h.HarnessError(str(e))


def need_pg():
    if PG is None:
        h.skip("PostgreSQL 15 not installed (%s)" % pg_harness.PG_BIN)


def model():
    return h.safetensors_bytes([h.t_f32("w.weight", [16, 32], 1), h.t_f32("w.bias", [16], 2)])


def serve(data_dir, uri, args=(), name="pg"):
    return h.Daemon(data_dir=data_dir, workers=1, name=name,
                    args=["--store", uri] + list(args))


@test
def test_driver_unit():
    """tests/unit/test_db on a fresh database: rows, counts, hook, errors and a reconnect as db.h says"""
    need_pg()
    exe = os.path.join(os.environ.get("SLIMD_BUILDDIR", "."), "tests", "unit", "test_db")
    if not os.access(exe, os.X_OK):
        h.skip("%s not built (make check builds it)" % exe)
    env = dict(os.environ, SLIMD_TEST_PG_URI=PG.new_database("unit"),
               CMOCKA_MESSAGE_OUTPUT="TAP")
    p = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "not ok" not in p.stdout and "# SKIP" not in p.stdout, p.stdout
    assert p.stdout.count("\nok ") + p.stdout.startswith("ok ") == 4, p.stdout


@test
def test_bad_store():
    """--store: an unknown scheme exits 2 naming it; an unreachable server exits 1 saying so, without the password"""
    d = h.make_tmpdir()
    p = subprocess.run([h.slimd_bin(), "serve", "--listen", "127.0.0.1:%d" % h.free_port(),
                        "--data-dir", d, "--store", "mysql://x/y"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "--store 'mysql://x/y'" in p.stderr, (p.returncode, p.stderr)
    # nothing listens on port 1 of the loopback
    p = subprocess.run([h.slimd_bin(), "serve", "--listen", "127.0.0.1:%d" % h.free_port(),
                        "--data-dir", d, "--store",
                        "postgresql://slimd:hunter2@127.0.0.1:1/slimd"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "postgresql: cannot connect to postgresql://slimd:***@127.0.0.1:1/slimd" in p.stderr, \
        p.stderr
    assert "hunter2" not in p.stderr, p.stderr


@test
def test_two_daemons_one_database():
    """two daemons started at once on one empty database: migrated once, each sees the other's rows and tokens"""
    need_pg()
    uri = PG.new_database("shared")
    dirs = [h.make_tmpdir(), h.make_tmpdir()]
    tok = subprocess.run([h.slimd_bin(), "token", "create", "--scope", "admin", "--name", "ops",
                          "--data-dir", dirs[0], "--store", uri], capture_output=True, text=True,
                         timeout=60)
    assert tok.returncode == 0, tok.stderr
    auth = {"Authorization": "Bearer " + tok.stdout.strip()}
    # either daemon may claim the job (the queue wakes both): they share
    # the blobs too, as daemons sharing a database must (README)
    blobs = h.make_tmpdir("slimd-blobs-")
    ds = [serve(dirs[i], uri, ["--auth", "token", "--blobs", "dir:" + blobs], name="shared%d" % i)
          for i in range(2)]
    errors = []

    def start(d):
        try:
            d.start()
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=start, args=(d,)) for d in ds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        # the latest schema: 9 (the queue's leases)
        assert PG.psql("SELECT version FROM schema_version", db=uri.rsplit("/", 1)[1]).strip() \
            == "9"
        a, b = ds
        r = a.request("POST", "/v1/models?name=shared", body=model(),
                      headers=dict(auth, **{"Content-Type": "application/octet-stream"}))
        assert r.status == 201, r
        mid = r.json["id"]
        seen = b.get("/v1/models?name=shared", headers=auth).json
        assert [m["id"] for m in seen["models"]] == [mid], seen
        r = a.request("POST", "/v1/jobs", json_body={"model": mid, "passes": [
            {"op": "quantize", "dtype": "int8"}]}, headers=auth)
        assert r.status == 202, r
        jid = r.json["id"]
        deadline = time.time() + 60
        while a.get("/v1/jobs/" + jid, headers=auth).json["state"] not in ("succeeded", "failed"):
            assert time.time() < deadline
            time.sleep(0.1)
        j = b.get("/v1/jobs/" + jid, headers=auth).json
        assert j["state"] == "succeeded" and j["artifact"]["sha256"], j
        assert b.get("/v1/health").status == 200
        # the token `slimd token` made is the one both list
        for x in ds:
            toks = x.get("/v1/tokens", headers=auth).json
            assert [t["name"] for t in toks["tokens"]] == ["ops"], toks
    finally:
        for d in ds:
            if d.alive():
                d.stop()


@test
def test_wait_sees_other_daemons():
    """?wait= on one daemon answers when a job that another daemon runs ends (LISTEN/NOTIFY), not when its time is up"""
    need_pg()
    uri = PG.new_database("notify")
    # b is an api node (--role api): it never claims, so a runs the job
    # and b only hears of it
    a = serve(h.make_tmpdir(), uri, name="runs").start()
    b = serve(h.make_tmpdir(), uri, ["--role", "api"], name="waits").start()
    try:
        mid = a.upload(h.safetensors_bytes([h.t_f32("w.weight", [1024, 1024], 3)]),
                       name="big").json["id"]
        jid = a.submit({"model": mid, "passes": [
            {"op": "lowrank", "rank": 64, "algorithm": "exact"}]}).json["id"]
        t0 = time.monotonic()
        r = b.get("/v1/jobs/%s?wait=60" % jid, timeout=90)
        took = time.monotonic() - t0
        assert r.status == 200 and r.json["state"] == "succeeded", r
        ran = a.get("/v1/jobs/" + jid).json
        h._diag("?wait on the other daemon answered %.2f s after the submission (the job ran "
                "%s to %s)" % (took, ran["started_at"], ran["finished_at"]))
        assert took < 30, "?wait answered after %.1f s: the notice did not come" % took
        assert "job %s running" % jid in a.stderr_text(), a.stderr_tail()
        assert "job %s running" % jid not in b.stderr_text(), b.stderr_tail()
    finally:
        a.stop()
        b.stop()


@test
def test_connection_dropped():
    """the server drops the daemon's connection: a clear error for what found it, and the next requests are answered"""
    need_pg()
    uri = PG.new_database("drop")
    d = serve(h.make_tmpdir(), uri, name="drop").start()
    try:
        mid = d.upload(model(), name="before").json["id"]
        out = PG.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'"
                      " AND application_name = 'slimd'" % uri.rsplit("/", 1)[1])
        # its two connections: the store's and the one that listens
        assert out.split() == ["t", "t"], out
        time.sleep(0.3)
        statuses, messages = [], []
        for _ in range(3):
            r = d.get("/v1/models/" + mid)
            statuses.append(r.status)
            if r.status != 200:
                messages.append(r.json["error"]["message"])
        # the one request that met the dropped connection, if any did
        # (a background task may have met it first), says why; the
        # others are answered
        assert statuses[-1] == 200 and statuses.count(200) >= 2, (statuses, messages)
        for m in messages:
            assert "postgresql: the connection to the server was lost" in m, m
        assert messages or "postgresql: the connection to the server was lost" in \
            d.stderr_text(), d.stderr_tail()
        assert d.upload(model(), name="after").status == 201
    finally:
        d.stop()


if __name__ == "__main__":
    h.run(setup)
