#!/usr/bin/env bash
# Greedy chats through a QUIVer gateway equal upstream llama-server's, byte for byte, when both run
# the same llama.cpp sources with the same ggml CPU features (see bench/equality.py).
#
#   bench/equality.sh                        # prints the comparison; exit 1 if any answer differs
#   bench/equality.sh --out bench/EQUALITY.md
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/prepare.sh
UPSTREAM=$(bench/upstream.sh --portable)
exec python3 bench/equality.py --bin "$BENCH_BIN" --upstream "$UPSTREAM" --models-dir "$BENCH_MODELS" "$@"
