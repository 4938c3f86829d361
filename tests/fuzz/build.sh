#!/bin/bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.c) in build-fuzz/ (or
# $SLIMD_FUZZ_BUILD): libslimd and the targets compiled by clang with
# -fsanitize=fuzzer-no-link,address,undefined (coverage for libFuzzer,
# AddressSanitizer, UndefinedBehaviorSanitizer made fatal), linked with
# -fsanitize=fuzzer.  The sources are a `make distdir` copy of this tree
# (scripts/deps.sh: slimd_variant_build), so the tree's own build is left
# alone.  Installs clang and its runtimes when they are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/deps.sh
slimd_install_deps $FUZZ_DEPS
out=${SLIMD_FUZZ_BUILD:-$PWD/build-fuzz}
flags="-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined"
flags="$flags -fno-sanitize-recover=undefined"
slimd_variant_build "$out" CC=clang CFLAGS="$flags"
make -C "$out/build" -s -j"${SLIMD_JOBS:-$(nproc)}" fuzz-targets
echo "fuzz targets in $out/build/tests/fuzz"
