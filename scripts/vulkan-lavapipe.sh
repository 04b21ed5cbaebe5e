#!/usr/bin/env bash
# The Vulkan build on a real Vulkan device with no GPU: Mesa's lavapipe (llvmpipe), a software
# Vulkan driver on the CPU. Installs Debian's mesa-vulkan-drivers, libvulkan-dev, glslc and
# spirv-headers, builds quiver and quiver-provider with `--features vulkan` into target/vulkan,
# starts a bootstrap node and a provider whose layers are offloaded to lavapipe, answers a prompt
# through `quiver ask`, and writes the answer, the layers offloaded and tokens/s to
# bench/VULKAN.md.
#
#   scripts/vulkan-lavapipe.sh                 # needs root or sudo for apt-get
#   GPU_LAYERS=10 scripts/vulkan-lavapipe.sh   # offload 10 layers instead of auto (all that fit)
#   SKIP_APT=1 scripts/vulkan-lavapipe.sh      # the packages are installed already
#
# The model is the default one (QUIVER_MODEL_DIR, else target/models; scripts/fetch-model.sh).
# The Vulkan shaders make the first build long (about 40 minutes on 2 cores); later runs reuse
# target/vulkan.
#
# Old Vulkan headers: llama.cpp's Vulkan backend needs VK_EXT_layer_settings (Vulkan headers
# 1.3.261 or newer; Debian 13 has 1.4.309). With older headers (Debian 12: 1.3.239) the build
# puts scripts/vulkan-compat first on the C++ include path: a vulkan.hpp that includes the
# system's and declares that extension's three types (see the file).
#
# Lavapipe is a CPU device, which ggml's Vulkan backend skips unless asked for it by index:
# GGML_VK_VISIBLE_DEVICES is set to the lavapipe device's index (vulkaninfo order).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target="$root/target/vulkan"
out="$root/bench/VULKAN.md"
models="${QUIVER_MODEL_DIR:-$root/target/models}"
gpu_layers="${GPU_LAYERS:-auto}"
prompt="${PROMPT:-Name three colours of the rainbow.}"
max_tokens="${MAX_TOKENS:-64}"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '== %s\n' "$*" >&2; }

if [ ! -f "$models/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
    echo "the default model is missing from $models: run scripts/fetch-model.sh (or set QUIVER_MODEL_DIR)" >&2
    exit 1
fi

if [ -z "${SKIP_APT:-}" ]; then
    step "installing mesa-vulkan-drivers libvulkan-dev glslc spirv-headers vulkan-tools"
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
        mesa-vulkan-drivers libvulkan-dev glslc spirv-headers vulkan-tools >/dev/null
fi

# Headers older than VK_EXT_layer_settings: the compatibility wrapper goes first.
if ! grep -q "VK_EXT_layer_settings" /usr/include/vulkan/vulkan_core.h 2>/dev/null; then
    header=$(grep -m1 -o "VK_HEADER_VERSION [0-9]*" /usr/include/vulkan/vulkan_core.h || echo "unknown")
    step "Vulkan headers ($header) lack VK_EXT_layer_settings: using scripts/vulkan-compat"
    export CPLUS_INCLUDE_PATH="$root/scripts/vulkan-compat${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}"
fi

# The lavapipe device's index among the Vulkan devices.
device_index=$(vulkaninfo --summary 2>/dev/null | awk '/^GPU[0-9]+:/ { gpu = substr($1, 4) + 0 } /driverName *= llvmpipe/ { print gpu; exit }')
if [ -z "$device_index" ]; then
    echo "no lavapipe (llvmpipe) Vulkan device: is mesa-vulkan-drivers installed?" >&2
    vulkaninfo --summary >&2 || true
    exit 1
fi
device_name=$(vulkaninfo --summary 2>/dev/null | awk -F'= ' '/deviceName/ { print $2; exit }')
driver_info=$(vulkaninfo --summary 2>/dev/null | awk -F'= ' '/driverInfo/ { print $2; exit }')
export GGML_VK_VISIBLE_DEVICES="$device_index"

step "building quiver and quiver-provider with --features vulkan into $target"
build_started=$(date +%s)
CARGO_TARGET_DIR="$target" cargo build --release --locked --features vulkan -p quiver-cli \
    --bin quiver --bin quiver-node --bin quiver-provider
build_secs=$(($(date +%s) - build_started))
bin="$target/release"

# Reads `what on http://ADDR` or `listening on /ip4/127.0.0.1/tcp/PORT` from a node's stdout.
wait_line() {
    local file=$1 pattern=$2 pid=$3
    for _ in $(seq 1 600); do
        if line=$(grep -m1 -E "$pattern" "$file" 2>/dev/null); then
            echo "$line"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "the process stopped:" >&2
            cat "$file" "$file.err" >&2 || true
            return 1
        fi
        sleep 0.5
    done
    echo "timed out waiting for $pattern in $file" >&2
    return 1
}

step "bootstrap node"
"$bin/quiver-node" --bootstrap-node --port 0 --listen-ip 127.0.0.1 --no-mdns --api 127.0.0.1:0 \
    --data-dir "$work/boot" >"$work/boot.out" 2>"$work/boot.out.err" &
pids+=($!)
boot_addr=$(wait_line "$work/boot.out" "listening on /ip4/127.0.0.1/tcp/" "${pids[0]}" | awk '{ print $3 }')

step "provider on $device_name (GGML_VK_VISIBLE_DEVICES=$device_index), --gpu-layers $gpu_layers"
RUST_LOG="${RUST_LOG:-info,llama-cpp-2=warn}" "$bin/quiver-provider" --bootstrap "$boot_addr" --port 0 \
    --listen-ip 127.0.0.1 --no-mdns --api 127.0.0.1:0 --data-dir "$work/provider" --models-dir "$models" \
    --no-fetch --gpu-layers "$gpu_layers" >"$work/provider.out" 2>"$work/provider.out.err" &
pids+=($!)
api=$(wait_line "$work/provider.out" "^api on http://" "${pids[1]}" | sed 's|api on http://||')

status_json="$work/status.json"
for _ in $(seq 1 120); do
    if "$bin/quiver" status --json --api "$api" >"$status_json" 2>/dev/null &&
        grep -q '"gpu_layers"' "$status_json"; then
        break
    fi
    sleep 0.5
done
status_text=$("$bin/quiver" status --api "$api")
placement=$(python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))["provider"]["models"][0]
print("{device}\t{gpu_layers}\t{layers}\t{device_memory_total}\t{device_memory_free}".format(**m))
' "$status_json")
IFS=$'\t' read -r device offloaded layers mem_total mem_free <<<"$placement"
if [ "$offloaded" = 0 ]; then
    echo "no layer was offloaded to $device_name:" >&2
    cat "$work/provider.out.err" >&2
    exit 1
fi

step "asking through the network"
# The provider announces its model in heartbeats; ask until the bootstrap node has heard it.
ask() {
    local json=$1
    for attempt in $(seq 1 30); do
        if "$bin/quiver" ask --bootstrap "$boot_addr" --listen-ip 127.0.0.1 --no-mdns --json \
            --max-tokens "$max_tokens" "$prompt" >"$json" 2>"$work/ask.err"; then
            return 0
        fi
        if [ "$attempt" = 30 ]; then
            cat "$work/ask.err" >&2
            return 1
        fi
        sleep 2
    done
}
# field FILE EXPR: a value of a `quiver ask --json` result.
field() { python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
ask "$work/ask1.json"
# Again: the first run also compiles the device's shader pipelines (lavapipe JIT-compiles them
# with LLVM), the second is warm. A greedy answer is the same both times.
ask "$work/ask2.json"
answer=$(field "$work/ask1.json" 'r["text"]')
answer2=$(field "$work/ask2.json" 'r["text"]')
tokens=$(field "$work/ask1.json" 'r["usage"]["completion_tokens"]')
speed=$(field "$work/ask1.json" '"%.1f" % r["timing"]["tokens_per_sec"]')
ttft=$(field "$work/ask1.json" '"%.0f" % r["timing"]["ttft_ms"]')
speed2=$(field "$work/ask2.json" '"%.1f" % r["timing"]["tokens_per_sec"]')
ttft2=$(field "$work/ask2.json" '"%.0f" % r["timing"]["ttft_ms"]')
build=$(field "$work/ask1.json" 'r.get("receipt", {}).get("engine_build") or r.get("engine_build") or "?"')
same_twice=$([ "$answer" = "$answer2" ] && echo "yes" || echo "no")

# The same binary and prompt on the CPU, for comparison: without GGML_VK_VISIBLE_DEVICES ggml's
# Vulkan backend skips CPU-type devices such as lavapipe, so the engine finds no GPU.
step "the same prompt on the CPU (quiver ask --local, no Vulkan device)"
cpu_json="$work/cpu.json"
if env -u GGML_VK_VISIBLE_DEVICES "$bin/quiver" ask --local --models-dir "$models" --json \
    --max-tokens "$max_tokens" "$prompt" >"$cpu_json" 2>"$work/cpu.err"; then
    cpu_speed=$(field "$cpu_json" '"%.1f" % r["timing"]["tokens_per_sec"]')
    cpu_text=$(field "$cpu_json" 'r["text"]')
    same_as_cpu=$([ "$answer" = "$cpu_text" ] && echo "yes" || echo "no")
else
    cpu_speed="?"
    same_as_cpu="?"
fi
load=$(cut -d' ' -f1-3 /proc/loadavg)
loaded=$(grep -m1 "^loaded " "$work/provider.out.err" || true)
gib() { python3 -c "print('%.1f' % ($1 / 2**30))"; }

step "writing $out"
mkdir -p "$(dirname "$out")"
{
    echo "# The Vulkan build on lavapipe (software Vulkan)"
    echo
    echo "Made by \`scripts/vulkan-lavapipe.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m)). Its build step"
    echo "took ${build_secs} s this run (a first build compiles ggml's Vulkan shaders: about 30 minutes"
    echo "on these 2 shared cores)."
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| device | $device_name, $driver_info |"
    echo "| ggml device | $device (GGML_VK_VISIBLE_DEVICES=$device_index) |"
    echo "| device memory | $(gib "$mem_free") GiB free of $(gib "$mem_total") GiB at load |"
    echo "| \`--gpu-layers\` | $gpu_layers |"
    echo "| layers offloaded | **$offloaded of $layers** |"
    echo "| model | smollm2-135m (SmolLM2-135M-Instruct Q4_1) |"
    echo "| prompt | $prompt |"
    echo "| completion tokens | $tokens (greedy, at most $max_tokens) |"
    echo "| tokens/s on the software device, first ask | **$speed** (\`quiver ask --json\` through the network; first token after $ttft ms, shader pipelines compiled then) |"
    echo "| tokens/s on the software device, second ask | **$speed2** (first token after $ttft2 ms) |"
    echo "| tokens/s of the same binary on the CPU | $cpu_speed (\`quiver ask --local\`, no Vulkan device) |"
    echo "| load average during the run | $load (2 cores shared with other builds: all speeds here are low) |"
    echo "| engine build in the receipt | \`$build\` |"
    echo "| same answer twice on lavapipe | $same_twice |"
    echo "| same answer as the CPU | $same_as_cpu (GPU arithmetic may round differently) |"
    echo
    echo "The answer, through \`quiver ask\`:"
    echo
    echo '```text'
    echo "$answer"
    echo '```'
    echo
    echo "The provider said:"
    echo
    echo '```text'
    echo "$loaded"
    echo '```'
    echo
    echo "\`quiver status\` of the provider:"
    echo
    echo '```text'
    echo "$status_text" | sed -n '/^Serving:/,/^Known nodes:/p' | grep -v "^Known nodes:"
    echo '```'
    echo
    echo "Lavapipe runs the shaders on the CPU (LLVM-compiled, $(nproc) threads here), so this measures that the"
    echo "Vulkan build offloads and answers, not GPU speed: a real GPU is far faster, and on this"
    echo "machine the CPU build is faster than lavapipe (bench/ENGINE.md)."
} >"$out"
cat "$out"
