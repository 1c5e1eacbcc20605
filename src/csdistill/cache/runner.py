"""`csdistill teacher cache --config x.yaml --out DIR [--store topk --top-k 64 | --store hidden]`.

The teacher runs teacher-forced over every training and validation sequence (and pre-generated
teacher/student responses, for seqkd/paired), tokenised exactly as the trainer does
(data.train_data.load_train_data), under the trainer's autocast. Per valid position it keeps
  --store topk    the top-k ids and log-probabilities, log p of the actual next token and the log
                  tail mass (losses.sparse.sparse_from_logits), over the real token ids
                  [0, min(V_head, len(tokenizer))) — an approximation for most losses;
  --store hidden  the final hidden state after the final norm (models.hidden_states_and_head),
                  with the LM head saved once (cache/head.py): every loss is exact from it.

Shards of `--shard-size` sequences are written atomically, so a killed run resumes shard by shard
(same command, same --out). Under `accelerate launch` process r writes shards r, r + P, ...; the
main process merges the manifest once all are done. A folder holding another cache is refused.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from csdistill.cache.head import check_head_matches_model, head_spec, write_head
from csdistill.cache.keys import example_key
from csdistill.cache.spec import build_spec, teacher_fingerprint
from csdistill.cache.store import (HIDDEN_DTYPES, STORES, VALUE_DTYPES, HiddenRows, read_json, read_manifest,
                                   shard_is_complete, shard_name, spec_identity, write_json, write_shard)
from csdistill.config import Config, ConfigError, load_config
from csdistill.data.train_data import load_train_data
from csdistill.losses.reduce import shift_labels, valid_mask
from csdistill.losses.sparse import sparse_from_logits
from csdistill.models import autocast_for, hidden_states_and_head


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="the training YAML config (teacher, data, lengths)")
    parser.add_argument("--store", default="topk", choices=STORES,
                        help="topk: top-k log-probs per position (small, approximate); hidden: the final hidden "
                             "state per position + the head once (d*2 or d*4 bytes, every loss exact)")
    parser.add_argument("--top-k", type=int, default=None, help="topk store: token ids kept per position, e.g. 64")
    parser.add_argument("--out", required=True, help="cache folder (created; an unfinished one is resumed)")
    parser.add_argument("--dtype", default=None, choices=sorted({*VALUE_DTYPES, *HIDDEN_DTYPES}),
                        help="storage: topk fp16 (default) | fp32; hidden bf16 (default) | fp32")
    parser.add_argument("--shard-size", type=int, default=1024, help="sequences per shard (the resume unit)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per teacher forward pass")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. teacher.precision=bf16")


def cache_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if not cfg.teacher.name_or_path:
        raise ConfigError("teacher.name_or_path is empty; `teacher cache` runs the teacher — set it in the config")
    store, top_k, dtype = _store_arguments(args)
    manifest = build_cache(cfg, args.out, top_k, dtype, args.shard_size, args.batch_size,
                           progress=not args.no_progress, store=store)
    what = f"k={manifest['top_k']}" if store == "topk" else f"hidden d={manifest['hidden_size']}"
    print(f"csdistill: teacher cache {args.out}: {manifest['sequences']} sequences, {manifest['positions']} positions, "
          f"{what}, {manifest['bytes_per_position']} bytes/position")
    return 0


def _store_arguments(args: argparse.Namespace) -> tuple[str, int, str]:
    """(store, top_k, dtype) from the flags, each checked against the store."""
    if args.store == "topk":
        if args.top_k is None:
            raise ConfigError("--store topk needs --top-k K (e.g. --top-k 64); or use --store hidden")
        dtype = args.dtype or "fp16"
        if dtype not in VALUE_DTYPES:
            raise ConfigError(f"--dtype {dtype} is not a top-k storage; choose {' or '.join(VALUE_DTYPES)}")
        return "topk", args.top_k, dtype
    if args.top_k is not None:
        raise ConfigError(f"--top-k {args.top_k} applies to --store topk only; drop it (the hidden store keeps every logit)")
    dtype = args.dtype or "bf16"
    if dtype not in HIDDEN_DTYPES:
        raise ConfigError(f"--dtype {dtype} is not a hidden-state storage; choose {' or '.join(HIDDEN_DTYPES)}")
    return "hidden", 0, dtype


def cache_sequences(cfg: Config, tokenizer) -> list[dict]:
    """Every distinct sequence a run of this config trains or validates on, in a fixed order."""
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
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is an existing file, not a folder; choose a new folder for the cache")
    if spec_path.is_file():
        existing, wanted = spec_identity(read_json(spec_path, f"--out {str(out)!r}")), spec_identity(spec)
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
                batch_size: int = 8, progress: bool = True, store: str = "topk") -> dict:
    """Write (or finish) the `store` cache (topk | hidden) of `cfg`'s teacher and data under `out`;
    returns the manifest."""
    from accelerate import Accelerator

    if (store == "topk" and top_k < 1) or shard_size < 1 or batch_size < 1:
        raise ConfigError(f"--top-k={top_k}, --shard-size={shard_size}, --batch-size={batch_size}: all must be >= 1")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    tokenizer, teacher, vocab = load_cache_teacher(cfg)
    if top_k > vocab:
        raise ConfigError(f"--top-k={top_k} exceeds the teacher's vocabulary V={vocab}; choose k <= {vocab}")
    out = Path(out)
    head = head_spec(teacher) if store == "hidden" else None
    spec = build_spec(cfg, tokenizer, teacher_fingerprint(cfg, teacher), top_k, dtype, vocab, store, head)
    done = _prepare_folder(out, spec, accelerator.is_main_process)
    if store == "hidden" and accelerator.is_main_process and not done:
        write_head(out, teacher)  # the same bytes on a resumed run (the spec holds their sha256)
    accelerator.wait_for_everyone()
    if done:
        return read_manifest(out)
    sequences = cache_sequences(cfg, tokenizer)
    shards = [sequences[i:i + shard_size] for i in range(0, len(sequences), shard_size)]
    mine = list(range(accelerator.process_index, len(shards), accelerator.num_processes))
    rows_of = _row_maker(teacher.to(accelerator.device), cfg, spec, tokenizer.pad_token_id, batch_size,
                         accelerator.device)
    bar = _progress(sum(len(shards[i]) for i in mine), progress, accelerator.process_index)
    for index in mine:
        path = out / shard_name(index)
        if not shard_is_complete(path, spec):
            rows, counts = rows_of(shards[index])
            write_shard(path, rows, [example_key(ex) for ex in shards[index]], counts, spec)
        bar.update(len(shards[index]))
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_manifest(out, spec, len(shards), accelerator.num_processes)
    accelerator.wait_for_everyone()
    return read_manifest(out)


def _row_maker(teacher, cfg: Config, spec: dict, pad_token_id: int, batch_size: int, device):
    """examples -> (rows of their valid positions, row count per example) for the spec's store."""
    autocast = autocast_for(cfg.model.precision, device)
    if spec.get("store") == "hidden":
        checked = []  # the head-vs-model check runs on the first batch only

        def position_rows(batch, valid, labels):
            return _hidden_rows(teacher, batch, valid, labels, autocast, cfg.teacher.name_or_path, checked)
    else:
        def position_rows(batch, valid, labels):
            with autocast():
                logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[valid]
            return sparse_from_logits(logits[:, :spec["vocab_size"]], labels[valid], spec["top_k"]).to("cpu")

    return lambda examples: _teacher_rows(examples, position_rows, pad_token_id, batch_size, device)


def _hidden_rows(teacher, batch, valid, labels, autocast, name: str, checked: list) -> HiddenRows:
    """The final hidden states at the valid positions, (N, d), as the fused trainer gets them."""
    with autocast():
        hidden, weight, bias = hidden_states_and_head(teacher, batch["input_ids"], batch["attention_mask"])
        if not checked:
            from csdistill.models import final_logit_scale

            logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[valid]
            head_logits = torch.nn.functional.linear(hidden[valid], weight, bias) * final_logit_scale(teacher)
            check_head_matches_model(head_logits, logits, name)
            checked.append(True)
    return HiddenRows(hidden[valid].to("cpu"), labels[valid].to("cpu"))
def _progress(total: int, enabled: bool, rank: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="seq", desc=f"teacher cache [{rank}]", disable=not enabled, position=rank)


@torch.no_grad()
def _teacher_rows(examples: list[dict], position_rows, pad_token_id: int, batch_size: int, device):
    """position_rows(batch, valid, labels) over `examples` in batches, concatenated row-major over
    their valid positions, and each example's row count."""
    from csdistill.data.collate import collate

    parts, counts = [], []
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size], pad_token_id).items()}
        labels = shift_labels(batch["labels"])  # (B, T)
        valid = valid_mask(labels)
        parts.append(position_rows(batch, valid, labels))
        counts.extend(valid.sum(dim=1).tolist())
    return type(parts[0]).cat(parts), counts


def _write_manifest(out: Path, spec: dict, n_shards: int, world_size: int) -> None:
    from safetensors import safe_open

    entries = []
    for index in range(n_shards):
        with safe_open(str(out / shard_name(index)), framework="pt") as handle:
            offsets = handle.get_tensor("offsets")
        entries.append({"file": shard_name(index), "sequences": len(offsets) - 1, "positions": int(offsets[-1])})
    positions = sum(e["positions"] for e in entries)
    write_json(out / "manifest.json", {**spec, "shards": entries, "sequences": sum(e["sequences"] for e in entries),
                                       "positions": positions, "world_size": world_size,
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
