#!/usr/bin/env bash
# Installs the build tree into a temp prefix, then configures, builds and runs
# examples/integrator as an outside project with find_package(cityos).
set -euo pipefail
src=$1
build=$2
tmp=$(mktemp -d /tmp/cityos-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" > "$tmp/install.log"
test -f "$tmp/prefix/include/cityos/event.h"
test -f "$tmp/prefix/include/cityos/event/v1/event.pb.h"
test -f "$tmp/prefix/share/cityos/proto/cityos/event/v1/event.proto"
test -f "$tmp/prefix/lib/cmake/cityos/cityosConfig.cmake"
# Reuse the compiler cache and the build type of the main build.
launcher=()
if command -v ccache > /dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$src/examples/integrator" -B "$tmp/build" -G Ninja \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" > "$tmp/configure.log" \
  || { cat "$tmp/configure.log"; exit 1; }
cmake --build "$tmp/build" > "$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }
"$tmp/build/integrator_example"
echo "outside project built against the installed cityos and ran"
