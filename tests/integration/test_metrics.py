#!/usr/bin/env python3
"""test_metrics.py - GET /metrics against a daemon that did real work.

The daemon uploads a model, runs a job that succeeds (prune then
quantize) and one that fails (NaN weights: NUMERIC_ERROR), serves a
download and a range of it, and answers a 404 and a 405.  Then:

  * the exposition is parsed strictly by the parser below (Prometheus
    text format 0.0.4): every line a HELP, a TYPE or a sample; HELP and
    TYPE once per family and before its samples; sample names that
    belong to their family (a histogram's _bucket/_sum/_count only);
    label values quoted with \\\\, \\" and \\n escapes; no duplicate
    series; histogram buckets in increasing `le`, cumulative, ending
    with le="+Inf" equal to _count;
  * `promtool check metrics` agrees, where promtool is installed (the
    Debian package prometheus; skipped otherwise: it is no dependency);
  * the values are the work done: the job counts, the failure by its
    code, the pass durations by op, the ratio, the queue wait, bytes in
    and out, requests by route template (never an id) and status, the
    data dir's size against du, and the process families against
    /proc/<pid>.
"""

import time
import json
import math
import os
import re
import shutil
import subprocess

import slimd_harness as h
from slimd_harness import test

D = None
SCRAPE = None     # (text, parsed) after the work in setup()


def setup():
    global D
    D = h.Daemon(workers=1).start()


def teardown():
    D.stop()


# ---------------------------------------------------------------- the parser

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
VALUE = r"(?:[+-]?(?:Inf|NaN|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?))"


def unescape_label(s):
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            nxt = s[i + 1] if i + 1 < len(s) else ""
            assert nxt in ("\\", '"', "n"), "bad escape \\%s in label value %r" % (nxt, s)
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            assert c != '"' and c != "\n", "unescaped %r in label value %r" % (c, s)
            out.append(c)
            i += 1
    return "".join(out)


def parse_labels(text):
    """'a="x",b="y\\"z"' -> {"a": "x", "b": 'y"z'}; strict."""
    labels, i = {}, 0
    while i < len(text):
        m = re.match(LABEL + "=", text[i:])
        assert m, "bad label at %r" % text[i:]
        name = m.group(0)[:-1]
        i += m.end()
        assert text[i] == '"', "label %s: value not quoted" % name
        j = i + 1
        while text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        assert name not in labels, "label %s twice" % name
        labels[name] = unescape_label(text[i + 1:j])
        i = j + 1
        if i < len(text):
            assert text[i] == ",", "expected , after label %s in %r" % (name, text)
            i += 1
    return labels


def parse(text):
    """Returns {family: {"type", "help", "samples": [(name, labels, value)]}}; asserts
    the format."""
    assert text.endswith("\n"), "exposition must end with a newline"
    fams, current = {}, None
    seen_series = set()
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d: %r" % (n, line)
        assert line, "empty line (%s)" % where
        if line.startswith("#"):
            m = re.match(r"# (HELP|TYPE) (" + NAME + r") (.*)$", line)
            assert m, "bad comment line (%s)" % where
            kind, name, rest = m.groups()
            f = fams.setdefault(name, {"type": None, "help": None, "samples": []})
            assert not f["samples"], "%s after samples of %s (%s)" % (kind, name, where)
            if kind == "HELP":
                assert f["help"] is None, "HELP twice for %s" % name
                assert re.fullmatch(r"(?:[^\\]|\\\\|\\n)*", rest), "bad escape in HELP (%s)" % where
                f["help"] = rest
            else:
                assert f["type"] is None, "TYPE twice for %s" % name
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), where
                f["type"] = rest
            current = name
            continue
        m = re.match(r"(" + NAME + r")(?:\{(.*)\})? (" + VALUE + r")(?: -?[0-9]+)?$", line)
        assert m, "bad sample line (%s)" % where
        name, ltext, value = m.groups()
        labels = parse_labels(ltext) if ltext else {}
        fam = current
        f = fams.get(fam)
        assert f and f["type"] and f["help"], "sample before its family's HELP and TYPE (%s)" % where
        if f["type"] == "histogram":
            assert name in (fam + "_bucket", fam + "_sum", fam + "_count"), \
                "%s is no sample name of histogram %s" % (name, fam)
            if name == fam + "_bucket":
                assert "le" in labels, "bucket without le (%s)" % where
            else:
                assert "le" not in labels, where
        elif f["type"] == "counter":
            assert name in (fam, fam + "_total") or name == fam, where
            assert name == fam, "counter sample %s in family %s" % (name, fam)
        else:
            assert name == fam, "sample %s in family %s" % (name, fam)
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen_series, "series twice: %s" % (where,)
        seen_series.add(key)
        v = float(value.replace("Inf", "inf"))
        if f["type"] == "counter":
            assert v >= 0 and not math.isnan(v), "negative counter (%s)" % where
            assert fam.endswith("_total"), "counter %s should end in _total" % fam
        f["samples"].append((name, labels, v))
    for name, f in fams.items():
        assert f["type"] and f["help"], "family %s lacks HELP or TYPE" % name
        if f["type"] == "histogram":
            check_histogram(name, f["samples"])
    return fams


def check_histogram(fam, samples):
    groups = {}
    for name, labels, v in samples:
        key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
        g = groups.setdefault(key, {"buckets": [], "sum": None, "count": None})
        if name.endswith("_bucket"):
            le = labels["le"]
            g["buckets"].append((math.inf if le == "+Inf" else float(le), v))
        elif name.endswith("_sum"):
            g["sum"] = v
        else:
            g["count"] = v
    for key, g in groups.items():
        b = g["buckets"]
        assert b and b[-1][0] == math.inf, "%s%s: last bucket is not le=\"+Inf\"" % (fam, key)
        assert all(b[i][0] < b[i + 1][0] for i in range(len(b) - 1)), \
            "%s%s: le not increasing" % (fam, key)
        assert all(b[i][1] <= b[i + 1][1] for i in range(len(b) - 1)), \
            "%s%s: buckets not cumulative" % (fam, key)
        assert g["count"] is not None and g["sum"] is not None, "%s%s: no _sum or _count" % (fam, key)
        assert b[-1][1] == g["count"], "%s%s: +Inf bucket %s != count %s" % (
            fam, key, b[-1][1], g["count"])


def value(fams, fam, sample=None, **labels):
    sample = sample or fam
    got = [v for n, l, v in fams[fam]["samples"]
           if n == sample and all(l.get(k) == x for k, x in labels.items())]
    assert len(got) == 1, "%s%s: %d series match" % (sample, labels, len(got))
    return got[0]


@test
def test_parser_is_strict():
    """the parser itself: each kind of malformed exposition is refused"""
    good = ('# HELP a_total A.\n# TYPE a_total counter\na_total{x="q\\"uote\\\\"} 1\n'
            '# HELP h H.\n# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\n'
            'h_sum 3\nh_count 2\n')
    fams = parse(good)
    assert fams["a_total"]["samples"][0][1] == {"x": 'q"uote\\'}, fams
    bad = {
        "no TYPE": "# HELP a_total A.\na_total 1\n",
        "sample of another family": "# HELP a_total A.\n# TYPE a_total counter\nb_total 1\n",
        "TYPE twice": "# HELP a A.\n# TYPE a gauge\n# TYPE a gauge\na 1\n",
        "no +Inf": "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "not cumulative": "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\n"
                          "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "+Inf != count": "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\n"
                         "h_sum 1\nh_count 1\n",
        "unescaped newline": '# HELP a A.\n# TYPE a gauge\na{x="1\n2"} 1\n',
        "bad escape": '# HELP a A.\n# TYPE a gauge\na{x="\\q"} 1\n',
        "duplicate series": "# HELP a A.\n# TYPE a gauge\na 1\na 2\n",
        "counter without _total": "# HELP a A.\n# TYPE a counter\na 1\n",
        "no final newline": "# HELP a A.\n# TYPE a gauge\na 1",
        "bad value": "# HELP a A.\n# TYPE a gauge\na one\n",
    }
    for what, text in bad.items():
        try:
            parse(text)
        except (AssertionError, ValueError, IndexError):
            continue
        raise AssertionError("the parser accepted: " + what)


# ---------------------------------------------------------------- the work

def do_work():
    global SCRAPE
    if SCRAPE:
        return SCRAPE
    good = h.safetensors_bytes([h.t_f32("layer.weight", [64, 64], 3),
                                h.t_f32("head.weight", [32, 64], 4)])
    mid = D.upload(good, name="good").json["id"]
    w = h.gaussian(64, 5)
    w[17] = float("nan")
    bad = h.safetensors_bytes([h.Tensor("w", "F32", [8, 8], h.f32_bytes(w))])
    bad_id = D.upload(bad, name="nan").json["id"]
    q = {"op": "quantize", "dtype": "int8", "granularity": "channel", "symmetric": True}
    ok = D.wait_job(D.submit({"model": mid, "passes": [
        {"op": "prune", "sparsity": 0.5}, q]}).json["id"])
    assert ok["state"] == "succeeded", ok
    failed = D.wait_job(D.submit({"model": bad_id, "passes": [q]}).json["id"])
    assert failed["state"] == "failed", failed
    art = D.get("/v1/jobs/%s/artifact" % ok["id"])
    assert art.status == 200, art
    part = D.get("/v1/jobs/%s/artifact" % ok["id"], headers={"Range": "bytes=0-99"})
    assert part.status == 206, part
    model = D.get("/v1/models/%s/file" % mid)
    assert model.status == 200
    assert D.get("/v1/jobs/job_doesnotexist").status == 404
    assert D.request("PUT", "/v1/jobs").status == 405
    assert D.get("/no/such/path").status == 404
    # a request is counted when libmicrohttpd reports it completed, just
    # after its answer went out: the scrape waits until the last one is in
    deadline = time.time() + 10
    while True:
        r = D.get("/metrics")
        assert r.status == 200, r
        body = r.body.decode()
        if all(k in body for k in ('route="unmatched"', 'code="405"', 'code="206"',
                                   'route="/v1/models/{id}/file"')) or time.time() > deadline:
            break
        time.sleep(0.05)
    assert r.header("Content-Type").startswith("text/plain; version=0.0.4"), r.header(
        "Content-Type")
    text = r.body.decode()
    SCRAPE = (text, parse(text), {"ok": ok, "failed": failed, "art": len(art.body),
                                  "model": len(model.body), "uploads": len(good) + len(bad)})
    return SCRAPE


# ---------------------------------------------------------------- tests

@test
def test_format():
    """the exposition parses strictly: HELP/TYPE, histograms, label escaping"""
    do_work()


@test
def test_promtool():
    """promtool check metrics is clean (where the prometheus package is installed)"""
    text = do_work()[0]
    promtool = shutil.which("promtool")
    if not promtool:
        h.skip("promtool not installed (Debian package prometheus)")
    p = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=60)
    out = (p.stdout + p.stderr).decode()
    assert p.returncode == 0 and not out.strip(), "promtool check metrics: rc %d\n%s" % (
        p.returncode, out)


@test
def test_jobs():
    """jobs: counts by state, duration by outcome, failures by code, passes by op, ratio, wait"""
    text, f, work = do_work()
    assert value(f, "slimd_jobs", state="succeeded") == 1
    assert value(f, "slimd_jobs", state="failed") == 1
    assert value(f, "slimd_job_duration_seconds", "slimd_job_duration_seconds_count",
                 outcome="succeeded") == 1
    assert value(f, "slimd_job_duration_seconds", "slimd_job_duration_seconds_count",
                 outcome="failed") == 1
    code = work["failed"]["error_code"]
    assert value(f, "slimd_jobs_failed_total", code=code) == 1, code
    # every code of the table is there, at zero until it happens
    codes = {l["code"] for n, l, v in f["slimd_jobs_failed_total"]["samples"]}
    assert {"NUMERIC_ERROR", "INVALID_MODEL", "OUT_OF_MEMORY", "IO_ERROR",
            "INSUFFICIENT_STORAGE"} <= codes, codes
    assert sum(v for n, l, v in f["slimd_jobs_failed_total"]["samples"]) == 1
    for op in ("prune", "quantize"):
        assert value(f, "slimd_pass_duration_seconds", "slimd_pass_duration_seconds_count",
                     op=op) == 1, op
    ratio_sum = value(f, "slimd_compression_ratio", "slimd_compression_ratio_sum")
    rep = D.get("/v1/jobs/%s/report" % work["ok"]["id"]).json
    assert abs(ratio_sum - rep["totals"]["ratio"]) < 1e-6, (ratio_sum, rep["totals"])
    assert value(f, "slimd_job_queue_wait_seconds", "slimd_job_queue_wait_seconds_count") == 2
    assert value(f, "slimd_jobs_requeued_total", reason="shutdown") == 0


@test
def test_bytes():
    """bytes in (uploads) and out (artifacts written, downloads by kind)"""
    text, f, work = do_work()
    assert value(f, "slimd_upload_bytes_total") == work["uploads"]
    assert value(f, "slimd_artifact_bytes_total") == work["art"]
    assert value(f, "slimd_download_bytes_total", kind="artifact") == work["art"] + 100
    assert value(f, "slimd_download_bytes_total", kind="model") == work["model"]


@test
def test_http():
    """requests by route template, method and status, never a raw id; latency histogram"""
    text, f, work = do_work()
    s = f["slimd_http_requests_total"]["samples"]
    routes = {l["route"] for n, l, v in s}
    for r in routes:
        assert r == "unmatched" or r.startswith("/"), r
        assert not re.search(r"(job|mdl|ds|tok)_[0-9a-f]", r), "raw id in a route label: " + r
    assert value(f, "slimd_http_requests_total", route="/v1/jobs/{id}/artifact", method="GET",
                 code="206") == 1
    assert value(f, "slimd_http_requests_total", route="/v1/jobs/{id}", method="GET",
                 code="404") >= 1
    assert value(f, "slimd_http_requests_total", route="/v1/jobs", method="PUT",
                 code="405") == 1
    assert value(f, "slimd_http_requests_total", route="unmatched", method="GET",
                 code="404") == 1
    assert value(f, "slimd_http_requests_total", route="/v1/models", method="POST",
                 code="201") == 2
    n = value(f, "slimd_http_request_duration_seconds",
              "slimd_http_request_duration_seconds_count", route="/v1/jobs/{id}/artifact",
              method="GET")
    assert n == 2, n


def du_bytes(path):
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            total += st.st_blocks * 512
    return total


@test
def test_process_and_data_dir():
    """process_* families from /proc/<pid>; slimd_data_dir_bytes against a walk of the dir"""
    text, f, work = do_work()
    for fam in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                "process_start_time_seconds"):
        assert fam in f, fam
    pid = D.proc.pid
    fds = len(os.listdir("/proc/%d/fd" % pid))
    got = value(f, "process_open_fds")
    assert abs(got - fds) <= 8, (got, fds)
    with open("/proc/%d/limits" % pid) as lim:
        soft = [l.split()[3] for l in lim if l.startswith("Max open files")][0]
    assert value(f, "process_max_fds") == float(soft), soft
    with open("/proc/%d/status" % pid) as st:
        rss_kb = [int(l.split()[1]) for l in st if l.startswith("VmRSS:")][0]
    rss = value(f, "process_resident_memory_bytes")
    assert 0.5 * rss_kb * 1024 <= rss <= 2 * rss_kb * 1024, (rss, rss_kb)
    start = value(f, "process_start_time_seconds")
    import time
    assert time.time() - 3600 < start <= time.time(), start
    assert value(f, "process_cpu_seconds_total") > 0
    d = value(f, "slimd_data_dir_bytes")
    walked = du_bytes(D.data_dir)
    assert d > 0 and abs(d - walked) <= max(1 << 20, 0.1 * walked), (d, walked)


@test
def test_requeue_after_crash():
    """kill -9 while a job runs: the next start re-queues it (reason recovery)"""
    do_work()
    big = h.safetensors_bytes([h.t_f32("w", [1024, 1024], 7)])
    mid = D.upload(big, name="big").json["id"]
    jid = D.submit({"model": mid, "passes": [
        {"op": "lowrank", "rank": 512, "algorithm": "exact"}]}).json["id"]
    D.wait_job(jid, states=("running", "succeeded", "failed", "canceled"), timeout=60,
               interval=0.01)
    job = D.get("/v1/jobs/" + jid).json
    if job["state"] != "running":
        h.skip("the job ended before it could be killed (state %s)" % job["state"])
    D.proc.kill()
    D.proc.wait(10)
    D.kill()
    D.start()
    r = D.get("/metrics")
    f = parse(r.body.decode())
    assert value(f, "slimd_jobs_requeued_total", reason="recovery") == 1, r.body.decode()[-3000:]
    job = D.wait_job(jid, timeout=300)
    assert job["state"] == "succeeded", job
    # the runner counts a job in /metrics just after its row says
    # succeeded: a reader that saw the row may ask a moment too early
    deadline = time.time() + 10
    while True:
        f = parse(D.get("/metrics").body.decode())
        n = value(f, "slimd_job_duration_seconds", "slimd_job_duration_seconds_count",
                  outcome="succeeded")
        if n == 1 or time.time() > deadline:
            break
        time.sleep(0.05)
    assert n == 1, n


if __name__ == "__main__":
    h.run(setup, teardown, daemons=lambda: [D])
