"""A run killed with SIGKILL mid-training and resumed ends with the same weights as an uninterrupted run."""

import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from csdistill.config import load_config
from csdistill.train import train
from helpers import paused_train_command, write_toy_run


@pytest.fixture
def toy(tmp_path):
    return write_toy_run(tmp_path, n_train=24, n_lm=100)


def args(toy, out) -> list[str]:
    """ImitKD with an LM term and validation: exercises data order, replay buffer, sampling, lm order."""
    return [f"model.name_or_path={toy / 'student'}", f"teacher.name_or_path={toy / 'teacher'}",
            f"data.train_file={toy / 'train.jsonl'}", f"data.lm_file={toy / 'lm.txt'}", "train.lm_coef=0.5",
            f"train.output_dir={out}", "train.mode=imitkd", "train.buffer_size=6", "train.batch_size=3",
            "train.grad_accum=2", "train.max_steps=7", "train.save_every=2", "train.log_every=1", "eval.eval_every=3",
            "data.max_prompt_length=32", "data.max_length=64", "generation.max_new_tokens=6", "train.lr=1e-3",
            "train.warmup_steps=2", "train.progress=false", "train.num_threads=1"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before pausing:\n{proc.stdout.read()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("training did not reach the pause step in time")
        time.sleep(0.1)


def test_sigkill_then_resume_matches_an_uninterrupted_run(toy):
    killed = toy / "killed"
    # the run sleeps after step 5; its last checkpoint is step 4
    proc = subprocess.Popen(paused_train_command(5, args(toy, killed)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for(killed / "paused-at-5", proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-00000002", "checkpoint-00000004"]
    (killed / "checkpoint-00000006.tmp").mkdir()  # as if it had died while writing the next checkpoint

    resumed = train(load_config(None, [*args(toy, killed), "train.resume=auto"]))
    straight = train(load_config(None, args(toy, toy / "straight")))
    a = load_file(killed / "final" / "model.safetensors")
    b = load_file(toy / "straight" / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert resumed.step == straight.step == 7
    # metrics.jsonl: the killed run's row for step 5 was replaced, not duplicated
    assert [r["step"] for r in resumed.history] == list(range(1, 8))
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in straight.history], abs=1e-6)
