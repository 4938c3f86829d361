#!/bin/sh
# run_bench.sh - the issue-3 kernel benchmark: ours (bench_passes) next to
# numpy / scikit-learn (numpy_peer.py) on the same inputs.  A benchmark,
# not a test: it prints a table and exits 0 whatever the figures.
#
#   tests/bench/run_bench.sh [BUILDDIR]
#
# BUILDDIR (default $SLIMD_BUILDDIR, else .) holds tests/bench/bench_passes.
# Environment: SLIMD_BENCH_THREADS (ours, default 2), SLIMD_BENCH_DATA (a
# folder to keep the ~330 MB of inputs in, reused when present; default a
# temporary one, removed at exit), SLIMD_BENCH_FULL=1 (also time
# scikit-learn's k-means on 16M weights: minutes), SLIMD_BENCH_NO_PEER=1.
# Run it on an otherwise idle machine: it uses every core.
set -eu

builddir=${1:-${SLIMD_BUILDDIR:-.}}
srcdir=$(cd "$(dirname "$0")/../.." && pwd)
bench="$builddir/tests/bench/bench_passes"
python=/usr/bin/python3

if [ ! -x "$bench" ]; then
    echo "run_bench.sh: $bench not built (make check builds it)" >&2
    exit 1
fi

if [ -n "${SLIMD_BENCH_DATA:-}" ]; then
    data=$SLIMD_BENCH_DATA
    mkdir -p "$data"
else
    data=$(mktemp -d "${TMPDIR:-/tmp}/slimd-bench-XXXXXX")
    trap 'rm -rf "$data"' EXIT INT TERM
fi

if [ ! -f "$data/lr4096.f32" ]; then
    echo "generating inputs in $data ..." >&2
    "$bench" gen "$data"
fi

peer="$data/peer.txt"
: > "$peer"
if [ -n "${SLIMD_BENCH_NO_PEER:-}" ]; then
    echo "SLIMD_BENCH_NO_PEER set: ours only" >&2
elif "$python" -c 'import numpy, sklearn' 2>/dev/null; then
    echo "running the numpy / scikit-learn peer (about a minute) ..." >&2
    "$python" "$srcdir/tests/bench/numpy_peer.py" "$data" > "$peer"
else
    echo "no numpy / scikit-learn under $python: ours only" >&2
fi

"$bench" run "$data" "$peer"
