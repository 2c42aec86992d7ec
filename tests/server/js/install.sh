#!/bin/sh
# Installs the pinned client libraries used by client_test.mjs into DIR (the build tree).
set -eu
DIR="$1"
mkdir -p "$DIR"
if [ -f "$DIR/node_modules/openai/package.json" ] && [ -f "$DIR/node_modules/ollama/package.json" ] &&
   grep -q '"version": "7.57.0"' "$DIR/node_modules/openai/package.json" &&
   grep -q '"version": "0.6.4"' "$DIR/node_modules/ollama/package.json"; then
  exit 0
fi
cd "$DIR"
[ -f package.json ] || echo '{"name":"tessera-serve-client-tests","private":true}' > package.json
npm install --no-audit --no-fund --loglevel=error --save-exact openai@7.57.0 ollama@0.6.4
