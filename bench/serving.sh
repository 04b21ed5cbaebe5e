#!/usr/bin/env bash
# Benchmark: one provider through the network (gateway) against upstream llama.cpp's
# llama-server at concurrency 1, 2, 4 and 8, plus time to first token, the claim route's cost,
# single-stream speed against llama-bench, the prompt cache's effect and the provider's memory.
# Builds the release binaries (unless BENCH_BIN is set), fetches the default model and builds
# upstream's llama-server and llama-bench (bench/upstream.sh, cached in target/upstream).
#
#   bench/serving.sh [--concurrency 1,2,4,8] [--reps N (3)] [--max-tokens N (128)] [--threads N (2)]
#                    [--context N (2048)] [--out FILE]
#
# --out FILE also writes the report (Markdown), e.g. bench/SERVING.md. Run it on an otherwise idle
# machine: the numbers are only comparable within one run.
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/prepare.sh
UPSTREAM=$(bench/upstream.sh)
exec python3 bench/serving.py --bin "$BENCH_BIN" --upstream "$UPSTREAM" --models-dir "$BENCH_MODELS" \
  --command "bench/serving.sh $*" "$@"
