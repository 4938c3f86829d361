#!/usr/bin/env node
// ort_eval.js - ONNX Runtime's side of the engine benchmark: what
// `slimd eval` does, with onnxruntime-node (CPU) instead of slimd's engine.
//
//   node ort_eval.js MODEL.onnx DATA.safetensors [--batch N] [--repeat R] [--opt LEVEL]
//
// Runs the model over every sample of DATA's `input` (F32) in batches of N
// (default 256), R times (default 1), and prints the same JSON as slimd
// eval: samples, accuracy (top-1 against `labels`, I64, when present),
// seconds (the best whole-set time), samples_per_second, batch.  LEVEL is
// the graphOptimizationLevel (default all, as ONNX Runtime is deployed);
// threads are ONNX Runtime's default (one per core), as slimd's are.
'use strict';
const path = require('path');
const { loadOrt, readSafetensors, f32 } = require(path.join(__dirname, '..', 'ort', 'ort_run.js'));

async function main(argv) {
  const args = argv.slice(2);
  const pos = [];
  let batch = 256, repeat = 1, opt = 'all';
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--batch') batch = parseInt(args[++i], 10);
    else if (args[i] === '--repeat') repeat = parseInt(args[++i], 10);
    else if (args[i] === '--opt') opt = args[++i];
    else pos.push(args[i]);
  }
  if (pos.length !== 2 || !(batch > 0) || !(repeat > 0)) {
    process.stderr.write('usage: node ort_eval.js MODEL.onnx DATA.safetensors [--batch N] ' +
                         '[--repeat R] [--opt disabled|basic|extended|all]\n');
    return 2;
  }
  const ort = loadOrt();
  const st = readSafetensors(pos[1]);
  if (!st.input || st.input.dtype !== 'F32') throw new Error(pos[1] + ': no F32 tensor "input"');
  const x = f32(st.input.bytes);
  const n = st.input.shape[0], sample = x.length / n, rest = st.input.shape.slice(1);
  let labels = null;
  if (st.labels && st.labels.dtype === 'I64') {
    const c = new Uint8Array(st.labels.bytes.length);
    c.set(st.labels.bytes);
    labels = new BigInt64Array(c.buffer);
  }
  const session = await ort.InferenceSession.create(pos[0], {
    graphOptimizationLevel: opt,
    executionProviders: ['cpu'],
  });
  const inName = session.inputNames[0], outName = session.outputNames[0];
  let best = Infinity, correct = 0;
  for (let r = 0; r < repeat; r++) {
    const t0 = process.hrtime.bigint();
    correct = 0;
    for (let b0 = 0; b0 < n; b0 += batch) {
      const cnt = Math.min(batch, n - b0);
      const feeds = {};
      feeds[inName] = new ort.Tensor('float32', x.subarray(b0 * sample, (b0 + cnt) * sample),
                                     [cnt, ...rest]);
      const y = (await session.run(feeds))[outName].data;
      const k = y.length / cnt;
      for (let i = 0; labels && i < cnt; i++) {
        let arg = 0;
        for (let j = 1; j < k; j++) if (y[i * k + j] > y[i * k + arg]) arg = j;
        if (BigInt(arg) === labels[b0 + i]) correct++;
      }
    }
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  const res = { samples: n };
  if (labels) res.accuracy = correct / n;
  res.seconds = best;
  res.samples_per_second = n / best;
  res.batch = batch;
  process.stdout.write(JSON.stringify(res) + '\n');
  return 0;
}

main(process.argv).then((rc) => process.exit(rc), (e) => {
  process.stderr.write('ort_eval: ' + (e && e.message ? e.message : String(e)) + '\n');
  process.exit(1);
});
