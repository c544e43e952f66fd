#!/bin/sh
# Builds the plugin component: dist/plugin.wasm (`./build.sh`, or
# `edgesync plugin build`, which installs what is missing and runs this).
#
# Tools: Zig 0.17 (PyPI `ziglang`: `python3 -m ziglang`), `wit-bindgen`
# 0.61.1 and `wasm-tools` 1.258.3 (crates.io), and the WASI preview1
# reactor adapter of wasmtime 48 (crates.io
# `wasi-preview1-component-adapter-provider` 48.0.8; Zig's standard
# library imports a few WASI preview1 calls, which it maps onto WASI 0.2).
set -eu
cd "$(dirname "$0")"
ZIG=${ZIG:-"python3 -m ziglang"}
WIT_BINDGEN=${WIT_BINDGEN:-wit-bindgen}
WASM_TOOLS=${WASM_TOOLS:-wasm-tools}
ADAPTER=${ADAPTER:-wasi_snapshot_preview1.reactor.wasm}
if [ ! -f wit/deps/edgesync/plugin.wit ]; then
  echo "wit/deps/edgesync/plugin.wit is missing: copy sdk/wit/plugin.wit of edgesync there" >&2
  exit 1
fi
set -x
mkdir -p gen build dist
# C bindings: the canonical ABI glue, compiled by `zig cc` with the C SDK
# (src/edgesync.c), which implements the exported hooks over the plugin's
# `es_plugin_init` / `es_plugin_on_message` (src/redact.zig).
$WIT_BINDGEN c wit --world plugin --out-dir gen >/dev/null
$ZIG build-exe src/redact.zig src/edgesync.c gen/plugin.c gen/plugin_component_type.o \
  -target wasm32-wasi -mexec-model=reactor -fno-entry -O ReleaseSmall -lc -Igen -Isrc \
  -femit-bin=build/plugin.core.wasm
$WASM_TOOLS component new build/plugin.core.wasm \
  --adapt "wasi_snapshot_preview1=$ADAPTER" -o dist/plugin.wasm
$WASM_TOOLS validate dist/plugin.wasm
