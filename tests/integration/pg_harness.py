"""pg_harness.py - a private PostgreSQL 15 server for the integration tests.

Standard library only, like slimd_harness.py.  server() starts one server
per test process, the first time it is asked for, and stops it at exit:

  * initdb into a new temp folder (trust authentication, locale C,
    --no-sync: nothing here must survive a crash of the machine);
  * pg_ctl start on a free loopback port, its Unix socket in that same
    folder (never /var/run/postgresql, which belongs to a system server
    this test does not use), fsync off;
  * at exit (or on SIGTERM through slimd_harness's handler, which runs
    atexit's): pg_ctl stop -m immediate, and the folder is removed
    (kept with SLIMD_TEST_KEEP).

initdb and the server refuse to run as root, and CI runs as root: then
both run as the user "nobody" (runuser), in a folder that user owns.
As any other user they run as that user.

Server.new_database() makes a fresh, empty database and returns its URI
(postgresql://postgres@127.0.0.1:PORT/NAME), for one daemon's --store.

The binaries: $SLIMD_PG_BIN, else /usr/lib/postgresql/15/bin (Debian's
postgresql-15, scripts/deps.sh TEST_DEPS).  HarnessError (from
slimd_harness) when they are missing or the server will not start.
"""

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

PG_BIN = os.environ.get("SLIMD_PG_BIN", "/usr/lib/postgresql/15/bin")
RUN_AS = "nobody"


class PgError(Exception):
    """The PostgreSQL server could not be set up."""


def available():
    """True when initdb and pg_ctl are where PG_BIN says."""
    return all(os.access(os.path.join(PG_BIN, b), os.X_OK) for b in ("initdb", "pg_ctl", "psql"))


def _free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class Server:
    def __init__(self, stop_at_exit=True):
        if not available():
            raise PgError("PostgreSQL 15 binaries not found in %s (apt-get install postgresql-15, "
                          "or set SLIMD_PG_BIN)" % PG_BIN)
        # as root, the folder is handed to RUN_AS, who must reach it: /tmp
        # (1777) does, a $TMPDIR under /root may not
        self.root = tempfile.mkdtemp(prefix="slimd-pg-",
                                     dir="/tmp" if os.geteuid() == 0 else None)
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = None
        self.started = False
        self.prefix = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam(RUN_AS)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chmod(self.root, 0o700)
            self.prefix = ["runuser", "-u", RUN_AS, "--"]
        if stop_at_exit:
            atexit.register(self.stop)

    def _run(self, argv, timeout=120):
        p = subprocess.run(self.prefix + argv, cwd=self.root, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise PgError("%s failed (exit %d): %s%s" % (os.path.basename(argv[0]), p.returncode,
                                                       p.stdout[-1500:], p.stderr[-1500:]))
        return p.stdout

    def start(self):
        self._run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", "postgres",
                   "-A", "trust", "--locale=C", "-E", "UTF8", "--no-sync"])
        last = None
        for _ in range(3):   # the free port may be taken in between
            self.port = _free_port()
            opts = ("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                    "-c max_connections=200" % (self.port, self.root))
            try:
                self._run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l", self.log,
                           "-w", "-t", "60", "-o", opts, "start"])
                self.started = True
                return self
            except PgError as e:
                last = e
        raise PgError("%s\n%s" % (last, self.log_tail()))

    def log_tail(self, n=20):
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def psql(self, sql, db="postgres"):
        """Runs sql with psql (as the server's superuser, over TCP);
        returns its unaligned output."""
        return self._run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t",
                          "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", "postgres", "-d", db, "-c", sql], timeout=60)

    def uri(self, db):
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, db)

    def new_database(self, prefix="slimd"):
        name = "%s_%s" % (prefix, uuid.uuid4().hex[:12])
        self.psql("CREATE DATABASE %s" % name)
        return self.uri(name)

    def stop(self):
        if self.started:
            try:
                self._run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", "immediate",
                           "-w", "stop"], timeout=60)
            except (PgError, subprocess.TimeoutExpired):
                pass
            self.started = False
        if self.root and not os.environ.get("SLIMD_TEST_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


_SERVER = None


def server(stop_at_exit=True):
    """The test process's server, started on first use.  stop_at_exit:
    stop it from atexit; slimd_harness passes False and stops it itself
    (shutdown()), after the daemons that use it."""
    global _SERVER
    if _SERVER is None:
        s = Server(stop_at_exit)
        try:
            s.start()
        except BaseException:
            s.stop()
            raise
        _SERVER = s
    return _SERVER


def shutdown():
    """Stops the server if one was started."""
    global _SERVER
    if _SERVER is not None:
        _SERVER.stop()
        _SERVER = None
