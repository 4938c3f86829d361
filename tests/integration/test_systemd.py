#!/usr/bin/env python3
"""test_systemd.py - the systemd units, their sandbox, `make install` and
`slimd scheduled`.

  * verify: the units (generated from systemd/*.in as the Makefile does,
    with this build's slimd and doc/slimd.8 on MANPATH) pass
    `systemd-analyze verify` with no message at all; skipped where
    systemd-analyze is missing.
  * install: `make install DESTDIR=...` installs the three units, the man
    page their Documentation= names, the scheduled jobs' sample config
    and /etc/default/slimd, and does not overwrite an existing
    /etc/default/slimd.
  * the sandbox, without a running systemd (containers have none):
    - MemoryDenyWriteExecute: `slimd compress` (OpenBLAS sgemm and the
      SVD on its threads) and `slimd serve` with a job run under the
      kernel's PR_SET_MDWE (refuse W+X and X gained by W mappings,
      inherited across exec: what MemoryDenyWriteExecute asks), which is
      checked to be in force first;
    - ProtectProc=invisible and ProcSubset=pid: the same, in a mount and
      pid namespace whose /proc is mounted subset=pid,hidepid=invisible
      (as root, with unshare; the process metrics must still be there);
    - SystemCallFilter=@system-service: every system call `slimd serve`
      makes while it runs a lowrank+quantize job and answers requests
      (strace -f) is in the set `systemd-analyze syscall-filter` expands
      @system-service to; skipped without strace.
  * scheduled: `slimd scheduled --dir` runs every *.json (not .sample)
    in name order through `slimd submit` with the arguments its config
    asks (a stand-in submit records them and answers with chosen exit
    codes), derives the server from SLIMD_LISTEN, rejects a bad config
    naming the key, and exits with the largest exit status; and against a
    real daemon through the real `slimd submit` when this build has it.
"""

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import slimd_harness as h
from slimd_harness import test

SRCDIR = os.environ.get("SLIMD_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILDDIR = os.environ.get("SLIMD_BUILDDIR", SRCDIR)
UNITS_IN = {"slimd.service": "slimd.service.in",
            "slimd-scheduled.service": "slimd-scheduled.service.in",
            "slimd-scheduled.timer": None}


def gen_units(bindir, sysconfdir):
    out = h.make_tmpdir("slimd-units-")
    for name, src in UNITS_IN.items():
        with open(os.path.join(SRCDIR, "systemd", src or name)) as f:
            text = f.read()
        text = text.replace("@bindir@", bindir).replace("@sysconfdir@", sysconfdir)
        with open(os.path.join(out, name), "w") as f:
            f.write(text)
    return out


def man_dir():
    d = h.make_tmpdir("slimd-man-")
    os.makedirs(os.path.join(d, "man8"))
    shutil.copy(os.path.join(SRCDIR, "doc", "slimd.8"), os.path.join(d, "man8", "slimd.8"))
    return d


@test
def test_verify():
    """systemd-analyze verify is clean on slimd.service, slimd-scheduled.service and .timer"""
    sa = shutil.which("systemd-analyze")
    if not sa:
        h.skip("systemd-analyze not installed (package systemd)")
    units = gen_units(os.path.dirname(os.path.abspath(h.slimd_bin())), "/etc")
    env = dict(os.environ, MANPATH=man_dir(), SYSTEMD_LOG_LEVEL="notice")
    # verify checks Documentation=man:... by running man; without man-db
    # (scripts/slimd-test installs it) everything else is still checked
    man = ["--man=no"] if not shutil.which("man") else []
    if man:
        h._diag("man (man-db) not installed: Documentation= not checked")
    p = subprocess.run([sa, "verify"] + man + [os.path.join(units, u) for u in UNITS_IN],
                       capture_output=True, env=env, timeout=120, cwd=units)
    out = (p.stdout + p.stderr).decode()
    # what it says of other units on this machine (their dependencies) is not ours
    ours = [l for l in out.splitlines() if "slimd" in l]
    others = [l for l in out.splitlines() if l.strip() and "slimd" not in l]
    if others:
        h._diag("systemd-analyze on other units:\n" + "\n".join(others[:20]))
    assert p.returncode == 0 and not ours, "systemd-analyze verify: rc %d\n%s" % (
        p.returncode, out)
    for u in UNITS_IN:
        with open(os.path.join(units, u)) as f:
            assert "Documentation=man:slimd(8)" in f.read(), u
    if man:
        return
    # the check can fail: a unit naming a man page that does not exist is reported
    bad = os.path.join(units, "bad.service")
    with open(os.path.join(units, "slimd.service")) as f:
        text = f.read().replace("man:slimd(8)", "man:slimd-nonexistent(8)")
    with open(bad, "w") as f:
        f.write(text)
    p = subprocess.run([sa, "verify", bad], capture_output=True, env=env, timeout=120,
                       cwd=units)
    assert "slimd-nonexistent" in (p.stdout + p.stderr).decode(), \
        "systemd-analyze did not check Documentation= here: %r" % (p.stdout + p.stderr)


@test
def test_units_sandbox_settings():
    """slimd.service: ProtectProc, ProcSubset, loopback-only IPAddress*, MDWE, the syscall filter"""
    with open(os.path.join(SRCDIR, "systemd", "slimd.service.in")) as f:
        unit = f.read()
    for line in ("EnvironmentFile=-@sysconfdir@/default/slimd", "ProtectProc=invisible",
                 "ProcSubset=pid", "IPAddressDeny=any", "IPAddressAllow=localhost",
                 "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service",
                 "Documentation=man:slimd(8)", "ExecStart=@bindir@/slimd serve"):
        assert re.search("^" + re.escape(line) + "$", unit, re.M), line
    with open(os.path.join(SRCDIR, "systemd", "slimd-scheduled.service.in")) as f:
        sched = f.read()
    for line in ("EnvironmentFile=-@sysconfdir@/default/slimd",
                 "ExecStart=@bindir@/slimd scheduled --dir @sysconfdir@/slimd/scheduled.d",
                 "Type=oneshot"):
        assert re.search("^" + re.escape(line) + "$", sched, re.M), line


@test
def test_install():
    """make install DESTDIR: units, man page, sample config, /etc/default/slimd (kept if present)"""
    make = shutil.which("make")
    if not make or not os.path.exists(os.path.join(BUILDDIR, "Makefile")):
        h.skip("no configured build tree at %s" % BUILDDIR)
    dest = h.make_tmpdir("slimd-install-")
    units = os.path.join(dest, "units")
    args = [make, "-s", "-C", BUILDDIR, "install", "DESTDIR=" + dest, "prefix=/usr",
            "sysconfdir=/etc", "systemdsystemunitdir=/units"]
    p = subprocess.run(args, capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    want = ["units/slimd.service", "units/slimd-scheduled.service", "units/slimd-scheduled.timer",
            "usr/bin/slimd", "usr/share/man/man8/slimd.8", "etc/default/slimd",
            "etc/slimd/scheduled.d/example.json.sample"]
    for w in want:
        assert os.path.exists(os.path.join(dest, w)), "make install did not install " + w
    with open(os.path.join(units, "slimd.service")) as f:
        text = f.read()
    # generated from the .in with the install's own directories
    assert "ExecStart=/usr/bin/slimd serve\n" in text, text
    assert "EnvironmentFile=-/etc/default/slimd\n" in text, text
    with open(os.path.join(units, "slimd-scheduled.service")) as f:
        assert "ExecStart=/usr/bin/slimd scheduled --dir /etc/slimd/scheduled.d\n" in f.read()
    with open(os.path.join(dest, "etc/slimd/scheduled.d/example.json.sample")) as f:
        sample = json.load(f)
    assert {"model_name", "spec", "output"} <= set(sample), sample
    # an admin's /etc/default/slimd survives a reinstall
    with open(os.path.join(dest, "etc/default/slimd"), "w") as f:
        f.write("SLIMD_LISTEN=127.0.0.1:9999\n")
    p = subprocess.run(args, capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    with open(os.path.join(dest, "etc/default/slimd")) as f:
        assert f.read() == "SLIMD_LISTEN=127.0.0.1:9999\n", "make install overwrote /etc/default/slimd"


# ---------------------------------------------------------------- the sandbox

PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1


def mdwe():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        os._exit(97)


def mdwe_supported():
    p = subprocess.run([sys.executable, "-c",
                        "import ctypes,mmap,sys\n"
                        "libc=ctypes.CDLL(None,use_errno=True)\n"
                        "sys.exit(3) if libc.prctl(%d,%d,0,0,0) else None\n"
                        "try:\n"
                        "    mmap.mmap(-1,4096,prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC)\n"
                        "except OSError:\n"
                        "    sys.exit(0)\n"
                        "sys.exit(4)\n" % (PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)],
                       capture_output=True, timeout=60)
    return p.returncode


def model_file(d, shapes):
    ts = [h.t_f32("layers.%d.weight" % i, list(s), 20 + i) for i, s in enumerate(shapes)]
    path = os.path.join(d, "m.safetensors")
    with open(path, "wb") as f:
        f.write(h.safetensors_bytes(ts))
    return path


SPEC = {"passes": [{"op": "prune", "sparsity": 0.5},
                   {"op": "lowrank", "rank": 64, "algorithm": "exact"},
                   {"op": "quantize", "dtype": "int8", "granularity": "channel",
                    "symmetric": True}]}


@test
def test_openblas_under_mdwe():
    """OpenBLAS under MemoryDenyWriteExecute (PR_SET_MDWE): compress and a daemon job succeed"""
    rc = mdwe_supported()
    if rc == 3:
        h.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert rc == 0, "PR_SET_MDWE did not refuse a W+X mapping (rc %d): the check would be void" % rc
    d = h.make_tmpdir()
    model = model_file(d, [(512, 512), (256, 512)])
    spec = os.path.join(d, "spec.json")
    with open(spec, "w") as f:
        json.dump(SPEC, f)
    out = os.path.join(d, "out")
    p = subprocess.run([h.slimd_bin(), "compress", model, "--spec", spec, "-o", out,
                        "--threads", "2"], capture_output=True, timeout=300, preexec_fn=mdwe)
    assert p.returncode == 0, "compress under MDWE: rc %d\n%s" % (p.returncode,
                                                                   p.stderr.decode()[-2000:])
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f)["totals"]["ratio"] > 1
    # the daemon: its threads, libmicrohttpd, SQLite and a job's OpenBLAS
    env = dict(os.environ)
    real = h.slimd_bin()
    wrapper = os.path.join(d, "slimd-mdwe")
    with open(wrapper, "w") as f:
        f.write("#!%s\nimport ctypes, os, sys\n"
                "libc = ctypes.CDLL(None, use_errno=True)\n"
                "if libc.prctl(%d, %d, 0, 0, 0): sys.exit(97)\n"
                "os.execv(%r, [%r] + sys.argv[1:])\n"
                % (sys.executable, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, real, real))
    os.chmod(wrapper, 0o755)
    old = os.environ.get("SLIMD_BIN")
    os.environ["SLIMD_BIN"] = wrapper
    try:
        D = h.Daemon(workers=1).start()
    finally:
        if old is None:
            del os.environ["SLIMD_BIN"]
        else:
            os.environ["SLIMD_BIN"] = old
    try:
        exe = os.readlink("/proc/%d/exe" % D.proc.pid)
        assert exe == os.path.realpath(real), "the wrapper did not exec slimd: %s" % exe
        with open(model, "rb") as f:
            mid = D.upload(f.read(), name="m").json["id"]
        job = D.wait_job(D.submit(dict(SPEC, model=mid)).json["id"], timeout=300)
        assert job["state"] == "succeeded", job
    finally:
        D.stop()


def stop_traced(D):
    """SIGTERM to the traced slimd (strace's child), not to strace; strace ends with it."""
    with open("/proc/%d/task/%d/children" % (D.proc.pid, D.proc.pid)) as f:
        kids = [int(x) for x in f.read().split()]
    for k in kids:
        os.kill(k, signal.SIGTERM)
    try:
        D.proc.wait(60)
    except subprocess.TimeoutExpired:
        for k in kids:          # never leave a daemon behind
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise
    finally:
        D.kill()


def proc_subset_works():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare (util-linux) for a private /proc"
    p = subprocess.run(["unshare", "--mount", "--pid", "--fork", "sh", "-c",
                        "mount -t proc -o subset=pid,hidepid=invisible proc /proc && "
                        "test ! -e /proc/cpuinfo && test -e /proc/self/stat"],
                       capture_output=True, timeout=60)
    if p.returncode != 0:
        return "cannot mount a private /proc here: %s" % p.stderr.decode().strip()[-200:]
    return None


@test
def test_proc_subset():
    """ProtectProc=invisible + ProcSubset=pid: compress, a daemon job and /metrics under such a /proc"""
    why = proc_subset_works()
    if why:
        h.skip(why)
    d = h.make_tmpdir()
    model = model_file(d, [(512, 512), (256, 512)])
    wrapper = os.path.join(d, "slimd-procsubset")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec unshare --mount --pid --fork --kill-child sh -c 'mount -t proc -o "
                "subset=pid,hidepid=invisible proc /proc && exec \"$0\" \"$@\"' %s \"$@\"\n"
                % h.slimd_bin())
    os.chmod(wrapper, 0o755)
    spec = os.path.join(d, "spec.json")
    with open(spec, "w") as f:
        json.dump(SPEC, f)
    p = subprocess.run([wrapper, "compress", model, "--spec", spec, "-o",
                        os.path.join(d, "out")], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    old = os.environ.get("SLIMD_BIN")
    os.environ["SLIMD_BIN"] = wrapper
    try:
        D = h.Daemon(workers=1).start()
    finally:
        if old is None:
            del os.environ["SLIMD_BIN"]
        else:
            os.environ["SLIMD_BIN"] = old
    try:
        with open(model, "rb") as f:
            mid = D.upload(f.read(), name="m").json["id"]
        job = D.wait_job(D.submit(dict(SPEC, model=mid)).json["id"], timeout=300)
        assert job["state"] == "succeeded", job
        text = D.get("/metrics").body.decode()
        for fam in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                    "process_open_fds", "process_max_fds", "process_start_time_seconds",
                    "slimd_data_dir_bytes"):
            assert re.search("^%s [0-9.e+]+$" % fam, text, re.M), "%s missing:\n%s" % (fam, text)
    finally:
        stop_traced(D)


def syscall_set(group):
    """The system calls systemd-analyze expands a filter group to."""
    p = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, timeout=60)
    groups, cur = {}, None
    for line in p.stdout.decode().splitlines():
        if line.startswith("@"):
            cur = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#") and cur is not None:
            cur.append(line.strip())

    def expand(g, seen):
        out = set()
        for x in groups.get(g, []):
            if x.startswith("@"):
                if x not in seen:
                    seen.add(x)
                    out |= expand(x, seen)
            else:
                out.add(x)
        return out
    return expand(group, {group})


@test
def test_syscalls_in_system_service():
    """every system call of slimd serve running a job is in @system-service (strace -f)"""
    if not shutil.which("strace") or not shutil.which("systemd-analyze"):
        h.skip("needs strace and systemd-analyze")
    if h.SANITIZED:
        h.skip("under ASan+UBSan the sanitizer runtime's own system calls are not slimd's")
    allowed = syscall_set("@system-service")
    assert len(allowed) > 200, len(allowed)
    d = h.make_tmpdir()
    log = os.path.join(d, "strace")
    model = model_file(d, [(512, 512), (256, 512)])
    wrapper = os.path.join(d, "slimd-strace")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec strace -f -qq -o %s %s \"$@\"\n" % (log, h.slimd_bin()))
    os.chmod(wrapper, 0o755)
    old = os.environ.get("SLIMD_BIN")
    os.environ["SLIMD_BIN"] = wrapper
    try:
        try:
            D = h.Daemon(workers=1).start(timeout=60)
        except h.HarnessError as e:
            if "ptrace" in str(e) or "Operation not permitted" in str(e):
                h.skip("strace cannot trace here: %s" % str(e)[-200:])
            raise
    finally:
        if old is None:
            del os.environ["SLIMD_BIN"]
        else:
            os.environ["SLIMD_BIN"] = old
    try:
        with open(model, "rb") as f:
            mid = D.upload(f.read(), name="m").json["id"]
        job = D.wait_job(D.submit(dict(SPEC, model=mid)).json["id"], timeout=600)
        assert job["state"] == "succeeded", job
        assert D.get("/metrics").status == 200
        assert D.get("/v1/jobs/%s/artifact" % job["id"]).status == 200
    finally:
        stop_traced(D)
    used = set()
    with open(log) as f:
        for line in f:
            m = re.match(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", line)
            if m and not line.split(None, 1)[1].startswith(("+++", "---")):
                used.add(m.group(1))
    # strace prints the exec of slimd itself, before the unit's filter would apply
    used.discard("execve")
    assert len(used) > 20, sorted(used)
    outside = sorted(used - allowed)
    assert not outside, "system calls outside @system-service: %s" % outside
    h._diag("%d distinct system calls, all in @system-service" % len(used))


# ---------------------------------------------------------------- slimd scheduled

FAKE_SUBMIT = r'''#!%s
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"argv": args, "spec": json.load(open(args[args.index("--spec") + 1]))})
            + "\n")
name = args[args.index("--model-name") + 1]
sys.exit(int(name.split("-")[-1]) if name.startswith("exit-") else 0)
'''


def spec_files():
    tmp = os.environ.get("TMPDIR") or "/tmp"
    return {x for x in os.listdir(tmp) if x.startswith("slimd-scheduled-")}


def write(path, obj):
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


@test
def test_scheduled_runner():
    """slimd scheduled: each *.json through submit with its arguments, in order; worst exit wins"""
    d = h.make_tmpdir()
    conf = os.path.join(d, "scheduled.d")
    os.makedirs(conf)
    fake = os.path.join(d, "fake-slimd")
    write(fake, FAKE_SUBMIT % sys.executable)
    os.chmod(fake, 0o755)
    spec = {"passes": [{"op": "quantize", "dtype": "int8"}]}
    write(os.path.join(conf, "a-nightly.json"), {
        "model_name": "resnet", "spec": spec, "output": "/out/resnet.safetensors",
        "labels": {"team": "vision"}, "timeout": 60, "token_file": "/etc/slimd/t"})
    write(os.path.join(conf, "b-gate.json"), {"model_name": "exit-4", "spec": spec,
                                              "output": "/out/b", "server": "http://h:1"})
    write(os.path.join(conf, "c-fail.json"), {"model_name": "exit-3", "spec": spec,
                                              "output": "/out/c", "name": "custom"})
    write(os.path.join(conf, "example.json.sample"), {"model_name": "never", "spec": spec,
                                                      "output": "/out/x"})
    log = os.path.join(d, "log")
    env = dict(os.environ, FAKE_LOG=log, SLIMD_LISTEN="0.0.0.0:9123")
    env.pop("SLIMD_SERVER", None)
    env.pop("SLIMD_TLS_CERT", None)
    before = spec_files()
    p = subprocess.run([h.slimd_bin(), "scheduled", "--dir", conf, "--slimd", fake],
                       capture_output=True, env=env, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 4, "exit %d (want the worst, 4)\n%s" % (p.returncode, err)
    with open(log) as f:
        calls = [json.loads(l) for l in f]
    assert [c["argv"][c["argv"].index("--model-name") + 1] for c in calls] == [
        "resnet", "exit-4", "exit-3"], calls
    a = calls[0]["argv"]
    assert a[0] == "submit" and "--wait" in a, a

    def opt(argv, name):
        return argv[argv.index(name) + 1]
    assert opt(a, "--server") == "http://127.0.0.1:9123", a   # from SLIMD_LISTEN
    assert opt(a, "-o") == "/out/resnet.safetensors" and opt(a, "--name") == "a-nightly", a
    assert opt(a, "--label") == "team=vision" and opt(a, "--timeout") == "60", a
    assert opt(a, "--token-file") == "/etc/slimd/t", a
    assert calls[0]["spec"] == spec, calls[0]
    assert opt(calls[1]["argv"], "--server") == "http://h:1"
    assert opt(calls[2]["argv"], "--name") == "custom"
    for what in ("a-nightly.json: succeeded", "b-gate.json: the job failed a quality gate",
                 "c-fail.json: the job failed", "3 job(s), 2 failed"):
        assert what in err, (what, err)
    # the spec files are gone
    assert spec_files() <= before, spec_files() - before

    # a bad config is named with its problem, counts as 2, and the others still run
    write(os.path.join(conf, "b-gate.json"), {"model_name": "m", "spec": spec, "output": "rel"})
    write(os.path.join(conf, "c-fail.json"), {"model_name": "m", "spec": spec,
                                              "output": "/o", "modle": 1})
    write(os.path.join(conf, "d-broken.json"), "{not json")
    os.unlink(log)
    p = subprocess.run([h.slimd_bin(), "scheduled", "--dir", conf, "--slimd", fake],
                       capture_output=True, env=env, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 2, (p.returncode, err)
    assert "output: expected an absolute path" in err and "unknown key 'modle'" in err, err
    assert "d-broken.json: line 1" in err, err
    with open(log) as f:
        assert len(f.readlines()) == 1
    # IPv6 wildcard and TLS
    os.unlink(os.path.join(conf, "b-gate.json"))
    os.unlink(os.path.join(conf, "c-fail.json"))
    os.unlink(os.path.join(conf, "d-broken.json"))
    os.unlink(log)
    env.update(SLIMD_LISTEN="[::]:8443", SLIMD_TLS_CERT="/etc/slimd/cert.pem")
    p = subprocess.run([h.slimd_bin(), "scheduled", "--dir", conf, "--slimd", fake],
                       capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    with open(log) as f:
        argv = json.loads(f.readline())["argv"]
    assert opt(argv, "--server") == "https://[::1]:8443", argv


def has_submit():
    p = subprocess.run([h.slimd_bin(), "submit", "--help"], capture_output=True, timeout=30)
    return p.returncode == 0 and b"--model-name" in p.stdout + p.stderr


@test
def test_scheduled_end_to_end():
    """slimd scheduled with the real slimd submit: the newest model of a name, its artifact saved"""
    if not has_submit():
        h.skip("this build has no `slimd submit` (the submit branch adds it)")
    D = h.Daemon(workers=1).start()
    try:
        d = h.make_tmpdir()
        conf = os.path.join(d, "scheduled.d")
        os.makedirs(conf)
        D.upload(h.safetensors_bytes([h.t_f32("w", [64, 64], 1)]), name="nightly")
        newest = D.upload(h.safetensors_bytes([h.t_f32("w", [64, 32], 2)]), name="nightly")
        out = os.path.join(d, "exports", "nightly.int8.safetensors")
        os.makedirs(os.path.dirname(out))
        write(os.path.join(conf, "nightly.json"), {
            "model_name": "nightly", "output": out,
            "spec": {"passes": [{"op": "quantize", "dtype": "int8"}]}})
        env = dict(os.environ, SLIMD_LISTEN="127.0.0.1:%d" % D.port)
        env.pop("SLIMD_SERVER", None)
        p = subprocess.run([h.slimd_bin(), "scheduled", "--dir", conf], capture_output=True,
                           env=env, timeout=300)
        assert p.returncode == 0, p.stderr.decode()
        with open(out, "rb") as f:
            art = h.SafetensorsFile(f.read())
        assert art["w"].shape == [64, 32], "not the newest model of the name"
        jobs = D.get("/v1/jobs").json["jobs"]
        assert jobs[0]["model"] == newest.json["id"], jobs[0]
        # a job that fails makes the run (and the unit) fail
        w = h.gaussian(64, 5)
        w[3] = float("nan")
        D.upload(h.safetensors_bytes([h.Tensor("w", "F32", [8, 8], h.f32_bytes(w))]),
                 name="broken")
        write(os.path.join(conf, "z-broken.json"), {
            "model_name": "broken", "output": os.path.join(d, "exports", "broken"),
            "spec": {"passes": [{"op": "quantize", "dtype": "int8"}]}})
        p = subprocess.run([h.slimd_bin(), "scheduled", "--dir", conf], capture_output=True,
                           env=env, timeout=300)
        assert p.returncode == 3, (p.returncode, p.stderr.decode())
        assert "z-broken.json: the job failed" in p.stderr.decode()
    finally:
        D.stop()


if __name__ == "__main__":
    h.run()
