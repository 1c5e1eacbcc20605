"""Pruning before any training: mean token NLL of students cut from SmolLM2-135M-Instruct on the teacher's
own greedy answers, by depth method and size, and depth vs width at equal parameter count.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/pruning.py --teacher ~/.cache/csdistill/models/smollm2-135m-instruct

Evaluation prompts: the generated prompt set's test split (seed 0), rendered with the teacher's chat
template; the teacher answers each greedily (cached in benchmarks/out/). Calibration: 64 prompts of the
train split (disjoint from the test prompts). Width students keep all layers and match the parameter
count of the depth student beside them: MLP neurons only, or hidden channels only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from csdistill import prune
from csdistill.config import GenerationConfig
from csdistill.data.collate import collate, encode_response, prompt_token_ids
from csdistill.data.prompts import DEFAULT_SIZES, chat_prompt, generate_prompt_splits
from csdistill.generation import generate_texts
from csdistill.losses.reduce import IGNORE_INDEX
from csdistill.models import load_model, load_tokenizer
from csdistill.student import calibration_batches, calibration_texts


def teacher_answers(model, tokenizer, n: int, max_new_tokens: int, cache: Path) -> list[dict]:
    """[{prompt, answer}] for the first n test prompts; read from `cache` when it holds them."""
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text().splitlines()]
        if len(rows) == n and rows[0].get("max_new_tokens") == max_new_tokens:
            return rows
    records = generate_prompt_splits(0, DEFAULT_SIZES)["test"][:n]  # calibration uses the same set's train split
    prompts = [chat_prompt(r, tokenizer) for r in records]
    gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, batch_size=8)
    answers = generate_texts(model, tokenizer, prompts, gen, seed=0)
    rows = [{"prompt": p, "answer": a, "max_new_tokens": max_new_tokens} for p, a in zip(prompts, answers)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def answer_batches(tokenizer, rows: list[dict], batch_size: int = 8) -> list[dict]:
    examples = [encode_response(prompt_token_ids(tokenizer, r["prompt"], 256),
                                tokenizer(r["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
                                512) for r in rows]
    return [collate(examples[i:i + batch_size], tokenizer.pad_token_id) for i in range(0, len(examples), batch_size)]


@torch.no_grad()
def mean_nll(model, batches: list[dict]) -> float:
    """Mean over every answer token (and EOS) of -log q(token | prefix)."""
    total, count = 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        labels = batch["labels"][:, 1:]  # (B, T-1)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                                ignore_index=IGNORE_INDEX, reduction="sum")
        total, count = total + float(nll), count + int((labels != IGNORE_INDEX).sum())
    return total / count


def params_of(model, plan_sizes: dict) -> int:
    """Parameters of a student of the given sizes (counted from sliced shapes, nothing built)."""
    shape = prune.model_shape(model)
    layers = plan_sizes.get("layers", shape.layers)
    fake = prune.Plan(list(range(layers)), {i: list(range(plan_sizes.get("mlp", shape.mlp))) for i in range(layers)},
                      {i: list(range(shape.heads)) for i in range(layers)},
                      {i: list(range(shape.kv_heads)) for i in range(layers)},
                      list(range(plan_sizes.get("hidden", shape.hidden))))
    return prune.student_parameter_count(model, fake)


def matching_width(model, target: int, key: str, step: int) -> int:
    """The size of dimension `key` (multiple of `step`) whose all-layer student is closest to `target` parameters."""
    full = getattr(prune.model_shape(model), key)
    return min(range(step, full + 1, step), key=lambda size: abs(params_of(model, {key: size}) - target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="HF folder of SmolLM2-135M-Instruct (csdistill model fetch)")
    parser.add_argument("--prompts", type=int, default=32, help="test prompts the teacher answers")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--sizes", default="29,27,24,20,15", help="kept layers per depth student")
    parser.add_argument("--out", default="benchmarks/out/pruning.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    tokenizer, teacher = load_tokenizer(args.teacher), load_model(args.teacher).eval()
    rows = teacher_answers(teacher, tokenizer, args.prompts, args.max_new_tokens,
                           Path(args.out).with_name("pruning_answers.jsonl"))
    batches = answer_batches(tokenizer, rows)
    stats = prune.collect_statistics(teacher, calibration_batches(tokenizer, calibration_texts(tokenizer, None, 64, 0),
                                                                  8, 256))
    print(f"teacher: {prune.parameter_count(teacher):,} parameters, NLL {mean_nll(teacher, batches):.3f} on "
          f"{sum(int((b['labels'] != IGNORE_INDEX).sum()) for b in batches)} answer tokens "
          f"({time.time() - start:.0f} s)")
    bi = prune.block_influence(stats.mean("cosine"))
    print("block influence per layer:", " ".join(f"{x:.3f}" for x in bi.tolist()))
    results = []
    print(f"{'layers':>6} {'params':>11} | {'block-infl.':>11} {'angular':>9} {'uniform':>9} | "
          f"{'MLP width':>16} {'hidden width':>16}")
    for layers in [int(x) for x in args.sizes.split(",")]:
        row = {"layers": layers}
        for method in prune.DEPTH_METHODS:
            student = prune.prune_model(teacher, prune.make_plan(teacher, stats, layers, method))
            row[method] = {"nll": mean_nll(student, batches), "kept": prune.make_plan(teacher, stats, layers, method).layers}
            row["params"] = prune.parameter_count(student)
        for key, step in (("mlp", 32), ("hidden", 32)):
            size = matching_width(teacher, row["params"], key, step)
            student = prune.prune_model(teacher, prune.make_plan(teacher, stats, **{key: size}))
            row[key] = {"size": size, "params": prune.parameter_count(student), "nll": mean_nll(student, batches)}
        results.append(row)
        print(f"{layers:>6} {row['params']:>11,} | {row['block-influence']['nll']:>11.3f} {row['angular']['nll']:>9.3f} "
              f"{row['uniform']['nll']:>9.3f} | {row['mlp']['nll']:>7.3f} (I={row['mlp']['size']:>4}) "
              f"{row['hidden']['nll']:>7.3f} (H={row['hidden']['size']:>3})", flush=True)
    Path(args.out).write_text(json.dumps({"results": results, "block_influence": bi.tolist()}, indent=1))
    print(f"done in {time.time() - start:.0f} s; kept layers:")
    for row in results:
        print(f"  {row['layers']}: " + "; ".join(f"{m} {row[m]['kept']}" for m in prune.DEPTH_METHODS))


if __name__ == "__main__":
    main()
