#!/bin/bash
# Installs what the engine's comparison with ONNX Runtime needs, skipping
# what is already there: python3-onnx and the Fashion-MNIST test set from
# Debian (the model builders of tests/integration/test_engine_ort.py and
# the images of tests/bench/bench_engine.sh), node and npm from Debian
# when there is no node at all, and onnxruntime-node (CPU; its runtime
# ships inside the npm package) into tests/ort/node_modules from
# tests/ort/package-lock.json.  --ignore-scripts: the package's install
# script only tries to download GPU binaries, which the CPU tests do not
# use.  Run from anywhere; exits non-zero when something cannot be had.
set -e
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/deps.sh"
extra="python3-onnx dataset-fashion-mnist"
command -v node >/dev/null 2>&1 || extra="$extra nodejs"
command -v npm >/dev/null 2>&1 || extra="$extra npm"
slimd_install_deps $extra
npm_ci() { (cd "$here/tests/ort" && npm ci --ignore-scripts --no-audit --no-fund "$@"); }
if [ ! -d "$here/tests/ort/node_modules/onnxruntime-node" ]; then
    echo "installing onnxruntime-node into tests/ort"
    # Some networks (CI sandboxes) re-sign TLS with a private CA that
    # Debian's npm does not trust, and the registry request fails.  Every
    # package is pinned by its sha512 in package-lock.json, which npm ci
    # checks whatever the transport, so the retry without TLS
    # verification cannot install anything but the locked bytes.
    npm_ci || {
        echo "npm ci failed; retrying without TLS verification (package-lock.json's sha512s still hold)"
        rm -rf "$here/tests/ort/node_modules"
        npm_ci --strict-ssl=false
    }
fi
node -e "require('$here/tests/ort/node_modules/onnxruntime-node')" \
    || { echo "onnxruntime-node does not load under $(node --version)" >&2; exit 1; }
