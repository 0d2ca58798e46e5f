#!/usr/bin/env bash
# One seed of one 20,000-training-NFE method of docs/results.md's seed
# comparisons, trained again and evaluated on the full sets (issue #23 item 4).
#
# The comparisons (docs/data/compare-seeds, compare-seeds-group) evaluated on
# 60 + 60 prompts and did not keep their models. This copies the committed
# stage directory to out/full20k/<method>-s<seed> without its train/ part (so
# only this stage trains: every evaluation JSON there is reused), retrains the
# stage with the comparison's command restricted to one method and seed
# (--curve-evals 0: the snapshots only serve the curve plots), checks that the
# training repeats the committed summary.json's (same NFE per iteration, same
# rewards and losses up to float summation order), then evaluates the model
# as every full-set figure is evaluated (evaluate.ts: 210 seen + 208 held-out
# prompts, DDIM 50, CFG 5, --rewards aesthetic). Resumable: a finished step is
# skipped. Wasm on one thread, so two can run side by side on two cores.
#
#   bash scripts/full-set-20k.sh METHOD SEED [compare-k1]
#   # METHOD: rlhf-sharpening-image, diffusion-dpo (docs/data/compare-seeds), nft, group-pairs (compare-seeds-group),
#   # or a one-seed row of Table 1's budget (compare-nfe: standard, ddpo, raft, rlhf-sharpening, sft-sharpening,
#   # sft-sharpening-image; seed 0); `rlhf-sharpening-image 0 compare-k1` is the K = 1 control (k1- in the file names)
#   # writes docs/data/eval-full-seeds/nfe20000/METHOD-sSEED.json, its logs in logs/ beside it (and the stage's run record where only its summary was committed)
#
# Then: npx tsx scripts/seeds-full-set.ts --base docs/data/eval-full-seeds/base.json \
#   --seed 0=docs/data/eval-full-seeds/nfe20000/METHOD-s0.json ... (docs/results.md gives the exact lines)
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: full-set-20k.sh METHOD SEED [compare-k1]"
method=${1:?$usage}
seed=${2:?$usage}
settings=pipelines/configs/compare-shapeworld.json
prefix=
case "${3:-}:$method" in
  :rlhf-sharpening-image | :diffusion-dpo) src=docs/data/compare-seeds ;;
  :nft | :group-pairs) src=docs/data/compare-seeds-group ;;
  # Table 1's one-seed rows at the same budget, command and settings.
  :standard | :ddpo | :raft | :rlhf-sharpening | :sft-sharpening | :sft-sharpening-image) src=docs/data/compare-nfe ;;
  # The K = 1 control: image-level RLHF with one optimiser step per batch.
  compare-k1:rlhf-sharpening-image) src=docs/data/compare-k1 settings=pipelines/configs/compare-shapeworld-k1.json prefix=k1- ;;
  *) echo "full-set-20k.sh: unknown method '$method'${3:+ for $3} (rlhf-sharpening-image, diffusion-dpo, nft, group-pairs; standard, ddpo, raft, rlhf-sharpening, sft-sharpening, sft-sharpening-image; rlhf-sharpening-image compare-k1)" >&2; exit 2 ;;
esac
stage=$method-s$seed-nfe20000
[ -f "$src/train/$stage/summary.json" ] || { echo "full-set-20k.sh: no committed stage $src/train/$stage" >&2; exit 2; }
out=out/full20k/$prefix$method-s$seed
evals=docs/data/eval-full-seeds/nfe20000
result=$evals/$prefix$method-s$seed.json
mkdir -p out/full20k "$evals"
# The pinned Node 24 (the node package) and tsx, as npm scripts and npx see them.
export PATH="$PWD/node_modules/.bin:$PATH"

if [ ! -d "$out" ]; then
  rm -rf "$out.tmp" && cp -r "$src" "$out.tmp" && rm -rf "$out.tmp/train" && mv "$out.tmp" "$out"
fi
echo "[$(date +%T)] train $stage"
tsx pipelines/compare.ts --training-nfe 20000 --method-settings "$settings" --curve-evals 0 \
  --curve-prompts 20 --eval-prompts 60 --threads 1 --seeds "$seed" --methods "$method" --out "$out" > "$out.train.log" 2>&1

# The same draws as the committed stage: the same iterations and training NFE per iteration, and the same
# rewards and losses up to float summation order (a stage first run at another revision, thread count or backend
# may differ from the one-thread wasm rerun in the last digits; any other difference fails).
node -e '
const [a, b] = process.argv.slice(1).map((f) => JSON.parse(require("fs").readFileSync(f, "utf8")))
const fail = (why) => { console.error(`training differs from the committed ${process.argv[1]}: ${why}`); process.exit(1) }
if (a.curve.length !== b.curve.length) fail(`${a.curve.length} vs ${b.curve.length} iterations`)
let worst = 0
a.curve.forEach((r, i) => {
  const s = b.curve[i]
  if (r.iteration !== s.iteration || r.trainingNfe !== s.trainingNfe) fail(`iteration ${r.iteration}: training NFE ${r.trainingNfe} vs ${s.trainingNfe}`)
  for (const k of ["rewardMean", "rewardBest", "rewardWorst", "loss"]) worst = Math.max(worst, Math.abs(r[k] - s[k]) / Math.max(Math.abs(r[k]), 1e-12))
})
if (worst > 1e-2) fail(`relative difference ${worst.toExponential(1)} in rewards or losses`)
console.log(`training as committed: ${a.curve.length} iterations, ${a.trainingNfe} training NFE, ` +
  (worst === 0 ? "rewards and losses identical" : `rewards and losses within a relative ${worst.toExponential(1)} (float summation order)`))
' "$src/train/$stage/summary.json" "$out/train/$stage/summary.json"
# Stages committed without their run record (summary.json only) get this run's; an existing record stays as it was run.
if [ ! -f "$src/train/$stage/run/run.json" ]; then
  mkdir -p "$src/train/$stage/run"
  cp "$out/train/$stage/run/run.json" "$out/train/$stage/run/metrics.jsonl" "$src/train/$stage/run/"
fi

if [ ! -f "$result" ]; then
  echo "[$(date +%T)] evaluate $stage on the full sets"
  tsx pipelines/evaluate.ts --model "$out/train/$stage/model" --rewards aesthetic --json "$result.tmp" > "$out.eval.log" 2>&1
  mv "$result.tmp" "$result"
fi
# The logs give the wall times quoted in docs/results.md.
mkdir -p "$evals/logs"
cp "$out.train.log" "$evals/logs/$prefix$method-s$seed.train.log"
[ ! -f "$out.eval.log" ] || cp "$out.eval.log" "$evals/logs/$prefix$method-s$seed.eval.log"
echo "[$(date +%T)] done $stage: $result"
