#!/bin/bash
# tests/fuzz/long.sh [SECONDS] [TARGET...]: the fuzzing benchmark.  Runs
# each target (default: all of them, one after another) for SECONDS
# (default 600, or $SLIMD_FUZZ_SECONDS) through tests/fuzz/run.sh, after
# building them (tests/fuzz/build.sh), and prints a table of what
# libFuzzer reported at the end of each run: executions, executions per
# second, coverage (cov: edges reached; ft: features, the finer measure
# libFuzzer keeps inputs for) and the corpus size.  The scratch corpora
# in build-fuzz/work/ carry over between runs; delete them for figures
# from the seeds alone.  Exit 1 when any target failed (its report is
# printed above the table).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-${SLIMD_FUZZ_SECONDS:-600}}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors spec onnx idx http upload)
log=$(mktemp)
if ! bash "$here/build.sh" >"$log" 2>&1; then
    tail -30 "$log"
    echo "long.sh: the fuzz build failed" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
rows=()
failed=0
for t in "${targets[@]}"; do
    line=$(bash "$here/run.sh" "$t" "$secs")
    rc=$?
    echo "$line"
    if [ $rc -ne 0 ]; then
        failed=1
        rows+=("$(printf '%-12s %8s  FAILED' "${t#fuzz_}" "$secs")")
        continue
    fi
    # "fuzz_spec: ok, 123456 runs in 30 s (4115/s), cov 1234 ft 5678, corpus 87"
    read -r runs rate cov ft corp < <(sed -E \
        's/.*ok, ([0-9]+) runs in [0-9]+ s \(([0-9]+)\/s\), cov ([0-9?]+) ft ([0-9?]+), corpus ([0-9?]+).*/\1 \2 \3 \4 \5/' \
        <<<"$line")
    rows+=("$(printf '%-12s %8s %12s %9s %7s %7s %7s' "${t#fuzz_}" "$secs" "$runs" "$rate" \
        "$cov" "$ft" "$corp")")
done
echo
printf '%-12s %8s %12s %9s %7s %7s %7s\n' target seconds execs execs/s cov ft corpus
printf '%s\n' "${rows[@]}"
exit $failed
