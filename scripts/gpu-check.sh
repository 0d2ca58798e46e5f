#!/usr/bin/env bash
# The prepared GPU check: runs on a bare Linux x86-64 GPU machine with no
# Node and no network, from the bundle that scripts/gpu-bundle.sh made
# (.gpu/). Steps, each under its own time limit, each logged, a failed one
# not stopping the next:
#   1. the adapter probe (Dawn through Vulkan)
#   2. the webgpu parity file (test/tensor/WebGpuParity.test.ts)
#   3. the GPU bench: UNet forward and AdamW step at batch 8, 32, 128 on
#      webgpu, wasm on one and two threads, and PyTorch on CUDA where it is
#   4. the default `pipelines/rlhf.ts` run on webgpu
# Everything goes to $OUT (the device tool's output folder) or out/gpu-check.
#
# From this machine, with the device tool:
#   bash scripts/gpu-bundle.sh
#   run: carry [".gpu"], timeout_s 480, command "bash scripts/gpu-check.sh"
# (its steps' limits add up to 12 minutes; on an H100 it should take 5).
# The working tree travels too and the tool takes 64 MiB in all; the bundle
# is ~53 MB, so leave out what the check does not read first, e.g.
#   git sparse-checkout set --no-cone '/*' '!/docs/' '!/models/' \
#     '/models/shapeworld-base/' '/models/shapeworld-clip/' '/models/lab-ring/'
# (and `git sparse-checkout disable` after).
#
# --smoke: small sizes (bench batch 8 and 2 rounds, a 2-iteration run), to
# try the script itself on a software adapter.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out="${OUT:-$root/out/gpu-check}"
mkdir -p "$out"
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
log() { echo "[gpu-check $(date -u +%H:%M:%S)] $*" | tee -a "$out/check.log"; }

# The Vulkan loader, where the machine lacks it.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  if ls .gpu/debs/*.deb >/dev/null 2>&1; then
    for f in .gpu/debs/*.deb; do dpkg -x "$f" /; done
    ldconfig
    log "Vulkan loader unpacked from .gpu/debs"
  else
    log "no libvulkan.so.1 and no .gpu/debs: run scripts/gpu-bundle.sh and carry .gpu"
  fi
fi
# NVIDIA's Vulkan driver where the device tool's machines keep it.
nv=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv" ]; then export VK_DRIVER_FILES=$nv; fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

# Node and node_modules: an install's own (npm ci), else the bundle's. A
# system Node is not used: effect 4 needs Node >= 22.19.
if [ -x node_modules/node/bin/node ]; then
  export PATH="$root/node_modules/node/bin:$PATH"
else
  [ -f .gpu/runtime.tar.xz ] || { log "no node_modules and no .gpu/runtime.tar.xz: run scripts/gpu-bundle.sh and carry .gpu"; exit 1; }
  rt=$(mktemp -d)
  tar -C "$rt" -xJf .gpu/runtime.tar.xz
  rm -rf node_modules && mv "$rt/node_modules" node_modules
  export PATH="$rt/node/bin:$PATH"
  log "Node $(node --version) and node_modules unpacked from the bundle"
fi

step() { # name seconds command...
  local name=$1 limit=$2
  shift 2
  log "step $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  log "step $name: exit $rc after $((SECONDS - t0))s"
  tail -n 25 "$out/$name.log"
  return 0
}

command -v nvidia-smi >/dev/null && log "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
step probe 60 node --import tsx scripts/webgpu-probe.ts --json
step parity 120 node node_modules/vitest/vitest.mjs run test/tensor/WebGpuParity.test.ts
if [ $smoke = 1 ]; then
  step bench 300 node --import tsx bench/unet.ts --backend webgpu --batches 8 --reps 2 --write "$out/bench.md"
  step rlhf 600 node --import tsx pipelines/rlhf.ts --backend webgpu --iterations 2 --batch-size 2 --n 2 --m 2 --inference-steps 10 --online-steps 10 --steps-per-batch 1 --eval-prompts 1 --eval-steps 2 --out "$out/rlhf"
else
  step bench 240 node --import tsx bench/unet.ts --backend webgpu --reps 3 --write "$out/bench.md"
  step rlhf 300 node --import tsx pipelines/rlhf.ts --backend webgpu --out "$out/rlhf"
fi
# The run's report only: the device tool returns at most 8 files, two folders down.
[ -f "$out/rlhf/report.md" ] && cp "$out/rlhf/report.md" "$out/rlhf-report.md"
rm -rf "$out/rlhf"
log "done"
