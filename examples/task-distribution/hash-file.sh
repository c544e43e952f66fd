#!/bin/sh
# One task for `edgesync work`: the path of a file on standard input → its SHA-256 and
# size in RESULTS_DIR, one result file per task (written to a temporary name and renamed,
# so a result is whole or absent, and a task run twice writes the same result once).
# Exit 0 acks the task; exit 3 (`--term-exit 3`) dead-letters a task whose file is gone;
# anything else is retried.
#
#   edgesync work tasks.hash --group hashers -- ./hash-file.sh results
set -eu
out=${1:?usage: hash-file.sh RESULTS_DIR}
path=$(cat)
if [ ! -f "$path" ]; then
  echo "no such file: $path" >&2
  exit 3
fi
# For the test: hang on this worker's STALL_AT-th task so it can be killed mid-task.
if [ -n "${STALL_AT:-}" ]; then
  n=$(($(cat "$STALL_STATE" 2>/dev/null || echo 0) + 1))
  echo "$n" >"$STALL_STATE"
  if [ "$n" -eq "$STALL_AT" ]; then
    echo "$path" >"$STALL_STATE.stalled"
    exec sleep 3600
  fi
fi
sum=$(sha256sum "$path" | cut -d' ' -f1)
size=$(wc -c <"$path" | tr -d ' ')
name=$(printf '%s' "$path" | sha256sum | cut -c1-16)
printf '%s %s %s\n' "$sum" "$size" "$path" >"$out/$name.tmp.$$"
mv "$out/$name.tmp.$$" "$out/$name.result"
# One line per completed run (appends of a short line are atomic).
printf '%s %s %s\n' "${EDGESYNC_SEQ:-?}" "${EDGESYNC_DELIVERY:-?}" "$path" >>"$out/runs.log"
