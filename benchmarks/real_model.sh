#!/usr/bin/env bash
# The real-model table, end to end and offline: SmolLM2-135M-Instruct (teacher, from its PyPI
# wheel) -> a 24-layer student pruned from it -> 392 generated prompts answered by the teacher -> a top-64
# teacher cache -> `csdistill compare` of 7 losses x 2 seeds with a validation lr sweep, scored greedy and
# sampled (5 seeds). From the repository root with the package installed; every step reuses what it finished.
# Measured on 2 AMD EPYC cores (benchmarks/RESULTS.md, "The real-model table"): ~14 min of preparation,
# ~70 min of training, ~40 min of evaluation. Extra arguments go to `csdistill compare` (e.g. --seeds 0,1,2).
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CONFIG=configs/real_smollm2_compare.yaml
step() { echo "== $(date -u +%T) $*"; "$@"; }
[ -f models/smollm2/config.json ] || step csdistill model fetch smollm2-135m-instruct --out models/smollm2
[ -f models/smollm2-L24/config.json ] || step csdistill student init --teacher models/smollm2 --out models/smollm2-L24 --layers 24
[ -f data/prompts/test.jsonl ] || step csdistill data prompts --out data/prompts --seed 0 --n-train 320 --n-validation 32 --n-test 40
step csdistill data respond --teacher models/smollm2 --prompts data/prompts --out data/smollm2 --max-new-tokens 80
step csdistill teacher cache --config "$CONFIG" --top-k 64 --out caches/smollm2-k64
step csdistill compare --config "$CONFIG" train.teacher_cache=caches/smollm2-k64 \
    --losses sft,fkl,rkl,srkl,csd:SS,csd:TS,csd:US --seeds 0,1 --lr-sweep 2e-4,5e-4 \
    --decode greedy,sampled --out runs/real_compare "$@"
