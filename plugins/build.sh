#!/usr/bin/env sh
# Builds every plugin in this workspace to a wasm32-wasip2 component and
# copies the .wasm files to OUT_DIR (default: ./dist).
#
#   plugins/build.sh [OUT_DIR]
#
# Installs the wasm32-wasip2 target with rustup if it is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/dist"}
target_dir=${CARGO_TARGET_DIR:-"$here/target"}

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        rustup target add wasm32-wasip2
    fi
fi

CARGO_TARGET_DIR="$target_dir" cargo build --release --target wasm32-wasip2 \
    --manifest-path "$here/Cargo.toml"

mkdir -p "$out"
for wasm in "$target_dir"/wasm32-wasip2/release/*.wasm; do
    cp "$wasm" "$out/"
    echo "built $(basename "$wasm")"
done
