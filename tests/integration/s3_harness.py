"""s3_harness.py - a real S3-compatible server for the blob tests: a
single-node OpenStack Swift (Debian's swift-proxy, swift-account,
swift-container, swift-object) with its s3api middleware and tempauth,
started on free loopback ports in a temp folder and stopped at exit.

Nothing of it is a system service: the rings (one replica, one device),
the configuration (swift_dir points every server at the temp folder,
mount_check = false, the device a plain folder) and the servers' logs
live in the temp folder.  The servers run in the foreground with
workers = 0 (one process each).  tempauth's user test:tester, key
"testing", is the S3 access key and secret (s3api checks SigV4 against
it).  Standard library only, as slimd_harness.py.

SwiftS3.available() says whether the packages are installed; a test
that needs the server and does not find them fails with that message
(scripts/deps.sh's TEST_DEPS installs them).

sigv4_request() is a small SigV4 client for what slimd does not do: make
the bucket, list and read objects to check what slimd stored.
"""

import datetime
import hashlib
import hmac
import http.client
import os
import shutil
import subprocess
import time
import urllib.parse

from slimd_harness import HarnessError, free_port, make_tmpdir

SWIFT_SERVERS = ("swift-proxy-server", "swift-account-server", "swift-container-server",
                 "swift-object-server")
ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
REGION = "us-east-1"

_LIVE = []


def _stop_all():
    for s in list(_LIVE):
        s.stop()


import atexit  # noqa: E402

atexit.register(_stop_all)


def sigv4_request(endpoint, method, path, body=b"", query="", headers=None,
                  access=ACCESS_KEY, secret=SECRET_KEY, region=REGION, timeout=30):
    """One SigV4-signed request to endpoint ("http://127.0.0.1:PORT");
    path already encoded ("/bucket/key"), query canonical ("a=b&c=").
    Returns (status, headers dict lower-cased, body bytes)."""
    u = urllib.parse.urlsplit(endpoint)
    host = u.netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    payload = hashlib.sha256(body).hexdigest()
    canon = "\n".join([method, path, query, "host:%s" % host,
                       "x-amz-content-sha256:%s" % payload, "x-amz-date:%s" % amz_date, "",
                       "host;x-amz-content-sha256;x-amz-date", payload])
    scope = "%s/%s/s3/aws4_request" % (date, region)
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canon.encode()).hexdigest()])
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    h = {"Host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload,
         "Authorization": "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=host;"
                          "x-amz-content-sha256;x-amz-date, Signature=%s" % (access, scope, sig)}
    h.update(headers or {})
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, path + ("?" + query if query else ""), body=body or None,
                     headers=h)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


class SwiftS3:
    """One single-node Swift with s3api on loopback.  start() returns self
    once the proxy answers an S3 request; endpoint is its URL; env() the
    variables slimd's --blobs s3:// reads."""

    @staticmethod
    def available():
        missing = [s for s in SWIFT_SERVERS + ("swift-ring-builder",) if not shutil.which(s)]
        return (not missing, "not installed: %s (Debian: apt-get install swift-proxy "
                "swift-account swift-container swift-object)" % " ".join(missing))

    def __init__(self):
        self.dir = make_tmpdir("slimd-swift-")
        self.procs = []
        self.ports = {}
        self.endpoint = None

    def _write(self, name, text):
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)

    def _ring(self, name, port):
        builder = os.path.join(self.dir, "%s.builder" % name)
        for args in (["create", "6", "1", "0"],
                     ["add", "r1z1-127.0.0.1:%d/d1" % port, "100"],
                     ["rebalance"]):
            r = subprocess.run(["swift-ring-builder", builder] + args, capture_output=True,
                               text=True)
            # rebalance exits 1 with a warning on a one-device ring; the
            # ring file is what counts
            if r.returncode not in (0, 1):
                raise HarnessError("swift-ring-builder %s %s: %s%s" % (
                    name, " ".join(args), r.stdout, r.stderr))
        if not os.path.exists(os.path.join(self.dir, "%s.ring.gz" % name)):
            raise HarnessError("swift-ring-builder made no %s ring" % name)

    def start(self, timeout=60.0):
        ok, why = self.available()
        if not ok:
            raise HarnessError(why)
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        devices = os.path.join(self.dir, "srv")
        os.makedirs(os.path.join(devices, "d1"))
        for s in ("proxy", "account", "container", "object"):
            self.ports[s] = free_port()
        self._write("swift.conf", "[swift-hash]\nswift_hash_path_suffix = slimd-test\n"
                    "swift_hash_path_prefix = slimd-test\n"
                    "[storage-policy:0]\nname = Policy-0\ndefault = yes\n")
        for s in ("account", "container", "object"):
            self._ring(s, self.ports[s])
        common = ("[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = %d\nworkers = 0\n"
                  "user = %s\nswift_dir = %s\ndevices = %s\nmount_check = false\n"
                  "log_name = %s\nlog_facility = LOG_LOCAL0\nlog_level = INFO\n"
                  "log_address = /nonexistent\nrecon_cache_path = %s\n")
        for s in ("account", "container", "object"):
            self._write("%s-server.conf" % s,
                        common % (self.ports[s], user, self.dir, devices, s, self.dir)
                        + "\n[pipeline:main]\npipeline = %s-server\n\n"
                          "[app:%s-server]\nuse = egg:swift#%s\n" % (s, s, s)
                        + ("\n[%s-replicator]\n\n[%s-updater]\n\n[%s-auditor]\n" % (s, s, s)))
        self._write("proxy-server.conf",
                    common % (self.ports["proxy"], user, self.dir, devices, "proxy", self.dir)
                    + "\n[pipeline:main]\n"
                      "pipeline = catch_errors gatekeeper proxy-logging cache listing_formats "
                      "s3api tempauth copy slo dlo proxy-logging proxy-server\n\n"
                      "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\n"
                      "[filter:catch_errors]\nuse = egg:swift#catch_errors\n\n"
                      "[filter:gatekeeper]\nuse = egg:swift#gatekeeper\n\n"
                      "[filter:proxy-logging]\nuse = egg:swift#proxy_logging\n\n"
                      "[filter:cache]\nuse = egg:swift#memcache\n"
                      "memcache_servers = 127.0.0.1:%d\n\n"
                      "[filter:listing_formats]\nuse = egg:swift#listing_formats\n\n"
                      "[filter:s3api]\nuse = egg:swift#s3api\nlocation = %s\n\n"
                      "[filter:tempauth]\nuse = egg:swift#tempauth\n"
                      "user_test_tester = %s .admin\n\n"
                      "[filter:copy]\nuse = egg:swift#copy\n\n"
                      "[filter:slo]\nuse = egg:swift#slo\n\n"
                      "[filter:dlo]\nuse = egg:swift#dlo\n"
                    % (free_port(), REGION, SECRET_KEY))
        for s in ("account", "container", "object", "proxy"):
            log = open(os.path.join(self.dir, "%s.log" % s), "wb")
            p = subprocess.Popen(["swift-%s-server" % s, os.path.join(self.dir,
                                                                       "%s-server.conf" % s)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 close_fds=True, start_new_session=True)
            log.close()
            self.procs.append(p)
        _LIVE.append(self)
        self.endpoint = "http://127.0.0.1:%d" % self.ports["proxy"]
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    self.stop()
                    raise HarnessError("a Swift server exited %s:\n%s" % (p.returncode,
                                                                           self.logs()))
            try:
                status, _, body = sigv4_request(self.endpoint, "GET", "/", timeout=5)
                if status == 200:
                    return self
                last = "HTTP %d %s" % (status, body[:300])
            except OSError as e:
                last = str(e)
            time.sleep(0.2)
        self.stop()
        raise HarnessError("Swift's s3api did not answer within %.0fs (%s)\n%s"
                           % (timeout, last, self.logs()))

    def logs(self, n=15):
        out = []
        for s in ("proxy", "account", "container", "object"):
            p = os.path.join(self.dir, "%s.log" % s)
            if os.path.exists(p):
                with open(p, "rb") as f:
                    lines = f.read().decode("utf-8", "replace").splitlines()
                out.append("== %s ==\n%s" % (s, "\n".join(lines[-n:])))
        return "\n".join(out)

    def make_bucket(self, bucket, timeout=30.0):
        # the first PUT may come before the account and container servers
        # have settled (503 "Please reduce your request rate"): retried
        deadline = time.time() + timeout
        while True:
            status, _, body = sigv4_request(self.endpoint, "PUT", "/" + bucket)
            if status in (200, 409):
                return
            if status != 503 or time.time() > deadline:
                raise HarnessError("PUT bucket %s: HTTP %d %s\n%s" % (bucket, status,
                                                                      body[:300], self.logs()))
            time.sleep(0.5)

    def get_object(self, bucket, key):
        return sigv4_request(self.endpoint, "GET", "/%s/%s" % (bucket, urllib.parse.quote(key)))

    def list_keys(self, bucket, prefix=""):
        q = "prefix=%s" % urllib.parse.quote(prefix, safe="") if prefix else ""
        status, _, body = sigv4_request(self.endpoint, "GET", "/" + bucket, query=q)
        if status != 200:
            raise HarnessError("GET bucket %s: HTTP %d %s" % (bucket, status, body[:300]))
        text = body.decode()
        keys = []
        for part in text.split("<Key>")[1:]:
            keys.append(part.split("</Key>")[0])
        return keys

    def env(self):
        return {"SLIMD_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs = []
        if self in _LIVE:
            _LIVE.remove(self)
