#!/bin/sh
# bench_jobs.sh - the issue-8 whole-job benchmark: `slimd compress`, the
# same job on a running daemon, and the same work as a numpy (and torch,
# where it imports) script, on one 1 GiB fp32 model, side by side.  A
# benchmark, not a test: it prints a table and exits 0 whatever the
# figures.  The work is done by jobs_peer.py (see its opening comment);
# this driver finds the programs and owns the clean-up.
#
#   tests/bench/bench_jobs.sh          (or: make bench-jobs)
#
# Environment:
#   SLIMD_BIN           the slimd to time (default $SLIMD_BUILDDIR/slimd, else ./slimd)
#   SLIMD_BENCH_DIR     where the model is cached (default $TMPDIR/slimd-bench-jobs);
#                       the run's scratch (daemon data dir, outputs) goes there too
#                       and is removed at exit, Ctrl-C included
#   SLIMD_BENCH_SPECS   comma list of int8, int4-g128, prune50, 2:4+int8,
#                       cluster16, lowrank256, prune50-global (default all)
#   SLIMD_BENCH_REPEAT  runs per measurement (default 2; best and range shown)
#   SLIMD_BENCH_BIG=1   also an 8 GiB bf16 checkpoint in 4 shards, compressed
#                       through its model.safetensors.index.json
# About 15 minutes with the defaults on 2 cores; disk: 1 GiB cached, up
# to 8 GiB of scratch (and 8 GiB more cached with SLIMD_BENCH_BIG=1).
# Run it on an otherwise idle machine: every process uses every core.
set -eu

srcdir=$(cd "$(dirname "$0")/../.." && pwd)
slimd=${SLIMD_BIN:-${SLIMD_BUILDDIR:-.}/slimd}
if [ ! -x "$slimd" ]; then
    echo "bench_jobs.sh: $slimd is not an executable; build slimd or set SLIMD_BIN" >&2
    exit 1
fi
slimd=$(cd "$(dirname "$slimd")" && pwd)/$(basename "$slimd")

# Debian's numpy and torch are importable by the system interpreter only.
if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=python3; fi
if ! "$python" -c 'import numpy' 2>/dev/null; then
    echo "bench_jobs.sh: $python cannot import numpy (apt-get install python3-numpy)" >&2
    exit 1
fi

workdir=${SLIMD_BENCH_DIR:-${TMPDIR:-/tmp}/slimd-bench-jobs}
mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd)
run=$(mktemp -d "$workdir/run-XXXXXX")
pid=

# jobs_peer.py stops its daemon and removes $run itself; this is the
# backstop for when it could not (killed, or stuck).
cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || :
        wait "$pid" 2>/dev/null || :
    fi
    # the daemon and the process being timed each lead a process group
    for f in "$run/daemon.pid" "$run/child.pid"; do
        [ -f "$f" ] || continue
        gid=$(cat "$f")
        if kill -0 "$gid" 2>/dev/null; then
            kill -TERM -- "-$gid" 2>/dev/null || :
            sleep 2
            kill -KILL -- "-$gid" 2>/dev/null || :
        fi
    done
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# In the background so that a signal reaches the trap at once (a
# foreground child would hold the trap until it ended).
"$python" "$srcdir/tests/bench/jobs_peer.py" bench --slimd "$slimd" --workdir "$workdir" \
    --tmp "$run" &
pid=$!
rc=0
wait "$pid" || rc=$?
pid=
exit "$rc"
