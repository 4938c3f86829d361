#!/usr/bin/env python3
"""slimd submit, the CI client, against a real daemon: each exit status
(0 ok, 2 bad spec or model, 3 job failed, 4 gate missed, 5 unreachable)
from the situation that calls for it, the files it downloads checked
against what the server says, model reuse by sha256, tokens, --timeout;
and the README's CI script run as written (only SLIMD_SERVER and the
files it is given change) for success, a bad spec and a missed gate.

Cases that need a server feature of another branch (gates, job names)
probe the daemon first and are skipped, with the reason, when it lacks
them."""
import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402

SRC = os.environ.get("SLIMD_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
D = None
WORK = None
MODEL = None          # a Gaussian model file in WORK
INT8 = {"op": "quantize", "dtype": "int8", "granularity": "channel"}


def setup():
    global D, WORK, MODEL
    D = h.Daemon(workers=1).start()
    WORK = h.make_tmpdir("slimd-submit-")
    MODEL = os.path.join(WORK, "enc.safetensors")
    write_model(MODEL, seed=1)


def write_model(path, seed, nan=False):
    w = h.gaussian(256 * 128, seed)
    if nan:
        w[77] = float("nan")
    ts = [h.Tensor("enc.fc.weight", "F32", [256, 128], h.f32_bytes(w)),
          h.t_f32("enc.fc.bias", [256], seed + 1)]
    with open(path, "wb") as f:
        f.write(h.safetensors_bytes(ts))


def submit(args, cwd=None, env=None, timeout=180, stdin=None, server=True):
    """Runs slimd submit with --server the test daemon unless args name
    one (server=False: no --server at all); returns the CompletedProcess
    (text)."""
    argv = [h.slimd_bin(), "submit"] + list(args)
    if "--server" not in args and server:
        argv += ["--server", D.base]
    e = dict(os.environ)
    for k in ("SLIMD_SERVER", "SLIMD_TOKEN"):
        e.pop(k, None)
    e.update(env or {})
    t0 = time.time()
    p = subprocess.run(argv, cwd=cwd or WORK, env=e, capture_output=True, text=True,
                       timeout=timeout, input=stdin)
    p.seconds = time.time() - t0
    print("# $ slimd submit %s -> %d (%.1f s)" % (" ".join(args), p.returncode, p.seconds))
    for line in p.stderr.splitlines()[-6:]:
        print("#   " + line)
    return p


def spec_file(obj, name="spec.json"):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        json.dump(obj, f)
    return path


def sha256(path):
    d = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            d.update(b)
    return d.hexdigest()


def jobs_total():
    return D.get("/v1/jobs").json["total"]


def models_total():
    return D.get("/v1/models").json["total"]


def server_accepts(key, value):
    """Whether the daemon's spec validator knows the top-level key (a
    spec with it and a missing model is a 404, not a 400 naming it)."""
    r = D.post_json("/v1/jobs", {"model": "mdl_0000000000000000", key: value,
                                 "passes": [INT8]})
    return not (r.status == 400 and ("'%s'" % key) in r.json["error"]["message"])


def gates_or_skip():
    if not server_accepts("gates", {"min_ratio": 1.0}):
        h.skip("this daemon has no quality gates (\"gates\" is an unknown key: the "
               "ci-server branch adds them)")


def check_download(p, job_id, art, rep):
    """The artifact and report files are the server's: same sha256 as the
    job's artifact, same JSON as its report."""
    job = D.get("/v1/jobs/" + job_id).json
    assert job["state"] == "succeeded", job
    assert os.path.exists(art), "no artifact %s; files: %s" % (art, os.listdir(WORK))
    assert sha256(art) == job["artifact"]["sha256"], "artifact differs from the server's"
    assert os.path.getsize(art) == job["artifact"]["bytes"]
    assert os.path.exists(rep), "no report %s; files: %s" % (rep, os.listdir(os.path.dirname(rep)))
    assert json.load(open(rep)) == D.get("/v1/jobs/%s/report" % job_id).json
    leftovers = [f for f in os.listdir(os.path.dirname(art)) if f.startswith(".slimd-download")]
    assert not leftovers, leftovers


# ---------------------------------------------------------------- exit 0


@h.test
def test_success_downloads_artifact_and_report():
    """a model file, --wait -o: exit 0, job id on stdout, artifact and report match the server"""
    out = os.path.join(WORK, "dist", "v1", "enc.int8.safetensors")   # dist/v1/ is made
    p = submit([MODEL, "--spec", spec_file({"passes": [INT8]}), "--wait", "-o", out])
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip()
    assert re.fullmatch(r"job_[0-9a-f]+", job_id), p.stdout
    check_download(p, job_id, out, os.path.join(WORK, "dist", "v1", "enc.int8.report.json"))
    art = h.SafetensorsFile(open(out, "rb").read())
    assert art["enc.fc.weight"].dtype == "I8"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask, oct(os.stat(out).st_mode)
    assert "succeeded" in p.stderr and "ratio" in p.stderr, p.stderr


@h.test
def test_same_bytes_reused():
    """the same file again is found by its sha256 and not uploaded a second time"""
    n = models_total()
    p = submit([MODEL, "--spec", spec_file({"passes": [INT8]})])
    assert p.returncode == 0, p.stderr
    assert "not uploaded again" in p.stderr, p.stderr
    assert models_total() == n, "a second model row for the same bytes"
    job = D.wait_job(p.stdout.strip())
    assert job["state"] == "succeeded", job


@h.test
def test_model_id_default_names_stdin_spec():
    """a model id, the spec on stdin, no -o: MODELNAME.JOB.safetensors and .report.json here"""
    mid = D.upload(open(MODEL, "rb").read(), name="tiny-enc").json["id"]
    cwd = h.make_tmpdir("slimd-submit-cwd-")
    p = submit([mid, "--spec", "-", "--wait"], cwd=cwd,
               stdin=json.dumps({"passes": [INT8]}))
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip()
    assert D.get("/v1/jobs/" + job_id).json["model"] == mid
    check_download(p, job_id, os.path.join(cwd, "tiny-enc.%s.safetensors" % job_id),
                   os.path.join(cwd, "tiny-enc.%s.report.json" % job_id))


@h.test
def test_inline_spec_output_dir():
    """inline JSON spec, -o DIR/ (made if missing) or an existing DIR: the default names go into it"""
    fresh = os.path.join(WORK, "fresh.safetensors")
    write_model(fresh, seed=11)
    outdir = os.path.join(h.make_tmpdir("slimd-submit-out-"), "new")
    for out, model in ((outdir + "/", fresh), (outdir, MODEL)):
        p = submit([model, "--spec", '{"passes": [{"op": "quantize", "dtype": "fp16"}]}',
                    "-o", out])
        assert p.returncode == 0, p.stderr
        job_id = p.stdout.strip()
        stem = os.path.basename(model).split(".")[0]
        check_download(p, job_id, os.path.join(outdir, "%s.%s.safetensors" % (stem, job_id)),
                       os.path.join(outdir, "%s.%s.report.json" % (stem, job_id)))
        assert "new//" not in p.stderr, p.stderr


@h.test
def test_no_wait():
    """without --wait: the job id on stdout at once, exit 0, nothing downloaded"""
    before = set(os.listdir(WORK))
    p = submit([MODEL, "--spec", spec_file({"passes": [INT8]})])
    assert p.returncode == 0, p.stderr
    assert D.get("/v1/jobs/" + p.stdout.strip()).status == 200
    assert set(os.listdir(WORK)) == before, set(os.listdir(WORK)) - before


# ---------------------------------------------------------------- exit 2


@h.test
def test_bad_spec_exit_2():
    """a spec the server refuses: exit 2 with its message; no job queued"""
    n = jobs_total()
    p = submit([MODEL, "--spec", spec_file({"passes": [{"op": "quantize", "dtype": "int3"}]}),
                "--wait", "-o", os.path.join(WORK, "never.safetensors")])
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "INVALID_SPEC" in p.stderr and "passes[0].dtype" in p.stderr, p.stderr
    assert jobs_total() == n
    assert not os.path.exists(os.path.join(WORK, "never.safetensors"))


@h.test
def test_unreadable_spec_exit_2():
    """a spec file that is missing, or not JSON, or not an object: exit 2 before any request"""
    bad = os.path.join(WORK, "broken.json")
    with open(bad, "w") as f:
        f.write('{"passes": [')
    for spec, words in ((os.path.join(WORK, "missing.json"), "missing.json"),
                        (bad, "not valid JSON"), ('[1, 2]', "JSON object"),
                        ('{"passes": [], "passes": []}', "duplicate")):
        p = submit([MODEL, "--spec", spec])
        assert p.returncode == 2, (spec, p.returncode, p.stderr)
        assert words in p.stderr, (spec, p.stderr)


@h.test
def test_missing_model_file_exit_2():
    """a model file that does not exist: exit 2, named"""
    n = models_total()
    p = submit([os.path.join(WORK, "nope.safetensors"), "--spec", spec_file({"passes": [INT8]})])
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "nope.safetensors" in p.stderr and "No such file" in p.stderr, p.stderr
    assert models_total() == n


@h.test
def test_bad_model_exit_2():
    """a file that is no model: the server's 415 message, exit 2; an unknown id: 404, exit 2"""
    junk = os.path.join(WORK, "junk.safetensors")
    with open(junk, "wb") as f:
        f.write(b"this is not a model at all, just some text\n" * 10)
    p = submit([junk, "--spec", spec_file({"passes": [INT8]})])
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "415" in p.stderr and "unrecognised model format" in p.stderr, p.stderr
    p = submit(["mdl_00000000deadbeef", "--spec", spec_file({"passes": [INT8]})])
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "404" in p.stderr and "mdl_00000000deadbeef" in p.stderr, p.stderr


@h.test
def test_usage_errors_exit_2():
    """no --spec, a model and --model-name together, a bad --label or --server: exit 2"""
    for args, words in (([MODEL], "--spec"),
                        ([MODEL, "--model-name", "x", "--spec", "{}"], "not both"),
                        ([MODEL, "--spec", "{}", "--label", "novalue"], "KEY=VALUE"),
                        ([MODEL, "--spec", "{}", "--server", "ftp://x"], "--server"),
                        (["--spec", '{"passes": []}'], "no model")):
        p = submit(args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert words in p.stderr, (args, p.stderr)


# ---------------------------------------------------------------- exit 5


@h.test
def test_unreachable_exit_5():
    """nothing listening, or a name that does not resolve: exit 5 at once"""
    port = h.free_port()
    for server in ("http://127.0.0.1:%d" % port, "http://no-such-host.invalid:8420"):
        p = submit([MODEL, "--spec", spec_file({"passes": [INT8]}), "--server", server,
                    "--wait"])
        assert p.returncode == 5, (server, p.returncode, p.stderr)
        assert p.seconds < 20, "took %.1f s to give up on %s" % (p.seconds, server)
    # SLIMD_SERVER is the default
    p = submit([MODEL, "--spec", spec_file({"passes": [INT8]})], server=False,
               env={"SLIMD_SERVER": "http://127.0.0.1:%d" % port})
    assert p.returncode == 5 and str(port) in p.stderr, (p.returncode, p.stderr)


# ---------------------------------------------------------------- exit 3


@h.test
def test_failed_job_exit_3():
    """a model whose weights hold a NaN: the job fails, exit 3 with its error code"""
    nanmodel = os.path.join(WORK, "nan.safetensors")
    write_model(nanmodel, seed=3, nan=True)
    out = os.path.join(WORK, "nan.int8.safetensors")
    p = submit([nanmodel, "--spec", spec_file({"passes": [INT8]}), "--wait", "-o", out])
    assert p.returncode == 3, (p.returncode, p.stderr)
    job = D.get("/v1/jobs/" + p.stdout.strip()).json
    assert job["state"] == "failed", job
    assert "NUMERIC_ERROR" in p.stderr and "failed" in p.stderr, p.stderr
    assert not os.path.exists(out)


@h.test
def test_timeout_cancels_exit_3():
    """--timeout: a job still running is canceled, exit 3"""
    big = os.path.join(WORK, "big.safetensors")
    w = h.f32_bytes(h.gaussian(2048 * 2048, 9))
    with open(big, "wb") as f:
        f.write(h.safetensors_bytes([h.Tensor("w%d" % i, "F32", [2048, 2048], w)
                                     for i in range(4)]))
    spec = {"passes": [{"op": "lowrank", "rank": 256, "algorithm": "exact"}]}
    p = submit([big, "--spec", spec_file(spec), "--wait", "--timeout", "1"])
    job = D.wait_job(p.stdout.strip())
    if job["state"] == "succeeded":
        h.skip("the job ended within 1 s, nothing to cancel")
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert job["state"] == "canceled", job
    assert "--timeout" in p.stderr and "canceled" in p.stderr, p.stderr


# ---------------------------------------------------------------- exit 4


@h.test
def test_gate_failed_exit_4():
    """a gate the job misses: exit 4 (GATE_FAILED), the report downloaded for inspection"""
    gates_or_skip()
    out = os.path.join(WORK, "gated.safetensors")
    spec = {"passes": [INT8], "gates": {"max_rel_error": 1e-6}}
    p = submit([MODEL, "--spec", spec_file(spec), "--wait", "-o", out])
    assert p.returncode == 4, (p.returncode, p.stderr)
    job = D.get("/v1/jobs/" + p.stdout.strip()).json
    assert job["state"] == "failed", job
    assert "gate" in p.stderr and "max_rel_error" in p.stderr, p.stderr
    rep = os.path.join(WORK, "gated.report.json")
    r = D.get("/v1/jobs/%s/report" % job["id"])
    if r.status == 200:
        assert json.load(open(rep)) == r.json
    # a gate that holds: exit 0
    spec["gates"] = {"max_rel_error": 0.05, "min_ratio": 3.0}
    p = submit([MODEL, "--spec", spec_file(spec), "--wait", "-o", out])
    assert p.returncode == 0, (p.returncode, p.stderr)


# ---------------------------------------------------------------- names, labels, ?wait


@h.test
def test_model_name_job_name_labels():
    """--model-name NAME runs on the newest model of that name; --name and --label reach the job"""
    r = D.post_json("/v1/jobs", {"model": {"name": "no-such-model-name"}, "passes": [INT8]})
    if r.status == 400:
        h.skip("this daemon takes no {\"name\": ...} model reference (%s): the lifecycle "
               "branch adds them" % r.json["error"]["message"])
    if not server_accepts("name", "x"):
        h.skip("this daemon has no job names: the lifecycle branch adds them")
    older = D.upload(open(MODEL, "rb").read(), name="byname").json["id"]
    fresh = os.path.join(WORK, "byname.safetensors")
    write_model(fresh, seed=21)
    newer = D.upload(open(fresh, "rb").read(), name="byname").json["id"]
    assert older != newer
    p = submit(["--model-name", "byname", "--spec", spec_file({"passes": [INT8]}),
                "--name", "nightly", "--label", "team=ml", "--label", "commit=abc", "--wait"])
    assert p.returncode == 0, p.stderr
    job = D.get("/v1/jobs/" + p.stdout.strip()).json
    assert job["model"] == newer, (job["model"], newer, older)
    assert job.get("name") == "nightly" and job.get("labels") == {"team": "ml", "commit": "abc"}, job
    p = submit(["--model-name", "no-such-model-name", "--spec", spec_file({"passes": [INT8]})])
    assert p.returncode == 2 and "no-such-model-name" in p.stderr, (p.returncode, p.stderr)


@h.test
def test_wait_is_used():
    """on a daemon with ?wait: one blocking request per 30 s instead of polling"""
    any_job = D.get("/v1/jobs?limit=1").json["jobs"][0]["id"]
    if D.get("/v1/jobs/%s?wait=x" % any_job).status != 400:
        h.skip("this daemon ignores ?wait (the ci-server branch adds it): the client polls")
    slow = os.path.join(WORK, "slow.safetensors")
    w = h.f32_bytes(h.gaussian(1536 * 1536, 31))
    with open(slow, "wb") as f:
        f.write(h.safetensors_bytes([h.Tensor("w%d" % i, "F32", [1536, 1536], w)
                                     for i in range(2)]))
    log0 = len(D.stderr_text())
    p = submit([slow, "--spec", spec_file({"passes": [{"op": "lowrank", "rank": 128,
                                                       "algorithm": "exact"}]}), "--wait"])
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip()
    gets = [l for l in D.stderr_text()[log0:].splitlines()
            if re.search(r"GET /v1/jobs/%s \d" % job_id, l)]
    job = D.get("/v1/jobs/" + job_id).json
    print("# %d GET /v1/jobs/%s over %.1f s" % (len(gets), job_id, p.seconds))
    assert 1 <= len(gets) <= 2 + int(p.seconds / 30), gets


@h.test
def test_report_warnings_printed():
    """the report's warnings (a pass that selected nothing) are printed in the CI log"""
    spec = {"passes": [dict(INT8, include=["no.such.*"])]}
    out = os.path.join(WORK, "warn", "enc.safetensors")
    p = submit([MODEL, "--spec", spec_file(spec), "-o", out])
    assert p.returncode == 0, p.stderr
    rep = json.load(open(os.path.join(WORK, "warn", "enc.report.json")))
    if "warnings" not in rep:
        h.skip("this daemon's reports have no warnings[] (the ci-server branch adds them)")
    assert rep["warnings"], rep["warnings"]
    assert "warning: %s: " % rep["warnings"][0]["code"] in p.stderr, p.stderr


# ---------------------------------------------------------------- tokens


@h.test
def test_token():
    """--auth token: no token is exit 1 naming --token-file; --token-file and SLIMD_TOKEN work"""
    t = h.Daemon(workers=1, name="auth", args=["--auth", "token"])
    t.start()
    try:
        tok = subprocess.run([h.slimd_bin(), "token", "create", "--scope", "read,submit",
                              "--name", "ci", "--data-dir", t.data_dir] + h.store_flags(t.data_dir),
                             capture_output=True, text=True, check=True).stdout.strip()
        spec = spec_file({"passes": [INT8]})
        p = submit([MODEL, "--spec", spec, "--server", t.base])
        assert p.returncode == 1 and "401" in p.stderr and "--token-file" in p.stderr, \
            (p.returncode, p.stderr)
        tf = os.path.join(WORK, "token")
        with open(tf, "w") as f:
            f.write(tok + "\n")
        p = submit([MODEL, "--spec", spec, "--server", t.base, "--token-file", tf, "-o",
                    os.path.join(WORK, "tok.safetensors")])
        assert p.returncode == 0, p.stderr
        p = submit([MODEL, "--spec", spec, "--server", t.base], env={"SLIMD_TOKEN": tok})
        assert p.returncode == 0 and "not uploaded again" in p.stderr, p.stderr
    finally:
        t.stop()


class TLSDaemon(h.Daemon):
    """A daemon with --tls-cert, its health checked over HTTPS."""

    def __init__(self, cafile, **kw):
        super().__init__(**kw)
        self.ctx = ssl.create_default_context(cafile=cafile)

    @property
    def base(self):
        return "https://localhost:%d" % self.port

    def request(self, method, path, body=None, headers=None, json_body=None, timeout=60,
                chunked=False):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                           context=self.ctx)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            r = conn.getresponse()
            return h.Response(r.status, r.reason, r.headers, r.read())
        finally:
            conn.close()


@h.test
def test_https():
    """https with a self-signed certificate: --cacert works (exit 0); without it, exit 5 naming --cacert"""
    if not shutil.which("openssl"):
        h.skip("openssl is not installed (scripts/deps.sh installs it)")
    d = h.make_tmpdir("slimd-submit-tls-")
    key, cert = os.path.join(d, "server.key"), os.path.join(d, "server.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
                   capture_output=True, check=True)
    t = TLSDaemon(cert, workers=1, name="tls", args=["--tls-cert", cert, "--tls-key", key])
    t.start()
    try:
        spec = spec_file({"passes": [INT8]})
        p = submit([MODEL, "--spec", spec, "--server", t.base])
        assert p.returncode == 5 and "--cacert" in p.stderr, (p.returncode, p.stderr)
        out = os.path.join(WORK, "tls", "enc.safetensors")
        p = submit([MODEL, "--spec", spec, "--server", t.base, "--cacert", cert, "-o", out])
        assert p.returncode == 0, p.stderr
        job = t.get("/v1/jobs/" + p.stdout.strip()).json
        assert sha256(out) == job["artifact"]["sha256"], job
    finally:
        t.stop()


# ---------------------------------------------------------------- a flaky network


class FlakyProxy:
    """A proxy in front of the test daemon that fails the way networks
    and busy servers do, once each: the first POST /v1/jobs is answered
    503 with Retry-After: 1 (not passed on), and the first artifact
    download is cut after half its bytes.  It records every request."""

    def __init__(self, upstream_port):
        proxy = self
        self.log = []
        self.failed = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                self.forward()

            def do_POST(self):
                self.forward()

            def forward(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                proxy.log.append((self.command, self.path, dict(self.headers)))
                if (self.command == "POST" and self.path == "/v1/jobs" and
                        "503" not in proxy.failed):
                    proxy.failed.add("503")
                    msg = b'{"error": {"code": "BUSY", "message": "try again"}}'
                    self.send_response(503)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                hdrs = {k: v for k, v in self.headers.items()
                        if k.lower() not in ("host", "connection", "expect")}
                conn.request(self.command, self.path, body=body, headers=hdrs)
                r = conn.getresponse()
                data = r.read()
                conn.close()
                cut = (self.path.endswith("/artifact") and r.status == 200 and
                       "cut" not in proxy.failed)
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "date", "server"):
                        self.send_header(k, v)
                self.end_headers()
                if cut:
                    proxy.failed.add("cut")
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@h.test
def test_retries_503_and_resumes_a_cut_download():
    """a 503 on submit is retried after Retry-After with the same Idempotency-Key; a cut download resumes with Range"""
    px = FlakyProxy(D.port)
    try:
        n = jobs_total()
        out = os.path.join(WORK, "flaky.safetensors")
        p = submit([MODEL, "--spec", spec_file({"passes": [INT8]}), "-o", out,
                    "--server", px.base])
        assert p.returncode == 0, p.stderr
        assert jobs_total() == n + 1, "one job, whatever the retries"
        posts = [hd for m, path, hd in px.log if m == "POST" and path == "/v1/jobs"]
        assert len(posts) == 2, px.log
        keys = [{k.lower(): v for k, v in hd.items()}.get("idempotency-key") for hd in posts]
        assert keys[0] and keys[0] == keys[1], keys
        arts = [{k.lower(): v for k, v in hd.items()} for m, path, hd in px.log
                if path.endswith("/artifact")]
        assert len(arts) == 2 and "range" not in arts[0], arts
        assert re.fullmatch(r"bytes=[1-9][0-9]*-", arts[1].get("range", "")), arts
        check_download(p, p.stdout.strip(), out, os.path.join(WORK, "flaky.report.json"))
        assert "HTTP 503 BUSY: try again; again in 1.0 s" in p.stderr, p.stderr
    finally:
        px.close()


# ---------------------------------------------------------------- slimd compress, offline


@h.test
def test_compress_exit_codes():
    """slimd compress: 0 ok, 2 bad spec or model, 3 a failed compression, 4 a missed gate"""
    nanmodel = os.path.join(WORK, "nan-offline.safetensors")
    write_model(nanmodel, seed=5, nan=True)
    junk = os.path.join(WORK, "junk-offline.safetensors")
    with open(junk, "wb") as f:
        f.write(b"\xff" * 64)
    good = spec_file({"passes": [INT8]}, "offline.json")
    cases = [(MODEL, good, 0, None),
             (MODEL, spec_file({"passes": [{"op": "quantize", "dtype": "int3"}]}, "o2.json"), 2,
              "passes[0].dtype"),
             (MODEL, os.path.join(WORK, "no-such-spec.json"), 2, "no-such-spec.json"),
             (os.path.join(WORK, "no-such-model.safetensors"), good, 2, "No such file"),
             (junk, good, 2, "INVALID_MODEL"),
             (nanmodel, good, 3, "NUMERIC_ERROR")]
    if server_accepts("gates", {"min_ratio": 1.0}):
        cases.append((MODEL, spec_file({"passes": [INT8], "gates": {"max_rel_error": 1e-6}},
                                       "o3.json"), 4, "GATE_FAILED"))
    else:
        print("# no gates in this build: the exit 4 case is not run")
    for model, spec, want, words in cases:
        out = h.make_tmpdir("slimd-compress-")
        p = subprocess.run([h.slimd_bin(), "compress", model, "--spec", spec, "-o", out],
                           capture_output=True, text=True, timeout=120)
        print("# slimd compress %s --spec %s -> %d: %s" % (os.path.basename(model),
                                                           os.path.basename(spec), p.returncode,
                                                           p.stderr.strip()[:200]))
        assert p.returncode == want, (model, spec, p.returncode, p.stderr)
        if words:
            assert words in p.stderr, (words, p.stderr)
        if want == 4:   # the artifact and report are kept to look at
            assert os.path.exists(os.path.join(out, "report.json")), os.listdir(out)
            assert os.path.exists(os.path.join(out, "enc.slim.safetensors")), os.listdir(out)


@h.test
def test_daemon_restart_while_waiting():
    """the daemon stops and comes back on its port while the client waits: it retries, the re-queued job ends, exit 0"""
    t = h.Daemon(workers=1, name="restart").start()
    try:
        slow = os.path.join(WORK, "slow2.safetensors")
        w = h.f32_bytes(h.gaussian(1536 * 1536, 41))
        with open(slow, "wb") as f:
            f.write(h.safetensors_bytes([h.Tensor("w%d" % i, "F32", [1536, 1536], w)
                                         for i in range(2)]))
        spec = spec_file({"passes": [{"op": "lowrank", "rank": 128, "algorithm": "exact"}]})
        out = os.path.join(WORK, "restart", "slow2.safetensors")
        argv = [h.slimd_bin(), "submit", slow, "--spec", spec, "--server", t.base, "-o", out]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        running = None
        while time.time() < deadline and not running:
            jobs = t.get("/v1/jobs").json["jobs"]
            running = [j for j in jobs if j["state"] == "running"]
            time.sleep(0.05)
        assert running, "the job never ran"
        port = t.port
        t.stop()
        time.sleep(1.5)
        free_port = h.free_port
        h.free_port = lambda: port   # back on the same port
        try:
            t.start()
        finally:
            h.free_port = free_port
        try:
            stdout, stderr = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        print("# " + stderr.replace("\n", "\n# "))
        assert proc.returncode == 0, (proc.returncode, stderr)
        assert "again in" in stderr, stderr
        job = t.get("/v1/jobs/" + stdout.strip()).json
        assert job["state"] == "succeeded" and job["attempts"] >= 1, job
        assert sha256(out) == job["artifact"]["sha256"]
    finally:
        t.stop()


# ---------------------------------------------------------------- README's CI script


def readme_blocks():
    text = open(os.path.join(SRC, "README.md")).read()
    m = re.search(r"<!-- ci:begin -->(.*?)<!-- ci:end -->", text, re.S)
    assert m, "README.md has no <!-- ci:begin --> ... <!-- ci:end --> section"
    blocks = dict((lang, body) for lang, body in
                  re.findall(r"```(json|sh)\n(.*?)```", m.group(1), re.S))
    assert "json" in blocks and "sh" in blocks, "the CI section needs a json and a sh block"
    return json.loads(blocks["json"]), blocks["sh"]


def run_ci_script(spec, tag, server=None):
    """The README's script, as written, in a fresh directory: the README's
    model and spec file names, SLIMD_SERVER the test daemon, slimd on
    PATH.  Returns (CompletedProcess, directory)."""
    _, script = readme_blocks()
    cwd = h.make_tmpdir("slimd-ci-%s-" % tag)
    os.makedirs(os.path.join(cwd, "ci"))
    with open(os.path.join(cwd, "ci", "compress.sh"), "w") as f:
        f.write(script)
    with open(os.path.join(cwd, "model.safetensors"), "wb") as f:
        f.write(open(MODEL, "rb").read())
    with open(os.path.join(cwd, "ci", "slimd-spec.json"), "w") as f:
        json.dump(spec, f)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(h.slimd_bin()) + os.pathsep + env.get("PATH", "")
    env["SLIMD_SERVER"] = server or D.base
    env["CI_COMMIT_SHA"] = "0123abc"
    p = subprocess.run(["sh", "ci/compress.sh", "model.safetensors", "ci/slimd-spec.json",
                        "dist/model.slim.safetensors"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=180)
    print("# ci/compress.sh (%s) -> %d" % (tag, p.returncode))
    for line in (p.stderr + p.stdout).splitlines()[-8:]:
        print("#   " + line)
    return p, cwd


def ci_script_or_skip():
    gates_or_skip()
    if not server_accepts("name", "x"):
        h.skip("this daemon has no job names (\"name\" is an unknown key: the lifecycle "
               "branch adds them)")


@h.test
def test_readme_ci_script_success():
    """README's CI script: a named job with its gates, exit 0, artifact and report match the server"""
    spec, _ = readme_blocks()
    assert "gates" in spec and spec["passes"], spec
    ci_script_or_skip()
    p, cwd = run_ci_script(spec, "ok")
    assert p.returncode == 0, p.stderr + p.stdout
    job_id = p.stdout.split()[0]
    check_download(p, job_id, os.path.join(cwd, "dist", "model.slim.safetensors"),
                   os.path.join(cwd, "dist", "model.slim.report.json"))
    job = D.get("/v1/jobs/" + job_id).json
    assert job.get("name") == "ci-model.safetensors", job
    assert job.get("labels", {}).get("commit") == "0123abc", job


@h.test
def test_readme_ci_script_bad_spec():
    """README's CI script: a bad spec exits 2 with the server's message"""
    spec, _ = readme_blocks()
    spec = dict(spec, passes=[{"op": "quantize", "dtype": "int3"}])
    ci_script_or_skip()
    p, cwd = run_ci_script(spec, "badspec")
    assert p.returncode == 2, p.stderr + p.stdout
    assert "passes[0].dtype" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(cwd, "dist", "model.slim.safetensors"))


@h.test
def test_readme_ci_script_gate_failed():
    """README's CI script: a gate the model misses exits 4"""
    spec, _ = readme_blocks()
    spec = dict(spec, gates={"max_rel_error": 1e-6})
    ci_script_or_skip()
    p, cwd = run_ci_script(spec, "gate")
    assert p.returncode == 4, p.stderr + p.stdout
    assert "gate" in p.stdout, p.stdout
    assert not os.path.exists(os.path.join(cwd, "dist", "model.slim.safetensors"))


@h.test
def test_readme_ci_script_unreachable():
    """README's CI script: an unreachable server exits 5"""
    spec, _ = readme_blocks()
    p, _ = run_ci_script(spec, "down", server="http://127.0.0.1:%d" % h.free_port())
    assert p.returncode == 5, p.stderr + p.stdout
    assert "unreachable" in p.stdout, p.stdout


def teardown():
    D.stop()


if __name__ == "__main__":
    h.run(setup=setup, teardown=teardown, daemons=lambda: [D])
