#!/usr/bin/env bash
# Installs the toolchains the guest-language template tests need
# (gateway/plugin-host/tests/guest_languages.rs), each only when it is
# missing or not the pinned version, so a second run costs a few checks:
#
# - JavaScript: Node.js ≥ 20 and npm (the template's `npm ci` brings
#   componentize-js, pinned by sdk/js/plugin/template/package-lock.json);
# - Python: componentize-py, pinned by sdk/python/template/requirements.txt;
# - C: Debian's clang, lld (wasm-ld), wasi-libc and compiler-rt for wasm32,
#   and wit-bindgen + wasm-tools from crates.io, pinned below.
#
# A failed install is reported and skipped: the test that needs the tool
# then fails and names the install step. Times are printed so the cost of a
# cold machine shows in the CI log.
set -uo pipefail
cd "$(dirname "$0")/.."

# Pinned here and in sdk/c/README.md and guest_languages.rs. wit-bindgen
# 0.61.1 is what the Rust SDK uses; wasm-tools 1.258 is built on the same
# wit-component 0.258 (an encoding wasmtime 48 reads).
WIT_BINDGEN_VERSION=0.61.1
WASM_TOOLS_VERSION=1.258.3

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
      || echo "warning: apt-get install ${packages[*]} failed; the guest-language tests will report it"
  else
    echo "warning: missing ${packages[*]} and not root with apt-get; the guest-language tests will report it"
  fi
fi

# --- Python: componentize-py -----------------------------------------------
pinned_py=$(sed -n 's/^componentize-py==//p' sdk/python/template/requirements.txt)
if [ "$(componentize-py --version 2>/dev/null)" != "componentize-py $pinned_py" ]; then
  step "pip install componentize-py==$pinned_py"
  python3 -m pip install --quiet --disable-pip-version-check -r sdk/python/template/requirements.txt \
    || echo "warning: pip install componentize-py failed; the Python template test will report it"
  # pyenv puts console scripts behind shims that need a rehash.
  if have pyenv; then pyenv rehash || true; fi
fi

# --- crates.io: wit-bindgen (C bindings), wasm-tools (component new) --------
# Only the features the C template uses: a full install takes twice as long.
if [ "$(wit-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$WIT_BINDGEN_VERSION" ]; then
  step "cargo install wit-bindgen-cli@$WIT_BINDGEN_VERSION"
  cargo install --quiet --locked "wit-bindgen-cli@$WIT_BINDGEN_VERSION" \
    --no-default-features --features c \
    || echo "warning: cargo install wit-bindgen-cli failed; the C template test will report it"
fi
if [ "$(wasm-tools --version 2>/dev/null | cut -d' ' -f2)" != "$WASM_TOOLS_VERSION" ]; then
  step "cargo install wasm-tools@$WASM_TOOLS_VERSION"
  cargo install --quiet --locked "wasm-tools@$WASM_TOOLS_VERSION" \
    --no-default-features --features component,validate,print,parse,metadata \
    || echo "warning: cargo install wasm-tools failed; the C template test will report it"
fi
step "ready"
