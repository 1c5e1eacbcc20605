"""`csdistill data respond`: the teacher answers a prompt set once; the answers become chat records.

    csdistill data respond --teacher models/smollm2 --prompts data/prompts --out data/smollm2

For each split file of --prompts (a folder of train/validation/test JSONL, or one JSONL file) the teacher
answers every prompt (its chat template when it has one; greedy unless --sample), in batches. Output,
one file per split: instruction records {"instruction", "input", "prompt" (the rendered chat prompt the
teacher answered), "response" and "references": [the answer], "teacher", "key", ...the prompt record's
fields (category, task, answer, id)}; the prompt record's own response (the worked solution of an
arithmetic problem) is kept as ``gold_response``. Train and evaluate on them with
``data.template=prompt`` so that the student sees the teacher's chat prompt verbatim (chat
``messages`` records would be re-rendered without the tokenizer's template by the loaders). The
teacher's answers are the ROUGE-L references of open-ended prompts; exact tasks keep their ``answer``.

Resumable and cached: each finished batch is appended to ``<split>.jsonl.partial`` (flushed), every line
carrying a key (teacher weights, generation settings, prompt); a rerun continues after the last line whose
key matches (at a batch boundary, so batches and sampling draws are those of an uninterrupted run) and
renames the file to ``<split>.jsonl`` when complete. A complete file with matching keys is reused; one made
with other settings is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from csdistill.config import GenerationConfig
from csdistill.errors import UserError, check_writable
from csdistill.files import jsonl_lines

SPLIT_ORDER = ("train", "validation", "test")


def prompt_files(prompts: str) -> dict[str, Path]:
    """{split: file}: the split files of a prompt folder, or {stem: file} for a single JSONL file."""
    path = Path(prompts).expanduser()
    if path.is_file():
        return {path.stem: path}
    files = {s: path / f"{s}.jsonl" for s in SPLIT_ORDER
             if (path / f"{s}.jsonl").is_file() and (path / f"{s}.jsonl").stat().st_size > 0}  # empty: --n-x 0
    if not files:
        raise UserError(f"--prompts {prompts!r}: no train/validation/test .jsonl there; pass a folder written by "
                         "`csdistill data prompts` or a JSONL file")
    return files


def response_key(fingerprint: str, gen: GenerationConfig, seed: int, prompt: str) -> str:
    from csdistill.evaluate.runner import stable_hash
    from csdistill.generation import SAMPLER

    return stable_hash({"teacher": fingerprint, "generation": vars(gen), "sampler": SAMPLER, "seed": seed,
                        "prompt": prompt})


def _read_done(path: Path, keys: list[str]) -> list[dict]:
    """The leading lines of `path` whose keys match `keys` in order (a torn last line is dropped)."""
    done: list[dict] = []
    if not path.is_file():
        return done
    for line, key in zip(jsonl_lines(path), keys):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if row.get("key") != key:
            break
        done.append(row)
    return done


def _response_record(record: dict, prompt: str, answer: str, teacher: str, key: str) -> dict:
    extra = {k: v for k, v in record.items() if k not in ("response", "messages", "prompt")}
    gold = {"gold_response": record["response"]} if record.get("response") else {}
    return {**extra, "prompt": prompt, "response": answer, **gold, "references": [answer], "teacher": teacher,
            "key": key}


def _append(handle, rows: list[dict]) -> None:
    handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    handle.flush()
    os.fsync(handle.fileno())


def respond_split(model, tokenizer, records: list[dict], out: Path, teacher: str, gen: GenerationConfig,
                  seed: int, max_prompt_length: int) -> tuple[int, int]:
    """Answer `records` into `out` (resuming `out`.partial): (answers generated now, answers reused)."""
    from csdistill.data.prompts import chat_prompt
    from csdistill.evaluate.runner import model_fingerprint
    from csdistill.generation import generate_texts

    fingerprint = model_fingerprint(model)
    prompts = [chat_prompt(r, tokenizer) for r in records]
    keys = [response_key(fingerprint, gen, seed, p) for p in prompts]
    if out.is_file():
        if len(_read_done(out, keys)) == len(records) == len(jsonl_lines(out)):
            return 0, len(records)
        raise UserError(f"data respond: {out} already exists from other prompts, teacher or settings; choose a new "
                         "--out (finished files are never overwritten)")
    partial = out.with_name(out.name + ".partial")
    done = _read_done(partial, keys)
    done = done[: len(done) // gen.batch_size * gen.batch_size]  # whole batches: a resumed run batches alike
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "w", encoding="utf-8") as handle:  # rewrite the verified prefix, then append
        _append(handle, done)
        for start in range(len(done), len(records), gen.batch_size):
            stop = min(start + gen.batch_size, len(records))
            # the batch index seeds sampling, so a resumed run draws what an uninterrupted one would
            texts = generate_texts(model, tokenizer, prompts[start:stop], gen, seed + start // gen.batch_size,
                                   max_prompt_length)
            _append(handle, [_response_record(records[i], prompts[i], text.strip(), teacher, keys[i])
                             for i, text in zip(range(start, stop), texts)])
            print(f"csdistill: {out.stem}: {stop}/{len(records)} answered", file=sys.stderr, flush=True)
    partial.replace(out)
    return len(records) - len(done), len(done)


def respond(teacher: str, prompts: str, out: str, splits: list[str] | None = None, max_new_tokens: int = 128,
            batch_size: int = 8, sample: bool = False, seed: int = 0, max_prompt_length: int = 256) -> dict:
    """Teacher answers for every split of `prompts` into the folder `out`: {split: (generated, reused)}."""
    from csdistill.data import load_records
    from csdistill.models import load_model, load_tokenizer

    files = prompt_files(prompts)
    unknown = [s for s in splits or [] if s not in files]
    if unknown:
        raise UserError(f"--splits {','.join(unknown)}: not in {prompts!r} (it has {', '.join(files)})")
    for flag, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    check_writable(out, "--out")  # before the teacher is loaded
    gen = GenerationConfig(do_sample=sample, max_new_tokens=max_new_tokens, batch_size=batch_size)
    tokenizer = load_tokenizer(teacher)
    model = load_model(teacher, precision="bf16").eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    summary = {}
    for split in splits or list(files):
        # chat/ShareGPT records: their prompt rendered with the teacher's chat template (what it answers)
        records = load_records(files[split], require_response=False, tokenizer=tokenizer).records
        summary[split] = respond_split(model, tokenizer, records, Path(out) / f"{split}.jsonl", str(teacher), gen,
                                       seed, max_prompt_length)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`csdistill data respond` flags."""
    parser.add_argument("--teacher", required=True, help="teacher: an HF folder, a hub id or a .gguf file")
    parser.add_argument("--prompts", required=True, help="a folder from `csdistill data prompts`, or one JSONL file")
    parser.add_argument("--out", required=True,
                        help="folder for the answered splits (instruction JSONL; train with data.template=prompt)")
    parser.add_argument("--splits", default="", help="comma-separated splits to answer (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest answer, in tokens")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch")
    parser.add_argument("--sample", action="store_true", help="sample (temperature 1) instead of greedy decoding")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (with --sample)")


def respond_command(args: argparse.Namespace) -> int:
    summary = respond(args.teacher, args.prompts, args.out, [s for s in args.splits.split(",") if s],
                      args.max_new_tokens, args.batch_size, args.sample, args.seed)
    for split, (generated, reused) in summary.items():
        print(f"csdistill: {Path(args.out) / (split + '.jsonl')}: {generated} answered, {reused} reused")
    return 0
