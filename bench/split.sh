#!/usr/bin/env bash
# Benchmark: the default model split over 2 and 3 processes (a head and members, ggml RPC through
# QUIVer's tunnels) against upstream llama.cpp's own split (`ggml-rpc-server` members,
# `llama-server --rpc`, the same blocks per process) and against the whole model in one process
# (QUIVer's provider, upstream's llama-server), in one run; then the split layouts with 10 and
# 40 ms added each way (inside QUIVer's tunnels; in bench/delay_proxy.py for upstream). Reports
# tokens/s, time to first token, QUIVer ÷ upstream, RPC round trips and bytes per generated token.
# Builds the release binaries (unless BENCH_BIN is set), fetches the default model and builds
# upstream (bench/upstream.sh, with GGML_RPC=ON; cached in target/upstream).
#
#   bench/split.sh [--reps N (5)] [--max-tokens N (64)] [--threads N (2)] [--delays 10,40]
#                  [--context N (2048)] [--cache-ram MiB (0)] [--out FILE]
#
# --cache-ram is upstream llama-server's RAM prompt cache, off by default here: on, it copies the
# members' KV cache back over RPC before every request (a round trip per tensor), which QUIVer
# does not do.
#
# --out FILE also writes the report (Markdown), e.g. bench/SPLIT.md. Run it on an otherwise idle
# machine: the numbers are only comparable within one run.
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/prepare.sh
UPSTREAM=$(bench/upstream.sh)
exec python3 bench/split.py --bin "$BENCH_BIN" --upstream "$UPSTREAM" --models-dir "$BENCH_MODELS" \
  --command "bench/split.sh $*" "$@"
