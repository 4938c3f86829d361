#!/bin/bash
# Installs what slimd needs to build, run and test on Debian 12, skipping
# what is already there.  Sourced by the other scripts; runs apt-get as
# root, or through sudo when there is one.  openssl (the command) makes
# the self-signed certificate of tests/integration/test_security.py.
DEPS="build-essential autoconf automake libtool pkg-config ca-certificates curl
  libmicrohttpd-dev libjansson-dev libsqlite3-dev libopenblas-dev liblapacke-dev
  libuv1-dev libprotobuf-c-dev protobuf-c-compiler libonnx-dev libssl-dev libcmocka-dev zlib1g-dev
  python3 python3-numpy openssl"

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

slimd_build() {
    [ -x configure ] || ./autogen.sh || return 1
    [ -f Makefile ] || ./configure || return 1
    make -j"$(nproc)" || return 1
}
