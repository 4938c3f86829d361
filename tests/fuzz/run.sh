#!/bin/bash
# tests/fuzz/run.sh TARGET SECONDS: runs one libFuzzer target (fuzz_spec,
# or spec) of build-fuzz/ (tests/fuzz/build.sh) for SECONDS on its
# committed seed corpus, tests/fuzz/corpus/<name>/, which it only reads;
# what the run finds goes to a scratch corpus in build-fuzz/work/<name>/,
# kept between runs so that later runs start from it.  Fails (exit 1) on
# any crash, leak, timeout, out-of-memory or sanitizer report; the
# input that caused it is saved as build-fuzz/artifacts/<name>-crash-...
# and the report is printed.  Prints one summary line:
#   fuzz_spec: ok, 123456 runs in 30 s (4115/s), cov 1234 ft 5678, corpus 87
# Extra libFuzzer flags may follow SECONDS.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
[ $# -ge 2 ] || { echo "usage: $0 TARGET SECONDS [libFuzzer flags]" >&2; exit 2; }
name=${1#fuzz_}
secs=$2
shift 2
out=${SLIMD_FUZZ_BUILD:-$src/build-fuzz}
bin=$out/build/tests/fuzz/fuzz_$name
seeds=$here/corpus/$name
[ -x "$bin" ] || { echo "fuzz_$name: $bin is missing (run tests/fuzz/build.sh)" >&2; exit 2; }
[ -d "$seeds" ] || { echo "fuzz_$name: no seed corpus $seeds" >&2; exit 2; }
work=$out/work/$name
arts=$out/artifacts
mkdir -p "$work" "$arts"
log=$out/fuzz_$name.log
dict=()
[ -f "$here/$name.dict" ] && dict=(-dict="$here/$name.dict")

# ASan: leaks are errors, and a report ends the run; UBSan is already
# fatal (-fno-sanitize-recover).  -rss_limit_mb: a parser that lets an
# input make it allocate gigabytes is a bug here, as it would be in the
# daemon.  -timeout: one input taking 10 s is a hang.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$arts/$name-" "${dict[@]}" "$@" "$work" "$seeds" >"$log" 2>&1
rc=$?

stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
runs=$(stat number_of_executed_units)
rate=$(stat average_exec_per_sec)
# the last status line, "#N DONE cov: C ft: F corp: K/..." (or the last
# "#N ... cov: ..." when the run stopped early)
last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1)
cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
bad=$(grep -cE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: (Address|Leak|UndefinedBehavior)Sanitizer|fuzz property failed' "$log")
if [ $rc -ne 0 ] || [ "$bad" -ne 0 ]; then
    echo "fuzz_$name: FAILED (exit $rc) after ${runs:-?} runs; the report (from $log):"
    grep -nE -A40 'ERROR: |runtime error:|fuzz property failed|==[0-9]+== ' "$log" | head -80
    ls -t "$arts"/"$name"-* 2>/dev/null | head -3 | sed 's/^/  input saved as /'
    exit 1
fi
echo "fuzz_$name: ok, ${runs:-0} runs in $secs s (${rate:-0}/s), cov ${cov:-?} ft ${ft:-?}, corpus ${corp:-?}"
