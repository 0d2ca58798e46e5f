#!/usr/bin/env bash
# Makes a WebGPU adapter exist on a Debian machine without a GPU: Mesa's CPU
# Vulkan driver (lavapipe) from the release's backports suite. Debian 12's
# own Mesa (22.3) lacks features Dawn requires; backports' Mesa 25 has them.
#
# Idempotent: exits at once when Dawn already finds an adapter. The backports
# entry reuses the URIs of the machine's own apt sources (never a named host),
# with the suite "<codename>-backports".
#
# Usage: scripts/install-vulkan.sh            (as root, or with sudo on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."

probe() { npx tsx scripts/webgpu-probe.ts >/dev/null 2>&1; }

if probe; then
  echo "install-vulkan: a WebGPU adapter exists already"
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-vulkan: needs root (or sudo) to run apt-get" >&2; exit 1; }
  sudo=sudo
fi

. /etc/os-release
codename="${VERSION_CODENAME:-}"
[ -n "$codename" ] || { echo "install-vulkan: /etc/os-release names no VERSION_CODENAME" >&2; exit 1; }
[ "${ID:-}" = debian ] || { echo "install-vulkan: only Debian is handled (this is ${ID:-unknown}); install a Vulkan driver with Mesa >= 24 by hand" >&2; exit 1; }

# The URIs that serve the release's own suite, from one-line .list files and
# deb822 .sources files alike.
uris=$(
  {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk -v c="$codename" '$1 == "deb" { u = ""; s = ""; for (i = 2; i <= NF; i++) { if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; continue } if (u == "") u = $i; else if (s == "") { s = $i; break } } if (s == c) print u }'
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      awk -v c="$codename" '
        function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " c " ")) { n = split(uris, a, " "); for (i = 1; i <= n; i++) print a[i] } types = ""; suites = ""; uris = "" }
        /^[[:space:]]*$/ { flush(); next }
        /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
        /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
        /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
        END { flush() }' "$f"
    done
  } | sort -u
)
[ -n "$uris" ] || { echo "install-vulkan: no apt source serves the suite $codename" >&2; exit 1; }

list=/etc/apt/sources.list.d/sharpen-backports.sources
{
  echo "Types: deb"
  echo "URIs: $(echo $uris)"
  echo "Suites: ${codename}-backports"
  echo "Components: main"
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] && echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
} | $sudo tee "$list.new" >/dev/null
$sudo mv "$list.new" "$list"

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends -t "${codename}-backports" mesa-vulkan-drivers libvulkan1 >/dev/null

if probe; then
  echo "install-vulkan: $(npx tsx scripts/webgpu-probe.ts)"
else
  echo "install-vulkan: Mesa installed, but Dawn still finds no adapter:" >&2
  npx tsx scripts/webgpu-probe.ts >&2 || true
  exit 1
fi
