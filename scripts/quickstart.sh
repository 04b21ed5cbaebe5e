#!/usr/bin/env bash
# Starts a local QUIVer network on 127.0.0.1 — one bootstrap node and three nodes, each a
# separate process started with the commands users run — and prints what each node sees.
# Everything stops when the script ends (or on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p quiver-cli >&2
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

start() { # name, args...
  local name=$1; shift
  "$bin/quiver-node" "$@" --listen-ip 127.0.0.1 --port 0 --api 127.0.0.1:0 --heartbeat-interval 2 \
    --data-dir "$work/$name" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q '^api on' "$work/$name.out" 2>/dev/null && return 0; sleep 0.1; done
  echo "$name did not start; its log:" >&2; cat "$work/$name.log" >&2; exit 1
}

echo "== starting a bootstrap node: quiver-node --bootstrap-node --port 0"
start boot --bootstrap-node
cat "$work/boot.out"
addr=$(grep -m1 '^listening on .*/tcp/' "$work/boot.out" | sed 's/^listening on //')
for i in 1 2 3; do
  echo "== starting node $i: quiver-node --bootstrap $addr"
  start "node$i" --bootstrap "$addr"
done
echo "== waiting for the nodes to find each other through the DHT and hear each other's heartbeats"
for _ in $(seq 60); do
  n=$("$bin/quiver" status --json --data-dir "$work/node3" 2>/dev/null | grep -c '"agent_version"' || true)
  [ "${n:-0}" -ge 3 ] && break
  sleep 0.5
done
for name in boot node1 node2 node3; do
  echo
  echo "== quiver status ($name)"
  "$bin/quiver" status --data-dir "$work/$name"
done
