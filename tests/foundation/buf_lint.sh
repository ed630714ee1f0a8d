#!/usr/bin/env bash
# Lints proto/ with buf (STANDARD rules, proto/buf.yaml). buf comes from the npm
# package @bufbuild/buf, installed by scripts/deps.sh into .tools/ (git-ignored).
set -euo pipefail
src=$1
buf=$src/.tools/node_modules/.bin/buf
if [ ! -x "$buf" ]; then
  echo "buf not found at $buf: run scripts/deps.sh (it installs @bufbuild/buf)" >&2
  exit 1
fi
cd "$src/proto"
"$buf" lint
echo "buf lint: clean ($(find cityos -name '*.proto' | wc -l) files)"
