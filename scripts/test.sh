#!/usr/bin/env bash
# The whole test suite, on a fresh machine. Installs what the tests need:
# the wasm32-wasip2 target (plugins are built from source by the test build),
# Python's aioquic + msgpack (independent QUIC interop client), Debian's
# prometheus/promtool (metrics tests scrape a real Prometheus server), Debian's
# nats-server (the JetStream bridge tests) and the
# plugin toolchains of every guest language (scripts/guest-toolchains.sh: the
# tests build each language's template from source with `edgesync plugin build`).
# The fuzz slice at the end needs nightly and cargo-fuzz (scripts/fuzz.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2

if ! python3 -c 'import aioquic, msgpack' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check aioquic msgpack || echo "warning: pip install aioquic msgpack failed; the QUIC interop test will report it"
fi

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
      || echo "warning: could not install prometheus; the metrics tests will report it"
  fi
fi

# Debian's nats-server (JetStream): the bridge tests (tests/tests/bridge_jetstream.rs)
# start their own `nats-server -js` on 127.0.0.1.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null) \
      || echo "warning: could not install nats-server; the bridge tests will report it"
  fi
fi

./scripts/guest-toolchains.sh

# House rules first (cheap), then every test. Tests start gateways and clients in
# parallel; two threads per core is plenty here.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
# The guest SDK is its own workspace (it targets wasm32-wasip2); its unit
# tests (unpacking, topic matching, batch verdicts) run on the host.
cargo test --manifest-path sdk/rust/Cargo.toml --locked
cargo test --workspace --locked "$@"

# --- JavaScript client (sdk/js) and the examples that use it ---------------------
# Node's test runner against the gateway binary the cargo tests just built, a page in
# headless Chromium, and examples/data-sync (receiver SIGKILLed mid-stream). The script
# installs Debian's chromium and the pinned npm packages itself. Skipped when arguments
# narrow the cargo run to some tests.
if [ "$#" -eq 0 ]; then
  ./sdk/js/test.sh
fi

# --- Fuzz slice -------------------------------------------------------------------
# 15 s per decoder target (8 targets, ~2 min; scripts/fuzz.sh installs nightly and
# cargo-fuzz when missing) from the committed seeds: a regression in a decoder's
# properties fails here. The long run (10^7 executions each) is `scripts/fuzz.sh`
# (fuzz/README.md). Skipped when arguments narrow the cargo run to some tests.
if [ "$#" -eq 0 ]; then
  ./scripts/fuzz.sh all 15
fi
