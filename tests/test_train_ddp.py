"""Data parallel through `accelerate launch`: 2 CPU processes x batch b == 1 process x batch 2b."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from csdistill.config import load_config
from csdistill.train import train
from helpers import tiny_model, tiny_tokenizer, toy_instruction_records, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", toy_instruction_records(32, seed=0))
    write_jsonl(tmp_path / "validation.jsonl", toy_instruction_records(7, seed=1))  # odd: uneven shards
    tokenizer = tiny_tokenizer()
    for name, seed in (("student", 0), ("teacher", 1)):
        tiny_model(seed=seed).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    common = [f"model.name_or_path={tmp_path / 'student'}", f"teacher.name_or_path={tmp_path / 'teacher'}",
              f"data.train_file={tmp_path / 'train.jsonl'}", f"data.validation_file={tmp_path / 'validation.jsonl'}",
              "train.mode=kd", "train.grad_accum=2", "train.max_steps=3", "train.log_every=1", "eval.eval_every=3",
              "data.max_prompt_length=32", "data.max_length=64", "train.lr=1e-3", "train.progress=false",
              "train.num_threads=1"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs/accelerate/cpu_2proc.yaml"), "--num_cpu_threads_per_process", "1",
              "--main_process_port", str(_free_port()), "-m", "csdistill.cli", "train", *common,
              f"train.output_dir={tmp_path / 'ddp'}", "train.batch_size=2", "loss.fused=true"]  # fused under DDP, too
    proc = subprocess.run(launch, capture_output=True, text=True, timeout=240, env={**os.environ})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = train(load_config(None, [*common, f"train.output_dir={tmp_path / 'one'}", "train.batch_size=4"]))

    a = load_file(tmp_path / "ddp" / "final" / "model.safetensors")
    b = load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    ddp_rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in ddp_rows] == pytest.approx([r["loss"] for r in single.history], rel=1e-5)
    assert ddp_rows[-1]["val_loss"] == pytest.approx(single.val_loss, rel=1e-5)
    assert ddp_rows[-1]["tokens_per_s"] > 0
