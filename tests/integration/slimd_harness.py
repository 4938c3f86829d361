"""slimd_harness.py - shared machinery for slimd's integration tests.

Standard library only: the tests run under the system python3 on a fresh
Debian machine, where nothing else can be assumed.

What is here:
  * Daemon: starts `$SLIMD_BIN serve` (default ./slimd) on a free loopback
    port with its own data dir, waits for GET /v1/health, captures stderr
    to a file, stops it with SIGTERM and checks that it exits 0, restarts
    it on the same data dir.  Every daemon started is killed at exit, even
    when a test or the harness itself blows up.
  * Response / Daemon.request: one HTTP request through http.client,
    returning status, headers, body bytes and the decoded JSON (or None).
  * multipart(): a multipart/form-data encoder.
  * safetensors: a writer and a reader in pure Python (struct + array),
    with F32/F16/BF16/I64/I8 encoders and decoders and a seeded Gaussian
    generator, for fixture models and for checking artifacts.
  * A tiny TAP runner: @test registers a function, run() prints "1..N",
    then "ok i - name" or "not ok i - name" with "# " diagnostics, and
    exits 0 (automake's tap-driver counts the failures).  Exit 99 (a hard
    error for automake) is kept for harness breakage: a daemon that will
    not start.

Why TAP and not unittest: automake's tap-driver reports every test case in
the suite summary, which is what the README's "N passed, N failed" counts.
"""

import array
import atexit
import http.client
import json
import math
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

# ---------------------------------------------------------------- errors


class HarnessError(Exception):
    """The harness could not do its job (the daemon would not start, say):
    not a test failure, a broken test environment."""


# ---------------------------------------------------------------- daemon

_LIVE = []          # every Daemon started, for the at-exit kill
_TMPDIRS = []       # temp dirs to remove at exit (kept when KEEP is set)


def _cleanup():
    for d in list(_LIVE):
        d.kill()
    if "pg_harness" in sys.modules:   # after the daemons that use it
        sys.modules["pg_harness"].shutdown()
    if not os.environ.get("SLIMD_TEST_KEEP"):
        for t in _TMPDIRS:
            shutil.rmtree(t, ignore_errors=True)


atexit.register(_cleanup)


def _on_signal(signum, frame):
    _cleanup()
    os._exit(128 + signum)


for _s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    try:
        signal.signal(_s, _on_signal)
    except (ValueError, OSError):
        pass


# Set by tests/sanitize.sh, which runs the suite on an ASan+UBSan build:
# memory figures then measure the sanitizer (shadow memory, redzones, the
# quarantine of freed blocks), so tests skip their memory bounds.
SANITIZED = bool(os.environ.get("SLIMD_SANITIZED"))


def slimd_bin():
    """The daemon under test: $SLIMD_BIN, else ./slimd (the build dir)."""
    return os.path.abspath(os.environ.get("SLIMD_BIN", "./slimd"))


# SLIMD_TEST_STORE=postgresql (make check-pg): every daemon this harness
# starts, and every `slimd token` a test runs with store_flags(), uses a
# PostgreSQL database instead of the data dir's SQLite file: one private
# server per test process (pg_harness.py), one fresh database per data
# dir (a daemon restarted, or started again on the same data dir, finds
# its rows).  Anything else (default "sqlite"): the data dir's slimd.db.
STORE = os.environ.get("SLIMD_TEST_STORE", "sqlite") or "sqlite"
if STORE not in ("sqlite", "postgresql"):
    raise SystemExit("SLIMD_TEST_STORE=%s: expected sqlite or postgresql" % STORE)
PG = STORE == "postgresql"
_STORE_URIS = {}    # realpath(data dir) -> its database's URI


def store_uri(data_dir):
    """The --store of data_dir under SLIMD_TEST_STORE=postgresql (made on
    first use), else None (the data dir's own SQLite database)."""
    if not PG:
        return None
    key = os.path.realpath(data_dir)
    if key not in _STORE_URIS:
        import pg_harness
        try:
            _STORE_URIS[key] = pg_harness.server(stop_at_exit=False).new_database()
        except pg_harness.PgError as e:
            raise HarnessError(str(e))
    return _STORE_URIS[key]


def store_flags(data_dir):
    """["--store", URI] for a `slimd serve` or `slimd token` on data_dir
    under SLIMD_TEST_STORE=postgresql; [] otherwise."""
    uri = store_uri(data_dir)
    return ["--store", uri] if uri else []


def store_query(data_dir, sql):
    """Under SLIMD_TEST_STORE=postgresql: runs sql (psql, as the server's
    superuser) on data_dir's database and returns its rows, each a list
    of column texts (a test that reads or ages rows behind the daemon's
    back, as others do with the sqlite3 module)."""
    import pg_harness
    uri = store_uri(data_dir)
    out = pg_harness.server(stop_at_exit=False).psql(sql, db=uri.rsplit("/", 1)[1])
    return [line.split("|") for line in out.splitlines() if line]


def make_tmpdir(prefix="slimd-test-"):
    d = tempfile.mkdtemp(prefix=prefix)
    _TMPDIRS.append(d)
    return d


def free_port():
    """A loopback port that was free a moment ago (bind to port 0)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class Response:
    """One HTTP response: status, headers (case-insensitive get), body
    bytes, and json (the decoded body when it is JSON, else None)."""

    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers          # http.client.HTTPMessage
        self.body = body
        self.json = None
        if body:
            try:
                self.json = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                self.json = None

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def __iter__(self):
        # allows: status, headers, body, js = d.request(...)
        return iter((self.status, self.headers, self.body, self.json))

    def __repr__(self):
        text = self.body[:400].decode("utf-8", "replace") if self.body else ""
        return "<HTTP %d %s: %s>" % (self.status, self.reason, text)


class Daemon:
    """One slimd process serving a data dir on a loopback port.

    workers, max_upload: the --workers / --max-upload-bytes flags (None
    leaves the daemon's default).  env: extra environment variables.
    use_flags=False passes the settings through SLIMD_* environment
    variables instead of flags (to test that path).  args: more flags
    for `serve` (--auth token, --cors-origin ...); host: the address to
    listen on (requests still go to 127.0.0.1, so 0.0.0.0 works too)."""

    def __init__(self, data_dir=None, workers=2, max_upload=None, env=None, use_flags=True,
                 name="slimd", args=None, host="127.0.0.1"):
        self.data_dir = data_dir or make_tmpdir()
        self.workers = workers
        self.max_upload = max_upload
        self.extra_env = dict(env or {})
        self.use_flags = use_flags
        self.name = name
        self.args = list(args or [])
        self.host = host
        self.proc = None
        self.port = None
        self.logdir = make_tmpdir("slimd-log-")
        self.stderr_path = None
        self.generation = 0
        self._stderr_file = None

    # -- lifecycle

    def _argv_env(self, port):
        argv = [slimd_bin(), "serve"]
        env = dict(os.environ)
        for k in ("SLIMD_LISTEN", "SLIMD_DATA_DIR", "SLIMD_WORKERS", "SLIMD_MAX_UPLOAD_BYTES",
                  "SLIMD_LOG", "SLIMD_AUTH", "SLIMD_ALLOWED_HOSTS", "SLIMD_CORS_ORIGINS",
                  "SLIMD_TLS_CERT", "SLIMD_TLS_KEY", "SLIMD_STORE"):
            env.pop(k, None)
        settings = [("--listen", "SLIMD_LISTEN", "%s:%d" % (self.host, port)),
                    ("--data-dir", "SLIMD_DATA_DIR", self.data_dir)]
        if self.workers is not None:
            settings.append(("--workers", "SLIMD_WORKERS", str(self.workers)))
        if self.max_upload is not None:
            settings.append(("--max-upload-bytes", "SLIMD_MAX_UPLOAD_BYTES",
                             str(self.max_upload)))
        if store_uri(self.data_dir):
            settings.append(("--store", "SLIMD_STORE", store_uri(self.data_dir)))
        for flag, var, val in settings:
            if self.use_flags:
                argv += [flag, val]
            else:
                env[var] = val
        argv += self.args
        env.update(self.extra_env)
        return argv, env

    def start(self, timeout=20.0):
        if not os.access(slimd_bin(), os.X_OK):
            raise HarnessError("daemon binary %s is missing or not executable "
                               "(set SLIMD_BIN)" % slimd_bin())
        last = None
        for attempt in range(3):   # the free port may be taken in between
            port = free_port()
            self.generation += 1
            self.stderr_path = os.path.join(self.logdir, "%s.%d.stderr" % (self.name,
                                                                            self.generation))
            self._stderr_file = open(self.stderr_path, "wb")
            argv, env = self._argv_env(port)
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=self._stderr_file, stderr=self._stderr_file,
                                         env=env, close_fds=True)
            _LIVE.append(self)
            self.port = port
            deadline = time.time() + timeout
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    r = self.request("GET", "/v1/health", timeout=2)
                    if r.status == 200:
                        return self
                except (OSError, http.client.HTTPException):
                    pass
                time.sleep(0.05)
            rc = self.proc.poll()
            last = "exit %s" % rc if rc is not None else "no health after %.0fs" % timeout
            self.kill()
            if rc is None:
                break
        raise HarnessError("slimd did not start (%s): %s\n%s" % (
            last, " ".join(argv), self.stderr_tail()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=15.0, expect_rc=0):
        """SIGTERM, wait, and check the exit status.  Returns the status;
        raises AssertionError when it is not expect_rc or the daemon
        does not exit within timeout (it is then killed)."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("slimd did not exit within %.0fs of SIGTERM\n%s"
                                 % (timeout, self.stderr_tail()))
        self._forget()
        if expect_rc is not None and rc != expect_rc:
            raise AssertionError("slimd exited %d after SIGTERM (expected %d)\n%s"
                                 % (rc, expect_rc, self.stderr_tail()))
        return rc

    def restart(self):
        """Stop (asserting exit 0) and start again on the same data dir."""
        self.stop()
        return self.start()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._forget()

    def _forget(self):
        if self in _LIVE:
            _LIVE.remove(self)
        if self._stderr_file:
            self._stderr_file.close()
            self._stderr_file = None
        # keep self.proc for returncode inspection

    def stderr_text(self):
        if not self.stderr_path or not os.path.exists(self.stderr_path):
            return ""
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def all_stderr_text(self):
        """Stderr of every run of this daemon object, oldest first."""
        out = []
        for g in range(1, self.generation + 1):
            p = os.path.join(self.logdir, "%s.%d.stderr" % (self.name, g))
            if os.path.exists(p):
                with open(p, "rb") as f:
                    out.append(f.read().decode("utf-8", "replace"))
        return "".join(out)

    def stderr_tail(self, n=25):
        lines = self.stderr_text().splitlines()
        return "stderr (last %d lines):\n%s" % (n, "\n".join(lines[-n:]))

    # -- HTTP

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.port

    def request(self, method, path, body=None, headers=None, json_body=None, timeout=60,
                chunked=False):
        """One request on a fresh connection.  body: bytes (or an iterable
        of bytes with chunked=True); json_body: serialised for you.
        Returns a Response.  A server that answers early and closes (413
        on a big upload) is handled: the response is still read."""
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            send_error = None
            try:
                if chunked:
                    conn.request(method, path, body=body, headers=hdrs, encode_chunked=True)
                else:
                    conn.request(method, path, body=body, headers=hdrs)
            except (BrokenPipeError, ConnectionResetError) as e:
                send_error = e
            try:
                r = conn.getresponse()
                data = r.read()
            except (http.client.HTTPException, ConnectionResetError, BrokenPipeError):
                if send_error:
                    raise send_error
                raise
            return Response(r.status, r.reason, r.headers, data)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post_json(self, path, obj, **kw):
        return self.request("POST", path, json_body=obj, **kw)

    # -- conveniences used by several test files

    def upload(self, data, name=None, expect=201):
        path = "/v1/models" + ("?name=" + name if name else "")
        r = self.request("POST", path, body=data,
                         headers={"Content-Type": "application/octet-stream"})
        if expect is not None:
            assert r.status == expect, "upload: expected %d, got %r" % (expect, r)
        return r

    def submit(self, spec, expect=202):
        r = self.post_json("/v1/jobs", spec)
        if expect is not None:
            assert r.status == expect, "submit %s: expected %d, got %r" % (
                json.dumps(spec)[:200], expect, r)
        return r

    def wait_job(self, job_id, states=("succeeded", "failed", "canceled"), timeout=60.0,
                 interval=0.05):
        """Polls GET /v1/jobs/{id} until its state is one of states;
        returns the job object.  Raises AssertionError on timeout."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            r = self.get("/v1/jobs/" + job_id)
            assert r.status == 200, "GET job %s: %r" % (job_id, r)
            last = r.json
            if last["state"] in states:
                return last
            time.sleep(interval)
        raise AssertionError("job %s not in %s after %.0fs: %s" % (job_id, states, timeout,
                                                                   json.dumps(last)))


# ---------------------------------------------------------------- HTTP helpers

def multipart(fields):
    """Encodes multipart/form-data.  fields: list of (name, value) for
    plain fields or (name, filename, bytes[, content_type]) for files.
    Returns (body, content_type_header)."""
    boundary = "slimdtest" + uuid.uuid4().hex
    out = []
    for f in fields:
        out.append(b"--" + boundary.encode() + b"\r\n")
        if len(f) == 2:
            name, value = f
            if isinstance(value, str):
                value = value.encode()
            out.append(('Content-Disposition: form-data; name="%s"\r\n\r\n' % name).encode())
            out.append(value)
        else:
            name, filename, data = f[0], f[1], f[2]
            ctype = f[3] if len(f) > 3 else "application/octet-stream"
            out.append(('Content-Disposition: form-data; name="%s"; filename="%s"\r\n'
                        % (name, filename)).encode())
            out.append(("Content-Type: %s\r\n\r\n" % ctype).encode())
            out.append(data)
        out.append(b"\r\n")
    out.append(b"--" + boundary.encode() + b"--\r\n")
    return b"".join(out), "multipart/form-data; boundary=" + boundary


def check_error(r, status, code=None, contains=None):
    """Asserts r is an error response: the status, the JSON envelope
    {"error": {"code": str, "message": str}}, optionally the code and
    substrings of the message (a string or a list, all must appear;
    case-insensitive).  Returns the message."""
    assert r.status == status, "expected HTTP %d, got %r" % (status, r)
    j = r.json
    assert isinstance(j, dict) and set(j.keys()) == {"error"}, \
        "error body is not {\"error\": {...}}: %r" % r
    e = j["error"]
    assert isinstance(e, dict), "error is not an object: %r" % r
    assert isinstance(e.get("code"), str) and e["code"], "error.code missing: %r" % r
    assert e["code"] == e["code"].upper() and " " not in e["code"], \
        "error.code not UPPER_CASE: %r" % e["code"]
    assert isinstance(e.get("message"), str) and e["message"].strip(), \
        "error.message missing or empty: %r" % r
    if code is not None:
        assert e["code"] == code, "expected code %s, got %s (%s)" % (code, e["code"],
                                                                      e["message"])
    if contains:
        for c in [contains] if isinstance(contains, str) else contains:
            assert c.lower() in e["message"].lower(), \
                "message %r does not mention %r" % (e["message"], c)
    return e["message"]


# ---------------------------------------------------------------- numbers

def gaussian(n, seed, sigma=1.0):
    """n Gaussian samples from a fixed seed (reproducible fixtures)."""
    rng = random.Random(seed)
    g = rng.gauss
    return [g(0.0, sigma) for _ in range(n)]


def f32(x):
    """x rounded to the nearest float32 (as a Python float)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_bytes(values):
    a = array.array("f", values)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def f64_bytes(values):
    a = array.array("d", values)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def f16_bytes(values):
    """IEEE half, round to nearest even (struct's 'e' format does that)."""
    return struct.pack("<%de" % len(values), *values)


def f32_to_bf16_bits(x):
    """bfloat16 bits of x: the top 16 bits of the float32, rounded to
    nearest even (NaN kept quiet)."""
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    if (u & 0x7F800000) == 0x7F800000 and (u & 0x007FFFFF):
        return (u >> 16) | 0x0040
    u += 0x7FFF + ((u >> 16) & 1)
    return (u >> 16) & 0xFFFF


def bf16_bytes(values):
    return struct.pack("<%dH" % len(values), *[f32_to_bf16_bits(v) for v in values])


def i64_bytes(values):
    return struct.pack("<%dq" % len(values), *values)


def i32_bytes(values):
    return struct.pack("<%di" % len(values), *values)


def i8_bytes(values):
    return struct.pack("<%db" % len(values), *values)


DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
              "I8": 1, "U8": 1, "BOOL": 1}


def decode(dtype, raw):
    """Tensor bytes -> list of Python numbers (floats for F*, ints else)."""
    n = len(raw) // DTYPE_SIZE[dtype]
    if dtype == "F32":
        return list(struct.unpack("<%df" % n, raw))
    if dtype == "F64":
        return list(struct.unpack("<%dd" % n, raw))
    if dtype == "F16":
        return list(struct.unpack("<%de" % n, raw))
    if dtype == "BF16":
        bits = struct.unpack("<%dH" % n, raw)
        return list(struct.unpack("<%df" % n, struct.pack("<%dI" % n, *[b << 16 for b in bits])))
    fmt = {"I64": "q", "I32": "i", "I16": "h", "I8": "b", "U8": "B", "BOOL": "?"}[dtype]
    return list(struct.unpack("<%d%s" % (n, fmt), raw))


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def frob(values):
    return math.sqrt(math.fsum(v * v for v in values))


def rel_error(orig, approx):
    num = math.sqrt(math.fsum((a - b) * (a - b) for a, b in zip(orig, approx)))
    den = frob(orig)
    return num / den if den else (0.0 if num == 0 else float("inf"))


# ---------------------------------------------------------------- safetensors

class Tensor:
    """A fixture tensor: name, dtype (safetensors spelling), shape, raw
    little-endian bytes, and the values as Python numbers when known."""

    def __init__(self, name, dtype, shape, raw, values=None):
        assert len(raw) == numel(shape) * DTYPE_SIZE[dtype], \
            "%s: %d bytes for %s %s" % (name, len(raw), dtype, shape)
        self.name, self.dtype, self.shape, self.raw = name, dtype, list(shape), raw
        self.values = values

    def decoded(self):
        if self.values is None:
            self.values = decode(self.dtype, self.raw)
        return self.values


def t_f32(name, shape, seed, sigma=1.0):
    v = gaussian(numel(shape), seed, sigma)
    raw = f32_bytes(v)
    return Tensor(name, "F32", shape, raw, decode("F32", raw))


def t_f16(name, shape, seed, sigma=1.0):
    raw = f16_bytes(gaussian(numel(shape), seed, sigma))
    return Tensor(name, "F16", shape, raw)


def t_bf16(name, shape, seed, sigma=1.0):
    raw = bf16_bytes(gaussian(numel(shape), seed, sigma))
    return Tensor(name, "BF16", shape, raw)


def t_i64(name, shape, start=0):
    v = [start + i * 7 - 3 for i in range(numel(shape))]
    return Tensor(name, "I64", shape, i64_bytes(v), v)


def safetensors_bytes(tensors, metadata=None, header_pad=True):
    """Serialises tensors (a list of Tensor, laid out in that order) into
    a safetensors file.  metadata: dict of str -> str for __metadata__."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": t.shape,
                          "data_offsets": [off, off + len(t.raw)]}
        off += len(t.raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    if header_pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t.raw for t in tensors)


def raw_safetensors(header_obj, data, header_len=None):
    """A hand-made file: any header object (may be invalid) and data."""
    h = json.dumps(header_obj, separators=(",", ":")).encode()
    n = len(h) if header_len is None else header_len
    return struct.pack("<Q", n) + h + data


class SafetensorsFile:
    """A strict pure-Python reader: header, metadata, and each tensor's
    dtype, shape and raw bytes.  Raises AssertionError on a malformed
    file, so tests can read artifacts with it directly."""

    def __init__(self, data):
        assert len(data) >= 8, "file of %d bytes" % len(data)
        (n,) = struct.unpack("<Q", data[:8])
        assert 2 <= n <= len(data) - 8, "header length %d, file %d bytes" % (n, len(data))
        self.header = json.loads(data[8:8 + n].decode("utf-8"))
        assert isinstance(self.header, dict)
        self.metadata = self.header.get("__metadata__", {})
        assert isinstance(self.metadata, dict)
        for k, v in self.metadata.items():
            assert isinstance(v, str), "__metadata__[%r] is not a string" % k
        body = data[8 + n:]
        spans = []
        self.tensors = {}
        for name, e in self.header.items():
            if name == "__metadata__":
                continue
            assert set(e.keys()) == {"dtype", "shape", "data_offsets"}, (name, e)
            a, b = e["data_offsets"]
            assert 0 <= a <= b <= len(body), (name, a, b, len(body))
            assert numel(e["shape"]) * DTYPE_SIZE[e["dtype"]] == b - a, (name, e)
            spans.append((a, b, name))
            self.tensors[name] = Tensor(name, e["dtype"], e["shape"], body[a:b])
        spans.sort()
        pos = 0
        for a, b, name in spans:
            assert a == pos, "tensor %s starts at %d, expected %d (gap/overlap)" % (name, a, pos)
            pos = b
        assert pos == len(body), "data area %d bytes, tensors cover %d" % (len(body), pos)

    def __getitem__(self, name):
        return self.tensors[name]

    def __contains__(self, name):
        return name in self.tensors

    def names(self):
        return set(self.tensors.keys())


# ---------------------------------------------------------------- TAP runner

_TESTS = []


def test(fn):
    """Registers fn as a test case (run in definition order)."""
    _TESTS.append(fn)
    return fn


def skip(reason):
    """Raise from a test to report it as skipped."""
    raise SkipTest(reason)


class SkipTest(Exception):
    pass


def _diag(text):
    for line in str(text).rstrip("\n").splitlines():
        print("# " + line)


def run(setup=None, teardown=None, daemons=()):
    """Runs the registered tests as TAP and exits.

    setup(): called once before the tests (may start daemons); a
    HarnessError from it is a hard error (exit 99).  teardown(): called
    after; its AssertionErrors (a daemon that does not exit 0 on SIGTERM)
    are reported as a final test case.  daemons: a callable returning the
    Daemon objects to watch; when one has died during a test, that test
    fails with its exit status and stderr, and it is restarted on the
    same data dir so the following tests still run."""
    tests = list(_TESTS)
    total = len(tests) + (1 if teardown else 0)
    sys.stdout.reconfigure(line_buffering=True)
    try:
        if setup:
            setup()
    except HarnessError as e:
        print("1..%d" % total)
        print("Bail out! harness: %s" % str(e).splitlines()[0])
        _diag(e)
        _cleanup()
        sys.exit(99)
    print("1..%d" % total)
    i = 0
    for fn in tests:
        i += 1
        name = fn.__name__
        if fn.__doc__:
            name += ": " + fn.__doc__.strip().splitlines()[0]
        t0 = time.time()
        status, diag = "ok", None
        try:
            fn()
        except SkipTest as e:
            status = "skip"
            diag = str(e)
        except HarnessError as e:
            print("not ok %d - %s" % (i, name))
            _diag(e)
            print("Bail out! harness: %s" % str(e).splitlines()[0])
            _cleanup()
            sys.exit(99)
        except BaseException:        # AssertionError and everything else
            status = "not ok"
            diag = traceback.format_exc()
        dead = []
        for d in (daemons() if daemons else ()):
            if d.proc is not None and d in _LIVE and not d.alive():
                dead.append(d)
        if dead:
            status = "not ok"
            diag = (diag or "") + "".join(
                "daemon %s died during this test (exit %s)\n%s\n" % (
                    d.name, d.proc.returncode, d.stderr_tail()) for d in dead)
        if status == "skip":
            print("ok %d - %s # SKIP %s" % (i, name, diag))
        else:
            print("%s %d - %s" % (status, i, name))
            if diag:
                _diag(diag)
        if os.environ.get("SLIMD_TEST_TIMES"):
            _diag("%.2fs" % (time.time() - t0))
        for d in dead:
            d._forget()
            try:
                d.start()
            except HarnessError as e:
                print("Bail out! cannot restart %s: %s" % (d.name, str(e).splitlines()[0]))
                _cleanup()
                sys.exit(99)
    if teardown:
        i += 1
        try:
            teardown()
            print("ok %d - teardown: every daemon exits 0 on SIGTERM" % i)
        except BaseException:
            print("not ok %d - teardown: every daemon exits 0 on SIGTERM" % i)
            _diag(traceback.format_exc())
    _cleanup()
    sys.exit(0)
