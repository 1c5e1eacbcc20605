"""`csdistill teacher cache --config x.yaml --top-k 64 --out DIR`: run the teacher once, keep its top-k.

The teacher runs teacher-forced over every training and validation sequence (and pre-generated
teacher/student responses, for seqkd/paired), tokenised exactly as the trainer does
(train.dataset.load_train_data), under the trainer's autocast. Per valid position it keeps the
top-k ids and log-probabilities, log p of the actual next token and the log tail mass
(losses.sparse.sparse_from_logits), over the real token ids [0, min(V_head, len(tokenizer))).

Shards of `--shard-size` sequences are written atomically, so a killed run resumes shard by shard
(same command, same --out). Under `accelerate launch` process r writes shards r, r + P, ...; the
main process merges the manifest once all are done. A folder holding another cache is refused.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from csdistill.cache.spec import build_spec, spec_identity, teacher_fingerprint
from csdistill.cache.store import (VALUE_DTYPES, read_manifest, shard_is_complete, shard_name, write_json,
                                   write_shard)
from csdistill.config import Config, ConfigError, load_config
from csdistill.losses.reduce import shift_labels, valid_mask
from csdistill.losses.sparse import SparseTeacher, sparse_from_logits
from csdistill.train.teacher_cache import example_key


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="the training YAML config (teacher, data, lengths)")
    parser.add_argument("--top-k", type=int, required=True, help="token ids kept per position, e.g. 64")
    parser.add_argument("--out", required=True, help="cache folder (created; an unfinished one is resumed)")
    parser.add_argument("--dtype", default="fp16", choices=tuple(VALUE_DTYPES), help="log-probability storage")
    parser.add_argument("--shard-size", type=int, default=1024, help="sequences per shard (the resume unit)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per teacher forward pass")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. teacher.precision=bf16")


def cache_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if not cfg.teacher.name_or_path:
        raise ConfigError("teacher.name_or_path is empty; `teacher cache` runs the teacher — set it in the config")
    manifest = build_cache(cfg, args.out, args.top_k, args.dtype, args.shard_size, args.batch_size,
                           progress=not args.no_progress)
    print(f"csdistill: teacher cache {args.out}: {manifest['sequences']} sequences, {manifest['positions']} positions, "
          f"k={manifest['top_k']}, {manifest['bytes_per_position']} bytes/position")
    return 0


def cache_sequences(cfg: Config, tokenizer) -> list[dict]:
    """Every distinct sequence a run of this config trains or validates on, in a fixed order."""
    from csdistill.train.dataset import load_train_data

    data = load_train_data(cfg, tokenizer)
    seen, out = set(), []
    for example in [*data.train, *data.validation]:
        for variant in (example, example.get("teacher"), example.get("student")):
            if variant and (key := example_key(variant)) not in seen:
                seen.add(key)
                out.append(variant)
    return out


def load_cache_teacher(cfg: Config):
    """(tokenizer — the trainer's —, teacher, cache vocabulary size); the tokenizers must agree."""
    from csdistill.models import _tokenizer_difference, load_teacher, load_tokenizer, output_vocab_size

    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path, fallback=cfg.teacher.name_or_path)
    teacher_tokenizer = load_tokenizer(cfg.teacher.name_or_path, fallback=cfg.model.tokenizer)
    difference = _tokenizer_difference(tokenizer, teacher_tokenizer)
    if difference:
        raise ConfigError(f"teacher.name_or_path={cfg.teacher.name_or_path!r}: its tokenizer differs from the run's "
                          f"({difference}); set model.tokenizer to the teacher's")
    teacher = load_teacher(cfg, teacher_tokenizer)
    return tokenizer, teacher, min(output_vocab_size(teacher), len(tokenizer))


def _prepare_folder(out: Path, spec: dict, is_main: bool) -> bool:
    """True when `out` already holds this finished cache. Another cache there is an error."""
    spec_path = out / "spec.json"
    if spec_path.is_file():
        import json

        existing, wanted = spec_identity(json.loads(spec_path.read_text())), spec_identity(spec)
        if existing != wanted:
            differs = sorted(key for key in set(wanted) | set(existing) if wanted.get(key) != existing.get(key))
            raise ConfigError(f"--out {str(out)!r} holds a teacher cache of something else (differs in {differs}); "
                              "choose a new --out (an existing cache is never overwritten)")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {str(out)!r} exists and is not a teacher cache; choose a new or empty folder")
    if is_main and not spec_path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_json(spec_path, spec)
    return (out / "manifest.json").is_file()


def build_cache(cfg: Config, out: str | Path, top_k: int, dtype: str = "fp16", shard_size: int = 1024,
                batch_size: int = 8, progress: bool = True) -> dict:
    """Write (or finish) the top-k cache of `cfg`'s teacher and data under `out`; returns the manifest."""
    from accelerate import Accelerator

    from csdistill.train.loop import autocast_for

    if top_k < 1 or shard_size < 1 or batch_size < 1:
        raise ConfigError(f"--top-k={top_k}, --shard-size={shard_size}, --batch-size={batch_size}: all must be >= 1")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    tokenizer, teacher, vocab = load_cache_teacher(cfg)
    if top_k > vocab:
        raise ConfigError(f"--top-k={top_k} exceeds the teacher's vocabulary V={vocab}; choose k <= {vocab}")
    out = Path(out)
    spec = build_spec(cfg, tokenizer, teacher_fingerprint(cfg, teacher), top_k, dtype, vocab)
    done = _prepare_folder(out, spec, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if done:
        return read_manifest(out)
    sequences = cache_sequences(cfg, tokenizer)
    shards = [sequences[i:i + shard_size] for i in range(0, len(sequences), shard_size)]
    mine = list(range(accelerator.process_index, len(shards), accelerator.num_processes))
    teacher = teacher.to(accelerator.device)
    autocast = autocast_for(cfg.model.precision, accelerator.device)
    bar = _progress(sum(len(shards[i]) for i in mine), progress, accelerator.process_index)
    for index in mine:
        path = out / shard_name(index)
        if not shard_is_complete(path, spec):
            rows, counts = _teacher_rows(teacher, shards[index], tokenizer.pad_token_id, top_k, vocab, batch_size,
                                         accelerator.device, autocast)
            write_shard(path, rows, [example_key(ex) for ex in shards[index]], counts, spec)
        bar.update(len(shards[index]))
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_manifest(out, spec, len(shards), accelerator.num_processes)
    accelerator.wait_for_everyone()
    return read_manifest(out)


def _progress(total: int, enabled: bool, rank: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="seq", desc=f"teacher cache [{rank}]", disable=not enabled, position=rank)


@torch.no_grad()
def _teacher_rows(teacher, examples: list[dict], pad_token_id: int, top_k: int, vocab: int, batch_size: int,
                  device, autocast) -> tuple[SparseTeacher, list[int]]:
    """The top-k rows of `examples` (row-major over their valid positions) and each one's row count."""
    from csdistill.data.collate import collate

    parts, counts = [], []
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size], pad_token_id).items()}
        labels = shift_labels(batch["labels"])  # (B, T)
        valid = valid_mask(labels)
        with autocast():
            logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[valid]
        parts.append(sparse_from_logits(logits[:, :vocab], labels[valid], top_k).to("cpu"))
        counts.extend(valid.sum(dim=1).tolist())
    return SparseTeacher.cat(parts), counts


def _write_manifest(out: Path, spec: dict, n_shards: int, world_size: int) -> None:
    from safetensors import safe_open

    entries = []
    for index in range(n_shards):
        with safe_open(str(out / shard_name(index)), framework="np") as handle:
            offsets = handle.get_tensor("offsets")
        entries.append({"file": shard_name(index), "sequences": len(offsets) - 1, "positions": int(offsets[-1])})
    positions = sum(e["positions"] for e in entries)
    write_json(out / "manifest.json", {**spec, "shards": entries, "sequences": sum(e["sequences"] for e in entries),
                                       "positions": positions, "world_size": world_size,
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
