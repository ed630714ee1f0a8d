#!/usr/bin/env bash
# Installs what cityos needs to build and test on Debian 12, as root.
# Idempotent: installs only what is missing. Also installs buf (proto lint,
# npm package @bufbuild/buf) into .tools/, which git ignores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  libssl-dev libboost-dev libgtest-dev libgmock-dev libbenchmark-dev
  libyaml-cpp-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev
  libsqlite3-dev
  libnats-dev nats-server            # bus benchmarks: the NATS peer, side by side
  mosquitto mosquitto-clients libmosquitto-dev   # carbon: smart-meter ingest over MQTT
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ! command -v npm > /dev/null; then
  command -v node > /dev/null || missing+=(nodejs)
  missing+=(npm)
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing packages: ${missing[*]}; run as root (or install them) and retry" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
  # The mosquitto package starts a system broker on port 1883; the tests start
  # their own on free ports, so do not leave one running that nobody asked for.
  if [[ " ${missing[*]} " == *" mosquitto "* ]] && command -v systemctl > /dev/null; then
    systemctl disable --now mosquitto > /dev/null 2>&1 || true
  fi
fi

buf_version=1.75.0
if ! "$root/.tools/node_modules/.bin/buf" --version 2> /dev/null | grep -qx "$buf_version"; then
  echo "deps: installing buf $buf_version into .tools/"
  mkdir -p "$root/.tools"
  npm install --silent --no-audit --no-fund --prefix "$root/.tools" "@bufbuild/buf@$buf_version" > /dev/null
fi
echo "deps: ok"
