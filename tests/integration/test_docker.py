#!/usr/bin/env python3
"""test_docker.py - docker/Dockerfile, docker/compose.yaml, docker/compose.cluster.yaml
and .dockerignore,
checked without a Docker engine (none runs in CI).

  * compose.yaml parses (PyYAML) and has what a service left running
    needs: a restart policy, a stop grace period longer than slimd's
    shutdown, a named volume on the data dir, a healthcheck on
    /v1/health, the port published on loopback only, and a build that
    names the Dockerfile;
  * compose.cluster.yaml: PostgreSQL (with a healthcheck the nodes wait
    for) and two slimd nodes with one SLIMD_STORE, one named blob volume
    (SLIMD_BLOBS=dir:...), a data dir volume each, distinct node ids and
    ports, roles that take uploads and run jobs;
  * the Dockerfile: every COPY source exists in the tree and is not
    excluded by .dockerignore; the build stage installs scripts/deps.sh's
    list; the runtime stage's ENV SLIMD_LISTEN, EXPOSE, the healthcheck
    and compose agree on the port; the data dir is a VOLUME; it runs as a
    user, not root;
  * .dockerignore, applied with Docker's rules (Go filepath.Match
    patterns, `**`, `!` exceptions, the last match wins), keeps data/
    (uploaded models), .git, build products and test output out of the
    context and everything the build needs in: every file git tracks
    except those it means to exclude;
  * `docker compose config` and a `buildah bud` of the image run where
    those tools work (skipped otherwise, with the reason).
"""

import fnmatch
import os
import re
import shutil
import subprocess

import slimd_harness as h
from slimd_harness import test

try:
    import yaml
except ImportError:
    yaml = None

SRCDIR = os.path.abspath(os.environ.get("SLIMD_SRCDIR",
                                        os.path.join(os.path.dirname(__file__), "..", "..")))


def read(rel):
    with open(os.path.join(SRCDIR, rel)) as f:
        return f.read()


def compose():
    if yaml is None:
        raise h.HarnessError("python3-yaml is not installed (scripts/deps.sh installs it)")
    return yaml.safe_load(read("docker/compose.yaml"))


def dockerfile_instructions():
    """[(INSTRUCTION, args)] with continuation lines joined and comments dropped."""
    out, cur = [], ""
    for line in read("docker/Dockerfile").splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def stages():
    st = []
    for ins, args in dockerfile_instructions():
        if ins == "FROM":
            st.append([])
        st[-1].append((ins, args))
    return st


def duration(s):
    m = re.fullmatch(r"(\d+)(s|m)", str(s))
    assert m, "duration %r" % s
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


@test
def test_compose():
    """compose: restart policy, stop grace period, named volume, healthcheck, loopback port"""
    c = compose()
    svc = c["services"]["slimd"]
    assert svc.get("restart") == "unless-stopped", svc.get("restart")
    unit = read("systemd/slimd.service.in")
    # as long as systemd gives it (TimeoutStopSec) at most, and more than docker's 10 s
    stop = duration(svc["stop_grace_period"])
    assert 10 < stop <= int(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M).group(1)), stop
    assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"
    vols = svc["volumes"]
    named = [v for v in vols if isinstance(v, str) and v.split(":")[0] in (c.get("volumes") or {})]
    assert any(v.split(":")[1] == "/var/lib/slimd" for v in named), \
        "the data dir is not a named volume: %s" % vols
    hc = svc["healthcheck"]
    assert any("/v1/health" in str(x) for x in hc["test"]), hc
    for k in ("interval", "timeout", "retries"):
        assert k in hc, k
    for p in svc["ports"]:
        assert str(p).startswith("127.0.0.1:"), "port %s is published on every address" % p
    b = svc["build"]
    assert os.path.normpath(os.path.join(SRCDIR, "docker", b["context"])) == os.path.normpath(
        SRCDIR), b
    assert os.path.exists(os.path.join(SRCDIR, b["dockerfile"])), b


@test
def test_compose_cluster():
    """compose.cluster.yaml: PostgreSQL and two nodes sharing the database and one blob volume, each its own data dir"""
    if yaml is None:
        raise h.HarnessError("python3-yaml is not installed (scripts/deps.sh installs it)")
    c = yaml.safe_load(read("docker/compose.cluster.yaml"))
    svcs = c["services"]
    named = c.get("volumes") or {}
    pg = svcs["postgres"]
    assert str(pg["image"]).startswith("postgres:"), pg["image"]
    assert any("pg_isready" in str(x) for x in pg["healthcheck"]["test"]), pg["healthcheck"]
    assert any(str(v).split(":")[0] in named and str(v).split(":")[1] ==
               "/var/lib/postgresql/data" for v in pg["volumes"]), pg["volumes"]
    nodes = {k: v for k, v in svcs.items() if v.get("environment", {}).get("SLIMD_STORE")}
    assert len(nodes) == 2, list(svcs)
    stores, blobs, data_vols, ids, ports = set(), set(), set(), set(), set()
    roles = []
    for name, svc in nodes.items():
        env = svc["environment"]
        assert env["SLIMD_STORE"].startswith("postgresql://") and "@postgres:" in env["SLIMD_STORE"]
        stores.add(env["SLIMD_STORE"])
        assert env["SLIMD_BLOBS"].startswith("dir:"), env
        path = env["SLIMD_BLOBS"][4:]
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in svc["volumes"]}
        assert mounts.get(path) in named, "%s: the blob folder %s is not a named volume" % (
            name, path)
        blobs.add(mounts[path])
        assert mounts.get("/var/lib/slimd") in named, "%s: no data dir volume" % name
        data_vols.add(mounts["/var/lib/slimd"])
        assert env["SLIMD_ROLE"] in ("api", "worker", "all"), env
        roles.append(env["SLIMD_ROLE"])
        ids.add(env["SLIMD_NODE_ID"])
        assert int(env["SLIMD_LEASE_SECONDS"]) > 0
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", svc["depends_on"]
        assert svc.get("restart") == "unless-stopped"
        assert 10 < duration(svc["stop_grace_period"])
        assert any("/v1/health" in str(x) for x in svc["healthcheck"]["test"])
        for p in svc["ports"]:
            assert str(p).startswith("127.0.0.1:"), "port %s is published on every address" % p
            ports.add(str(p).split(":")[1])
    assert len(stores) == 1, "the nodes do not share one database: %s" % stores
    assert len(blobs) == 1, "the nodes do not share one blob volume: %s" % blobs
    assert len(data_vols) == 2, "the nodes share a data dir (each needs its own): %s" % data_vols
    assert len(ids) == 2 and len(ports) == 2, (ids, ports)
    assert any(r in ("api", "all") for r in roles) and any(r in ("worker", "all") for r in roles)
    # the blob volume is handed to the image's user before the nodes start
    owner = [s for s in svcs.values() if "chown" in " ".join(map(str, s.get("entrypoint", [])))]
    assert owner and any(str(v).split(":")[0] in blobs for v in owner[0]["volumes"]), owner


@test
def test_dockerfile():
    """Dockerfile: COPY sources exist, deps from scripts/deps.sh, port and data dir agree, not root"""
    st = stages()
    assert len(st) == 2, "a build and a runtime stage"
    ignore = DockerIgnore(read(".dockerignore"))
    for ins, args in st[0] + st[1]:
        if ins == "COPY" and "--from=" not in args:
            srcs = args.split()[:-1]
            for s in srcs:
                if s == ".":
                    continue
                assert os.path.exists(os.path.join(SRCDIR, s)), "COPY %s: no such file" % s
                assert not ignore.excluded(s), "COPY %s: excluded by .dockerignore" % s
    build = " ".join(a for i, a in st[0] if i == "RUN")
    assert "scripts/deps.sh" in build and "slimd_install_deps" in build, build
    # the RUN that installs them works in the shell Docker runs it with (/bin/sh -c,
    # dash on Debian): executed here with the install replaced by a check that the
    # function was defined
    run = [x for i, x in st[0] if i == "RUN" and "slimd_install_deps" in x][0]
    dry = run.replace("slimd_install_deps", "type slimd_install_deps >/dev/null").replace(
        "rm -rf /var/lib/apt/lists/*", "true")
    p = subprocess.run(["/bin/sh", "-c", dry], cwd=SRCDIR, capture_output=True, timeout=60)
    assert p.returncode == 0, "RUN %s fails under /bin/sh: %s" % (run, p.stderr.decode())
    assert "--sysconfdir=/etc" in build and "--prefix=/usr" in build, build
    env = " ".join(a for i, a in st[1] if i == "ENV")
    listen = re.search(r"SLIMD_LISTEN=([0-9.]+):(\d+)", env)
    assert listen and listen.group(1) == "0.0.0.0", env
    port = listen.group(2)
    assert ("EXPOSE", port) in st[1], "EXPOSE %s" % port
    hc = [a for i, a in st[1] if i == "HEALTHCHECK"]
    assert hc and ":%s/v1/health" % port in hc[0], hc
    assert ("VOLUME", "/var/lib/slimd") in st[1]
    assert "SLIMD_DATA_DIR=/var/lib/slimd" in env
    user = [a for i, a in st[1] if i == "USER"]
    assert user and user[-1] not in ("root", "0"), user
    svc = compose()["services"]["slimd"]
    assert any(str(p).endswith(":" + port) for p in svc["ports"]), svc["ports"]
    # the runtime libraries are those the binary links (Debian package names)
    runtime = " ".join(a for i, a in st[1] if i == "RUN")
    for lib in ("libmicrohttpd12", "libjansson4", "libsqlite3-0", "libpq5", "liblapacke", "libuv1",
                "libprotobuf-c1", "libssl3", "zlib1g", "curl"):
        assert lib in runtime, "runtime stage lacks " + lib


class DockerIgnore:
    """Docker's .dockerignore semantics: each line a pattern matched (Go filepath.Match
    and `**`) against the path relative to the context, after cleaning; a leading `!`
    re-includes; the last matching line decides; a pattern that matches a directory
    excludes what is under it."""

    def __init__(self, text):
        self.rules = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            pat = os.path.normpath(line[1:] if neg else line).lstrip("/")
            self.rules.append((neg, self._regex(pat)))

    @staticmethod
    def _regex(pat):
        out, i = "", 0
        while i < len(pat):
            if pat.startswith("**", i):
                out += ".*"
                i += 2
                if pat.startswith("/", i):
                    out = out[:-2] + "(?:.*/)?"
                    i += 1
                continue
            c = pat[i]
            if c == "*":
                out += "[^/]*"
            elif c == "?":
                out += "[^/]"
            elif c == "[":
                j = pat.index("]", i)
                out += "[" + pat[i + 1:j].replace("!", "^", 1) + "]"
                i = j
            else:
                out += re.escape(c)
            i += 1
        return re.compile("^" + out + "$")

    def excluded(self, path):
        path = os.path.normpath(path)
        parts = path.split("/")
        prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
        result = False
        for neg, rx in self.rules:
            if any(rx.match(p) for p in prefixes):
                result = not neg
        return result


@test
def test_dockerignore():
    """.dockerignore: data/, .git, build and test output out; every tracked source file in"""
    ig = DockerIgnore(read(".dockerignore"))
    out = ["data/blobs/ab/abcdef", "data/slimd.db", "sub/data/x", ".git/HEAD", "passes/pass.o",
           "api/.libs/libx.a", "slimd", "config.log", "tests/integration/test_api.log",
           "tests/integration/test_api.trs", "build-asan/src/configure", "autom4te.cache/x",
           "my.safetensors", "tests/unit/test_storage", "Makefile", "configure",
           "api/openapi_yaml.c", "tests/ort/node_modules/onnxruntime-node/x.js"]
    for p in out:
        assert ig.excluded(p), "%s would be sent to the Docker daemon" % p
    git = shutil.which("git")
    if git and os.path.isdir(os.path.join(SRCDIR, ".git")) or os.path.isfile(
            os.path.join(SRCDIR, ".git")):
        p = subprocess.run([git, "-C", SRCDIR, "ls-files"], capture_output=True, timeout=60)
        tracked = p.stdout.decode().split("\n") if p.returncode == 0 else []
    else:
        tracked = []
    if not tracked:
        tracked = ["configure.ac", "Makefile.am", "autogen.sh", "api/server.c",
                   "passes/slim.h", "api/openapi.yaml", "doc/slimd.8", "scripts/deps.sh",
                   "tests/fixtures/mlp.onnx", "systemd/slimd.service.in", "docker/Dockerfile"]
    meant = (".gitignore", ".dockerignore")
    lost = [t for t in tracked if t and not t.startswith(meant) and ig.excluded(t)]
    assert not lost, "tracked files .dockerignore keeps out of the build: %s" % lost[:20]
    for need in ("configure.ac", "Makefile.am", "autogen.sh", "scripts/deps.sh",
                 "api/openapi.yaml", "doc/slimd.8"):
        assert not ig.excluded(need), need


def context_copy(dest):
    """The build context as Docker would send it: every file under the tree that
    .dockerignore does not exclude."""
    ig = DockerIgnore(read(".dockerignore"))
    n = 0
    for root, dirs, files in os.walk(SRCDIR):
        rel = os.path.relpath(root, SRCDIR)
        rel = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if not ig.excluded(rel + d) or any(
            neg for neg, rx in ig.rules)]
        for f in files:
            path = rel + f
            if ig.excluded(path):
                continue
            os.makedirs(os.path.join(dest, rel), exist_ok=True)
            shutil.copy2(os.path.join(SRCDIR, path), os.path.join(dest, path),
                         follow_symlinks=False)
            n += 1
    return n


@test
def test_build_stage_steps():
    """the build stage's steps, run here on the context .dockerignore leaves (opt-in: a full build)"""
    if not os.environ.get("SLIMD_TEST_DOCKER_STEPS"):
        h.skip("set SLIMD_TEST_DOCKER_STEPS=1 to run the build stage's steps here (a full build)")
    st = stages()
    ctx = h.make_tmpdir("slimd-context-")
    out = os.path.join(ctx, ".out")
    n = context_copy(ctx)
    assert not os.path.exists(os.path.join(ctx, "data")) and not os.path.exists(
        os.path.join(ctx, ".git")), "the context holds data/ or .git"
    after_copy = False
    for ins, args in st[0]:
        if ins == "COPY" and args.split()[:1] == ["."]:
            after_copy = True
            continue
        if ins == "RUN" and after_copy:
            cmd = args.replace("DESTDIR=/out", "DESTDIR=" + out)
            p = subprocess.run(["/bin/sh", "-c", cmd], cwd=ctx, capture_output=True,
                               timeout=3600)
            assert p.returncode == 0, "RUN %s: %s" % (args, (p.stdout + p.stderr).decode()[-3000:])
    for ins, args in st[1]:
        if ins == "COPY" and args.startswith("--from=build"):
            src = args.split()[1]
            assert os.path.exists(os.path.join(out, src[len("/out/"):])), \
                "COPY --from=build %s: the build stage made no such file" % src
    h._diag("context of %d files; the build stage's steps ran and made what the runtime "
            "stage copies" % n)


@test
def test_compose_config():
    """docker compose config accepts the file (where docker compose is installed)"""
    docker = shutil.which("docker")
    if not docker:
        h.skip("docker is not installed")
    for f in ("docker/compose.yaml", "docker/compose.cluster.yaml"):
        p = subprocess.run([docker, "compose", "-f", os.path.join(SRCDIR, f), "config", "-q"],
                           capture_output=True, timeout=120)
        if p.returncode != 0 and (b"is not a docker command" in p.stderr or
                                  b"unknown shorthand flag" in p.stderr):
            h.skip("docker compose plugin not installed")
        assert p.returncode == 0, "%s: %s" % (f, p.stderr.decode())


@test
def test_buildah_bud():
    """buildah bud builds the image (where buildah can build: needs user namespaces, a network)"""
    if not os.environ.get("SLIMD_TEST_BUILDAH"):
        h.skip("set SLIMD_TEST_BUILDAH=1 to build the image with buildah (minutes, network)")
    buildah = shutil.which("buildah")
    if not buildah:
        h.skip("buildah is not installed")
    p = subprocess.run([buildah, "bud", "-f", "docker/Dockerfile", "-t", "slimd-test", "."],
                       cwd=SRCDIR, capture_output=True, timeout=3600)
    assert p.returncode == 0, (p.stdout + p.stderr).decode()[-3000:]


if __name__ == "__main__":
    h.run()
