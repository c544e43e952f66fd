#!/bin/sh
# Builds the plugin component: dist/plugin.wasm.
set -eu
cd "$(dirname "$0")"
if [ ! -f wit/deps/edgesync/plugin.wit ]; then
  echo "wit/deps/edgesync/plugin.wit is missing: copy sdk/wit/plugin.wit of edgesync there (see README)" >&2
  exit 1
fi
mkdir -p dist
exec componentize-py --wit-path wit --world plugin componentize app --output dist/plugin.wasm
