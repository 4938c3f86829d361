"""fashion_ort.py - the Fashion-MNIST fixture images through ONNX Runtime
(onnxruntime-node from tests/ort), for the tests that compare the accuracy
slimd reports with a real runtime's on the same images (test_eval.py,
test_train.py).  Imported after slimd_harness, under /usr/bin/python3
(numpy)."""

import gzip
import json
import os
import subprocess

import numpy as np

# Runs a model over a float32 file of images in batches of 500; prints the
# top-1 predictions as JSON.
RUN_JS = r"""
const ort = require('onnxruntime-node');
const fs = require('fs');
(async () => {
  const [model, inp, n] = [process.argv[2], process.argv[3], +process.argv[4]];
  const s = await ort.InferenceSession.create(model);
  const buf = fs.readFileSync(inp);
  const x = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  const per = x.length / n, preds = [];
  for (let i = 0; i < n; i += 500) {
    const b = Math.min(500, n - i);
    const feeds = {};
    feeds[s.inputNames[0]] = new ort.Tensor('float32', x.subarray(i * per, (i + b) * per),
                                            [b, 1, 28, 28]);
    const y = (await s.run(feeds))[s.outputNames[0]];
    const k = y.dims[1];
    for (let j = 0; j < b; j++) {
      let best = 0;
      for (let c = 1; c < k; c++) if (y.data[j * k + c] > y.data[j * k + best]) best = c;
      preds.push(best);
    }
  }
  console.log(JSON.stringify(preds));
})().catch(e => { console.error(e.message); process.exit(1); });
"""


def read_idx(path):
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw[4 + 4 * ndim:], np.uint8).reshape(dims)


class Runner:
    """The images (X: float32 [n, 1, 28, 28], / 255) and labels (Y) of the
    IDX files, written with the runner script into work; accuracy(path)
    is the top-1 accuracy of the ONNX model at path in onnxruntime."""

    def __init__(self, work, images, labels, ort_modules):
        self.work, self.ort_modules = work, ort_modules
        with open(os.path.join(work, "run.js"), "w") as f:
            f.write(RUN_JS)
        self.X = (read_idx(images).astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        self.Y = read_idx(labels).astype(np.int64)
        self.X.tofile(os.path.join(work, "x.bin"))

    def accuracy(self, model_path):
        env = dict(os.environ, NODE_PATH=self.ort_modules)
        p = subprocess.run(["node", os.path.join(self.work, "run.js"), model_path,
                            os.path.join(self.work, "x.bin"), str(len(self.Y))],
                           capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, "onnxruntime failed on %s: %s" % (model_path, p.stderr)
        return float((np.array(json.loads(p.stdout)) == self.Y).mean())
