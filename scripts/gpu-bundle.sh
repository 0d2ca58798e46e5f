#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a bare Linux x86-64 GPU machine
# with no Node and no network, into .gpu/ (git-ignored):
#   .gpu/runtime.tar.xz  the pinned Node binary and the node_modules the
#                        pipelines, the benches and the parity test load
#                        (other platforms' binaries, maps, types, docs and
#                        browser bundles left out)
#   .gpu/debs/*.deb      the Vulkan loader (libvulkan1), from Debian
# The GPU machine brings its own Vulkan driver (NVIDIA's ICD).
#
# Usage: scripts/gpu-bundle.sh   (after npm ci; about 2 minutes, ~45 MB)
# Then, with the device tool: carry [".gpu"], command "bash scripts/gpu-check.sh".
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x node_modules/node/bin/node ] || { echo "gpu-bundle: run npm ci first (node_modules/node/bin/node is missing)" >&2; exit 1; }
mkdir -p .gpu/debs
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage/node/bin"
cp node_modules/node/bin/node "$stage/node/bin/node"

# Everything installed except what only builds, types or lints the project.
tar -C . -cf - \
  --exclude='node_modules/node' \
  --exclude='node_modules/typescript' --exclude='node_modules/@typescript' \
  --exclude='node_modules/@types' --exclude='node_modules/core-js' \
  --exclude='node_modules/@tensorflow/tfjs-node' --exclude='node_modules/@tensorflow/tfjs-node-gpu' \
  --exclude='node_modules/webgpu/dist/darwin-*' --exclude='node_modules/webgpu/dist/win32-*' \
  --exclude='node_modules/webgpu/dist/linux-arm64' \
  --exclude='*.map' --exclude='*.d.ts' --exclude='*.d.mts' --exclude='*.d.cts' --exclude='*.md' \
  --exclude='node_modules/@tensorflow/*/src' --exclude='node_modules/@tensorflow/*/wasm-out' \
  --exclude='node_modules/effect/src' --exclude='node_modules/@effect/*/src' \
  node_modules | tar -C "$stage" -xf -

# Node loads each tfjs package through its CommonJS entry (dist/*.node.js);
# the browser bundles and per-file ES modules are never read here.
find "$stage/node_modules/@tensorflow" -path '*/dist/*' -type f ! -name '*.node.js' ! -name '*.wasm' -delete
tar -C "$stage" -cf - node node_modules | xz -9 -T2 > .gpu/runtime.tar.xz.new
mv .gpu/runtime.tar.xz.new .gpu/runtime.tar.xz

# The Vulkan loader, as the device tool's README brings it.
lists=$(mktemp -d)
o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists"
mkdir -p "$lists/partial"
apt-get $o update -qq
(cd .gpu/debs && rm -f ./*.deb && apt-get $o download libvulkan1 >/dev/null)
rm -rf "$lists"

du -sh .gpu/runtime.tar.xz .gpu/debs
