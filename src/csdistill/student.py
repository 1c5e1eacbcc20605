"""`csdistill student init`: a student cut from a teacher by depth and/or width pruning (``prune.py``).

    csdistill student init --teacher models/smollm2 --out models/student-20 --layers 20
    csdistill student init --teacher models/smollm2 --out models/student-w --mlp 768 --heads 6 --kv-heads 3

Calibration text: ``--calibration FILE`` (instruction or chat JSONL: each record's prompt + response), else
the train split of the default generated prompt set (``data.prompts``, seed ``--seed``) rendered with the
teacher's chat template when it has one. The output folder holds the student (HF format, the
teacher's dtype), the tokenizer and ``csdistill_student.json`` (what was kept, the scores, sizes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from csdistill import prune
from csdistill.errors import UserError
from csdistill.provenance import PROVENANCE_FILE


def calibration_texts(tokenizer, path: str | None, n: int, seed: int) -> list[str]:
    """Up to `n` calibration texts: prompt + response of each record of `path`, else generated prompts."""
    from csdistill.data import load_records
    from csdistill.data.prompts import chat_prompt

    if path:
        records = load_records(path, require_response=False, tokenizer=tokenizer).records[:n]
    else:
        from csdistill.data.prompts import DEFAULT_SIZES, generate_prompt_splits

        # the train split of the default prompt set: never one of its test or validation prompts
        records = generate_prompt_splits(seed, {**DEFAULT_SIZES, "train": max(n, 1)})["train"][:n]
    return [chat_prompt(record, tokenizer) + (record.get("response") or "") for record in records]


def calibration_batches(tokenizer, texts: list[str], batch_size: int, max_length: int) -> list[dict]:
    """Right-padded batches {input_ids (B, T), attention_mask (B, T)} of the texts, cut to max_length."""
    from csdistill.data import collate

    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    examples = [{"input_ids": ids, "labels": ids} for ids in encoded if ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [collate(examples[i:i + batch_size], pad) for i in range(0, len(examples), batch_size)]


def init_student(teacher: str, out: str, layers: int | None = None, depth_method: str = "block-influence",
                 mlp: int | None = None, heads: int | None = None, kv_heads: int | None = None,
                 hidden: int | None = None, calibration: str | None = None, calibration_samples: int = 64,
                 max_length: int = 256, seed: int = 0) -> Path:
    """Prune `teacher` (an HF folder, hub id or .gguf) and save the student in the new folder `out`."""
    from csdistill.model_files import check_new_folder, save_model_folder, _stamp
    from csdistill.models import load_model, load_tokenizer

    check_new_folder(out)
    sizes = {"--layers": layers, "--mlp": mlp, "--heads": heads, "--kv-heads": kv_heads, "--hidden": hidden}
    for flag, value in sizes.items():
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: a student keeps at least 1; leave {flag} out to keep all of the teacher's")
    if calibration_samples < 1 or max_length < 2:
        raise UserError(f"--calibration-samples {calibration_samples} / --max-length {max_length}: need at least "
                         "1 text of at least 2 tokens to score importance")
    tokenizer = load_tokenizer(teacher)
    model = load_model(teacher).eval()
    model_dtype = next(model.parameters()).dtype
    stats = None
    shape = prune.model_shape(model)
    if depth_method != "uniform" or (mlp, heads, kv_heads, hidden) != (None, None, None, None):
        texts = calibration_texts(tokenizer, calibration, calibration_samples, seed)
        stats = prune.collect_statistics(model.float(), calibration_batches(tokenizer, texts, 8, max_length))
    plan = prune.make_plan(model, stats, layers, depth_method, mlp, heads, kv_heads, hidden)
    student = prune.prune_model(model.to(model_dtype), plan)
    provenance = _stamp(teacher=str(teacher), depth_method=depth_method, kept_layers=plan.layers,
                        teacher_shape=vars(shape), student_shape=vars(prune.model_shape(student)),
                        teacher_parameters=prune.parameter_count(model),
                        student_parameters=prune.parameter_count(student),
                        calibration=calibration or f"generated prompts (seed {seed})",
                        calibration_tokens=stats.tokens if stats else 0,
                        block_influence=prune.block_influence(stats.mean("cosine")).tolist() if stats else None,
                        heads_per_layer={str(k): v for k, v in plan.heads.items()} if heads or kv_heads else None)
    return save_model_folder(student, tokenizer, out, provenance, PROVENANCE_FILE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`csdistill student init` flags (a contract: compare's configs and benchmarks/real_model.sh call them)."""
    parser.add_argument("--teacher", required=True, help="teacher: an HF folder, a hub id or a .gguf file")
    parser.add_argument("--out", required=True, help="new folder for the student (HF format + tokenizer)")
    parser.add_argument("--layers", type=int, default=None, help="depth kept (default: all the teacher's layers)")
    parser.add_argument("--depth-method", default="block-influence", choices=prune.DEPTH_METHODS,
                        help="which layers stay: block-influence (drop lowest 1 - cos(in, out)), angular (drop the "
                             "contiguous block that turns the hidden state least) or uniform (evenly spaced)")
    parser.add_argument("--mlp", type=int, default=None, help="MLP neurons kept per layer (intermediate size)")
    parser.add_argument("--heads", type=int, default=None, help="attention (query) heads kept per layer")
    parser.add_argument("--kv-heads", type=int, default=None, help="KV heads (GQA groups) kept per layer")
    parser.add_argument("--hidden", type=int, default=None, help="hidden (residual) channels kept")
    parser.add_argument("--calibration", default=None,
                        help="JSONL whose prompt + response texts score importance (default: generated prompts)")
    parser.add_argument("--calibration-samples", type=int, default=64, help="calibration texts used")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per calibration text")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated calibration prompts")


def student_init_command(args: argparse.Namespace) -> int:
    path = init_student(args.teacher, args.out, args.layers, args.depth_method, args.mlp, args.heads,
                        args.kv_heads, args.hidden, args.calibration, args.calibration_samples, args.max_length,
                        args.seed)
    info = json.loads((path / PROVENANCE_FILE).read_text())
    print(f"csdistill: wrote {path}: layers {info['kept_layers']}, {info['student_parameters']:,} of "
          f"{info['teacher_parameters']:,} parameters")
    return 0

