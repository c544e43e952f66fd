#!/usr/bin/env bash
# Fuzz the decoders (fuzz/README.md).
#
#   scripts/fuzz.sh                  every target until 10^7 executions each (the long run)
#   scripts/fuzz.sh record           one target until 10^7 executions
#   scripts/fuzz.sh all 15           every target for 15 s each (the slice scripts/test.sh runs)
#   scripts/fuzz.sh salvage 600      one target for 10 minutes
#
# Installs the nightly toolchain and cargo-fuzz when missing. Builds without a sanitizer
# (`-s none`: the code under test forbids `unsafe`; the targets bound memory themselves)
# into fuzz/target/. New inputs libFuzzer finds go to fuzz/target/corpus/<target>/, not to
# the committed seeds in fuzz/corpus/<target>/. A crash is written to
# fuzz/artifacts/<target>/ and fails the run; turn it into a unit test in the crate it
# concerns. Prints executions per second per target at the end.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

target="${1:-all}"
seconds="${2:-}"
runs=10000000

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked
fi

if [ "$target" = all ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
else
  targets=("$target")
fi

limits=(-runs="$runs" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1)
if [ -n "$seconds" ]; then
  limits+=(-max_total_time="$seconds")
fi

cargo +nightly fuzz build -s none
summary=()
for t in "${targets[@]}"; do
  mkdir -p "target/corpus/$t"
  log="target/fuzz-$t.log"
  echo "fuzz: $t ${seconds:+(${seconds} s)}"
  if ! cargo +nightly fuzz run -s none "$t" "target/corpus/$t" "corpus/$t" -- "${limits[@]}" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $t FAILED (log: fuzz/$log, input: fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  summary+=("$(printf '%-16s %12s executions %9s/s' "$t" "$execs" "$rate")")
done
printf '%s\n' "${summary[@]}"
