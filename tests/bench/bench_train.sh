#!/bin/sh
# bench_train.sh - the issue-7 training benchmark: training throughput
# (samples/s, batch 128, Adam) of slimd's trainer (passes/engine/train.h,
# driven by tests/bench/bench_train) beside torch's (train_peer.py,
# torch.set_num_threads(2)) on the same 2 cores, the same Fashion-MNIST
# images and the same initial weights (torch's, exported to ONNX), for
# the MLP 784-300-100-10 and a CNN (two 3x3 convs of 32 and 64 channels
# with max-pooling, then 128 and 10 units); with the test accuracy each
# reaches after the epochs run.  A benchmark, not a test: it prints a table
# and exits 0 whatever the figures.
#
#   tests/bench/bench_train.sh        (or: make bench-train)
#
# Environment:
#   SLIMD_BUILDDIR        where tests/bench/bench_train was built (default .)
#   SLIMD_BENCH_DIR       models and data (default $TMPDIR/slimd-bench-train)
#   SLIMD_BENCH_THREADS   cores for both (default 2)
#   SLIMD_BENCH_EPOCHS    epochs of the MLP (default 2; the last one is timed)
#   SLIMD_BENCH_CNN_SAMPLES  training images for the CNN (default 10000: one
#                         epoch of the full set takes minutes on 2 cores)
# Needs python3-torch, python3-onnx, python3-numpy and dataset-fashion-mnist.
# A few minutes on 2 cores; run it on an otherwise idle machine.
set -eu

srcdir=$(cd "$(dirname "$0")/../.." && pwd)
bench=${SLIMD_BUILDDIR:-.}/tests/bench/bench_train
if [ ! -x "$bench" ]; then
    echo "bench_train.sh: $bench is not built (make tests/bench/bench_train)" >&2
    exit 1
fi
if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=python3; fi
if ! "$python" -c 'import numpy, onnx, torch' 2>/dev/null; then
    echo "bench_train.sh: $python cannot import numpy, onnx and torch" >&2
    exit 1
fi
threads=${SLIMD_BENCH_THREADS:-2}
epochs=${SLIMD_BENCH_EPOCHS:-2}
cnn_samples=${SLIMD_BENCH_CNN_SAMPLES:-10000}
dir=${SLIMD_BENCH_DIR:-${TMPDIR:-/tmp}/slimd-bench-train}
mkdir -p "$dir"
"$python" "$srcdir/tests/bench/train_peer.py" prep "$dir" >/dev/null 2>&1 ||
    "$python" "$srcdir/tests/bench/train_peer.py" prep "$dir"

field() {   # field JSON KEY
    printf '%s' "$1" | "$python" -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$2"
}

printf 'training benchmark: Fashion-MNIST, batch 128, Adam 1e-3, %s threads each, %s\n' \
    "$threads" "$("$python" -c 'import torch; print("torch " + torch.__version__)')"
printf '%-4s %8s %7s %14s %14s %7s %10s %10s\n' model samples epochs "slimd samp/s" \
    "torch samp/s" ratio "slimd acc" "torch acc"
for m in mlp cnn; do
    if [ $m = mlp ]; then n=60000; e=$epochs; else n=$cnn_samples; e=1; fi
    s=$(OPENBLAS_NUM_THREADS=$threads "$bench" "$dir/${m}_train.onnx" "$dir/fashion-train.safetensors" \
        "$dir/fashion-test.safetensors" --samples "$n" --epochs "$e" --threads "$threads" 2>/dev/null)
    t=$("$python" "$srcdir/tests/bench/train_peer.py" run "$dir" $m --samples "$n" --epochs "$e" \
        --threads "$threads")
    ss=$(field "$s" samples_per_s)
    ts=$(field "$t" samples_per_s)
    printf '%-4s %8s %7s %14s %14s %7s %10s %10s\n' $m "$n" "$e" "$ss" "$ts" \
        "$("$python" -c "print('%.2fx' % ($ss / $ts))")" \
        "$(field "$s" test_accuracy)" "$(field "$t" test_accuracy)"
done
