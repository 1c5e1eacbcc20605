"""Tiny shared fixtures: the char tokenizer, tiny preset models, JSONL writing, toy instruction data."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from csdistill.data.tokenizer import build_char_tokenizer
from csdistill.models import load_model
from csdistill.seeding import make_generator

WORDS = ("cat", "dog", "sun", "red", "blue", "tree", "fish", "moon", "star", "rock", "milk", "bird")


def tiny_tokenizer():
    """A fresh character tokenizer (101 ids: 4 specials + printable ASCII, newline, tab); pad=0, eos=2."""
    return build_char_tokenizer()


def tiny_model(preset: str = "tiny-llama", seed: int = 0, vocab_size: int | None = None):
    """A 2-layer preset model (eval mode) with vocab_size rows (default: the tiny tokenizer's size)."""
    model = load_model(f"preset:{preset}", vocab_size=vocab_size or len(tiny_tokenizer()), seed=seed)
    return model.eval()


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    """Write one JSON object per line (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def toy_instruction_records(n: int, seed: int = 0) -> list[dict]:
    """n deterministic instruction records: reverse or copy 2-4 words, e.g.
    {"instruction": "reverse: cat sun", "input": "", "response": "sun cat"}."""
    generator = make_generator(seed, 0, 0, "toy_records")
    records = []
    for _ in range(n):
        count = int(torch.randint(2, 5, (1,), generator=generator))
        words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (count,), generator=generator)]
        task = "reverse" if int(torch.randint(0, 2, (1,), generator=generator)) else "copy"
        response = words[::-1] if task == "reverse" else words
        records.append({"instruction": f"{task}: {' '.join(words)}", "input": "", "response": " ".join(response)})
    return records


def write_toy_run(root: str | Path, n_train: int, n_validation: int = 0, n_lm: int = 0) -> Path:
    """A training folder: train.jsonl (+ validation.jsonl, lm.txt) of toy records and a tiny saved
    student (seed 0) and teacher (seed 1) with the char tokenizer, under `root`; returns root."""
    root = Path(root)
    write_jsonl(root / "train.jsonl", toy_instruction_records(n_train, seed=0))
    if n_validation:
        write_jsonl(root / "validation.jsonl", toy_instruction_records(n_validation, seed=1))
    if n_lm:
        (root / "lm.txt").write_text(" ".join(r["response"] for r in toy_instruction_records(n_lm, seed=2)))
    tokenizer = tiny_tokenizer()
    for name, seed in (("student", 0), ("teacher", 1)):
        tiny_model(seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def sft_args(toy: Path, out: str | Path, *extra: str) -> list[str]:
    """Overrides of a quick SFT run on write_toy_run's data and student into `out` (batch 4, log every step)."""
    return [f"model.name_or_path={toy / 'student'}", "train.mode=sft", f"data.train_file={toy / 'train.jsonl'}",
            "data.max_prompt_length=32", "data.max_length=64", "train.batch_size=4", "train.log_every=1",
            "train.progress=false", "train.num_threads=1", f"train.output_dir={out}", *extra]


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder (symlinks kept as links), to damage or rerun into."""
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


# A `csdistill train` that stops before step PAUSE (steps 1..PAUSE done, logged and saved as due), writes
# <output_dir>/paused-at-PAUSE holding its pid and sleeps, so a test can SIGKILL it there. The loop knows
# nothing of this: the subprocess wraps its train_step.
_PAUSED_TRAIN = """
import os, sys, time
from pathlib import Path
import csdistill.train.loop as loop
from csdistill.cli import main

pause, real_step = int(sys.argv[1]), loop.train_step

def train_step(run, step):
    if step == pause:
        (Path(run.cfg.train.output_dir) / f"paused-at-{pause}").write_text(str(os.getpid()))
        time.sleep(600)
    return real_step(run, step)

loop.train_step = train_step
sys.exit(main(["train", *sys.argv[2:]]))
"""


def paused_train_command(pause_after: int, args: list[str]) -> list[str]:
    """argv of a `csdistill train *args` process that sleeps after step `pause_after` (see _PAUSED_TRAIN)."""
    import sys

    return [sys.executable, "-c", _PAUSED_TRAIN, str(pause_after), *args]
