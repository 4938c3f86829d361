#!/usr/bin/env python3
"""test_blobs.py - blobs every node sees (issue 11): --blobs dir:PATH
shared by two daemons, and --blobs s3://bucket/prefix against a real
S3-compatible server (a single-node OpenStack Swift with s3api, which
s3_harness.py starts on loopback).

Two daemons with their own data dirs stand for two nodes.  Until the
metadata is shared too (--store postgresql://), "node B" gets node A's
rows by a copy of A's database taken while A is stopped; the blobs it
serves come from the shared location, never from A's data dir.

Run by hand:  SLIMD_BIN=./slimd /usr/bin/python3 tests/integration/test_blobs.py
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
import s3_harness  # noqa: E402
from slimd_harness import check_error, test  # noqa: E402

FP16 = {"op": "quantize", "dtype": "fp16"}
SWIFT = None
BUCKET = "slimd-test"


def model_bytes(seed, rows=64, cols=48):
    return h.safetensors_bytes([h.t_f32("layer.weight", [rows, cols], seed),
                                h.t_f32("layer.bias", [rows], seed + 1, 0.1)])


def sha(data):
    return hashlib.sha256(data).hexdigest()


def swift():
    global SWIFT
    if SWIFT is None:
        ok, why = s3_harness.SwiftS3.available()
        assert ok, why
        t0 = time.time()
        SWIFT = s3_harness.SwiftS3().start()
        SWIFT.make_bucket(BUCKET)
        print("# Swift with s3api up in %.1f s at %s" % (time.time() - t0, SWIFT.endpoint))
    return SWIFT


def s3_daemon(prefix, data_dir=None, env=None, name="s3"):
    e = swift().env()
    e.update(env or {})
    return h.Daemon(data_dir=data_dir, workers=1, name=name,
                    args=["--blobs", "s3://%s/%s" % (BUCKET, prefix)], env=e)


def copy_db(src, dst):
    """The metadata of a stopped daemon, for a second one: under
    SLIMD_TEST_STORE=postgresql the same database (the shared store
    itself), else a copy of its SQLite file (a shared store's stand-in)."""
    os.makedirs(dst, exist_ok=True)
    if h.PG:
        h._STORE_URIS[os.path.realpath(dst)] = h.store_uri(src)
        return
    for f in os.listdir(src):
        if f.startswith("slimd.db"):
            shutil.copy2(os.path.join(src, f), os.path.join(dst, f))


def check_download(d, path, body):
    """The same GET as on one node: 200 with the bytes, the sha256 as ETag,
    Range 206 with the slice, If-None-Match 304."""
    r = d.get(path)
    assert r.status == 200 and r.body == body, r
    assert r.header("ETag") == '"%s"' % sha(body), r.headers
    r = d.get(path, headers={"Range": "bytes=10-99"})
    assert r.status == 206 and r.body == body[10:100], r
    assert r.header("Content-Range") == "bytes 10-99/%d" % len(body), r.headers
    r = d.get(path, headers={"Range": "bytes=-5"})
    assert r.status == 206 and r.body == body[-5:], r
    r = d.get(path, headers={"If-None-Match": '"%s"' % sha(body)})
    assert r.status == 304 and r.body == b"", r
    r = d.get(path, headers={"Range": "bytes=%d-" % len(body)})
    check_error(r, 416, "RANGE_NOT_SATISFIABLE", "outside")


# ---------------------------------------------------------------- dir:PATH


def shared_dir():
    """/dev/shm when it is another file system than the data dirs' (/tmp)
    with room for the test's 80 MiB: then an artifact, written in the
    data dir, is copied across, and the uploads stream straight into
    PATH/.incoming.  Else a folder beside the data dirs."""
    try:
        v = os.statvfs("/dev/shm")
        roomy = v.f_bavail * v.f_frsize > (512 << 20) and os.access("/dev/shm", os.W_OK)
        other = os.stat("/dev/shm").st_dev != os.stat(tempfile.gettempdir()).st_dev
    except OSError:
        roomy = other = False
    if not (roomy and other):
        return h.make_tmpdir("slimd-shared-blobs-")
    d = tempfile.mkdtemp(prefix="slimd-shared-blobs-", dir="/dev/shm")
    h._TMPDIRS.append(d)
    return d


@test
def test_dir_concurrent_same_bytes():
    """dir:PATH shared by two daemons: the same bytes uploaded by both at once, 40 times: every row valid, every blob whole"""
    path = shared_dir()
    a = h.Daemon(workers=1, name="dirA", args=["--blobs", "dir:" + path]).start()
    b = h.Daemon(workers=1, name="dirB", args=["--blobs", "dir:" + path]).start()
    try:
        rounds = 40
        results = {}

        def up(d, key, data, barrier):
            barrier.wait()
            results[key] = d.upload(data, expect=None)

        for i in range(rounds):
            # 1 to 3 MiB: several writes each, so the two uploads overlap
            data = model_bytes(1000 + i, rows=256 * (1 + i % 3), cols=1024)
            barrier = threading.Barrier(4)
            ts = [threading.Thread(target=up, args=(d, (i, k), data, barrier))
                  for k, d in enumerate((a, b, a, b))]
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
            for k, d in enumerate((a, b, a, b)):
                r = results[(i, k)]
                assert r.status == 201, (i, k, r)
                assert r.json["sha256"] == sha(data), (i, k, r.json)
            blob = os.path.join(path, sha(data)[:2], sha(data))
            with open(blob, "rb") as f:
                assert sha(f.read()) == sha(data), "blob %s is torn" % blob
            for k, d in ((0, a), (1, b)):
                r = d.get("/v1/models/%s/file" % results[(i, k)].json["id"])
                assert r.status == 200 and r.body == data, (i, k, r)
        left = os.listdir(os.path.join(path, ".incoming"))
        assert left == [], "temp files left in .incoming: %s" % left
        # nothing under the data dirs' own blobs/
        for d in (a, b):
            own = [f for _, _, fs in os.walk(os.path.join(d.data_dir, "blobs")) for f in fs]
            assert own == [], own
        # a job on each node: the artifact (written in the data dir's tmp/)
        # lands in the shared dir, and the other node's copy of the same
        # bytes is the same blob
        mid_a = results[(0, 0)].json["id"]
        mid_b = results[(0, 1)].json["id"]
        ja = a.wait_job(a.submit({"model": mid_a, "passes": [FP16]}).json["id"], timeout=120)
        jb = b.wait_job(b.submit({"model": mid_b, "passes": [FP16]}).json["id"], timeout=120)
        assert ja["state"] == "succeeded" and jb["state"] == "succeeded", (ja, jb)
        art = ja["artifact"]["sha256"]
        assert jb["artifact"]["sha256"] == art, (ja["artifact"], jb["artifact"])
        with open(os.path.join(path, art[:2], art), "rb") as f:
            body = f.read()
        assert sha(body) == art
        check_download(a, "/v1/jobs/%s/artifact" % ja["id"], body)
        check_download(b, "/v1/jobs/%s/artifact" % jb["id"], body)
        # a delete on A removes A's rows only; the shared blob stays for B
        r = a.request("DELETE", "/v1/jobs/%s" % ja["id"])
        assert r.status == 204, r
        r = a.request("DELETE", "/v1/models/%s" % mid_a)
        assert r.status == 204, r
        assert os.path.exists(os.path.join(path, art[:2], art))
        check_download(b, "/v1/jobs/%s/artifact" % jb["id"], body)
        r = b.get("/v1/models/%s/file" % mid_b)
        assert r.status == 200 and r.body == model_bytes(1000, rows=256, cols=1024), r
        # a restart sweeps no blob of a shared dir (another node's may be
        # between its commit and its insert)
        n = sum(len(fs) for _, _, fs in os.walk(path))
        a.restart()
        assert sum(len(fs) for _, _, fs in os.walk(path)) == n
    finally:
        a.stop()
        b.stop()


@test
def test_dir_bad_path():
    """--blobs dir:PATH that cannot be made, and a malformed --blobs: serve exits non-zero naming it"""
    d = h.Daemon(workers=1, name="badblobs", args=["--blobs", "dir:/proc/nope/blobs"])
    try:
        d.start(timeout=5)
        raise AssertionError("slimd started with --blobs dir:/proc/nope/blobs")
    except h.HarnessError:
        pass
    assert "/proc/nope" in d.stderr_text(), d.stderr_tail()
    d = h.Daemon(workers=1, name="badblobs2", args=["--blobs", "ftp://x"])
    try:
        d.start(timeout=5)
        raise AssertionError("slimd started with --blobs ftp://x")
    except h.HarnessError:
        pass
    assert "dir:PATH or s3://" in d.stderr_text(), d.stderr_tail()
    d = h.Daemon(workers=1, name="badblobs3", args=["--blobs", "s3://b/p"],
                 env={"SLIMD_S3_ENDPOINT": ""})
    try:
        d.start(timeout=5)
        raise AssertionError("slimd started with --blobs s3://b/p and no endpoint")
    except h.HarnessError:
        pass
    assert "SLIMD_S3_ENDPOINT" in d.stderr_text(), d.stderr_tail()


# ---------------------------------------------------------------- s3


@test
def test_s3_two_nodes():
    """s3: upload and a job on node A, the model and artifact served by node B from the bucket (sha256, ETag, Range, If-None-Match); a job on B"""
    a = s3_daemon("two-nodes", name="s3A").start()
    # over SLIMD_S3_PART_BYTES (5 MiB here): a multipart upload
    big = model_bytes(7, rows=1500, cols=1024)
    small = model_bytes(8)
    try:
        ra = a.upload(big).json
        rs = a.upload(small).json
        job = a.wait_job(a.submit({"model": ra["id"], "passes": [FP16]}).json["id"],
                         timeout=180)
        assert job["state"] == "succeeded", job
        art = a.get("/v1/jobs/%s/artifact" % job["id"])
        assert art.status == 200 and sha(art.body) == job["artifact"]["sha256"], art
        keys = SWIFT.list_keys(BUCKET, "two-nodes/")
        for s in (sha(big), sha(small), job["artifact"]["sha256"]):
            assert "two-nodes/" + s in keys, (s, keys)
        status, hdrs, obj = SWIFT.get_object(BUCKET, "two-nodes/" + sha(big))
        assert status == 200 and obj == big, status
        # S3's ETag of a multipart object is md5-of-md5s "-" parts
        assert hdrs["etag"].endswith('-2"'), hdrs
    finally:
        a.stop()
    bdir = h.make_tmpdir()
    copy_db(a.data_dir, bdir)
    b = s3_daemon("two-nodes", data_dir=bdir, name="s3B").start()
    try:
        assert not os.path.exists(os.path.join(bdir, "cache", sha(big)[:2], sha(big)))
        # If-None-Match is answered from the sha256 alone: nothing fetched
        s = job["artifact"]["sha256"]
        r = b.get("/v1/jobs/%s/artifact" % job["id"], headers={"If-None-Match": '"%s"' % s})
        assert r.status == 304 and r.header("ETag") == '"%s"' % s, r
        assert not os.path.exists(os.path.join(bdir, "cache", s[:2], s))
        check_download(b, "/v1/jobs/%s/artifact" % job["id"], art.body)
        check_download(b, "/v1/models/%s/file" % ra["id"], big)
        # the local copy B fetched is the blob (checked against its name)
        with open(os.path.join(bdir, "cache", s[:2], s), "rb") as f:
            assert sha(f.read()) == s
        # a job on B over a model B has no copy of: fetched by the worker
        jb = b.wait_job(b.submit({"model": rs["id"], "passes": [FP16]}).json["id"],
                        timeout=120)
        assert jb["state"] == "succeeded", jb
        assert "two-nodes/" + jb["artifact"]["sha256"] in SWIFT.list_keys(BUCKET, "two-nodes/")
        # deleting the job on B drops B's local copy, not the object
        s2 = jb["artifact"]["sha256"]
        assert b.request("DELETE", "/v1/jobs/%s" % jb["id"]).status == 204
        assert not os.path.exists(os.path.join(bdir, "cache", s2[:2], s2))
        assert "two-nodes/" + s2 in SWIFT.list_keys(BUCKET, "two-nodes/")
    finally:
        b.stop()


@test
def test_s3_corrupt_object():
    """s3: an object whose bytes are not its name's sha256 is refused on download (500 naming s3), never served"""
    a = s3_daemon("corrupt", name="s3C").start()
    data = model_bytes(21)
    try:
        m = a.upload(data).json
        # someone overwrites the object; A's local copy goes
        status, _, _ = s3_harness.sigv4_request(SWIFT.endpoint, "PUT", "/%s/corrupt/%s" % (
            BUCKET, sha(data)), body=data[:-1] + b"\0")
        assert status == 200, status
        os.unlink(os.path.join(a.data_dir, "cache", sha(data)[:2], sha(data)))
        r = a.get("/v1/models/%s/file" % m["id"])
        check_error(r, 500, "IO_ERROR", "s3")
        assert "not that blob" in r.json["error"]["message"], r.json
        assert not os.path.exists(os.path.join(a.data_dir, "cache", sha(data)[:2], sha(data)))
    finally:
        a.stop()


@test
def test_s3_unreachable():
    """s3 with an unreachable endpoint: uploads and downloads are 500 naming s3 and the endpoint; nothing stored is lost"""
    a = s3_daemon("unreach", name="s3U").start()
    data = model_bytes(31)
    try:
        m = a.upload(data).json
        job = a.wait_job(a.submit({"model": m["id"], "passes": [FP16]}).json["id"],
                         timeout=120)
        assert job["state"] == "succeeded", job
    finally:
        a.stop()
    dead = "http://127.0.0.1:%d" % h.free_port()
    shutil.rmtree(os.path.join(a.data_dir, "cache"))
    d = s3_daemon("unreach", data_dir=a.data_dir, name="s3U2",
                  env={"SLIMD_S3_ENDPOINT": dead}).start()
    try:
        r = d.upload(model_bytes(32), expect=None)
        check_error(r, 500, "IO_ERROR", "s3")
        assert dead in r.json["error"]["message"], r.json
        for path in ("/v1/models/%s/file" % m["id"], "/v1/jobs/%s/artifact" % job["id"]):
            r = d.get(path)
            check_error(r, 500, "IO_ERROR", "s3")
            assert dead in r.json["error"]["message"], r.json
        # a job over a model without a local copy: the submission reads
        # the model (its memory estimate), so it is refused, naming s3
        r = d.submit({"model": m["id"], "passes": [FP16]}, expect=None)
        check_error(r, 500, "IO_ERROR", "s3")
        assert dead in r.json["error"]["message"], r.json
        r = d.get("/v1/models")
        assert [x["id"] for x in r.json["models"]] == [m["id"]], r.json
        assert d.get("/v1/jobs/%s" % job["id"]).json["state"] == "succeeded"
    finally:
        d.stop()
    # the endpoint back: everything is there
    e = s3_daemon("unreach", data_dir=a.data_dir, name="s3U3").start()
    try:
        r = e.get("/v1/models/%s/file" % m["id"])
        assert r.status == 200 and r.body == data, r
        r = e.get("/v1/jobs/%s/artifact" % job["id"])
        assert r.status == 200 and sha(r.body) == job["artifact"]["sha256"], r
    finally:
        e.stop()


@test
def test_s3_cache_bounded_by_retention():
    """s3: --max-data-bytes removes local copies (least recently used first) before any job; each is fetched again when needed"""
    a = s3_daemon("cache", name="s3R", env={}).start()
    a.args += ["--db-reserve-bytes", "0"]
    models = [model_bytes(40 + i, rows=512, cols=1024) for i in range(4)]   # 2 MiB each
    try:
        ids = [a.upload(m).json["id"] for m in models]
        # the first one used last: it is the one copy that should stay
        assert a.get("/v1/models/%s/file" % ids[0]).status == 200
    finally:
        a.stop()
    cache = os.path.join(a.data_dir, "cache")

    def copies():
        return sorted(f for _, _, fs in os.walk(cache) for f in fs)
    assert copies() == sorted(sha(m) for m in models), copies()
    # the data dir without the copies, plus room for about one
    du = [int(subprocess.run(["du", "-sB1", p], capture_output=True, text=True,
                             check=True).stdout.split()[0]) for p in (a.data_dir, cache)]
    rest = du[0] - du[1]
    a.args += ["--max-data-bytes", str(rest + (3 << 20))]
    a.start()
    try:
        deadline = time.time() + 10
        while len(copies()) > 1 and time.time() < deadline:
            time.sleep(0.1)
        assert copies() == [sha(models[0])], (copies(), [sha(m) for m in models])
        for i, m in zip(ids, models):
            r = a.get("/v1/models/%s/file" % i)
            assert r.status == 200 and r.body == m, r
        assert a.get("/v1/models").json["total"] == 4
    finally:
        a.stop()


def teardown():
    if SWIFT:
        SWIFT.stop()


if __name__ == "__main__":
    os.environ.setdefault("SLIMD_S3_PART_BYTES", str(5 << 20))
    h.run(teardown=teardown)
