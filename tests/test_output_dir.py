"""One run per output folder: an earlier run is never deleted or mixed in, a second writer refuses,
resume=auto continues only the same run, rotation keeps what it just wrote."""

import json
import os
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from csdistill.cli import main
from csdistill.config import ConfigError, load_config
from csdistill.errors import CheckpointError, OutputDirError
from csdistill.train import train
from csdistill.train.output_dir import LOCK, RunLock
from helpers import copy_run, sft_args as sft, write_toy_run


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_run(tmp_path_factory.mktemp("toy"), n_train=16)


def snapshot(root):
    """{relative path: bytes} of every file under root (symlinks as their target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def ten_step_run(toy, tmp_path_factory):
    """A finished 10-step run (checkpoints 8 and 10 kept) to copy into each test's folder."""
    out = tmp_path_factory.mktemp("ten") / "run"
    train(load_config(None, sft(toy, out, "train.max_steps=10", "train.save_every=2")))
    return out


def test_rerun_into_an_earlier_run_refuses_and_changes_nothing(toy, ten_step_run, tmp_path, capsys):
    out = copy_run(ten_step_run, tmp_path / "run")
    before = snapshot(out)
    assert main(["train", *sft(toy, out, "train.max_steps=2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("csdistill: error: ")
    assert "holds an earlier run" in err and "checkpoint-00000010" in err
    assert "train.resume=auto" in err and "train.overwrite=true" in err
    assert snapshot(out) == before  # not even config.yaml or metrics.jsonl rewritten
    assert not (out / LOCK).exists()


def test_overwrite_moves_the_earlier_run_aside_and_keeps_the_new_checkpoint(toy, ten_step_run, tmp_path):
    """The reported case: after a 10-step run, a 2-step run into the same folder wrote checkpoint-2,
    deleted it at once (rotation kept the highest steps) and left `final` dangling."""
    out = copy_run(ten_step_run, tmp_path / "run")
    before = snapshot(out)
    result = train(load_config(None, sft(toy, out, "train.max_steps=2", "train.keep_checkpoints=1",
                                         "train.overwrite=true")))
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-00000002"]
    assert (out / "final").resolve() == (out / "checkpoint-00000002" / "model").resolve() and result.step == 2
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    (moved,) = out.glob("replaced-*")
    assert snapshot(moved) == before  # every byte of the earlier run, final link included
    load_file(moved / "final" / "model.safetensors")


def test_rotation_never_deletes_what_it_just_wrote_nor_final(tmp_path):
    from test_checkpoint import _save, _trained

    model, optimizer, scheduler = _trained(steps=1)
    _save(tmp_path, 10, model, optimizer, scheduler, final=True)
    for step in (1, 2, 3):
        _save(tmp_path, step, model, optimizer, scheduler, keep=2)
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert names == ["checkpoint-00000002", "checkpoint-00000003", "checkpoint-00000010"]
    assert (tmp_path / "final").resolve().is_dir()


def test_resume_auto_refuses_a_run_with_other_settings_and_says_when_done(toy, ten_step_run, tmp_path, capsys):
    out = copy_run(ten_step_run, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"train.batch_size: 4 -> 2"):
        train(load_config(None, sft(toy, out, "train.max_steps=10", "train.save_every=2", "train.resume=auto",
                                    "train.batch_size=2")))
    with pytest.raises(CheckpointError, match=r"train.max_steps: 10 -> 12"):
        train(load_config(None, sft(toy, out, "train.max_steps=12", "train.resume=auto")))
    capsys.readouterr()
    before = snapshot(out / "checkpoint-00000010")
    result = train(load_config(None, sft(toy, out, "train.max_steps=10", "train.save_every=5", "train.resume=auto",
                                         "train.num_threads=1", "train.log_every=3")))  # free keys may change
    assert result.step == 10 and "nothing left to train" in capsys.readouterr().out
    assert snapshot(out / "checkpoint-00000010") == before


def test_a_second_run_on_a_locked_folder_refuses_and_a_stale_lock_is_taken_over(toy, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "now"}))
        assert main(["train", *sft(toy, out, "train.max_steps=1")]) == 2
        assert f"in use by another run (pid {sleeper.pid}" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": "elsewhere", "started": "now"}))
    with pytest.raises(OutputDirError, match="on elsewhere"):  # another host's pid cannot be checked: refuse
        RunLock.acquire(out)
    (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))  # its process is gone
    assert train(load_config(None, sft(toy, out, "train.max_steps=1"))).step == 1
    assert "stale lock" in capsys.readouterr().err and not (out / LOCK).exists()


def test_two_real_runs_on_one_folder(toy, tmp_path):
    """A run paused mid-training holds the folder: a second run refuses; once the first is killed, its
    lock is stale and resume=auto takes over."""
    from helpers import paused_train_command
    from test_train_resume import _wait_for

    out = tmp_path / "run"
    args = sft(toy, out, "train.max_steps=3", "train.save_every=1")
    first = subprocess.Popen(paused_train_command(2, args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(out / "paused-at-2", first)
        second = subprocess.run([sys.executable, "-m", "csdistill.cli", "train", *args, "train.resume=auto"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"in use by another run (pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()
    result = train(load_config(None, [*args, "train.resume=auto"]))
    assert result.step == 3 and [r["step"] for r in result.history] == [1, 2, 3]


def test_lock_is_exclusive_and_released(tmp_path):
    lock = RunLock.acquire(tmp_path)
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    with pytest.raises(OutputDirError, match="in use by another run"):
        RunLock.acquire(tmp_path)
    lock.release()
    RunLock.acquire(tmp_path).release()
    assert not (tmp_path / LOCK).exists()


@pytest.mark.parametrize("overrides, key", [(["train.output_dir="], "train.output_dir"),
                                            (["train.output_dir=  "], "train.output_dir"),
                                            (["train.overwrite=true", "train.resume=auto"], "train.overwrite")])
def test_output_dir_settings_are_validated(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, ["train.mode=sft", *overrides])
