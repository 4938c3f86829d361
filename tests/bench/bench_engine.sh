#!/bin/sh
# bench_engine.sh - the issue-6 engine benchmark: slimd's inference engine
# (`slimd eval`) next to ONNX Runtime (onnxruntime-node, CPU, all graph
# optimisations; tests/bench/ort_eval.js) on the 10,000 Fashion-MNIST test
# images, same machine, same run, same batch size, best of R whole-set
# runs each, for the Fashion-MNIST MLP 784-300-100-10 and two-conv CNN of
# tests/fixtures (or, without them, random-weight models of the same
# shapes: engine_prep.py).  A
# benchmark, not a test: it prints a table and exits 0 whatever the
# figures.
#
#   tests/bench/bench_engine.sh        (or: make bench-engine)
#
# Environment:
#   SLIMD_BIN            the slimd to time (default $SLIMD_BUILDDIR/slimd, else ./slimd)
#   SLIMD_BENCH_DIR      where the models and images go (default $TMPDIR/slimd-bench-engine)
#   SLIMD_BENCH_BATCH    samples per run (default 256)
#   SLIMD_BENCH_REPEAT   whole-set runs per measurement (default 5)
# Needs scripts/ort.sh's packages (python3-onnx, dataset-fashion-mnist,
# node, tests/ort/node_modules).  About a minute on 2 cores; run it on an
# otherwise idle machine: both runtimes use every core.
set -eu

srcdir=$(cd "$(dirname "$0")/../.." && pwd)
slimd=${SLIMD_BIN:-${SLIMD_BUILDDIR:-.}/slimd}
if [ ! -x "$slimd" ]; then
    echo "bench_engine.sh: $slimd is not an executable; build slimd or set SLIMD_BIN" >&2
    exit 1
fi
if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=python3; fi
if ! "$python" -c 'import numpy, onnx' 2>/dev/null; then
    echo "bench_engine.sh: $python cannot import numpy and onnx (run scripts/ort.sh)" >&2
    exit 1
fi
if ! command -v node >/dev/null || [ ! -d "$srcdir/tests/ort/node_modules/onnxruntime-node" ]; then
    echo "bench_engine.sh: node or tests/ort/node_modules is missing (run scripts/ort.sh)" >&2
    exit 1
fi
batch=${SLIMD_BENCH_BATCH:-256}
repeat=${SLIMD_BENCH_REPEAT:-5}
dir=${SLIMD_BENCH_DIR:-${TMPDIR:-/tmp}/slimd-bench-engine}
mkdir -p "$dir"
"$python" "$srcdir/tests/bench/engine_prep.py" "$dir"
# the trained fixtures, when the tree has them, replace the random-weight
# models of the same shapes (same time; accuracies that mean something)
for m in mlp cnn; do
    if [ -f "$srcdir/tests/fixtures/$m.onnx" ]; then cp "$srcdir/tests/fixtures/$m.onnx" "$dir/$m.onnx"; fi
done

field() {   # field JSON KEY: a number from a one-line JSON object
    printf '%s' "$1" | "$python" -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$2"
}

# OpenBLAS picks its kernels from the CPU model; a model newer than the
# installed OpenBLAS knows gets its generic Prescott (SSE3) kernels (the
# case on this project's machines: Debian 12's 0.3.21 on a Xeon model
# 207).  slimd then sets OPENBLAS_CORETYPE from the CPU's flags and runs
# itself again (daemon/main.c); the core printed is the one it ends up
# with (OpenBLAS prints one line per load).  The "Prescott" row runs
# slimd with OPENBLAS_CORETYPE=Prescott, to show what the fallback costs.
core=$(OPENBLAS_VERBOSE=2 "$slimd" --version 2>&1 | sed -n 's/^Core: //p' | tail -n 1)
first=$(OPENBLAS_VERBOSE=2 "$slimd" --version 2>&1 | sed -n 's/^Core: //p' | head -n 1)
alt=
if [ "$first" = Prescott ] && [ "$core" != Prescott ] && [ -z "${OPENBLAS_CORETYPE:-}" ]; then
    alt=Prescott
fi

printf 'engine benchmark: %s images, batch %s, best of %s, %s cores, OpenBLAS core %s, %s\n' \
    10000 "$batch" "$repeat" "$(nproc)" "${core:-unknown}" \
    "$(node -e "console.log('onnxruntime-node ' + require('$srcdir/tests/ort/node_modules/onnxruntime-node/package.json').version)")"
printf '%-6s %-26s %10s %10s %8s %10s %10s\n' model slimd "slimd s" "ORT s" ratio "slimd acc" "ORT acc"
for m in mlp cnn; do
    o=$(node "$srcdir/tests/bench/ort_eval.js" "$dir/$m.onnx" "$dir/fashion-test.safetensors" \
        --batch "$batch" --repeat "$repeat")
    os=$(field "$o" seconds)
    for ct in "" $alt; do
        if [ -n "$ct" ]; then
            s=$(OPENBLAS_CORETYPE=$ct "$slimd" eval "$dir/$m.onnx" "$dir/fashion-test.safetensors" \
                --batch "$batch" --repeat "$repeat")
            label="OPENBLAS_CORETYPE=$ct"
        else
            s=$("$slimd" eval "$dir/$m.onnx" "$dir/fashion-test.safetensors" --batch "$batch" \
                --repeat "$repeat")
            label="default (${core:-?})"
        fi
        ss=$(field "$s" seconds)
        printf '%-6s %-26s %10.4f %10.4f %7.2fx %10.4f %10.4f\n' "$m" "$label" "$ss" "$os" \
            "$(echo "$ss $os" | awk '{ print $1 / $2 }')" "$(field "$s" accuracy)" \
            "$(field "$o" accuracy)"
    done
done
echo "ratio: slimd's time over ONNX Runtime's (CPU, graphOptimizationLevel all; target: at most 1.5)"
