#!/usr/bin/env bash
# QUIC vs WebSocket (plain and TLS) on the same gateway build (BENCHMARKS.md,
# "QUIC"): each `--transport all` run starts a fresh child gateway for ws, one
# for wss and one for QUIC, pinned to CPU 0, with the load generator on CPU 1;
# repeated (take medians with bench/summarize.py). The idle runs stay ws/QUIC.
#
#   CARGO_TARGET_DIR=/work/target-quic cargo build --release --locked --bin edgesync
#   bench/quic.sh [BIN] [OUT_DIR]
set -euo pipefail

BIN=${1:-${CARGO_TARGET_DIR:-target}/release/edgesync}
OUT=${2:-bench-results-quic}
REPEAT=${REPEAT:-3}
IDLE=${IDLE:-15000}
mkdir -p "$OUT"

B=(taskset -c 1 "$(dirname "$BIN")/edgesync-bench" --server-bin "$BIN" --server-cpus 0 --transport all)
I=(taskset -c 1 "$(dirname "$BIN")/edgesync-bench" --server-bin "$BIN" --server-cpus 0 --transport both)

for i in $(seq "$REPEAT"); do
  uptime >>"$OUT/load.txt"
  "${B[@]}" fanout -n 1000 -d 10 --json >"$OUT/fanout-$i.json"
  "${B[@]}" latency -n 1000 -r 100 -d 10 --json >"$OUT/latency-$i.json"
  "${B[@]}" latency -n 200 -r 100 -d 10 --json >"$OUT/latency200-$i.json"
  "${I[@]}" idle -n "$IDLE" --json >"$OUT/idle-$i.json"
done
uptime >>"$OUT/load.txt"
echo "results in $OUT"
