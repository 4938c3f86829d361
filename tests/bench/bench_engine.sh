#!/bin/sh
# bench_engine.sh - the issue-6 engine benchmark: slimd's inference engine
# (`slimd eval`) next to ONNX Runtime (onnxruntime-node, CPU, all graph
# optimisations; tests/bench/ort_eval.js) on the 10,000 Fashion-MNIST test
# images, same machine, same run, same batch size, best of R whole-set
# runs each, for an MLP 784-300-100-10 and a two-conv CNN (the shapes of
# the Fashion-MNIST fixtures, random weights: engine_prep.py).  A
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

field() {   # field JSON KEY: a number from a one-line JSON object
    printf '%s' "$1" | "$python" -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$2"
}

printf 'engine benchmark: %s images, batch %s, best of %s, %s cores, %s\n' 10000 "$batch" \
    "$repeat" "$(nproc)" "$(node -e "console.log('onnxruntime-node ' + require('$srcdir/tests/ort/node_modules/onnxruntime-node/package.json').version)")"
printf '%-6s %12s %12s %9s %9s %8s\n' model "slimd s" "ORT s" "slimd acc" "ORT acc" ratio
for m in mlp cnn; do
    s=$("$slimd" eval "$dir/$m.onnx" "$dir/fashion-test.safetensors" --batch "$batch" --repeat "$repeat")
    o=$(node "$srcdir/tests/bench/ort_eval.js" "$dir/$m.onnx" "$dir/fashion-test.safetensors" \
        --batch "$batch" --repeat "$repeat")
    ss=$(field "$s" seconds)
    os=$(field "$o" seconds)
    printf '%-6s %12.4f %12.4f %9.4f %9.4f %7.2fx\n' "$m" "$ss" "$os" "$(field "$s" accuracy)" \
        "$(field "$o" accuracy)" "$(echo "$ss $os" | awk '{ print $1 / $2 }')"
done
echo "ratio: slimd's time over ONNX Runtime's (the target is at most 1.5)"
