#!/usr/bin/env bash
# The real-model table v2: SmolLM2-135M-Instruct (teacher) -> a student keeping 59 % of its non-embedding
# parameters (`student init --mlp 704`), on real instructions (ShareGPT human prompts with ChatGPT answers,
# `csdistill data fetch sharegpt`), KD teacher-forced on the ChatGPT answers from the live teacher.
# Rows: teacher, student start, SFT on the references, SeqKD (SFT on the teacher's greedy answers), FKL, RKL,
# SRKL, CSD (S,S), (T,S), (U,S); 3 seeds; lr per loss from a validation sweep; 160 test prompts scored by
# ROUGE-L against the ChatGPT answers (quality, set `test`) and the teacher's answers (fidelity, set
# `sharegpt-teacher_test`), greedy and sampled (T = 1, 5 seeds). Config: configs/real_smollm2_sharegpt.yaml.
#
# Resumable across sittings: every step skips or reuses what it finished (the fetches and the student check
# their output, `data respond` continues its .partial files, `compare` reuses finished runs, sweep points
# and evaluated sets), so run it again after an interruption. Arguments are dotted overrides for both `compare`
# calls (e.g. train.max_steps=60 "eval.seeds=[10,20]"); SEEDS=0,1 overrides the training seeds.
#
# Cost on 2 AMD EPYC cores without AMX (benchmarks/RESULTS.md, "The real-model table v2 (ShareGPT): pilot and
# cost"): a KD step of batch 8 ~13 s on one core (from the exact cache or the live teacher: the student's own
# forward and backward are the step), a teacher answer of <= 192 tokens ~2.2 s a prompt (batch 16), evaluating
# one model on the 160 test prompts (both sets decode once: they ask the same prompts) ~15 min on one core.
# Preparation ~0.5 h; training 48 runs (8 trained rows x (3 sweep lrs + 3 seeds)) of 120 steps, ~28 min each:
# ~22 core-hours; evaluation ~7 core-hours. About 15 h on the 2 cores: it does not fit one sitting on this CPU
# (hence resumable); on one GPU it does. Cut it down with e.g.
# `bash benchmarks/real_model_sharegpt.sh train.max_steps=60`.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CONFIG=configs/real_smollm2_sharegpt.yaml
LOSSES=fkl,rkl,srkl,csd:SS,csd:TS,csd:US
COMMON=(--seeds "${SEEDS:-0,1,2}" --lr-sweep 1e-4,3e-4,1e-3 --decode greedy,sampled)
step() { echo "== $(date -u +%T) $*"; "$@"; }
[ -f models/smollm2/config.json ] || step csdistill model fetch smollm2-135m-instruct --out models/smollm2
[ -f data/sharegpt/card.json ] || step csdistill data fetch sharegpt --out data/sharegpt --seed 0 \
    --train 480 --validation 40 --test 160 --max-prompt-tokens 128 --max-response-tokens 192 --tokenizer models/smollm2
[ -f models/smollm2-I704/config.json ] || step csdistill student init --teacher models/smollm2 \
    --out models/smollm2-I704 --mlp 704 --calibration data/sharegpt/train.jsonl
step csdistill data respond --teacher models/smollm2 --prompts data/sharegpt --out data/sharegpt-teacher \
    --max-new-tokens 192
# With the exact hidden-state teacher cache (the teacher then does not run in every KD step), build it once and
# add train.teacher_cache=caches/sharegpt-hidden to the first compare below:
# step csdistill teacher cache --config "$CONFIG" --store hidden --out caches/sharegpt-hidden
step csdistill compare --config "$CONFIG" "$@" --losses "sft,$LOSSES" "${COMMON[@]}" --out runs/sharegpt_compare
# SeqKD: SFT on the teacher's greedy answers (same student start, test sets and sweep; its own work folder)
step csdistill compare --config "$CONFIG" data.train_file=data/sharegpt-teacher/train.jsonl "$@" --losses sft \
    --baselines none "${COMMON[@]}" --out runs/sharegpt_seqkd
echo "tables: runs/sharegpt_compare/report/report.md (all rows but SeqKD), runs/sharegpt_seqkd/report/report.md"
