#!/usr/bin/env bash
# The JavaScript client's tests, on a fresh machine: installs what they need (Debian's
# chromium for the browser test; npm packages pinned by package-lock.json), then runs
# Node's test runner against a real gateway (test/*.test.js, the browser test
# included), then the examples that use the client (examples/data-sync, work-queue, …).
#
# The gateway binary is $EDGESYNC_BIN, else target/debug/edgesync (cargo build first).
# Times are printed so the cost shows in the CI log.
set -euo pipefail
cd "$(dirname "$0")"
repo=$(cd ../.. && pwd)
started=$SECONDS
step() { echo "sdk/js: $* ($((SECONDS - started)) s)"; }

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "sdk/js: Node.js >= 20 is required (found $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  step "apt-get install chromium"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq -o DPkg::Lock::Timeout=300 chromium >/dev/null)
fi

# npm ci only when the lock file changed since the last one here (a stamp in
# node_modules), so a second run costs nothing.
npm_ci() {
  local want
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  if [ "$(cat node_modules/.lock-sha256 2>/dev/null)" != "$want" ]; then
    step "npm ci in $(basename "$PWD")"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" >node_modules/.lock-sha256
  fi
}
npm_ci

# The gateway under test: $EDGESYNC_BIN as given, else the workspace's debug build,
# brought up to date (a no-op after scripts/test.sh's cargo test built it).
if [ -z "${EDGESYNC_BIN:-}" ]; then
  step "cargo build --bin edgesync"
  (cd "$repo" && cargo build --locked --quiet --bin edgesync)
  export EDGESYNC_BIN="$repo/target/debug/edgesync"
fi

# --test-timeout: a behaviour that breaks fails its test instead of hanging the run
# (tests wait for messages that would then never come); no test comes near it.
step "node --test (client, codecs, routing, headless Chromium)"
node --test --test-reporter=spec --test-timeout=120000 test/*.test.js

cd "$repo/examples/data-sync"
npm_ci
step "node --test (examples/data-sync)"
node --test --test-reporter=spec --test-timeout=120000 test/*.test.js

# The examples with no npm dependency of their own (they import sdk/js; chat uses its playwright-core).
for example in work-queue task-distribution chat ha-cluster; do
  cd "$repo/examples/$example"
  step "node --test (examples/$example)"
  node --test --test-reporter=spec --test-timeout=120000 test/*.test.js
done
step "done"
