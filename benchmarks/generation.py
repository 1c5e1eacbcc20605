"""Decoding throughput: csdistill's batched decoder vs the per-seed decoder it replaced, plain `model.generate`
(the loop a user would write) and the physical bound (a teacher-forced forward over the same tokens).

Side by side in one process, per model, thread count, batch size and decoding (greedy; sampled with S seeds):
each method decodes the same prompts (the real-model table's generated chat prompts) and reports useful tokens/s
(generated tokens up to EOS, over wall time) and its ratio to the per-seed decoder and to `generate`; the bound
counts every token of its forward (prompt and answer).

    python benchmarks/generation.py --model ~/.cache/csdistill/models/smollm2-135m-instruct \\
        --model /path/to/pruned-student --threads 1,2 --batches 1,8,40

Pin the process (`taskset -c 0` for --threads 1, `taskset -c 0,1` for 2) on an otherwise idle machine; the load
average is printed with the figures. --evaluate also times `evaluate_model` with the real-model table's settings
(40 prompts, greedy + 5 sampled seeds of <= 80 tokens, a teacher-forced pass) on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from csdistill.config import GenerationConfig, load_config
from csdistill.data.collate import encode_prompt_ids, left_pad
from csdistill.data.prompts import chat_prompt, generate_prompt_splits
from csdistill.generation import generate_seed_texts
from csdistill.models import load_model, load_tokenizer

# The per-seed decoder (one pass per seed, a growing DynamicCache, every row to the batch's end): the revision
# of src/csdistill/generation.py just before the batched decoder.
BEFORE_REV = "7e6b695"
SEEDS = [10, 20, 30, 40, 50]


def per_seed_decoder(rev: str):
    """The generation module at git revision `rev`, imported under another name (None without git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(["git", "show", f"{rev}:src/csdistill/generation.py"], cwd=root, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "csdistill_per_seed_generation.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("csdistill_per_seed_generation", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def table_prompts(tokenizer, n: int) -> list[str]:
    """The real-model table's test prompts (`data prompts --seed 0`), rendered with the chat template."""
    records = generate_prompt_splits(0, {"test": n, "validation": 0, "train": 0})["test"]
    return [chat_prompt(r, tokenizer) for r in records]


def count_tokens(tokenizer, texts: list[list[str]]) -> int:
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for seed in texts for t in seed)


def run_csdistill(model, tokenizer, prompts, gen, seeds, batch, precision="fp32"):
    texts = generate_seed_texts(model, tokenizer, prompts, gen, seeds, max_prompt_length=128, batch_size=batch,
                                precision=precision)
    return texts if gen.do_sample else texts[:1]  # greedy: one decoding, shared by every seed


def run_per_seed(module, model, tokenizer, prompts, gen, seeds, batch):
    draws = seeds if gen.do_sample else seeds[:1]
    return [module.generate_texts(model, tokenizer, prompts, gen, seed=s, max_prompt_length=128, batch_size=batch)
            for s in draws]


def run_generate(model, tokenizer, prompts, gen, seeds, batch):
    """The loop a user would write: left-padded batches, model.generate once per seed."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = encode_prompt_ids(prompts, tokenizer, 128)
    texts = []
    for seed in (seeds if gen.do_sample else seeds[:1]):
        torch.manual_seed(seed)
        out = []
        for start in range(0, len(prompts), batch):
            b = left_pad(ids[start:start + batch], pad)
            extra = dict(do_sample=True, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k or None) \
                if gen.do_sample else dict(do_sample=False)
            with torch.no_grad():
                seq = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], pad_token_id=pad,
                                     max_new_tokens=gen.max_new_tokens, **extra)
            out += tokenizer.batch_decode(seq[:, b["input_ids"].shape[1]:], skip_special_tokens=True)
        texts.append(out)
    return texts


def forward_bound(model, tokenizer, prompts, texts, batch) -> tuple[int, float]:
    """(tokens, seconds) of a teacher-forced forward over prompt + decoded text of every row, in batches of the
    decoder's rows: the machine's rate on the same tokens, a bound no decoder of this model passes."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [p_ids + tokenizer(t, add_special_tokens=False)["input_ids"]
            for seed in texts for p_ids, t in zip(encode_prompt_ids(prompts, tokenizer, 128), seed)]
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(rows), batch * len(texts)):
            b = left_pad(rows[i:i + batch * len(texts)], pad)
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], logits_to_keep=1)
    return sum(len(r) for r in rows), time.perf_counter() - start


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def bench(name, model, tokenizer, module, threads, batch, n_prompts, gen, seeds) -> None:
    torch.set_num_threads(threads)
    prompts = table_prompts(tokenizer, n_prompts)
    run_csdistill(model, tokenizer, prompts[:2], dataclasses.replace(gen, max_new_tokens=4), seeds, batch)  # warm up
    rows = {}
    texts, seconds = timed(run_csdistill, model, tokenizer, prompts, gen, seeds, batch)
    rows["csdistill"] = (count_tokens(tokenizer, texts), seconds)
    bound = forward_bound(model, tokenizer, prompts, texts, batch)
    other, seconds = timed(run_csdistill, model, tokenizer, prompts, gen, seeds, batch, "bf16")
    rows["csdistill, bf16 autocast"] = (count_tokens(tokenizer, other), seconds)
    if module is not None:
        other, seconds = timed(run_per_seed, module, model, tokenizer, prompts, gen, seeds, batch)
        rows["per-seed (before)"] = (count_tokens(tokenizer, other), seconds)
        if not gen.do_sample:
            assert other == texts[:1], "greedy texts differ from the per-seed decoder"
    other, seconds = timed(run_generate, model, tokenizer, prompts, gen, seeds, batch)
    rows["model.generate"] = (count_tokens(tokenizer, other), seconds)
    rows["forward bound (prompt + answer tokens)"] = bound
    mode = f"sampled x{len(seeds)}" if gen.do_sample else "greedy"
    ours = rows["csdistill"][0] / rows["csdistill"][1]
    for method, (tokens, seconds) in rows.items():
        rate = tokens / seconds
        print(f"| {name} | {threads} | {batch} | {n_prompts} | {mode} | {method} | {tokens} | {seconds:.1f} | "
              f"{rate:.0f} | {ours / rate:.2f} |", flush=True)


def _full_logits(model, batch, mask, vocab_size, precision="fp32"):
    """The teacher-forced pass before: full (B, T, V) float32 logits, masked afterwards."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits[mask][:, :vocab_size].float()


@contextlib.contextmanager
def evaluation_before(module):
    """evaluate_model as it ran with the per-seed decoder: one decoding per seed, full-logit fidelity in fp32."""
    import csdistill.evaluate.fidelity as fidelity
    import csdistill.generation as generation

    def per_seed(model, tokenizer, prompts, gen, seeds, max_prompt_length=256, batch_size=None, progress=False,
                 what="", precision="fp32"):
        draws = list(seeds) if gen.do_sample else list(seeds)[:1]
        texts = [module.generate_texts(model, tokenizer, prompts, gen, s, max_prompt_length, batch_size) for s in draws]
        return texts if gen.do_sample else texts * len(seeds)

    saved = generation.generate_seed_texts, fidelity._valid_logits
    generation.generate_seed_texts, fidelity._valid_logits = per_seed, _full_logits
    try:
        yield
    finally:
        generation.generate_seed_texts, fidelity._valid_logits = saved


def time_evaluate(model, tokenizer, teacher, module) -> None:
    """evaluate_model as the real-model table runs it, one thread: 40 prompts, greedy + 5 seeds of <= 80 tokens in
    batches of 16 prompts, and the teacher-forced pass with the teacher's fidelity; the references are the
    teacher's greedy answers. Before (per-seed decoder, full-logit fp32 pass), fp32 and bf16-autocast now."""
    from csdistill.evaluate.runner import evaluate_model

    torch.set_num_threads(1)
    records = generate_prompt_splits(0, {"test": 40, "validation": 0, "train": 0})["test"]
    greedy = GenerationConfig(do_sample=False, max_new_tokens=80, batch_size=16)
    prompts = table_prompts(tokenizer, 40)
    answers = generate_seed_texts(teacher, tokenizer, prompts, greedy, [0], 128)[0]
    records = [{**r, "prompt": p, "response": a} for r, p, a in zip(records, prompts, answers)]
    variants = [("before", "fp32", evaluation_before(module) if module else None), ("now", "fp32", None),
                ("now", "bf16", None)]
    for name, precision, context in variants:
        if name == "before" and context is None:
            continue
        forced: dict = {}  # one teacher-forced pass serves both decodings, as in compare
        parts = []
        with context or contextlib.nullcontext():
            for greedy_pass in ("true", "false"):
                cfg = load_config(None, ["train.mode=sft", "generation.max_new_tokens=80", "generation.batch_size=16",
                                         "data.max_prompt_length=128", "data.max_length=256", "data.template=prompt",
                                         "eval.seeds=[10,20,30,40,50]", f"eval.greedy={greedy_pass}",
                                         f"model.precision={precision}"])
                start = time.perf_counter()
                evaluate_model(model, tokenizer, {"test": records}, cfg, teacher=teacher, progress=False,
                               teacher_forced=forced)
                parts.append(time.perf_counter() - start)
        print(f"evaluate_model at the real-model table's settings, {name}, {precision}, one thread: {sum(parts):.0f} s "
              f"(greedy + teacher-forced pass {parts[0]:.0f} s, 5 sampled seeds {parts[1]:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="an HF model folder (repeatable)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="1,8,40")
    parser.add_argument("--prompts", default="4,16,40", help="prompts per batch size (same order as --batches)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--modes", default="sampled,greedy")
    parser.add_argument("--before-rev", default=BEFORE_REV, help="git revision of the per-seed decoder")
    parser.add_argument("--evaluate", action="store_true", help="also time evaluate_model at the table's settings")
    parser.add_argument("--evaluate-only", action="store_true", help="only the evaluate_model timing")
    parser.add_argument("--teacher", default=None, help="the teacher for --evaluate (default: the first --model)")
    args = parser.parse_args()
    module = per_seed_decoder(args.before_rev)
    print(f"# load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}; per-seed decoder "
          f"{'at ' + args.before_rev if module else 'unavailable (no git)'}")
    print("| model | threads | batch | prompts | decoding | method | tokens | s | tok/s | csdistill ÷ this |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    seeds = SEEDS[:args.seeds]
    for path in args.model:
        tokenizer, model = load_tokenizer(path), load_model(path).eval()
        name = Path(path).name
        for threads in [] if args.evaluate_only else [int(t) for t in args.threads.split(",")]:
            for batch, n in zip([int(b) for b in args.batches.split(",")], [int(p) for p in args.prompts.split(",")]):
                for mode in args.modes.split(","):
                    gen = GenerationConfig(do_sample=mode == "sampled", max_new_tokens=args.max_new_tokens)
                    bench(name, model, tokenizer, module, threads, batch, n, gen, seeds)
        if args.evaluate or args.evaluate_only:
            teacher = load_model(args.teacher or args.model[0]).eval()
            time_evaluate(model, tokenizer, teacher, module)
    print(f"# load average {os.getloadavg()[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
