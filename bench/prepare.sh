# Sourced by the bench scripts: sets BENCH_BIN (the release binaries, built here unless BENCH_BIN
# is already set) and BENCH_MODELS (the default model's directory, fetched if missing).
if [ -z "${BENCH_BIN:-}" ]; then
  scripts/install-deps.sh
  echo "bench: building release binaries (cargo build --release -p quiver-cli) ..." >&2
  cargo build --release --locked -p quiver-cli >&2
  BENCH_BIN=target/release
fi
scripts/fetch-model.sh
BENCH_MODELS="${QUIVER_MODEL_DIR:-target/models}"
