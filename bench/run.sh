#!/usr/bin/env bash
# Runs every scenario of BENCHMARKS.md: gateway and nats-server on CPU 0, the
# load generator on CPU 1, each run repeated (the machine is shared; take medians).
#
#   CARGO_TARGET_DIR=/work/target-bench cargo build --release -p edgesync -p edgesync-bench
#   bench/run.sh [BIN] [OUT_DIR]
#
# Needs nats-server (apt-get install -y nats-server); starts and stops its own.
set -euo pipefail

BIN=${1:-${CARGO_TARGET_DIR:-target}/release/edgesync}
OUT=${2:-bench-results}
REPEAT=${REPEAT:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"

taskset -c 0 nats-server -c "$HERE/nats.conf" >"$OUT/nats-server.log" 2>&1 &
NATS_PID=$!
trap 'kill "$NATS_PID" 2>/dev/null || true' EXIT
sleep 1

B=(taskset -c 1 "$(dirname "$BIN")/edgesync-bench" --server-bin "$BIN" --server-cpus 0 --nats-url ws://127.0.0.1:4223 --server-pid "$NATS_PID")

for i in $(seq "$REPEAT"); do
  "${B[@]}" --target both fanout -n 1000 -d 10 --json >"$OUT/fanout-$i.json"
  "${B[@]}" --target both latency -n 1000 -r 100 -d 10 --json >"$OUT/latency-$i.json"
  "${B[@]}" --target edgesync --fsync always latency -n 1000 -r 100 -d 10 --json >"$OUT/latency-fsync-$i.json"
  "${B[@]}" durable -c 16 -w 256 -d 10 --json >"$OUT/durable-w256-$i.json"
  "${B[@]}" durable -c 16 -w 32 -d 10 --json >"$OUT/durable-w32-$i.json"
done
"${B[@]}" idle -n 15000 --json >"$OUT/idle-edgesync.json"
"${B[@]}" --target nats idle -n 15000 --json >"$OUT/idle-nats.json"
echo "results in $OUT"
