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
# and evaluated sets), so run it again after an interruption. Extra arguments go to both `compare` calls.
#
# Cost on 2 AMD EPYC cores without AMX (benchmarks/RESULTS.md, "The real-model table v2 (ShareGPT): pilot and
# cost"; measured while the machine was shared, so these are upper-end figures): see that section for the
# per-step and per-model figures; in total about 2.5 h of preparation (mostly the teacher answering 680
# prompts), ~32 h of training (10 losses x (3 sweep lrs + 3 seeds) = 60 runs of 120 steps, two at a time) and
# ~30 h of evaluation (32 models x 2 sets x 6 decodings of 160 prompts). On a GPU the whole table is ~1-2 h.
# Cut it down with e.g. train.max_steps=60, eval.seeds=[10,20] or fewer --seeds.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CONFIG=configs/real_smollm2_sharegpt.yaml
LOSSES=fkl,rkl,srkl,csd:SS,csd:TS,csd:US
COMMON=(--seeds 0,1,2 --lr-sweep 1e-4,3e-4,1e-3 --decode greedy,sampled)
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
step csdistill compare --config "$CONFIG" --losses "sft,$LOSSES" "${COMMON[@]}" --out runs/sharegpt_compare "$@"
# SeqKD: SFT on the teacher's greedy answers (same student start, test sets and sweep; its own work folder)
step csdistill compare --config "$CONFIG" data.train_file=data/sharegpt-teacher/train.jsonl --losses sft \
    --baselines none "${COMMON[@]}" --out runs/sharegpt_seqkd "$@"
echo "tables: runs/sharegpt_compare/report/report.md (all rows but SeqKD), runs/sharegpt_seqkd/report/report.md"
