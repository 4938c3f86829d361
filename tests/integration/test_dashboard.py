#!/usr/bin/env python3
"""test_dashboard.py - the dashboard page in a real browser, under its CSP.

Headless Chromium (skipped when it is not installed: it is no build
dependency) is driven through the DevTools protocol over a WebSocket
(a minimal client below: the standard library has none).  Checked:

  * --auth none: the page fills its job and model tables from the API
    and its report link opens report.html; no CSP violation is logged,
    so the hashes in the Content-Security-Policy match the inline script
    and style the browser sees;
  * --auth token: the page asks for a token (the API answered 401),
    then with the token fills its tables and shows a report in place
    (a link cannot carry the Authorization header);
  * the CSP holds: a script injected into the page's DOM does not run,
    and the browser reports the violation.
"""

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.request

import slimd_harness as h
from slimd_harness import test

BROWSER = None


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
            [BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--remote-debugging-port=%d" % port,
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
            v = self.js(expr)
            if v:
                return v
            time.sleep(0.1)
        raise AssertionError("not true after %ds: %s" % (timeout, expr))

    def goto(self, url):
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

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


def model_and_job(d, headers=None):
    data = h.safetensors_bytes([h.t_f32("w.weight", [8, 16], 3), h.t_f32("w.bias", [8], 4)])
    hdrs = dict(headers or {})
    hdrs["Content-Type"] = "application/octet-stream"
    r = d.request("POST", "/v1/models?name=page-model", body=data, headers=hdrs)
    assert r.status == 201, r
    mid = r.json["id"]
    r = d.post_json("/v1/jobs", {"model": mid, "passes": [{"op": "quantize", "dtype": "int8"}]},
                    headers=headers)
    assert r.status == 202, r
    jid = r.json["id"]
    deadline = time.time() + 30
    while d.get("/v1/jobs/" + jid, headers=headers).json["state"] != "succeeded":
        assert time.time() < deadline, "job did not succeed"
        time.sleep(0.05)
    return mid, jid


def csp_violations(msgs):
    return [m for m in msgs if "Content Security Policy" in m or "Refused to" in m]


def setup():
    global BROWSER
    BROWSER = find_browser()


@test
def test_dashboard_without_auth():
    """--auth none: the tables fill, the report link opens report.html, and no CSP violation is logged"""
    if not BROWSER:
        h.skip("no chromium installed (apt-get install chromium)")
    d = h.Daemon(name="page").start()
    b = Browser()
    try:
        mid, jid = model_and_job(d)
        b.goto(d.base + "/")
        b.wait_for("document.getElementById('models').innerText.includes('%s')" % mid)
        b.wait_for("document.getElementById('jobs').innerText.includes('%s')" % jid)
        assert b.js("document.getElementById('login').hidden") is True
        assert "succeeded" in b.js("document.getElementById('jobs').innerText")
        assert b.js("getComputedStyle(document.body).marginLeft") != "0px", "style blocked"
        b.js("document.querySelector('#jobs a').click()")
        b.wait_for("location.pathname.endsWith('/report.html')")
        b.wait_for("document.body.innerText.includes('Report for %s')" % jid)
        assert b.js("getComputedStyle(document.body).marginLeft") != "0px", "report style blocked"
        assert b.js("document.querySelectorAll('svg rect').length") >= 1
        assert not csp_violations(b.messages()), b.messages()
    finally:
        b.quit()
        d.stop()


@test
def test_dashboard_with_token_and_csp_holds():
    """--auth token: the page asks for a token, then fills its tables and shows a report in place; an injected script does not run"""
    if not BROWSER:
        h.skip("no chromium installed (apt-get install chromium)")
    data = h.make_tmpdir()
    p = subprocess.run([h.slimd_bin(), "token", "create", "--scope", "read,submit", "--name",
                        "page", "--data-dir", data], capture_output=True)
    assert p.returncode == 0, p.stderr
    tok = p.stdout.decode().strip()
    d = h.Daemon(data_dir=data, name="page-token", args=["--auth", "token"]).start()
    b = Browser()
    try:
        mid, jid = model_and_job(d, {"Authorization": "Bearer " + tok})
        b.goto(d.base + "/")
        b.wait_for("document.getElementById('login').hidden === false")
        assert mid not in b.js("document.body.innerText")
        b.js("document.getElementById('token').value = '%s';"
             "document.getElementById('login').requestSubmit()" % tok)
        b.wait_for("document.getElementById('models').innerText.includes('%s')" % mid)
        b.wait_for("document.getElementById('jobs').innerText.includes('%s')" % jid)
        assert b.js("document.getElementById('login').hidden") is True
        b.js("document.querySelector('#jobs a').click()")
        b.wait_for("document.getElementById('report').innerText.includes('Report for %s')" % jid)
        assert b.js("location.pathname") == "/", "the report should open in place"
        assert not csp_violations(b.messages()), b.messages()

        # the policy holds: an injected inline script is refused
        b.js("window.injected = 0; const s = document.createElement('script');"
             "s.textContent = 'window.injected = 1'; document.body.appendChild(s); 1")
        time.sleep(0.3)
        assert b.js("window.injected") == 0, "an injected script ran"
        assert csp_violations(b.messages()), "no CSP violation was reported: %s" % b.messages()
    finally:
        b.quit()
        d.stop()


if __name__ == "__main__":
    h.run(setup=setup)
