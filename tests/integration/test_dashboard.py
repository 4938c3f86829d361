#!/usr/bin/env python3
"""test_dashboard.py - the dashboard and the job pages in a real browser.

Headless Chromium (Debian's chromium, a test dependency that
scripts/slimd-test installs; skipped when it is missing) is driven
through the DevTools protocol over a WebSocket (a minimal client below:
the standard library has none), against a daemon with real jobs: three
that succeeded on a model with transformer-length tensor names (and one
named <script>alert(1)</script>), one that failed on NaN weights.
Checked, in the DOM after the page's script ran:

  * the dashboard: job rows with their model's name, state, ratio (the
    report's), the failure's error code; the models with name, size and
    sha256; the state filter and the paging totals; delete (or, on a
    daemon without DELETE /v1/jobs/{id}, a message that says so); the
    banner when the daemon stops answering; no CSP violation (so the
    hashes in the policy match the inline script and style), and no
    horizontal scrolling at phone width;
  * a report page: the totals, a chart row and a table row per tensor,
    chart labels that do not overlap, sorting, the hostile tensor name
    shown as text and never run;
  * a failed job's page: its error code, message and spec, as HTML;
  * the comparison of two jobs, and its 400s naming the parameter;
  * --auth token: the page asks for a token, then fills its tables and
    shows a report in place (a link cannot carry the Authorization
    header); an injected script does not run.

Screenshots of the dashboard (desktop and phone width), a report page,
a failed job's page and a comparison go to $SLIMD_TEST_OUTPUT, default
test-output/dashboard/ in the build tree (docs/img/ holds two of them).
"""

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request

import slimd_harness as h
from slimd_harness import test

BROWSER = None
OUT = os.environ.get("SLIMD_TEST_OUTPUT") or os.path.join(
    os.environ.get("SLIMD_BUILDDIR", "."), "test-output", "dashboard")


def find_browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames,
    client frames masked, no fragmentation on send."""

    def __init__(self, url, timeout=30):
        assert url.startswith("ws://"), url
        hostport, path = url[5:].split("/", 1)
        host, port = hostport.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET /%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n" % (path, hostport, key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, "websocket handshake: connection closed"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "websocket closed"
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        self.sock.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)
            message += payload
            if b0 & 0x80:
                return message.decode()

    def close(self):
        self.sock.close()


class Browser:
    """One headless Chromium with one page; DevTools commands and the
    events they produced (console and log entries)."""

    def __init__(self):
        self.dir = h.make_tmpdir("slimd-chromium-")
        port = h.free_port()
        self.proc = subprocess.Popen(
            [BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", "--hide-scrollbars",
             "--remote-debugging-port=%d" % port,
             "--user-data-dir=" + self.dir, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        ws_url = None
        while time.time() < deadline and not ws_url:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/json" % port, timeout=2) as r:
                    pages = [p for p in json.load(r) if p.get("type") == "page"]
                if pages:
                    ws_url = pages[0]["webSocketDebuggerUrl"]
            except OSError:
                time.sleep(0.2)
        if not ws_url:
            self.quit()
            raise h.HarnessError("chromium's DevTools did not come up")
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(domain + ".enable")

    def call(self, method, **params):
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                assert "error" not in msg, (method, msg)
                return msg.get("result", {})
            self.events.append(msg)

    def js(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, (expr, r)
        return r["result"].get("value")

    def wait_for(self, expr, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                v = self.js(expr)
            except AssertionError as e:   # the page navigated under the evaluation
                if "navigated" not in str(e) and "context" not in str(e):
                    raise
                v = None
            if v:
                return v
            time.sleep(0.1)
        raise AssertionError("not true after %ds: %s" % (timeout, expr))

    def goto(self, url):
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def size(self, width, height, mobile=False):
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=mobile)

    def screenshot(self, name, width, max_height=2400):
        """Saves the page, up to max_height CSS pixels of it, as OUT/name."""
        height = min(max_height, int(self.js("document.documentElement.scrollHeight")))
        self.size(width, height, mobile=width < 500)
        time.sleep(0.2)
        r = self.call("Page.captureScreenshot", format="png")
        os.makedirs(OUT, exist_ok=True)
        path = os.path.join(OUT, name)
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))
        return path

    def dialogs(self):
        self.js("1")
        return [e for e in self.events if e.get("method") == "Page.javascriptDialogOpening"]

    def messages(self):
        """Console and log texts seen so far (CSP violations land here)."""
        self.js("1")       # drains events queued before this point
        out = []
        for e in self.events:
            if e.get("method") == "Log.entryAdded":
                out.append(e["params"]["entry"].get("text", ""))
            elif e.get("method") == "Runtime.consoleAPICalled":
                out += [str(a.get("value", a.get("description", "")))
                        for a in e["params"].get("args", [])]
            elif e.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(e["params"]["exceptionDetails"])[:300])
        return out

    def quit(self):
        if getattr(self, "ws", None):
            try:       # a clean shutdown: chromium reaps its own helpers
                self.ws.send(json.dumps({"id": 0, "method": "Browser.close"}))
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


LONG = "model.encoder.block.11.layer.1.DenseReluDense.wo.weight_and_a_suffix_that_makes_it_long"
HOSTILE = "<script>alert(1)</script>"
EVIL_NAME = "<img src=x id=pwn>"


def llm_tensors():
    names = ["model.embed_tokens.weight"]
    for i in (0, 27):
        names += ["model.layers.%d.self_attn.%s_proj.weight" % (i, p) for p in "qkvo"]
        names += ["model.layers.%d.mlp.%s_proj.weight" % (i, p) for p in ("gate", "up", "down")]
        names.append("model.layers.%d.input_layernorm.weight" % i)
    names += [LONG, HOSTILE, "lm_head.weight"]
    return [h.t_f32(n, [16] if "norm" in n else [32, 64], i + 1) for i, n in enumerate(names)]


class Fixture:
    """One daemon with the jobs every page test reads."""

    def __init__(self, headers=None, name="page"):
        self.d = None
        self.headers = dict(headers or {})
        self.name = name
        self.names = True      # the daemon takes job "name" and "labels"

    def start(self, **kw):
        self.d = h.Daemon(name=self.name, **kw).start()
        return self

    def upload(self, data, name):
        hdrs = dict(self.headers)
        hdrs["Content-Type"] = "application/octet-stream"
        r = self.d.request("POST", "/v1/models?name=" + name, body=data, headers=hdrs)
        assert r.status in (200, 201), r
        return r.json

    def submit(self, spec, name=None, labels=None):
        if self.names and name:
            full = dict(spec, name=name, labels=labels or {})
            r = self.d.post_json("/v1/jobs", full, headers=self.headers)
            text = json.dumps(r.json)
            if r.status == 400 and ("name" in text or "labels" in text):
                self.names = False       # a daemon before job names
            else:
                assert r.status == 202, r
                return r.json["id"]
        r = self.d.post_json("/v1/jobs", spec, headers=self.headers)
        assert r.status == 202, r
        return r.json["id"]

    def wait(self, jid):
        deadline = time.time() + 60
        while True:
            job = self.d.get("/v1/jobs/" + jid, headers=self.headers).json
            if job["state"] in ("succeeded", "failed", "canceled"):
                return job
            assert time.time() < deadline, job
            time.sleep(0.05)

    def build(self):
        self.model = self.upload(h.safetensors_bytes(llm_tensors()), "tiny-llama")
        mid = self.model["id"]
        self.a = self.submit({"model": mid, "passes": [{"op": "prune", "sparsity": 0.5},
                                                       {"op": "quantize", "dtype": "int8"}]},
                             "nightly-int8", {"team": "<i>vision</i>", "ci": "nightly"})
        self.b = self.submit({"model": mid, "passes": [{"op": "lowrank", "rank": 4}]},
                             "lowrank-r4", {"team": "vision"})
        self.c = self.submit({"model": mid, "passes": [{"op": "cluster", "clusters": 16}]},
                             "cluster-16", {"team": "speech"})
        w = h.gaussian(64, 5)
        w[17] = float("nan")
        self.bad_model = self.upload(h.safetensors_bytes([h.Tensor("w", "F32", [8, 8],
                                                                   h.f32_bytes(w))]), "nan-model")
        self.bad = self.submit({"model": self.bad_model["id"],
                                "passes": [{"op": "quantize", "dtype": "int8"}]}, "broken")
        for j in (self.a, self.b, self.c):
            assert self.wait(j)["state"] == "succeeded", j
        self.bad_job = self.wait(self.bad)
        assert self.bad_job["state"] == "failed", self.bad_job
        self.report = {j: self.d.get("/v1/jobs/%s/report" % j, headers=self.headers).json
                       for j in (self.a, self.b, self.c)}
        return self


F = None


def csp_violations(msgs):
    return [m for m in msgs if "Content Security Policy" in m or "Refused to" in m]


def setup():
    global BROWSER, F
    BROWSER = find_browser()
    if BROWSER:
        F = Fixture().start(workers=2).build()


def need_browser():
    if not BROWSER:
        h.skip("no chromium installed (scripts/slimd-test installs it; apt-get install chromium)")


def row_text(b, jid):
    return b.js("(document.querySelector('#jobs tr[data-id=\"%s\"]') || {}).innerText || ''" % jid)


@test
def test_dashboard_lists_jobs_and_models():
    """the dashboard shows jobs (model name, state, ratio, error code) and models (size, sha256), filters and pages; no CSP violation"""
    need_browser()
    b = Browser()
    try:
        b.size(1280, 900)
        b.goto(F.d.base + "/")
        b.wait_for("document.querySelectorAll('#jobs tbody tr[data-id]').length === 4")
        b.wait_for("document.querySelector('#jobs tr[data-id=\"%s\"] td.ratio').innerText !== ''"
                   % F.a)
        for j in (F.a, F.b, F.c):
            want = "%.2f\u00d7" % F.report[j]["totals"]["ratio"]
            got = b.js("document.querySelector('#jobs tr[data-id=\"%s\"] td.ratio').innerText" % j)
            assert got == want, (j, got, want)
            assert "tiny-llama" in row_text(b, j) and "succeeded" in row_text(b, j)
        bad = row_text(b, F.bad)
        assert "failed" in bad and "NUMERIC_ERROR" in bad and "nan-model" in bad, bad
        models = b.js("document.getElementById('models').innerText")
        assert F.model["sha256"] in b.js("document.getElementById('models').textContent")
        assert "tiny-llama" in models and "nan-model" in models, models
        assert b.js("document.getElementById('page').innerText") == "1\u20134 of 4"
        assert b.js("document.getElementById('login').hidden") is True
        assert b.js("document.getElementById('down').hidden") is True
        if F.names:    # names and labels, as text
            assert "nightly-int8" in row_text(b, F.a), row_text(b, F.a)
            assert "team:<i>vision</i>" in row_text(b, F.a), row_text(b, F.a)
            assert b.js("document.querySelectorAll('#jobs i').length") == 0
        # links: the report page and the artifact of each succeeded job
        hrefs = b.js("Array.from(document.querySelectorAll('#jobs a')).map(a => a.pathname)")
        assert "/v1/jobs/%s/report.html" % F.a in hrefs and "/v1/jobs/%s/artifact" % F.a in hrefs
        assert "/v1/jobs/%s/report.html" % F.bad in hrefs
        assert "/v1/jobs/%s/artifact" % F.bad not in hrefs
        b.screenshot("dashboard.png", 1280)
        assert not csp_violations(b.messages()), b.messages()

        # state filter, then paging with totals
        b.size(1280, 900)
        b.js("{const s = document.getElementById('f-state'); s.value = 'failed';"
             "s.dispatchEvent(new Event('change'))}")
        b.wait_for("document.getElementById('page').innerText === '1\u20131 of 1'")
        assert b.js("document.querySelectorAll('#jobs tbody tr[data-id]').length") == 1
        b.js("{const s = document.getElementById('f-state'); s.value = '';"
             "s.dispatchEvent(new Event('change'));"
             "const l = document.getElementById('f-limit'); l.value = '10';"
             "l.dispatchEvent(new Event('change'))}")
        b.wait_for("document.getElementById('page').innerText === '1\u20134 of 4'")
        assert b.js("document.getElementById('next').disabled") is True
        # the label filter, done by the daemon (GET /v1/jobs?label=k:v) when it can
        b.js("{const l = document.getElementById('f-label'); l.value = 'team:vision';"
             "l.dispatchEvent(new Event('change'))}")
        b.wait_for("document.querySelectorAll('#jobs tbody tr[data-id]').length === "
                   + ("1" if F.names else "0"))
        if F.names:
            assert b.js("document.querySelector('#jobs tbody tr').dataset.id") == F.b
            assert b.js("document.getElementById('page').innerText") == "1\u20131 of 1"
        b.js("{const l = document.getElementById('f-label'); l.value = '';"
             "l.dispatchEvent(new Event('change'))}")
        b.wait_for("document.querySelectorAll('#jobs tbody tr[data-id]').length === 4")

        # phone width: everything fits across, nothing scrolls sideways
        b.size(390, 844, mobile=True)
        b.goto(F.d.base + "/")
        b.wait_for("document.querySelectorAll('#jobs tbody tr[data-id]').length === 4")
        b.wait_for("document.querySelector('#jobs tr[data-id=\"%s\"] td.ratio').innerText !== ''"
                   % F.a)
        assert b.js("document.querySelector('meta[name=viewport]') !== null")
        width = b.js("document.documentElement.scrollWidth")
        assert width <= 390, "the phone layout scrolls sideways: %s px" % width
        wide = b.js("Array.from(document.querySelectorAll('#jobs tbody tr, #models tbody tr'))"
                    ".filter(r => r.scrollWidth > r.clientWidth + 1 || r.getBoundingClientRect()"
                    ".right > document.documentElement.clientWidth).map(r => r.innerText)")
        assert not wide, "rows wider than the phone: %s" % wide
        b.screenshot("dashboard-phone.png", 390)
        assert not csp_violations(b.messages()), b.messages()
    finally:
        b.quit()


def check_charts(b):
    """No two texts of a chart overlap, and every text fits its chart."""
    for chart in ("chart-error", "chart-bpw", "chart-sparsity", "chart-bytes"):
        bad = b.js("""(() => {
            const svg = document.querySelector('#%s svg'), box = svg.getBoundingClientRect();
            const r = Array.from(svg.querySelectorAll('text'), t => t.getBoundingClientRect());
            const out = [];
            for (let i = 0; i < r.length; i++) {
              if (r[i].right > box.right + 1 || r[i].left < box.left - 1) out.push('wide ' + i);
              for (let j = i + 1; j < r.length; j++)
                if (r[i].left < r[j].right && r[j].left < r[i].right &&
                    r[i].top < r[j].bottom && r[j].top < r[i].bottom) out.push(i + '/' + j);
            }
            return out; })()""" % chart)
        assert not bad, (chart, b.js("innerWidth"), bad)


@test
def test_report_page():
    """a report page: totals, a chart and a table row per tensor, labels that do not overlap, sorting, a hostile tensor name shown as text"""
    need_browser()
    rep = F.report[F.a]
    n = len(rep["tensors"])
    r = F.d.get("/v1/jobs/%s/report.html" % F.a)
    assert r.status == 200 and r.header("Content-Type").startswith("text/html"), r
    assert b"<script>alert(1)</script>" not in r.body
    b = Browser()
    try:
        b.size(1280, 900)
        b.goto(F.d.base + "/v1/jobs/%s/report.html" % F.a)
        assert b.js("document.getElementById('ratio').innerText") == "%.2f" % rep["totals"]["ratio"]
        assert F.model["sha256"] in b.js("document.querySelector('.msha').innerText")
        assert b.js("document.querySelectorAll('#tensors tbody tr').length") == n
        names = b.js("Array.from(document.querySelectorAll('#tensors tbody td.name'), "
                     "td => td.textContent)")
        assert names == [t["name"] for t in rep["tensors"]], names
        assert HOSTILE in names
        assert b.js("document.scripts.length") == 1, "a tensor name became a script"
        assert not b.dialogs(), "alert() ran"
        spec = json.loads(b.js("document.querySelector('pre.spec').textContent"))
        assert spec["passes"][1] == {"op": "quantize", "dtype": "int8"}, spec
        for chart in ("chart-error", "chart-bpw", "chart-sparsity", "chart-bytes"):
            assert b.js("document.querySelectorAll('#%s svg > g').length" % chart) == n, chart
        check_charts(b)
        b.size(390, 844, mobile=True)
        b.goto(F.d.base + "/v1/jobs/%s/report.html" % F.a)
        check_charts(b)
        assert b.js("document.documentElement.scrollWidth") <= 390
        b.size(1280, 900)
        b.goto(F.d.base + "/v1/jobs/%s/report.html" % F.a)
        # the long name is cut from the left; its <title> holds all of it
        label = b.js("Array.from(document.querySelectorAll('#chart-error g')).find("
                     "g => g.querySelector('title').textContent === '%s')"
                     ".querySelector('text').textContent" % LONG)
        assert label.startswith("\u2026") and LONG.endswith(label[1:]), label
        # sort by relative error, both ways
        col = b.js("Array.from(document.querySelectorAll('#tensors thead th'))"
                   ".findIndex(th => th.textContent === 'rel. error')")
        b.js("document.querySelectorAll('#tensors thead th')[%d].querySelector('button').click()"
             % col)
        vals = b.js("Array.from(document.querySelectorAll('#tensors tbody tr'), "
                    "r => parseFloat(r.cells[%d].dataset.v))" % col)
        assert vals == sorted(vals), vals
        b.js("document.querySelectorAll('#tensors thead th')[%d].querySelector('button').click()"
             % col)
        vals = b.js("Array.from(document.querySelectorAll('#tensors tbody tr'), "
                    "r => parseFloat(r.cells[%d].dataset.v))" % col)
        assert vals == sorted(vals, reverse=True), vals
        links = b.js("Array.from(document.querySelectorAll('nav a'), a => a.pathname)")
        assert "/" in links and "/v1/jobs/%s/report" % F.a in links, links
        assert "/v1/jobs/%s/artifact" % F.a in links, links
        b.goto(F.d.base + "/v1/jobs/%s/report.html" % F.a)
        b.screenshot("report.png", 1280, max_height=2000)
        b.screenshot("report-phone.png", 390, max_height=2400)
        assert not csp_violations(b.messages()), b.messages()
    finally:
        b.quit()


@test
def test_failed_job_page():
    """a failed job's page explains the failure (code, message, stage, spec) instead of a JSON 409; a model name that is markup stays text"""
    need_browser()
    r = F.d.get("/v1/jobs/%s/report.html" % F.bad)
    assert r.status == 200 and r.header("Content-Type").startswith("text/html"), r
    h.check_error(F.d.get("/v1/jobs/%s/report" % F.bad), 409, "CONFLICT")
    b = Browser()
    try:
        b.size(1280, 800)
        b.goto(F.d.base + "/v1/jobs/%s/report.html" % F.bad)
        text = b.js("document.getElementById('failure').innerText")
        assert "NUMERIC_ERROR" in text and "NaN" in text, text
        stage = F.bad_job["stage"]     # kept when a job fails: where it failed
        assert stage and "stage " + stage in text, (stage, text)
        assert "nan-model" in b.js("document.querySelector('.sub').innerText")
        spec = json.loads(b.js("document.querySelector('pre.spec').textContent"))
        assert spec["passes"] == [{"op": "quantize", "dtype": "int8"}], spec
        assert b.js("document.querySelector('meta[http-equiv=refresh]')") is None
        b.screenshot("failed.png", 1280)
        assert not csp_violations(b.messages()), b.messages()
    finally:
        b.quit()
    h.check_error(F.d.get("/v1/jobs/job_0000000000000000/report.html"), 404, "NOT_FOUND")

    # a model whose name is markup: text on its job's page and on the dashboard
    evil = F.upload(h.safetensors_bytes([h.t_f32("e.weight", [8, 8], 7)]),
                    urllib.parse.quote(EVIL_NAME))
    assert evil["name"] == EVIL_NAME, evil
    ej = F.submit({"model": evil["id"], "passes": [{"op": "quantize", "dtype": "int8"}]})
    assert F.wait(ej)["state"] == "succeeded"
    page = F.d.get("/v1/jobs/%s/report.html" % ej).body.decode()
    assert EVIL_NAME not in page and "&lt;img src=x id=pwn&gt;" in page
    b = Browser()
    try:
        b.goto(F.d.base + "/")
        b.wait_for("document.getElementById('models').innerText.includes('%s')" % EVIL_NAME)
        b.wait_for("(document.querySelector('#jobs tr[data-id=\"%s\"]') || {}).innerText"
                   "?.includes('%s')" % (ej, EVIL_NAME))
        assert b.js("document.getElementById('pwn')") is None, "a model name became markup"
        b.goto(F.d.base + "/v1/jobs/%s/report.html" % ej)
        assert EVIL_NAME in b.js("document.querySelector('.sub').innerText")
        assert b.js("document.getElementById('pwn')") is None, "a model name became markup"
    finally:
        b.quit()


@test
def test_compare_page():
    """two jobs on one model side by side; 400 naming the parameter for a missing id or another model"""
    need_browser()
    ra, rb = F.report[F.a], F.report[F.b]
    r = F.d.get("/v1/jobs/compare?a=%s&b=%s" % (F.a, F.b))
    assert r.status == 200 and r.header("Content-Type").startswith("text/html"), r
    h.check_error(F.d.get("/v1/jobs/compare?b=%s" % F.b), 400, "INVALID_ARGUMENT", "a:")
    h.check_error(F.d.get("/v1/jobs/compare?a=%s" % F.a), 400, "INVALID_ARGUMENT", "b:")
    h.check_error(F.d.get("/v1/jobs/compare?a=%s&b=%s" % (F.a, F.bad)), 409, "CONFLICT", "b:")
    h.check_error(F.d.get("/v1/jobs/compare?a=%s&b=job_0000000000000000" % F.a), 404,
                  "NOT_FOUND", "b:")
    other = F.upload(h.safetensors_bytes([h.t_f32("x.weight", [16, 16], 9)]), "other")
    jo = F.submit({"model": other["id"], "passes": [{"op": "quantize", "dtype": "int8"}]})
    assert F.wait(jo)["state"] == "succeeded"
    h.check_error(F.d.get("/v1/jobs/compare?a=%s&b=%s" % (F.a, jo)), 400, "INVALID_ARGUMENT",
                  "b:")
    b = Browser()
    try:
        b.size(1280, 900)
        # from the dashboard: pick two jobs, compare
        b.goto(F.d.base + "/")
        b.wait_for("document.querySelectorAll('#jobs tbody tr[data-id]').length >= 4")
        for j in (F.a, F.b):
            b.js("document.querySelector('#jobs tr[data-id=\"%s\"] input').click()" % j)
        assert b.js("document.getElementById('compare').disabled") is False
        b.js("document.getElementById('compare').click()")
        b.wait_for("location.pathname === '/v1/jobs/compare' && document.readyState === 'complete'")
        totals = b.js("document.getElementById('totals').innerText")
        assert "%.3f" % ra["totals"]["ratio"] in totals and "%.3f" % rb["totals"]["ratio"] in totals
        assert b.js("document.querySelectorAll('#tensors tbody tr').length") == len(ra["tensors"])
        assert b.js("document.scripts.length") == 1
        b.screenshot("compare.png", 1280, max_height=1600)
        assert not csp_violations(b.messages()), b.messages()
    finally:
        b.quit()


SIGN_EXP = bytes(0x3F if b < 128 else 0xBF for b in range(256))
MANT_HI = bytes(0x80 | (b & 0x7F) for b in range(256))


def full_rank(name, n):
    """An n x n F32 tensor uniform in +-[1, 2): full rank, so an exact SVD takes its time."""
    r = bytearray(os.urandom(4 * n * n))
    r[3::4] = r[3::4].translate(SIGN_EXP)
    r[2::4] = r[2::4].translate(MANT_HI)
    return h.Tensor(name, "F32", [n, n], bytes(r))


@test
def test_running_queued_and_canceled_pages():
    """a running job's page shows progress and refreshes; a queued one says so; canceled ones say when"""
    need_browser()
    f = Fixture(name="page-run").start(workers=1)
    mid = f.upload(h.safetensors_bytes([full_rank("layers.0.weight", 2048)]), "big")["id"]
    slow = {"model": mid, "passes": [{"op": "lowrank", "rank": 256, "algorithm": "exact"}]}
    run = f.submit(slow)
    queued = f.submit(slow)
    deadline = time.time() + 60
    while f.d.get("/v1/jobs/" + run).json["state"] != "running":
        assert time.time() < deadline
        time.sleep(0.05)
    b = Browser()
    try:
        b.size(1280, 800)
        b.goto(f.d.base + "/v1/jobs/%s/report.html" % run)
        if f.d.get("/v1/jobs/" + run).json["state"] == "running":
            assert b.js("document.getElementById('running') !== null")
            assert b.js("document.querySelector('#running progress') !== null")
            assert b.js("document.querySelector('meta[http-equiv=refresh]').content") == "2"
            b.screenshot("running.png", 1280, max_height=800)
        b.goto(f.d.base + "/v1/jobs/%s/report.html" % queued)
        assert "Queued" in b.js("document.getElementById('queued').innerText")
        # the dashboard cancels the queued job
        b.goto(f.d.base + "/")
        b.wait_for("document.querySelector('#jobs tr[data-id=\"%s\"] button') !== null" % queued)
        assert b.js("document.querySelector('#jobs tr[data-id=\"%s\"] button').innerText"
                    % queued) == "cancel"
        b.js("document.querySelector('#jobs tr[data-id=\"%s\"] button').click()" % queued)
        assert f.wait(queued)["state"] == "canceled"
        b.wait_for("(document.querySelector('#jobs tr[data-id=\"%s\"]') || {}).innerText"
                   ".includes('canceled')" % queued)
        b.goto(f.d.base + "/v1/jobs/%s/report.html" % queued)
        assert "before it started" in b.js("document.getElementById('canceled').innerText")
        assert b.js("document.querySelector('meta[http-equiv=refresh]')") is None
        r = f.d.request("POST", "/v1/jobs/%s/cancel" % run)
        assert r.status in (200, 409), r
        if f.wait(run)["state"] == "canceled":
            b.goto(f.d.base + "/v1/jobs/%s/report.html" % run)
            assert "It ran for" in b.js("document.getElementById('canceled').innerText")
        assert not csp_violations(b.messages()), b.messages()
    finally:
        b.quit()
        f.d.stop()


@test
def test_delete_and_banner():
    """delete from the dashboard (or a message when the daemon has no DELETE); a banner when the daemon stops answering"""
    need_browser()
    f = Fixture(name="page-down").start(workers=1)
    mid = f.upload(h.safetensors_bytes([h.t_f32("x.weight", [16, 16], 9)]), "small")["id"]
    j1 = f.submit({"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}]})
    j2 = f.submit({"model": mid, "passes": [{"op": "quantize", "dtype": "int4"}]})
    f.wait(j1)
    f.wait(j2)
    b = Browser()
    try:
        b.size(1280, 900)
        b.goto(f.d.base + "/")
        b.wait_for("document.querySelectorAll('#jobs tbody tr[data-id]').length === 2")
        b.js("window.confirm = () => true;"
             "document.querySelector('#jobs tr[data-id=\"%s\"] button.danger').click()" % j1)
        b.wait_for("document.getElementById('jobs-msg').innerText !== ''")
        m = b.js("document.getElementById('jobs-msg').innerText")
        gone = f.d.get("/v1/jobs/" + j1).status == 404
        if gone:       # the daemon deletes jobs: the row goes
            assert "deleted" in m, m
            b.wait_for("!document.querySelector('#jobs tr[data-id=\"%s\"]')" % j1)
        else:          # it does not: the page says so, and keeps the job
            assert "cannot delete" in m, m
        f.d.stop()
        b.wait_for("document.getElementById('down').hidden === false", timeout=20)
        assert "not answering" in b.js("document.getElementById('down').innerText")
        b.screenshot("daemon-down.png", 1280, max_height=900)
    finally:
        b.quit()


@test
def test_dashboard_with_token_and_csp_holds():
    """--auth token: the page asks for a token, then fills its tables and shows a report in place; an injected script does not run"""
    need_browser()
    data = h.make_tmpdir()
    p = subprocess.run([h.slimd_bin(), "token", "create", "--scope", "read,submit", "--name",
                        "page", "--data-dir", data] + h.store_flags(data), capture_output=True)
    assert p.returncode == 0, p.stderr
    tok = p.stdout.decode().strip()
    f = Fixture({"Authorization": "Bearer " + tok}, name="page-token")
    f.start(data_dir=data, args=["--auth", "token"])
    mid = f.upload(h.safetensors_bytes([h.t_f32("w.weight", [8, 16], 3),
                                        h.t_f32("w.bias", [8], 4)]), "page-model")["id"]
    jid = f.submit({"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}]})
    assert f.wait(jid)["state"] == "succeeded"
    b = Browser()
    try:
        b.goto(f.d.base + "/")
        b.wait_for("document.getElementById('login').hidden === false")
        assert mid not in b.js("document.body.innerText")
        b.js("document.getElementById('token').value = '%s';"
             "document.getElementById('login').requestSubmit()" % tok)
        b.wait_for("document.getElementById('models').innerText.includes('%s')" % mid)
        b.wait_for("document.getElementById('jobs').innerText.includes('%s')" % jid)
        assert b.js("document.getElementById('login').hidden") is True
        b.js("document.querySelector('#jobs a.report').click()")
        b.wait_for("(document.getElementById('view').innerText || '').includes('Report: %s')" % jid)
        assert b.js("location.pathname") == "/", "the report should open in place"
        assert b.js("document.querySelectorAll('#view #tensors tbody tr').length") == 2
        assert b.js("document.querySelector('#view #tensors th button') !== null"), "not sortable"
        assert not csp_violations(b.messages()), b.messages()

        # the policy holds: an injected inline script is refused
        b.js("window.injected = 0; const s = document.createElement('script');"
             "s.textContent = 'window.injected = 1'; document.body.appendChild(s); 1")
        time.sleep(0.3)
        assert b.js("window.injected") == 0, "an injected script ran"
        assert csp_violations(b.messages()), "no CSP violation was reported: %s" % b.messages()
    finally:
        b.quit()
        f.d.stop()


if __name__ == "__main__":
    h.run(setup=setup)
