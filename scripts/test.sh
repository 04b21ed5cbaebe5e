#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, in-process network tests, and tests that start
# the real release binaries as separate processes on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo test --workspace --release --locked "$@"
