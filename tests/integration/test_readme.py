#!/usr/bin/env python3
"""The README's walkthrough, run verbatim against a real daemon (only the
port is changed), and the numpy decoder of docs/artifact-format.md run on
the artifact it downloads.  If either document drifts from what slimd
does, this fails."""
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402

SRC = os.environ.get("SLIMD_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
D = None
WORK = None


def setup():
    global D, WORK
    D = h.Daemon(workers=1).start()
    WORK = h.make_tmpdir("slimd-readme-")
    os.symlink(os.path.join(os.path.abspath(SRC), "scripts"), os.path.join(WORK, "scripts"))


def block(path, begin, end):
    text = open(os.path.join(SRC, path)).read()
    m = re.search(re.escape(begin) + r"\s*```(?:sh|python)\n(.*?)```", text, re.S)
    assert m, "no block after %s in %s" % (begin, path)
    return m.group(1)


@h.test
def test_walkthrough_runs_verbatim():
    """README walkthrough: upload, submit, poll, report, download"""
    script = block("README.md", "<!-- walkthrough:begin -->", "<!-- walkthrough:end -->")
    assert "127.0.0.1:8420" in script
    script = script.replace("127.0.0.1:8420", "127.0.0.1:%d" % D.port)
    p = subprocess.run(["bash", "-c", script], cwd=WORK, capture_output=True, text=True,
                       timeout=120)
    print("# " + p.stdout.replace("\n", "\n# "))
    assert p.returncode == 0, "walkthrough failed (%d):\n%s\n%s" % (p.returncode, p.stdout,
                                                                   p.stderr)
    assert "state succeeded" in p.stdout
    art = h.SafetensorsFile(open(os.path.join(WORK, "demo.int8.safetensors"), "rb").read())
    assert art["encoder.fc1.weight"].dtype == "I8"
    report = json.load(open(os.path.join(WORK, "report.json")))
    assert report["totals"]["ratio"] > 3.0


@h.test
def test_docs_numpy_decoder():
    """docs/artifact-format.md's decoder reads the artifact within 1 %"""
    py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    if subprocess.run([py, "-c", "import numpy"], capture_output=True).returncode != 0:
        h.skip("numpy is not installed")
    code = block("docs/artifact-format.md", "## Reference decoder (numpy alone)", "")
    check = code + r'''
import sys
orig, _ = read(sys.argv[1])
dec = decode(sys.argv[2])
assert set(dec) == set(orig), (sorted(dec), sorted(orig))
worst = 0.0
for name, w in orig.items():
    if w.dtype.kind != "f":
        assert (dec[name] == w).all(), name
        continue
    w = w.astype(np.float64)
    err = np.linalg.norm(dec[name] - w) / np.linalg.norm(w)
    worst = max(worst, err)
print("worst relative error %.5f" % worst)
assert worst < 0.01
'''
    p = subprocess.run([py, "-c", check, os.path.join(WORK, "demo.safetensors"),
                        os.path.join(WORK, "demo.int8.safetensors")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    print("# " + p.stdout.strip())


@h.test
def test_offline_compress_block():
    """README offline block: slimd compress writes the artifact and report.json"""
    text = open(os.path.join(SRC, "README.md")).read()
    m = re.search(r"Offline, the same job without a server:\s*```sh\n(.*?)```", text, re.S)
    assert m
    script = m.group(1).replace("./slimd", h.slimd_bin())
    p = subprocess.run(["bash", "-ec", script], cwd=WORK, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert os.path.exists(os.path.join(WORK, "out", "demo.slim.safetensors"))
    rep = json.load(open(os.path.join(WORK, "out", "report.json")))
    assert rep["totals"]["bytes_after"] < rep["totals"]["bytes_before"]


def teardown():
    D.stop()
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    h.run(setup=setup, teardown=teardown, daemons=lambda: [D] if D else [])
