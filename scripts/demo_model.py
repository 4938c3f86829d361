#!/usr/bin/env python3
"""Writes a small demo model as safetensors, with the standard library only:
two Gaussian weight matrices (F32), their biases, and an I64 position table.
Usage: python3 scripts/demo_model.py OUT.safetensors [ROWS COLS]"""
import json
import random
import struct
import sys


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes), written in order."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, raw in tensors:
            f.write(raw)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "demo.safetensors"
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    cols = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    rng = random.Random(1234)

    def gauss(n, std):
        return struct.pack("<%df" % n, *(rng.gauss(0.0, std) for _ in range(n)))

    write_safetensors(out, [
        ("encoder.fc1.weight", "F32", [rows, cols], gauss(rows * cols, 0.05)),
        ("encoder.fc1.bias", "F32", [rows], gauss(rows, 0.01)),
        ("encoder.fc2.weight", "F32", [cols, rows], gauss(rows * cols, 0.05)),
        ("encoder.fc2.bias", "F32", [cols], gauss(cols, 0.01)),
        ("position_ids", "I64", [1, 16], struct.pack("<16q", *range(16))),
    ], {"format": "pt", "source": "slimd demo"})
    print(out)


if __name__ == "__main__":
    main()
