#!/usr/bin/env bash
# Benchmark: the default model split over 2 and 3 processes (a head and members, ggml RPC through
# QUIVer's tunnels) against the whole model in one provider, in one run; then the split layouts
# with 10 and 40 ms added inside the tunnels (each way). Reports tokens/s, time to first token,
# RPC round trips and tunnel bytes per generated token.
#
#   bench/split.sh [--reps N (5)] [--max-tokens N (64)] [--threads N (2)] [--delays 10,40] [--out FILE]
#
# --out FILE also writes the report (Markdown), e.g. bench/SPLIT.md. Run it on an otherwise idle
# machine: the numbers are only comparable within one run.
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/prepare.sh
exec python3 bench/split.py --bin "$BENCH_BIN" --models-dir "$BENCH_MODELS" --command "bench/split.sh $*" "$@"
