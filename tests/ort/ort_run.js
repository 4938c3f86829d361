#!/usr/bin/env node
// ort_run.js - runs an ONNX model with ONNX Runtime (onnxruntime-node, CPU)
// the way `slimd infer` runs it with slimd's engine, so the engine tests
// can compare the two outputs.
//
//   node ort_run.js MODEL.onnx INPUT.safetensors OUTPUT.safetensors [--opt LEVEL]
//
// INPUT holds the tensor `input` (F32; F16/F64 are not read); it is fed
// to the model's first input with its own shape.  The model's first
// output is written to OUTPUT as the F32 tensor `output` with its shape
// (integer and bool outputs are converted to float, as slimd infer does).
// LEVEL is ONNX Runtime's graphOptimizationLevel: disabled (the default:
// each node as the graph says, what the engine is compared against), basic,
// extended or all.
//
// safetensors is read and written here by hand (an 8-byte little-endian
// header length, a JSON header, the data): it is a few lines, and the
// npm package would be one more dependency.  Exit status 0 on success, 1
// with a message on stderr otherwise.
'use strict';
const fs = require('fs');
const path = require('path');

function loadOrt() {
  // tests/ort/node_modules, wherever this script is run from
  return require(path.join(__dirname, 'node_modules', 'onnxruntime-node'));
}

function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const base = 8 + n;
  const out = {};
  for (const [name, e] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [a, b] = e.data_offsets;
    out[name] = { dtype: e.dtype, shape: e.shape, bytes: buf.subarray(base + a, base + b) };
  }
  return out;
}

function writeSafetensors(file, tensors) {
  const header = {};
  let off = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.bytes.length] };
    off += t.bytes.length;
  }
  let h = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (h.length % 8)) % 8;
  h = Buffer.concat([h, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  fs.writeFileSync(file, Buffer.concat([len, h, ...Object.values(tensors).map((t) => t.bytes)]));
}

function f32(bytes) {
  // copy: the file's bytes need not be 4-byte aligned
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  return new Float32Array(copy.buffer);
}

function toFloat32(data) {
  if (data instanceof Float32Array) return data;
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = Number(data[i]);
  return out;
}

async function main(argv) {
  const args = argv.slice(2);
  let opt = 'disabled';
  const pos = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--opt') opt = args[++i];
    else pos.push(args[i]);
  }
  if (pos.length !== 3 || !['disabled', 'basic', 'extended', 'all'].includes(opt)) {
    process.stderr.write('usage: node ort_run.js MODEL.onnx INPUT.safetensors ' +
                         'OUTPUT.safetensors [--opt disabled|basic|extended|all]\n');
    return 2;
  }
  const [model, input, output] = pos;
  const ort = loadOrt();
  const t = readSafetensors(input).input;
  if (!t || t.dtype !== 'F32') throw new Error(input + ': no F32 tensor "input"');
  const session = await ort.InferenceSession.create(model, {
    graphOptimizationLevel: opt,
    executionProviders: ['cpu'],
  });
  const feeds = {};
  feeds[session.inputNames[0]] = new ort.Tensor('float32', f32(t.bytes), t.shape);
  const res = await session.run(feeds);
  const y = res[session.outputNames[0]];
  const data = toFloat32(y.data);
  writeSafetensors(output, {
    output: { dtype: 'F32', shape: Array.from(y.dims), bytes: Buffer.from(data.buffer, data.byteOffset, data.byteLength) },
  });
  return 0;
}

if (require.main === module) {
  main(process.argv).then((rc) => process.exit(rc), (e) => {
    process.stderr.write('ort_run: ' + (e && e.message ? e.message : String(e)) + '\n');
    process.exit(1);
  });
}

module.exports = { loadOrt, readSafetensors, writeSafetensors, f32 };
