#!/bin/sh
# Totals over a results directory: tasks done, bytes hashed.
set -eu
dir=${1:-results}
cat "$dir"/*.result | awk '{ n++; bytes += $2 } END { printf "%d files, %d bytes\n", n, bytes }'
