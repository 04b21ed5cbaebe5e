#!/usr/bin/env bash
# Benchmark: throughput of a batch of requests with two providers against one (ratio measured in
# the same run), then an idle window: each node's CPU, resident memory and transport bytes per
# minute. Builds the release binaries and fetches the default model unless BENCH_BIN is set.
#
#   bench/network.sh [--requests N (12)] [--concurrency N (4)] [--max-tokens N (192)]
#                    [--idle-secs N (60)] [--no-pin] [--out FILE]
#
# Provider A runs on CPU 0 and provider B on CPU 1 (taskset), each with one engine thread, so
# the second provider adds a core as a second machine would (--no-pin turns that off).
#
# --out FILE also writes the report (Markdown) to FILE, e.g. bench/NETWORK.md (bench/RESULTS.md sums up every benchmark).
# Run it on an otherwise idle machine: the numbers are only comparable within one run.
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/prepare.sh
exec python3 bench/network.py --bin "$BENCH_BIN" --models-dir "$BENCH_MODELS" --command "bench/network.sh $*" "$@"
