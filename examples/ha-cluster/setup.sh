#!/usr/bin/env bash
# Makes a three-node edgesync cluster in DIR (default ./cluster): the cluster CA and one
# node certificate per gateway (made with `edgesync cert`), and node-1.toml … node-3.toml,
# each listing the other two as peers (a mesh of three).
#
#   ./setup.sh [DIR]
#
# Ports (127.0.0.1): client WebSocket 7401-7403, QUIC 7441-7443, admin 7481-7483.
# Override with WS_PORTS, QUIC_PORTS, ADMIN_PORTS ("p1 p2 p3"). The admin token is
# $ADMIN_TOKEN (default "ha-demo-token"); data directories go under $DATA_ROOT (default
# DIR). The binary is $EDGESYNC_BIN, else `edgesync`.
# An existing DIR keeps its CA and certificates; the configs are rewritten.
set -euo pipefail
dir=${1:-cluster}
bin=${EDGESYNC_BIN:-edgesync}
read -r -a ws <<<"${WS_PORTS:-7401 7402 7403}"
read -r -a quic <<<"${QUIC_PORTS:-7441 7442 7443}"
read -r -a admin <<<"${ADMIN_PORTS:-7481 7482 7483}"
token=${ADMIN_TOKEN:-ha-demo-token}
data_root=${DATA_ROOT:-}
for list in ws quic admin; do
  declare -n l=$list
  if [ "${#l[@]}" -ne 3 ]; then
    echo "setup.sh: ${list^^}_PORTS needs three ports, got '${l[*]}'" >&2
    exit 2
  fi
done

mkdir -p "$dir/certs"
dir=$(cd "$dir" && pwd)
certs=$dir/certs
data_root=${data_root:-$dir}
[ -f "$certs/ca.pem" ] || "$bin" cert ca --out "$certs" >/dev/null
for i in 1 2 3; do
  [ -f "$certs/node-$i.pem" ] || "$bin" cert node "node-$i" --ca-dir "$certs" --out "$certs" >/dev/null
done

for i in 0 1 2; do
  n=$((i + 1))
  {
    cat <<TOML
# node-$n of the ha-demo cluster (written by setup.sh)
data_dir = "$data_root/node-$n-data"

[listen]
ws = "127.0.0.1:${ws[$i]}"
wss = "off"
quic = "127.0.0.1:${quic[$i]}"
admin = "127.0.0.1:${admin[$i]}"

[admin]
token = "$token"

[tls]
cert = "$certs/node-$n.pem"   # subject CN node-$n: the node id
key = "$certs/node-$n.key"

[cluster]
id = "ha-demo"
ca = "$certs/ca.pem"
keep_alive_ms = 500             # a dead peer is noticed after ~1.5 s
redial_min_ms = 100
redial_max_ms = 1000

# An ack on ha.> means the message is durable here AND on at least one other
# gateway: killing this one loses no acknowledged message.
[[topic]]
pattern = "ha.>"
ack = "replicated:1"
TOML
    for j in 0 1 2; do
      [ "$j" -eq "$i" ] && continue
      printf '\n[[peer]]\nurl = "quic://127.0.0.1:%s"   # node-%s\n' "${quic[$j]}" $((j + 1))
    done
  } >"$dir/node-$n.toml"
  "$bin" check-config "$dir/node-$n.toml" >/dev/null
done

urls="ws://127.0.0.1:${ws[0]},ws://127.0.0.1:${ws[1]},ws://127.0.0.1:${ws[2]}"
echo "cluster in $dir: node-1.toml node-2.toml node-3.toml"
echo "start each:   $bin serve --config $dir/node-N.toml"
echo "client URLs:  $urls"
