#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (all labels).
# Exit status is non-zero if anything fails. Extra arguments go to ctest,
# e.g. ./scripts/test.sh -L bus
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/common.sh

./scripts/deps.sh
build=${CITYOS_BUILD_DIR:-$root/build}
mkdir -p "$(dirname "$build")"
cityos_build "$build" RelWithDebInfo

cd "$build"
# Tests bind loopback port 0 and use temp dirs, so they run in parallel.
ctest --output-on-failure --timeout 600 -j "$(nproc)" "$@"
