#!/usr/bin/env bash
# Fuzzes every decoder of QUIVer for a set time per target and writes fuzz/REPORT.md.
#
#   fuzz/run.sh [seconds-per-target] [target ...]     (default: 60 s, every target)
#
# Works with the stable toolchain: cargo-fuzz needs nightly compiler flags (sanitizer,
# coverage), which stable accepts under RUSTC_BOOTSTRAP=1. Installs cargo-fuzz if missing.
# Seeds come from real encoded messages (fuzz/seeds); the corpus grows in fuzz/corpus/<target>,
# crashes land in fuzz/artifacts/<target>, libFuzzer's output in fuzz/logs/<target>.log.
# Reproduce a crash: RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a <target> fuzz/artifacts/<target>/<file>
# Exits 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-60}"
shift || true
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [seconds-per-target] [target ...]" >&2; exit 2 ;; esac

export RUSTC_BOOTSTRAP=1
# The fuzz project keeps its own target dir (fuzz/target): its builds use other compiler flags.
unset CARGO_TARGET_DIR
../scripts/install-deps.sh
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz ..." >&2
  cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

# -O: optimised; -a: debug assertions on, so integer overflow panics like any other bug.
flags=(--release --debug-assertions)
cargo run -q --release -p quiver-fuzz-seeds -- corpus
cargo fuzz build "${flags[@]}"
mkdir -p logs

rows=()
crashed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  before=$(find "artifacts/$t" -type f | wc -l)
  echo "fuzzing $t for ${secs}s ..." >&2
  rc=0
  cargo fuzz run "${flags[@]}" "$t" "corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    >"logs/$t.log" 2>&1 || rc=$?
  log="logs/$t.log"
  execs=$(grep -oP '^stat::number_of_executed_units:\s*\K[0-9]+' "$log" | tail -1 || true)
  rate=$(grep -oP '^stat::average_exec_per_sec:\s*\K[0-9]+' "$log" | tail -1 || true)
  ran=$(grep -oP '^Done [0-9]+ runs in \K[0-9]+' "$log" | tail -1 || true)
  corpus=$(find "corpus/$t" -type f | wc -l)
  cov=$(grep -oP '^#[0-9]+\s+\S+\s+cov: \K[0-9]+' "$log" | tail -1 || true)
  after=$(find "artifacts/$t" -type f | wc -l)
  crashes=$((after - before))
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  result="ok"
  if [ "$crashes" -gt 0 ]; then
    crashed=1
    result="CRASH: fuzz/artifacts/$t/$(ls -t "artifacts/$t" | head -1), see fuzz/$log"
  fi
  rows+=("| \`$t\` | ${ran:--} | ${execs:-?} | ${rate:-?} | $corpus | ${cov:-?} | $crashes | $result |")
  echo "  $t: ${execs:-?} executions, ${rate:-?}/s, corpus $corpus, crashes $crashes" >&2
done

{
  echo "# Fuzzing report"
  echo
  echo "Made by \`fuzz/run.sh $secs\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'),"
  echo "$(rustc --version), $(cargo fuzz --version), $(nproc) cores; AddressSanitizer, debug assertions on."
  echo "A libFuzzer run stops at its first crash; seconds are libFuzzer's own count. Corpus: inputs kept in"
  echo "\`fuzz/corpus/<target>\` after the run (seeds from \`fuzz/seeds\` included; the corpus carries over"
  echo "between runs). Coverage: libFuzzer's \`cov\` (edges) at the end."
  echo
  echo "| target | seconds | executions | exec/s | corpus | coverage | crashes | result |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
} >REPORT.md
cat REPORT.md
exit "$crashed"
