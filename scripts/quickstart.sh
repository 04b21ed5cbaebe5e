#!/usr/bin/env bash
# A local QUIVer network on 127.0.0.1 answering a real prompt with the default model
# (SmolLM2-135M-Instruct): a bootstrap node, a provider and a client, each a separate process
# started with the commands users run. Everything stops when the script ends (or on Ctrl-C).
#   ./scripts/quickstart.sh ["your prompt"]
set -euo pipefail
cd "$(dirname "$0")/.."
prompt=${1:-"What is the capital of France? Answer in one sentence."}
scripts/install-deps.sh
echo "== building (release; the first build takes several minutes)" >&2
cargo build --release --locked -p quiver-cli >&2
bin="${CARGO_TARGET_DIR:-target}/release"
models=target/models
"$bin/quiver" model fetch --models-dir "$models" >/dev/null
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

start() { # name, command, args...
  local name=$1; shift
  "$@" --listen-ip 127.0.0.1 --port 0 --api 127.0.0.1:0 --heartbeat-interval 2 \
    --data-dir "$work/$name" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 300); do grep -q '^api on' "$work/$name.out" 2>/dev/null && return 0; sleep 0.1; done
  echo "$name did not start; its log:" >&2; cat "$work/$name.log" >&2; exit 1
}

echo "== quiver-node --bootstrap-node --port 0"
start boot "$bin/quiver-node" --bootstrap-node
cat "$work/boot.out"
addr=$(grep -m1 '^listening on .*/tcp/' "$work/boot.out" | sed 's/^listening on //')
echo
echo "== quiver-provider --bootstrap $addr   (serves smollm2-135m on llama.cpp, CPU)"
start provider "$bin/quiver-provider" --bootstrap "$addr" --models-dir "$models"
cat "$work/provider.out"
echo
echo "== quiver-node --bootstrap $addr"
start node1 "$bin/quiver-node" --bootstrap "$addr"
echo
echo "== quiver ask --model smollm2-135m --max-tokens 100 \"$prompt\""
"$bin/quiver" ask --bootstrap "$addr" --listen-ip 127.0.0.1 --model smollm2-135m --max-tokens 100 "$prompt"
echo
echo "== the same, with the provider's signed receipt (quiver ask --json)"
"$bin/quiver" ask --bootstrap "$addr" --listen-ip 127.0.0.1 --model smollm2-135m --max-tokens 100 --json "$prompt"
echo
echo "== quiver status (node1)"
"$bin/quiver" status --data-dir "$work/node1"
