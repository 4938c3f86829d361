#!/usr/bin/env python3
"""test_lifecycle.py - lifecycle and identity (issue 10): a taken port and
a locked data dir stop a second daemon, DELETE /v1/jobs/{id}, pins,
retention (--max-data-bytes through 200 jobs, --retain-days), shared
blobs, models named by name or sha256, job names and labels with the
list filters, unknown query parameters, Idempotency-Key across a
restart, and upload-and-submit in one multipart request.

One daemon (--workers 1) serves most tests; the retention tests and the
port/lock tests start daemons of their own.

Run by hand:  SLIMD_BIN=./slimd /usr/bin/python3 tests/integration/test_lifecycle.py
"""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
from slimd_harness import check_error, test  # noqa: E402

D = None
INT8 = {"op": "quantize", "dtype": "int8", "granularity": "channel", "symmetric": True}


def setup():
    global D
    D = h.Daemon(workers=1, name="lifecycle").start()


def teardown():
    D.stop()


def model_bytes(seed, rows=64, cols=48):
    return h.safetensors_bytes([h.t_f32("layer.weight", [rows, cols], seed),
                                h.t_f32("layer.bias", [rows], seed + 1, 0.1)])


def upload(data, name, daemon=None):
    return (daemon or D).upload(data, name=name).json


def run_job(spec, daemon=None):
    d = daemon or D
    j = d.submit(spec).json
    return d.wait_job(j["id"], timeout=120)


def blob_path(daemon, sha):
    return os.path.join(daemon.data_dir, "blobs", sha[:2], sha)


def du(path):
    """Bytes as du counts them: allocated blocks of every file and folder."""
    total = 0
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            try:
                total += os.lstat(os.path.join(root, n)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total + os.lstat(path).st_blocks * 512


def second_serve(port, data_dir, timeout=20):
    """Runs a second `slimd serve` that must refuse to start; returns
    (exit status, its output)."""
    p = subprocess.run([h.slimd_bin(), "serve", "--listen", "127.0.0.1:%d" % port,
                        "--data-dir", data_dir], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace")


# ---------------------------------------------------------------- one daemon per port and dir

@test
def test_port_taken():
    """a second serve on a port in use exits non-zero naming the address; the first serves on"""
    rc, out = second_serve(D.port, h.make_tmpdir())
    assert rc != 0, "second daemon on port %d exited 0:\n%s" % (D.port, out)
    assert "127.0.0.1:%d" % D.port in out and "in use" in out, out
    for _ in range(5):    # every connection still reaches the first daemon
        assert D.get("/v1/health").status == 200


@test
def test_data_dir_locked():
    """a second serve on the same data dir exits non-zero naming the dir and the pid"""
    r = D.upload(model_bytes(900), name="before-lock")
    rc, out = second_serve(h.free_port(), D.data_dir)
    assert rc != 0, out
    assert D.data_dir in out and "in use by another slimd (pid %d)" % D.proc.pid in out, out
    # the first daemon's files were not touched (no tmp/ purge, no sweep)
    assert D.get("/v1/models/" + r.json["id"] + "/file").status == 200
    # `slimd token` may still run beside it (it takes no lock)
    p = subprocess.run([h.slimd_bin(), "token", "list", "--data-dir", D.data_dir] +
                       h.store_flags(D.data_dir),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
    assert p.returncode == 0, p.stdout


# ---------------------------------------------------------------- delete and pin

@test
def test_delete_job():
    """DELETE a finished job: 204, row, report and artifact gone (blob too); 404 after"""
    m = upload(model_bytes(1), "del")
    j = run_job({"model": m["id"], "passes": [INT8]})
    assert j["state"] == "succeeded", j
    sha = j["artifact"]["sha256"]
    assert os.path.exists(blob_path(D, sha))
    r = D.request("DELETE", "/v1/jobs/" + j["id"])
    assert r.status == 204 and r.body == b"", r
    for sub in ("", "/report", "/artifact"):
        check_error(D.get("/v1/jobs/" + j["id"] + sub), 404, "NOT_FOUND", j["id"])
    assert not os.path.exists(blob_path(D, sha)), "artifact blob left behind"
    check_error(D.request("DELETE", "/v1/jobs/" + j["id"]), 404, "NOT_FOUND")
    check_error(D.request("DELETE", "/v1/jobs/job_0000000000000000"), 404, "NOT_FOUND")
    # the model stays
    assert D.get("/v1/models/" + m["id"]).status == 200


@test
def test_delete_shared_artifact():
    """two jobs with the same bytes share one artifact blob: deleting one keeps it"""
    m = upload(model_bytes(2), "twins")
    a = run_job({"model": m["id"], "passes": [INT8]})
    b = run_job({"model": m["id"], "passes": [INT8]})
    assert a["artifact"]["sha256"] == b["artifact"]["sha256"]
    assert D.request("DELETE", "/v1/jobs/" + a["id"]).status == 204
    r = D.get("/v1/jobs/%s/artifact" % b["id"])
    assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == b["artifact"]["sha256"]


def slow_model():
    """An exact SVD of 1536x1536 runs for seconds: long enough to be seen
    running (it is canceled, not waited for)."""
    return h.safetensors_bytes([h.t_f32("big.weight", [1536, 1536], 5)])


@test
def test_delete_running_and_queued():
    """a running job is 409 (cancel first); a queued one is deleted and never runs"""
    m = upload(slow_model(), "slow")
    spec = {"model": m["id"], "passes": [{"op": "lowrank", "rank": 64, "algorithm": "exact"}]}
    run = D.submit(spec).json["id"]
    queued = D.submit({"model": m["id"], "passes": [INT8]}).json["id"]
    deadline = time.time() + 60
    while D.get("/v1/jobs/" + run).json["state"] == "queued" and time.time() < deadline:
        time.sleep(0.01)
    assert D.get("/v1/jobs/" + run).json["state"] == "running"
    check_error(D.request("DELETE", "/v1/jobs/" + run), 409, "CONFLICT", ["running", "cancel"])
    assert D.get("/v1/jobs/" + queued).json["state"] == "queued"
    assert D.request("DELETE", "/v1/jobs/" + queued).status == 204
    D.request("POST", "/v1/jobs/%s/cancel" % run)
    assert D.wait_job(run)["state"] in ("canceled", "succeeded")
    assert D.request("DELETE", "/v1/jobs/" + run).status == 204
    check_error(D.get("/v1/jobs/" + queued), 404)
    # a model a queued job needs cannot go: 409 naming the job
    blocker = D.submit(spec).json["id"]
    after = D.submit({"model": m["id"], "passes": [INT8]}).json["id"]
    check_error(D.request("DELETE", "/v1/models/" + m["id"]), 409, "CONFLICT", "used by job")
    for jid in (blocker, after):
        D.request("POST", "/v1/jobs/%s/cancel" % jid)
        D.wait_job(jid)
    assert D.request("DELETE", "/v1/models/" + m["id"]).status == 204


@test
def test_pin():
    """POST /pin and /unpin set "pinned"; unknown job 404"""
    m = upload(model_bytes(3), "pin")
    j = run_job({"model": m["id"], "passes": [INT8]})
    assert j["pinned"] is False
    r = D.request("POST", "/v1/jobs/%s/pin" % j["id"])
    assert r.status == 200 and r.json["pinned"] is True, r
    assert D.get("/v1/jobs/" + j["id"]).json["pinned"] is True
    r = D.request("POST", "/v1/jobs/%s/unpin" % j["id"])
    assert r.status == 200 and r.json["pinned"] is False, r
    check_error(D.request("POST", "/v1/jobs/job_0000000000000000/pin"), 404)


# ---------------------------------------------------------------- identity

@test
def test_shared_blob():
    """the same bytes twice: two models on one blob ("duplicates", "shared_blob"); deleting one keeps it"""
    data = model_bytes(10)
    a = upload(data, "same-a")
    b = upload(data, "same-b")
    assert a["id"] != b["id"] and a["sha256"] == b["sha256"] == hashlib.sha256(data).hexdigest()
    assert a["shared_blob"] is False and a["duplicates"] == 0, a
    assert b["shared_blob"] is True and b["duplicates"] == 1, b
    assert D.get("/v1/models/" + a["id"]).json["duplicates"] == 1
    blobs = [p for p in os.listdir(os.path.join(D.data_dir, "blobs", a["sha256"][:2]))
             if p == a["sha256"]]
    assert len(blobs) == 1
    assert D.request("DELETE", "/v1/models/" + a["id"]).status == 204
    assert os.path.exists(blob_path(D, a["sha256"]))
    r = D.get("/v1/models/%s/file" % b["id"])
    assert r.status == 200 and r.body == data
    assert D.get("/v1/models/" + b["id"]).json["shared_blob"] is False
    assert D.request("DELETE", "/v1/models/" + b["id"]).status == 204
    assert not os.path.exists(blob_path(D, a["sha256"]))


@test
def test_model_by_name_and_sha():
    """"model": {"name"} is the newest of that name, {"sha256"} by content; 404 and 400 say why"""
    old = upload(model_bytes(20), "resnet-ref")
    new = upload(model_bytes(21), "resnet-ref")
    j = D.submit({"model": {"name": "resnet-ref"}, "passes": [INT8]}).json
    assert j["model"] == new["id"] and j["spec"]["model"] == new["id"], j
    assert j["model_sha256"] == new["sha256"]
    j2 = D.submit({"model": {"sha256": old["sha256"]}, "passes": [INT8]}).json
    assert j2["model"] == old["id"], j2
    for jid in (j["id"], j2["id"]):
        assert D.wait_job(jid)["state"] == "succeeded"
    check_error(D.submit({"model": {"name": "no-such"}, "passes": [INT8]}, expect=None), 404,
                "NOT_FOUND", ["model.name", "no-such"])
    check_error(D.submit({"model": {"sha256": "0" * 64}, "passes": [INT8]}, expect=None), 404,
                "NOT_FOUND", "model.sha256")
    for bad, field in (({"sha256": "xyz"}, "model.sha256"), ({"id": "x"}, "model"),
                       ({"name": "a", "sha256": "0" * 64}, "model"), ({"name": 3}, "model.name"),
                       (7, "model")):
        check_error(D.submit({"model": bad, "passes": [INT8]}, expect=None), 400,
                    "INVALID_SPEC", field)
    # the list filters
    r = D.get("/v1/models?name=resnet-ref")
    assert r.status == 200 and [m["id"] for m in r.json["models"]] == [new["id"], old["id"]]
    assert r.json["total"] == 2
    r = D.get("/v1/models?sha256=" + old["sha256"])
    assert [m["id"] for m in r.json["models"]] == [old["id"]] and r.json["total"] == 1
    r = D.get("/v1/models?name=resnet-ref&sha256=" + old["sha256"] + "&limit=1")
    assert r.json["total"] == 1
    check_error(D.get("/v1/models?sha256=ABC"), 400, "INVALID_ARGUMENT", "sha256")
    assert D.get("/v1/datasets?name=nothing").json["total"] == 0


@test
def test_unknown_query_parameters():
    """every list endpoint answers an unknown query parameter 400, naming it"""
    for path in ("/v1/models?nmae=x", "/v1/datasets?bogus=1", "/v1/jobs?lable=a:b",
                 "/v1/jobs?limit=5&state=queued&colour=red", "/v1/tokens?x=1"):
        bad = path.split("?")[1].split("&")[-1].split("=")[0]
        check_error(D.get(path), 400, "INVALID_ARGUMENT", ["unknown query parameter", bad])


@test
def test_job_name_and_labels():
    """"name" and "labels": shown on the job, filtered by ?label=k:v (AND), ?name=, ?model=, totals"""
    m = upload(model_bytes(30), "labelled")
    tag = uuid.uuid4().hex[:8]
    specs = [("nightly", {"run": tag, "branch": "main", "kind": "int8"}),
             ("nightly", {"run": tag, "branch": "dev", "kind": "int8"}),
             ("adhoc", {"run": tag, "branch": "main"})]
    ids = []
    for name, labels in specs:
        j = D.submit({"model": m["id"], "name": name, "labels": labels,
                      "passes": [INT8]}).json
        assert j["name"] == name and j["labels"] == labels, j
        ids.append(j["id"])
    for jid in ids:
        got = D.wait_job(jid)
        assert got["state"] == "succeeded" and got["labels"]
    lst = D.get("/v1/jobs?label=run:" + tag)
    assert lst.json["total"] == 3 and {j["id"] for j in lst.json["jobs"]} == set(ids)
    assert all("labels" in j and "name" in j for j in lst.json["jobs"])
    lst = D.get("/v1/jobs?label=run:%s&label=branch:main" % tag)
    assert lst.json["total"] == 2 and {j["id"] for j in lst.json["jobs"]} == {ids[0], ids[2]}
    lst = D.get("/v1/jobs?label=run:%s&label=branch:main&name=nightly" % tag)
    assert [j["id"] for j in lst.json["jobs"]] == [ids[0]]
    lst = D.get("/v1/jobs?label=run:%s&state=succeeded&limit=1&offset=1" % tag)
    assert lst.json["total"] == 3 and [j["id"] for j in lst.json["jobs"]] == [ids[1]]
    lst = D.get("/v1/jobs?model=%s&label=run:%s" % (m["id"], tag))
    assert lst.json["total"] == 3
    assert D.get("/v1/jobs?label=run:%s&label=branch:nope" % tag).json["total"] == 0
    check_error(D.get("/v1/jobs?label=novalue"), 400, "INVALID_ARGUMENT", "label")
    # validation, each naming the field
    for bad, field in (({"name": ""}, "name"), ({"name": 5}, "name"),
                       ({"labels": ["a"]}, "labels"), ({"labels": {"a": 1}}, "labels.a"),
                       ({"labels": {"a": ""}}, "labels.a"), ({"labels": {"": "x"}}, "labels"),
                       ({"labels": {"has space": "x"}}, "has space"),
                       ({"labels": {"k%d" % i: "v" for i in range(33)}}, "at most 32"),
                       ({"labels": {"a": "x" * 201}}, "labels.a")):
        spec = dict({"model": m["id"], "passes": [INT8]}, **bad)
        check_error(D.submit(spec, expect=None), 400, "INVALID_SPEC", field)


# ---------------------------------------------------------------- idempotency

@test
def test_idempotency_key():
    """Idempotency-Key: a repeat gets the first result (status and body), a new body 422; it survives a restart"""
    m = upload(model_bytes(40), "idem")
    spec = {"model": m["id"], "name": "idem", "passes": [INT8]}
    key = str(uuid.uuid4())
    hdr = {"Idempotency-Key": key}
    first = D.post_json("/v1/jobs", spec, headers=hdr)
    assert first.status == 202, first
    again = D.post_json("/v1/jobs", spec, headers=hdr)
    assert again.status == 202 and again.body == first.body, (first.body, again.body)
    assert again.header("Location") == first.header("Location")
    lst = D.get("/v1/jobs?name=idem").json
    assert lst["total"] == 1, lst
    check_error(D.post_json("/v1/jobs", dict(spec, name="other"), headers=hdr), 422,
                "IDEMPOTENCY_KEY_REUSED", key)
    # a failed request is not remembered: the same key runs again once fixed
    k2 = {"Idempotency-Key": str(uuid.uuid4())}
    check_error(D.post_json("/v1/jobs", {"model": m["id"], "passes": [{"op": "nope"}]},
                            headers=k2), 400, "INVALID_SPEC")
    ok = D.post_json("/v1/jobs", spec, headers=k2)
    assert ok.status == 202 and ok.json["id"] != first.json["id"]
    # uploads: the same bytes and key give the first model, not a second row
    data = model_bytes(41)
    uk = {"Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/octet-stream"}
    u1 = D.request("POST", "/v1/models?name=idem-up", body=data, headers=uk)
    u2 = D.request("POST", "/v1/models?name=idem-up", body=data, headers=uk)
    assert u1.status == u2.status == 201 and u1.body == u2.body, (u1, u2)
    assert D.get("/v1/models?name=idem-up").json["total"] == 1
    check_error(D.request("POST", "/v1/models?name=idem-up", body=model_bytes(42), headers=uk),
                422, "IDEMPOTENCY_KEY_REUSED")
    assert D.get("/v1/models?name=idem-up").json["total"] == 1
    check_error(D.post_json("/v1/jobs", spec, headers={"Idempotency-Key": "a b"}), 400,
                "INVALID_ARGUMENT", "Idempotency-Key")
    check_error(D.request("POST", "/v1/models?name=bad-key", body=data,
                          headers={"Idempotency-Key": "x" * 300}), 400, "INVALID_ARGUMENT",
                "Idempotency-Key")
    assert D.get("/v1/models?name=bad-key").json["total"] == 0
    D.wait_job(first.json["id"])
    D.wait_job(ok.json["id"])
    # stored in SQLite: a restart keeps it
    D.restart()
    again = D.post_json("/v1/jobs", spec, headers=hdr)
    assert again.status == 202 and again.body == first.body
    assert D.get("/v1/jobs?name=idem").json["total"] == 2    # first and ok, nothing new


# ---------------------------------------------------------------- upload and submit at once

@test
def test_multipart_job():
    """POST /v1/jobs multipart (model file + spec): the model is stored and the job queued; refusals leave nothing"""
    data = model_bytes(50)
    spec = {"name": "one-shot", "labels": {"via": "multipart"}, "passes": [INT8]}
    body, ctype = h.multipart([("spec", "spec.json", json.dumps(spec).encode(),
                                "application/json"), ("model", "net.safetensors", data)])
    r = D.request("POST", "/v1/jobs", body=body, headers={"Content-Type": ctype})
    assert r.status == 202, r
    j = D.wait_job(r.json["id"])
    assert j["state"] == "succeeded" and j["name"] == "one-shot", j
    mdl = D.get("/v1/models/" + j["model"]).json
    assert mdl["name"] == "net.safetensors" and mdl["sha256"] == hashlib.sha256(data).hexdigest()
    assert j["model_sha256"] == mdl["sha256"]
    before = D.get("/v1/models?limit=1000").json["total"]
    cases = [
        ([("spec", json.dumps(dict(spec, model="mdl_x"))), ("model", "m.st", data)], 400,
         "INVALID_SPEC", "leave it out"),
        ([("spec", json.dumps({"passes": [{"op": "bogus"}]})), ("model", "m.st", data)], 400,
         "INVALID_SPEC", "passes[0]"),
        ([("model", "m.st", data)], 400, "INVALID_SPEC", "'spec'"),
        ([("spec", json.dumps(spec))], 400, "INVALID_ARGUMENT", "'model'"),
        ([("spec", json.dumps(spec)), ("model", "m.st", b"not a model at all")], 415,
         "UNSUPPORTED_MEDIA", None),
        ([("spec", "{not json"), ("model", "m.st", data)], 400, "INVALID_SPEC", "JSON"),
        ([("spec", json.dumps(dict(spec, labels={"a": 1}))), ("model", "m.st", data)], 400,
         "INVALID_SPEC", "labels.a"),
    ]
    for fields, status, code, says in cases:
        body, ctype = h.multipart(fields)
        check_error(D.request("POST", "/v1/jobs?name=refused", body=body,
                              headers={"Content-Type": ctype}), status, code, says)
    assert D.get("/v1/models?limit=1000").json["total"] == before, "a refused job left a model"
    assert not os.listdir(os.path.join(D.data_dir, "tmp"))
    # with an Idempotency-Key the repeat returns the first job and keeps one model
    body, ctype = h.multipart([("spec", json.dumps(spec)), ("model", "n2.st", model_bytes(51))])
    hdr = {"Content-Type": ctype, "Idempotency-Key": str(uuid.uuid4())}
    a = D.request("POST", "/v1/jobs?name=mp-idem", body=body, headers=hdr)
    b = D.request("POST", "/v1/jobs?name=mp-idem", body=body, headers=hdr)
    assert a.status == b.status == 202 and a.body == b.body
    assert D.get("/v1/models?name=mp-idem").json["total"] == 1
    D.wait_job(a.json["id"])


# ---------------------------------------------------------------- retention

def varied_spec(model, i):
    """A spec whose artifact differs from every other i's (no shared blobs)."""
    return {"model": model, "name": "ret", "labels": {"i": str(i)},
            "passes": [{"op": "prune", "sparsity": round(0.05 + 0.004 * i, 3)}]}


@test
def test_retention_max_data_bytes():
    """--max-data-bytes through 200 jobs: du of the data dir stays under it; newest, pinned and each model's last job stay"""
    limit = 8 << 20
    d = h.Daemon(workers=1, name="retain-bytes",
                 args=["--max-data-bytes", str(limit), "--db-reserve-bytes", "0"]).start()
    try:
        data = h.safetensors_bytes([h.t_f32("w", [256, 256], 7)])   # 256 KiB, artifact alike
        m = upload(data, "ret-main", d)
        other = upload(model_bytes(60), "ret-other", d)
        kept = run_job({"model": other["id"], "passes": [INT8]}, d)  # other's only job
        pinned = run_job(varied_spec(m["id"], 0), d)
        assert d.request("POST", "/v1/jobs/%s/pin" % pinned["id"]).status == 200
        peak, done, stop = 0, [], threading.Event()
        sampled = []

        def sample():          # du every 20 ms while the jobs run, not only between them
            while not stop.is_set():
                sampled.append(du(d.data_dir))
                time.sleep(0.02)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for i in range(1, 200):
            j = d.submit(varied_spec(m["id"], i)).json
            done.append(j["id"])
            if i % 10 == 0 or i == 199:     # a few in the queue at once, then measured
                # the newest ends last: the others have ended (or gone) before it
                assert d.wait_job(done[-1], timeout=120)["state"] == "succeeded"
                peak = max(peak, du(d.data_dir))
                assert peak <= limit, "data dir %d bytes > --max-data-bytes %d after %d jobs" % (
                    peak, limit, i)
        stop.set()
        sampler.join()
        size = du(d.data_dir)
        assert size <= limit, (size, limit)
        assert max(sampled) <= limit, "du reached %d > %d while jobs ran" % (max(sampled), limit)
        # without retention 200 artifacts of 256 KiB would hold 50 MiB
        left = d.get("/v1/jobs?name=ret&limit=1000").json
        assert 5 <= left["total"] < 60, left["total"]
        ids = [j["id"] for j in left["jobs"]]
        for jid in done[-3:]:        # the newest artifacts stay downloadable
            r = d.get("/v1/jobs/%s/artifact" % jid)
            assert r.status == 200 and len(r.body) > 200000, (jid, r.status)
        assert pinned["id"] in ids, "the pinned job was removed"
        assert done[0] not in ids, "the oldest job was kept"
        r = d.get("/v1/jobs/%s/artifact" % kept["id"])
        assert r.status == 200, "a model's last job was removed"
        assert d.get("/v1/models/" + m["id"]).status == 200
        log = d.stderr_text()
        assert "retention: removed" in log and "freed" in log, log[-2000:]
        # every blob left is named by a row: nothing unreferenced stays
        blobs = {f for _, _, fs in os.walk(os.path.join(d.data_dir, "blobs")) for f in fs}
        named = {m["sha256"], other["sha256"]} | {
            d.get("/v1/jobs/" + jid).json["artifact"]["sha256"]
            for jid in ids + [kept["id"]]}
        assert blobs == named, (len(blobs), len(named))
        h._diag("200 jobs under --max-data-bytes %d: du at most %d (%d samples), end %d, "
                "%d jobs kept" % (limit, max(sampled), len(sampled), size, left["total"]))
    finally:
        d.stop()


@test
def test_retention_retain_days():
    """--retain-days: jobs that finished longer ago go at the next sweep; pinned and recent stay"""
    d = h.Daemon(workers=1, name="retain-days", args=["--retain-days", "2"]).start()
    try:
        m = upload(h.safetensors_bytes([h.t_f32("w", [128, 64], 8)]), "days", d)
        jobs = [run_job(varied_spec(m["id"], i), d) for i in range(4)]
        assert all(j["state"] == "succeeded" for j in jobs)
        d.stop()
        # age three of them (the test stands in for the calendar)
        if h.PG:   # ids are hex: safe in the SQL text
            h.store_query(d.data_dir, "UPDATE jobs SET finished_at = to_char((now() - interval"
                          " '3 days') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
                          " WHERE id IN (%s)" % ", ".join("'%s'" % j["id"] for j in jobs[:3]))
            h.store_query(d.data_dir, "UPDATE jobs SET pinned = 1 WHERE id = '%s'"
                          % jobs[1]["id"])
        else:
            db = sqlite3.connect(os.path.join(d.data_dir, "slimd.db"))
            for j in jobs[:3]:
                db.execute("UPDATE jobs SET finished_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now',"
                           " '-3 days') WHERE id = ?", (j["id"],))
            db.execute("UPDATE jobs SET pinned = 1 WHERE id = ?", (jobs[1]["id"],))
            db.commit()
            db.close()
        d.start()      # a sweep runs at start (and every minute, and after each job)
        gone, pinned, young = jobs[0], jobs[1], jobs[3]
        check_error(d.get("/v1/jobs/" + gone["id"]), 404)
        check_error(d.get("/v1/jobs/" + jobs[2]["id"]), 404)
        assert not os.path.exists(blob_path(d, gone["artifact"]["sha256"]))
        assert d.get("/v1/jobs/%s/artifact" % pinned["id"]).status == 200
        assert d.get("/v1/jobs/%s/artifact" % young["id"]).status == 200
        assert d.get("/v1/models/" + m["id"]).status == 200
        assert "retention: removed 2 job(s)" in d.stderr_text(), d.stderr_tail()
    finally:
        d.stop()


if __name__ == "__main__":
    h.run(setup, teardown, daemons=lambda: [D])
