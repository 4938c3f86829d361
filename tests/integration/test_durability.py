#!/usr/bin/env python3
"""test_durability.py - acknowledged means durable, and nothing else (issue 9).

Two ways the daemon loses its footing, each driven hard from outside:

  * A full disk.  The data dir is a small file system of its own (a 64 MiB
    tmpfs; a loop-mounted ext4 image where tmpfs cannot be mounted; the
    tests skip, saying why, when neither can: they need root).  Two
    clients upload models and datasets and submit jobs while the disk
    fills: beside 16 MiB of ballast written before the start, first by
    their own uploads and artifacts, then by a filler file written
    beside the data dir until ENOSPC.  One run has --min-free-bytes 0,
    so the daemon really meets ENOSPC instead of refusing up front; one
    has the check on (--min-free-bytes 24 MiB on the 64 MiB disk); one
    runs without the WAL's preallocated room (--db-reserve-bytes 0), so
    SQLite meets SQLITE_FULL too.  Every 201/202 and every refusal is
    recorded.  Then: no job stays `running` and none is claimed in a
    loop (attempts and claims stay within the daemon's 3, and the daemon
    burns no CPU while the disk is full); SIGTERM exits 0; the daemon
    restarts on the disk full to the last block; every acknowledged
    model, dataset and job is there (downloaded and hashed) and nothing
    else; once the filler and the ballast are deleted every job
    finishes, and each succeeded job's artifact matches its sha256;
    after a stop, SQLite's integrity_check is ok, every blob file is
    named by a row, and tmp/ is empty.
  * kill -9.  A daemon with 2 workers gets 100 jobs (six kinds of passes
    on small models, with uploads interleaved) and is killed with SIGKILL
    at seeded random moments, 15 times, and restarted on the same data
    dir each time; some kills land right after a 202, some during
    recovery.  After each kill, integrity_check passes on a copy of the
    database as the kill left it.  At the end every acknowledged job is
    succeeded, failed or canceled, with at most 3 attempts; every
    succeeded artifact hashes to its record; integrity_check is ok; no
    blob is orphaned; no temp file is left.

Run by hand (as root):
  SLIMD_BIN=./slimd /usr/bin/python3 tests/integration/test_durability.py
"""

import atexit
import hashlib
import http.client
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True        # keep the source tree clean (distcheck)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402
from slimd_harness import test  # noqa: E402

MiB = 1 << 20
MAX_ATTEMPTS = 3        # the daemon's (daemon/cli.c: rcfg.max_attempts)
TERMINAL = ("succeeded", "failed", "canceled")
SPECS = [
    [{"op": "quantize", "dtype": "int8"}],
    [{"op": "prune", "sparsity": 0.5}, {"op": "quantize", "dtype": "int8"}],
    [{"op": "quantize", "dtype": "int4", "group_size": 64}],
    [{"op": "lowrank", "rank": 32, "algorithm": "exact"}],
    [{"op": "cluster", "clusters": 16}],
    [{"op": "prune", "pattern": "2:4"}, {"op": "quantize", "dtype": "fp16"}],
]

# ---------------------------------------------------------------- a small disk

_MOUNTS = []            # (mount point, loop image or None)


def _unmount_all():
    # registered after the harness's own at-exit: runs first, so the
    # daemons go before their file system does
    for d in list(h._LIVE):
        d.kill()
    for mnt, img in _MOUNTS:
        if subprocess.call(["umount", mnt], stderr=subprocess.DEVNULL):
            subprocess.call(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
        try:
            os.rmdir(mnt)
        except OSError:
            pass
        if img:
            try:
                os.unlink(img)
            except OSError:
                pass
    _MOUNTS.clear()


atexit.register(_unmount_all)


def small_fs(size_mb):
    """Mounts a file system of size_mb MiB on a new folder and returns
    (folder, kind).  tmpfs first; a loop-mounted ext4 image where tmpfs
    is not allowed; skips when neither can be mounted."""
    if os.geteuid() != 0:
        h.skip("needs root to mount a small file system for the data dir (tmpfs or a loop "
               "ext4); CI runs as root")
    mnt = tempfile.mkdtemp(prefix="slimd-fulldisk-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm,mode=0755" % size_mb, "tmpfs",
                        mnt], capture_output=True, text=True)
    if r.returncode == 0:
        _MOUNTS.append((mnt, None))
        return mnt, "tmpfs"
    why = "tmpfs: " + (r.stderr.strip() or "exit %d" % r.returncode)
    fd, img = tempfile.mkstemp(prefix="slimd-fulldisk-", suffix=".ext4")
    os.close(fd)
    try:
        os.truncate(img, size_mb * MiB)
        r = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", img], capture_output=True,
                           text=True)
        if r.returncode == 0:
            r = subprocess.run(["mount", "-o", "loop", img, mnt], capture_output=True, text=True)
        if r.returncode == 0:
            _MOUNTS.append((mnt, img))
            return mnt, "ext4 on a loop device"
        why += "; loop ext4: " + (r.stderr.strip() or "exit %d" % r.returncode)
    except OSError as e:
        why += "; loop ext4: %s" % e
    os.unlink(img)
    os.rmdir(mnt)
    h.skip("cannot mount a small file system for the data dir (%s)" % why)


def fill(path):
    """Appends to path until the file system says ENOSPC; returns the bytes
    written.  64 KiB steps, then 4 KiB ones for the last blocks."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    total = 0
    try:
        for step in (64 << 10, 4 << 10):
            block = b"\xa5" * step
            while True:
                try:
                    total += os.write(fd, block)
                except OSError as e:
                    if e.errno != 28:       # ENOSPC
                        raise
                    break
    finally:
        os.close(fd)
    return total


def free_bytes(path):
    v = os.statvfs(path)
    return v.f_bavail * v.f_frsize


# ---------------------------------------------------------------- content

_ROWS = {}


def rows(dim=256):
    """16 Gaussian rows of dim floats, made once: models are tiled from them."""
    if dim not in _ROWS:
        _ROWS[dim] = [h.f32_bytes(h.gaussian(dim, 900 + k, 0.02)) for k in range(16)]
    return _ROWS[dim]


def make_model(seed, mats, dim=256):
    """A safetensors model of `mats` dim x dim F32 matrices (256 KiB each
    at 256) and a bias; the seed makes its bytes unique."""
    rng = random.Random(seed)
    ts = [h.Tensor("layers.%d.weight" % i, "F32", [dim, dim],
                   b"".join(rows(dim)[rng.randrange(16)] for _ in range(dim)))
          for i in range(mats)]
    ts.append(h.Tensor("layers.0.bias", "F32", [dim], h.f32_bytes(h.gaussian(dim, seed, 0.02))))
    return h.safetensors_bytes(ts)


def make_dataset(seed, n):
    """A canonical dataset: input F32 [n, 256], labels I64 [n]."""
    rng = random.Random(seed)
    ys = [rng.randrange(10) for _ in range(n)]
    return h.safetensors_bytes([
        h.Tensor("input", "F32", [n, 256], b"".join(rows()[rng.randrange(16)] for _ in range(n))),
        h.Tensor("labels", "I64", [n], h.i64_bytes(ys), ys)])


# ---------------------------------------------------------------- what was acknowledged

class Ledger:
    """Every answer the clients got.  Acknowledged ids with what they must
    hold; refusals by status and code; requests whose answer never came
    (the daemon was killed under them), which may or may not have been
    stored; and answers that are neither a 201/202 nor a clean refusal."""

    def __init__(self):
        self.lock = threading.Lock()
        self.models = {}         # id -> sha256
        self.datasets = {}       # id -> sha256
        self.jobs = {}           # id -> model id
        self.refused = {}        # (kind, status, code) -> count
        self.unknown = {"model": 0, "dataset": 0, "job": 0}
        self.bad = []

    def refuse(self, kind, r, allowed):
        code = (r.json or {}).get("error", {}).get("code") if isinstance(r.json, dict) else None
        key = (kind, r.status, code)
        self.refused[key] = self.refused.get(key, 0) + 1
        if r.status not in allowed:
            self.bad.append("%s: %r" % (kind, r))

    def summary(self):
        return ("acknowledged %d models, %d datasets, %d jobs; refused %s; no answer %s"
                % (len(self.models), len(self.datasets), len(self.jobs),
                   ", ".join("%s %d %s x%d" % (k[0], k[1], k[2], n)
                             for k, n in sorted(self.refused.items(), key=str)) or "none",
                   self.unknown))


REFUSALS = (507, 429)     # INSUFFICIENT_STORAGE, TOO_MANY_REQUESTS


def upload(d, ledger, kind, data):
    """POSTs a model or dataset; records the answer; returns the id or None."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        r = d.request("POST", "/v1/%ss" % kind, body=data,
                      headers={"Content-Type": "application/octet-stream"}, timeout=30)
    except (OSError, http.client.HTTPException):
        with ledger.lock:
            ledger.unknown[kind] += 1
        return None
    with ledger.lock:
        if r.status == 201:
            if r.json.get("sha256") != sha:
                ledger.bad.append("%s %s: sha256 %s, sent %s" % (kind, r.json.get("id"),
                                                               r.json.get("sha256"), sha))
            (ledger.models if kind == "model" else ledger.datasets)[r.json["id"]] = sha
            return r.json["id"]
        ledger.refuse(kind, r, REFUSALS)
    return None


def submit(d, ledger, mid, spec, acked=None):
    """POSTs a job; records the answer; sets the event acked (if given)
    on a 202.  Returns the id or None."""
    try:
        r = d.post_json("/v1/jobs", {"model": mid, "passes": spec}, timeout=30)
    except (OSError, http.client.HTTPException):
        with ledger.lock:
            ledger.unknown["job"] += 1
        return None
    with ledger.lock:
        if r.status == 202:
            ledger.jobs[r.json["id"]] = mid
            if acked:
                acked.set()
            return r.json["id"]
        ledger.refuse("job", r, REFUSALS)
    return None


def listing(d, what):
    r = d.get("/v1/%s?limit=1000" % what)
    assert r.status == 200, r
    assert r.json["total"] <= 1000, "more %s than one page holds: %d" % (what, r.json["total"])
    return {x["id"]: x for x in r.json[what]}


def download_sha(d, path):
    r = d.get(path, timeout=60)
    assert r.status == 200, "GET %s: %r" % (path, r)
    return hashlib.sha256(r.body).hexdigest()


def check_acknowledged(d, ledger, exact=True):
    """Every acknowledged model and dataset is there and downloads to its
    sha256; every acknowledged job is there, on its model; with exact,
    nothing else is there (without: at most what was in flight when the
    daemon was killed).  Returns the jobs by id."""
    for what, acked in (("models", ledger.models), ("datasets", ledger.datasets)):
        listed = listing(d, what)
        missing = sorted(set(acked) - set(listed))
        assert not missing, "acknowledged %s missing after restart: %s" % (what, missing)
        extra = sorted(set(listed) - set(acked))
        if exact:
            assert not extra, "%s that were never acknowledged: %s" % (what, extra)
        else:
            kind = what[:-1]
            assert len(extra) <= ledger.unknown[kind], (
                "%d %s were never acknowledged, but only %d requests went unanswered: %s"
                % (len(extra), what, ledger.unknown[kind], extra))
        for i, sha in acked.items():
            assert listed[i]["sha256"] == sha, "%s %s: sha256 %s, uploaded %s" % (
                what, i, listed[i]["sha256"], sha)
            got = download_sha(d, "/v1/%s/%s/file" % (what, i))
            assert got == sha, "%s %s downloads as %s, uploaded %s" % (what, i, got, sha)
    jobs = listing(d, "jobs")
    missing = sorted(set(ledger.jobs) - set(jobs))
    assert not missing, "acknowledged jobs missing: %s" % missing
    extra = sorted(set(jobs) - set(ledger.jobs))
    if exact:
        assert not extra, "jobs that were never acknowledged: %s" % extra
    else:
        assert len(extra) <= ledger.unknown["job"], (
            "%d jobs were never acknowledged, only %d went unanswered" % (len(extra),
                                                                        ledger.unknown["job"]))
    for j, mid in ledger.jobs.items():
        assert jobs[j]["model"] == mid, jobs[j]
    return jobs


def check_jobs_settled(d, jobs):
    """Every job succeeded, failed or canceled, within MAX_ATTEMPTS
    attempts; each succeeded one's artifact hashes to its record."""
    counts = {}
    for j, job in jobs.items():
        counts[job["state"]] = counts.get(job["state"], 0) + 1
        assert job["state"] in TERMINAL, "job %s is %s" % (j, job["state"])
        assert 1 <= job["attempts"] <= MAX_ATTEMPTS, "job %s: %d attempts" % (j, job["attempts"])
        if job["state"] == "failed":
            assert job["error"] and job["error_code"], job
        if job["state"] == "succeeded":
            art = job["artifact"]
            got = download_sha(d, "/v1/jobs/%s/artifact" % j)
            assert got == art["sha256"], "job %s: artifact hashes to %s, recorded %s" % (
                j, got, art["sha256"])
    return counts


def wait_jobs(d, ids, states, timeout):
    deadline = time.time() + timeout
    while True:
        jobs = listing(d, "jobs")
        left = [j for j in ids if jobs[j]["state"] not in states]
        if not left:
            return jobs
        if time.time() > deadline:
            raise AssertionError("after %.0f s, %d job(s) are not %s: %s" % (
                timeout, len(left), "/".join(states),
                json.dumps([{k: jobs[j][k] for k in ("id", "state", "attempts", "error")}
                            for j in left[:5]])))
        time.sleep(0.2)


def check_offline(data_dir):
    """With the daemon stopped: integrity_check, every blob named by a
    row, tmp/ empty.  Returns the number of blob files."""
    named = set()
    queries = ("SELECT sha256 FROM models", "SELECT sha256 FROM datasets",
               "SELECT artifact_sha FROM jobs WHERE artifact_sha IS NOT NULL")
    if h.PG:   # PostgreSQL checks its own pages; the rows are read here
        for q in queries:
            named.update(r[0] for r in h.store_query(data_dir, q))
        running = int(h.store_query(data_dir, "SELECT count(*) FROM jobs WHERE state = 1")[0][0])
        return check_blobs(data_dir, named), running
    # read-only: a read-write connection would checkpoint and delete the
    # -wal and -shm files slimd keeps (store.c), and change the data dir
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(data_dir, "slimd.db"), uri=True)
    try:
        ok = db.execute("PRAGMA integrity_check").fetchall()
        assert ok == [("ok",)], "integrity_check: %r" % ok
        for q in queries:
            named.update(r[0] for r in db.execute(q))
        running = db.execute("SELECT count(*) FROM jobs WHERE state = 1").fetchone()[0]
    finally:
        db.close()
    return check_blobs(data_dir, named), running


def check_blobs(data_dir, named):
    """Every blob named by a row and every row's blob there, tmp/ empty;
    the number of blob files."""
    blobs = []
    top = os.path.join(data_dir, "blobs")
    for sub in os.listdir(top):
        for f in os.listdir(os.path.join(top, sub)):
            blobs.append(f)
            assert f in named, "blob %s/%s is named by no model, dataset or artifact" % (sub, f)
    missing = named - set(blobs)
    assert not missing, "rows name blobs that are not there: %s" % sorted(missing)
    left = os.listdir(os.path.join(data_dir, "tmp"))
    assert not left, "temp files left: %s" % left
    return len(blobs)


def integrity_of_copy(data_dir):
    """integrity_check on a copy of the database and its WAL, as a kill
    -9 left them: the copy is recovered by SQLite as the next start would
    (a read-only connection to the original may not run that recovery).
    PostgreSQL (SLIMD_TEST_STORE=postgresql) recovers its own: nothing
    to check here."""
    if h.PG:
        return
    tmp = h.make_tmpdir("slimd-dbcopy-")
    for suffix in ("", "-wal"):
        src = os.path.join(data_dir, "slimd.db" + suffix)
        if os.path.exists(src):
            with open(src, "rb") as f, open(os.path.join(tmp, "slimd.db" + suffix), "wb") as g:
                g.write(f.read())
    db = sqlite3.connect(os.path.join(tmp, "slimd.db"))
    try:
        ok = db.execute("PRAGMA integrity_check").fetchall()
    finally:
        db.close()
    assert ok == [("ok",)], "integrity_check after a kill: %r" % ok


def cpu_seconds(d):
    with open("/proc/%d/stat" % d.proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- full disk

def full_disk(min_free, name, db_reserve=None):
    """The scenario of the module's docstring.  db_reserve=0 runs the
    daemon without the WAL's preallocated room (--db-reserve-bytes 0):
    then a job's outcome may wait for space (running, retried with
    backoff) and only the rest is checked while the disk is full.
    Under SLIMD_TEST_STORE=postgresql the database is on the server's
    disk and only the data dir (blobs, temp files) fills: the same
    guarantees hold, and db_reserve (SQLite's WAL room) has no meaning,
    so that case is skipped."""
    if h.PG and db_reserve is not None:
        h.skip("--db-reserve-bytes is SQLite's WAL room; the database is PostgreSQL's "
               "(SLIMD_TEST_STORE=postgresql)")
    mnt, kind = small_fs(64)
    h._diag("data dir on %s of 64 MiB, --min-free-bytes %d%s" % (
        kind, min_free, "" if db_reserve is None else ", --db-reserve-bytes %d" % db_reserve))
    env = {"SLIMD_MIN_FREE_BYTES": str(min_free)}
    if db_reserve is not None:
        env["SLIMD_DB_RESERVE_BYTES"] = str(db_reserve)
    data_dir = os.path.join(mnt, "data")
    filler = os.path.join(mnt, "filler")
    # a neighbour's 16 MiB, deleted at the end to give the disk room again
    ballast = os.path.join(mnt, "ballast")
    with open(ballast, "wb") as f:
        f.write(b"\x5a" * (16 * MiB))
    ledger = Ledger()
    d = h.Daemon(data_dir=data_dir, workers=2, name=name, env=env).start()
    if not h.PG:
        wal = os.stat(os.path.join(data_dir, "slimd.db-wal"))
        assert db_reserve == 0 or wal.st_blocks * 512 >= 8 * MiB, \
            "the WAL holds %d bytes, not 8 MiB" % (wal.st_blocks * 512)

    def body():

        # room at first: models, a dataset, a job on each model
        for i in range(4):
            upload(d, ledger, "model", make_model(i, 2 + i))
        upload(d, ledger, "dataset", make_dataset(50, 1000))
        assert len(ledger.models) == 4 and len(ledger.datasets) == 1, ledger.summary()
        for k, mid in enumerate(list(ledger.models)):
            submit(d, ledger, mid, SPECS[k % len(SPECS)])

        # two clients keep uploading and submitting while the disk fills:
        # with their own uploads, then with a filler written beside the
        # data dir until ENOSPC (once: it does not chase the space the daemon
        # frees, as no real neighbour would)
        stop = threading.Event()

        def client(seed):
            rng = random.Random(seed)
            k = 0
            while not stop.is_set():
                k += 1
                if rng.random() < 0.15:
                    upload(d, ledger, "dataset", make_dataset(seed * 1000 + k, rng.randint(200, 2000)))
                else:
                    upload(d, ledger, "model", make_model(seed * 1000 + k, rng.randint(1, 6)))
                with ledger.lock:
                    mids = list(ledger.models)
                submit(d, ledger, rng.choice(mids), SPECS[rng.randrange(len(SPECS))])

        threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in (1, 2)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        filled = fill(filler)       # (often nothing left: the uploads got there first)
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(60)
        assert not ledger.bad, "answers that are neither 201/202 nor 507/429:\n" + \
            "\n".join(ledger.bad[:10])
        h._diag("filler took %.1f MiB; %s" % (filled / MiB, ledger.summary()))
        refused = sum(n for k, n in ledger.refused.items() if k[1] == 507)
        assert refused, "the disk never filled: nothing was refused (%s)" % ledger.summary()

        # the disk is still full: no job may stay running (each leaves
        # `running` within seconds, failed or re-queued), and none is claimed
        # in a loop: attempts stay within MAX_ATTEMPTS and the daemon is idle
        seen = {}
        deadline = time.time() + 40
        while True:
            running = {j for j, job in listing(d, "jobs").items() if job["state"] == "running"}
            now = time.time()
            for j in running:
                first = seen.setdefault(j, now)
                assert now - first < 15 or db_reserve == 0, \
                    "job %s has been running for %.0f s on a full disk" % (j, now - first)
            for j in set(seen) - running:
                del seen[j]
            if not running or (db_reserve == 0 and now > deadline):
                break
            assert now < deadline, "jobs still running after 40 s: %s" % sorted(running)
            time.sleep(0.2)
        c0 = cpu_seconds(d)
        time.sleep(3.0)
        used = cpu_seconds(d) - c0
        h._diag("daemon CPU on a full disk with %d queued job(s): %.2f s in 3 s" % (
            sum(1 for j in listing(d, "jobs").values() if j["state"] == "queued"), used))
        assert used < 0.6, "the daemon used %.2f s of CPU in 3 s on a full disk" % used
        jobs = listing(d, "jobs")
        for j, job in jobs.items():
            assert job["attempts"] <= MAX_ATTEMPTS, job
        claims = {}
        for line in d.all_stderr_text().splitlines():
            if line.endswith(" running") and " job " in line:
                j = line.rsplit(" ", 2)[1]
                claims[j] = claims.get(j, 0) + 1
        assert max(claims.values()) <= MAX_ATTEMPTS, "a job was claimed %d times" % (
            max(claims.values()))
        full_codes = {job["error_code"] for job in jobs.values() if job["state"] == "failed"}
        h._diag("on the full disk: %s; failed with %s" % (
            {s: sum(1 for j in jobs.values() if j["state"] == s) for s in
             ("queued", "running", "succeeded", "failed", "canceled")}, sorted(full_codes)))

        log = d.all_stderr_text()
        h._diag("daemon log: %s" % ", ".join("%d x '%s'" % (log.count(k), k) for k in (
            "re-queued (disk full)", "failed (disk full", "cannot record its outcome",
            "cannot record its result", "cannot claim a job", "No space left")))

        # SIGTERM exits 0 on the full disk; the runtime left no orphan blob
        # and no temp file (checked before the next start would sweep them)
        d.stop()
        _, running = check_offline(data_dir)
        assert running == 0 or db_reserve == 0, \
            "%d job(s) left running in the database" % running

        # the daemon starts on a disk full to the last block (the neighbour
        # takes what slimd gave back, its reserve included): everything
        # acknowledged is there, nothing else, and new work is refused
        fill(filler)
        assert free_bytes(mnt) < 64 << 10, "the disk is not full: %d bytes free" % free_bytes(mnt)
        d.start()
        check_acknowledged(d, ledger)
        with ledger.lock:
            mid = sorted(ledger.models)[0]
        assert upload(d, ledger, "model", make_model(777, 1)) is None
        assert submit(d, ledger, mid, SPECS[0]) is None
        assert not ledger.bad, ledger.bad
        check_acknowledged(d, ledger)
        d.stop()

        # room again: every job finishes, and each artifact is what it says
        os.unlink(filler)
        os.unlink(ballast)
        d.start()
        jobs = wait_jobs(d, list(ledger.jobs), TERMINAL, 90)
        jobs = check_acknowledged(d, ledger)
        counts = check_jobs_settled(d, jobs)
        failed_codes = {job["error_code"] for job in jobs.values() if job["state"] == "failed"}
        # without the reserve, a job whose last outcome could not be
        # written before a stop is failed by the next start's recovery
        # when its attempts are used up ("interrupted", INTERNAL)
        allowed = {"INSUFFICIENT_STORAGE"} | ({"INTERNAL"} if db_reserve == 0 else set())
        assert failed_codes <= allowed, "failed with %s" % failed_codes
        h._diag("after freeing space: %s; failed with %s" % (counts, sorted(failed_codes)))
        d.stop()
        nblobs, running = check_offline(data_dir)
        assert running == 0
        h._diag("%d blob files, every one named by a row" % nblobs)

    with_log(d, body)


def with_log(d, fn):
    """Runs fn(); a failure carries the daemon's log (without the HTTP lines)."""
    try:
        fn()
    except AssertionError as e:
        log = "\n".join(l for l in d.all_stderr_text().splitlines() if " http " not in l)
        raise AssertionError("%s\ndaemon log, HTTP lines left out:\n%s" % (e, log[-6000:]))


@test
def test_full_disk_min_free_zero():
    """a disk filled by uploads, jobs and a neighbour (--min-free-bytes 0): every 201/202 survives restarts, nothing else appears, no job stays running or loops"""
    full_disk(0, "full0")


@test
def test_full_disk_min_free_on():
    """the same with --min-free-bytes 24 MiB on the 64 MiB disk: refused up front, the same guarantees"""
    full_disk(24 * MiB, "full24")


@test
def test_full_disk_without_db_reserve():
    """the same without the WAL's room (--db-reserve-bytes 0): claims and outcomes back off, nothing is lost or loops"""
    full_disk(0, "full0r", db_reserve=0)


# ---------------------------------------------------------------- kill -9

KILLS = 15
JOBS = 100


@test
def test_kill9_over_100_jobs():
    """kill -9 at 15 seeded random moments over 100 jobs on 2 workers: every acknowledged job ends, artifacts match, no orphan, integrity ok"""
    t0 = time.time()
    rng = random.Random(20261129)
    ledger = Ledger()
    d = h.Daemon(workers=2, name="kill9", env={"SLIMD_MIN_FREE_BYTES": "0"}).start()

    def body():
        # 512 x 512 matrices: jobs of tens of milliseconds, so kills land
        # inside them (and inside the artifact's write and rename)
        for i in range(3):
            upload(d, ledger, "model", make_model(100 + i, 2 + i, 512))
        assert len(ledger.models) == 3, ledger.summary()
        kills = {"random": 0, "after 202": 0, "recovery": 0}
        seed = 0
        while sum(kills.values()) < KILLS or len(ledger.jobs) < JOBS:
            seed += 1
            stop, acked = threading.Event(), threading.Event()

            def client(seed=seed):
                # jobs, and now and then an upload (a large one takes long
                # enough for a kill to land in it)
                crng = random.Random(seed)
                while not stop.is_set() and len(ledger.jobs) < JOBS:
                    if crng.random() < 0.08:
                        upload(d, ledger, "model", make_model(5000 + seed * 100 + crng.randrange(100),
                                                              crng.randint(1, 8), 512))
                    else:
                        with ledger.lock:
                            mids = sorted(ledger.models)
                        submit(d, ledger, crng.choice(mids), SPECS[crng.randrange(len(SPECS))],
                               acked)
                    time.sleep(crng.uniform(0.005, 0.06))

            t = threading.Thread(target=client, daemon=True)
            t.start()
            if sum(kills.values()) < KILLS:
                if rng.random() < 0.3 and len(ledger.jobs) < JOBS:
                    acked.wait(5)               # right after a 202
                    kills["after 202"] += 1
                else:
                    time.sleep(rng.uniform(0.05, 1.2))
                    kills["random"] += 1
                d.kill()
                integrity_of_copy(d.data_dir)
            else:
                while t.is_alive() and len(ledger.jobs) < JOBS:
                    time.sleep(0.05)
            stop.set()
            t.join(30)
            if not d.alive():
                d.start()
                if sum(kills.values()) < KILLS and rng.random() < 0.25:
                    # killed again while it recovers: jobs being re-queued,
                    # blobs and temp files being swept
                    time.sleep(rng.uniform(0, 0.05))
                    d.kill()
                    integrity_of_copy(d.data_dir)
                    kills["recovery"] += 1
                    d.start()
        assert not ledger.bad, "unexpected answers:\n" + "\n".join(ledger.bad[:10])
        log = d.all_stderr_text()
        h._diag("kills %s in %.1f s; %s" % (kills, time.time() - t0, ledger.summary()))
        found = {"job(s) re-queued": 0, "temp file(s)": 0, "unreferenced blob(s)": 0}
        for line in log.splitlines():
            for what in found:
                if what in line:
                    found[what] += int(line.split(" " + what)[0].rsplit(" ", 1)[1])
        h._diag("at the starts: %s" % ", ".join("%d %s" % (n, w) for w, n in found.items()))
        jobs = wait_jobs(d, list(ledger.jobs), TERMINAL, 150)
        jobs = check_acknowledged(d, ledger, exact=False)
        counts = check_jobs_settled(d, {j: jobs[j] for j in ledger.jobs})
        h._diag("jobs: %s; attempts histogram %s" % (counts, sorted(
            {a: sum(1 for j in jobs.values() if j["attempts"] == a)
             for a in {j["attempts"] for j in jobs.values()}}.items())))
        assert counts.get("succeeded", 0) >= JOBS // 2, counts
        d.stop()
        nblobs, running = check_offline(d.data_dir)
        assert running == 0
        h._diag("%d blob files, every one named by a row; %.1f s in all" % (nblobs,
                                                                             time.time() - t0))

    with_log(d, body)


if __name__ == "__main__":
    h.run()
