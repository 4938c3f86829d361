#!/bin/bash
# Installs what slimd needs to build, run and test on Debian 12, skipping
# what is already there.  Sourced by the other scripts; runs apt-get as
# root, or through sudo when there is one.  openssl (the command) makes
# the self-signed certificate of tests/integration/test_security.py;
# python3-yaml reads the served OpenAPI document (test_openapi.py) and
# the compose file (test_docker.py); strace lists the system calls
# test_systemd.py checks against the unit's SystemCallFilter; libpq-dev
# is PostgreSQL's client library (serve --store postgresql://...).
DEPS="build-essential autoconf automake libtool pkg-config ca-certificates curl
  libmicrohttpd-dev libjansson-dev libsqlite3-dev libpq-dev libopenblas-dev liblapacke-dev
  libuv1-dev libprotobuf-c-dev protobuf-c-compiler libonnx-dev libssl-dev libcmocka-dev zlib1g-dev
  libcurl4-openssl-dev
  python3 python3-numpy python3-yaml openssl strace"

slimd_install_deps() {
    local missing=() p
    for p in $DEPS "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "need root (or sudo) to apt-get install ${missing[*]}" >&2; return 1; }
        sudo=sudo
    fi
    $sudo apt-get update -q || return 1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
        "${missing[@]}" || return 1
}

# What the test suite adds (scripts/slimd-test installs them): chromium
# runs the dashboard and report pages headless in
# tests/integration/test_dashboard.py; man-db's `man` is what
# `systemd-analyze verify` checks the units' Documentation=man:slimd(8)
# with (tests/integration/test_systemd.py); postgresql-15 is the server
# that tests/integration/pg_harness.py starts privately (initdb, pg_ctl on
# a loopback port) for test_pgstore.py and `make check-pg`: only its
# binaries are used, never the system service the package sets up.
# swift-proxy, -account, -container and -object are the S3-compatible
# server (Swift's s3api middleware) that tests/integration/s3_harness.py
# starts on loopback for test_blobs.py (no Swift service is used).
TEST_DEPS="chromium man-db postgresql-15 swift-proxy swift-account swift-container swift-object"

# What the sanitizer stages of scripts/slimd-test add: clang and its
# runtimes for the libFuzzer targets (tests/fuzz/build.sh); gcc's own
# ASan and UBSan runtimes come with build-essential.
FUZZ_DEPS="clang libclang-rt-14-dev"

# slimd_variant_build DIR CONFIGURE-ARGS...: a second build of this tree
# with other compiler flags, in DIR/build, from a copy of the sources in
# DIR/src made by `make distdir` (a configured source tree cannot also
# host an out-of-tree build: automake's configure refuses).  The copy
# keeps the files' times and configure reruns only when the arguments
# change, so a second call rebuilds only what changed.  Run from the top
# of the tree.
slimd_variant_build() {
    local dir=$1
    shift
    [ -x configure ] || ./autogen.sh || return 1
    [ -f Makefile ] || ./configure || return 1
    mkdir -p "$dir/build" || return 1
    make -s distdir distdir="$dir/src" >/dev/null || return 1
    if [ ! -f "$dir/build/Makefile" ] || [ "$(cat "$dir/build/configure.args" 2>/dev/null)" != "$*" ]; then
        (cd "$dir/build" && ../src/configure -q "$@") || return 1
        echo "$*" >"$dir/build/configure.args"
    fi
}

slimd_build() {
    [ -x configure ] || ./autogen.sh || return 1
    [ -f Makefile ] || ./configure || return 1
    make -j"$(nproc)" || return 1
}
