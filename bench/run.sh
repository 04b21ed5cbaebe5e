#!/usr/bin/env bash
# Benchmark: the bare engine (`quiver ask --local`) against the same request through the network
# (bootstrap node + one provider + `quiver ask`), on this machine, same threads, same greedy
# request. Builds the release binaries, fetches the default model, then runs both modes
# interleaved and prints medians of tokens/s and time to first token, the ratio
# network ÷ bare (goal ≥ 0.97) and the TTFT overhead of the network.
#
#   bench/run.sh [--threads N (2)] [--max-tokens N (256)] [--reps N (9)] [--out FILE]
#
# --out FILE also writes the report (Markdown) to FILE, e.g. bench/ENGINE.md (bench/RESULTS.md sums up every benchmark).
# BENCH_BIN=DIR uses the binaries in DIR instead of building target/release.
# Run it on an otherwise idle machine: the numbers are only comparable within one run.
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/prepare.sh
exec python3 bench/bench.py --bin "$BENCH_BIN" --models-dir "$BENCH_MODELS" --command "bench/run.sh $*" "$@"
