#!/bin/bash
# tests/sanitize.sh: the whole test suite (`make check`: unit tests, and
# the integration tests, which start the daemon and the CLI) built with
# AddressSanitizer and UndefinedBehaviorSanitizer, in build-asan/ (or
# $SLIMD_ASAN_BUILD), from a `make distdir` copy of this tree, so the
# tree's own build is left alone.  gcc's runtimes; -O1 keeps it fast
# enough, -fno-sanitize-recover makes any UB fatal.
#
# Every sanitized process (the daemon, each `slimd compress`, each unit
# test) writes its ASan and LeakSanitizer reports to build-asan/reports/
# (log_path) rather than to a stderr that a test may not keep; UBSan's go
# to stderr (gcc's runtime ignores log_path for them) and are found in
# the tests' logs.  Both are counted and printed at the end, each as a
# failure of its own (a report usually also fails the test it broke).  Leaks count: LeakSanitizer runs
# when a process exits, and the daemon must exit 0 on SIGTERM with
# nothing leaked (the harness checks the exit status of every daemon it
# stops).  A daemon killed with SIGKILL (the crash tests) is not checked
# for leaks: it never reaches exit.
#
# Output: make check's summary, the reports, then one line
#   ASan+UBSan suite: 228 tests, 228 passed, 0 failed, 0 sanitizer reports
# and the file build-asan/summary ("PASS FAIL REPORTS") for
# scripts/slimd-test.  Exit 0 when nothing failed and nothing was
# reported.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
out=${SLIMD_ASAN_BUILD:-$PWD/build-asan}
jobs=${SLIMD_JOBS:-$(nproc)}
flags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
rm -f "$out/summary"
if ! slimd_variant_build "$out" CC=gcc CFLAGS="$flags" || ! make -C "$out/build" -s -j"$jobs"; then
    echo "ASan+UBSan suite: the sanitizer build failed"
    mkdir -p "$out" && echo "0 1 0" >"$out/summary"
    exit 1
fi
reports=$out/reports
rm -rf "$reports" && mkdir -p "$reports"
# verify_asan_link_order=0: a test may LD_PRELOAD a shim (a failing
# write, a full disk) in front of the daemon, and ASan would otherwise
# refuse to start when its runtime is not first.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:log_path=$reports/asan:verify_asan_link_order=0:print_summary=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="print_suppressions=0"
export SLIMD_SANITIZED=1   # tests skip their memory bounds (slimd_harness.py)
# the ONNX Runtime tests use the tree's node_modules (scripts/ort.sh),
# which is installed, not distributed
[ -d tests/ort/node_modules ] && ln -sfn "$PWD/tests/ort/node_modules" "$out/src/tests/ort/node_modules"
make -C "$out/build" -j"$jobs" check >"$out/check.log" 2>&1
check=$?
grep -E '^(# (TOTAL|PASS|SKIP|XFAIL|FAIL|XPASS|ERROR):|(FAIL|ERROR): )' "$out/check.log"

count() { sed -n "s/^# $1: *//p" "$out/build/test-suite.log" 2>/dev/null | head -1; }
pass=$(count PASS); fail=$(count FAIL); err=$(count ERROR); xpass=$(count XPASS); total=$(count TOTAL)
pass=${pass:-0}; total=${total:-0}
failed=$(( ${fail:-0} + ${err:-0} + ${xpass:-0} ))
[ $check -ne 0 ] && [ $failed -eq 0 ] && failed=1
n_reports=0
for f in "$reports"/*; do
    [ -f "$f" ] || continue
    n_reports=$((n_reports + 1))
    echo "---- sanitizer report $(basename "$f") ----"
    head -60 "$f"
done
# gcc's UBSan writes to stderr whatever log_path says: its reports are
# found in the tests' logs (a daemon's stderr is in the log of the test
# it broke, which the harness prints when the daemon dies or exits badly)
while IFS= read -r hit; do
    n_reports=$((n_reports + 1))
    echo "---- UBSan: $hit"
done < <(grep -rhoE --include='*.log' '[^ ]+:[0-9]+:[0-9]+: runtime error: .*' "$out/build/tests" |
         sort -u)
echo "$pass $failed $n_reports" >"$out/summary"
echo "ASan+UBSan suite: $total tests, $pass passed, $failed failed, $n_reports sanitizer reports"
[ $failed -eq 0 ] && [ $n_reports -eq 0 ]
