"""Damaged state: a damaged checkpoint is named and skipped, a torn metrics line is tolerated, a full or
read-only disk is named with its path (before the work where possible)."""

import errno
import json
import shutil

import pytest
from safetensors.torch import load_file

from csdistill import checkpoint as ckpt
from csdistill.cli import main
from csdistill.config import load_config
from csdistill.errors import CheckpointError, StorageError, check_writable
from csdistill.train import train
from helpers import copy_run, sft_args as sft, write_toy_run

STEPS = ["train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=0"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_run(tmp_path_factory.mktemp("toy"), n_train=16)


@pytest.fixture(scope="module")
def four_steps(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("four") / "run"
    train(load_config(None, sft(toy, out, *STEPS)))
    return out


def resume_auto(toy, out):
    return train(load_config(None, sft(toy, out, *STEPS, "train.resume=auto")))


def truncate(path, keep=100):
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("damaged", ["model/model.safetensors", "optimizer.pt", "trainer_state.json",
                                     "scheduler.json", "rank-0.json"])
def test_resume_auto_skips_a_damaged_newest_checkpoint_naming_the_file(toy, four_steps, tmp_path, capsys, damaged):
    out = copy_run(four_steps, tmp_path / "run")
    newest = out / "checkpoint-00000004"
    truncate(newest / damaged, keep=7)
    result = resume_auto(toy, out)
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged ({newest / damaged}" in err
    assert result.step == 4 and [r["step"] for r in result.history] == [1, 2, 3, 4]  # resumed at 2
    straight = load_file(four_steps / "final" / "model.safetensors")
    resumed = load_file(out / "final" / "model.safetensors")
    assert max((straight[k] - resumed[k]).abs().max().item() for k in straight) <= 1e-6
    assert ckpt.verify_checkpoint(newest) is None  # re-saved intact


def test_every_checkpoint_damaged_or_a_damaged_explicit_one_is_an_error(toy, four_steps, tmp_path, capsys):
    out = copy_run(four_steps, tmp_path / "run")
    for step in (2, 4):
        truncate(out / f"checkpoint-{step:08d}" / "optimizer.pt")
    assert main(["train", *sft(toy, out, *STEPS, "train.resume=auto")]) == 2
    assert "every checkpoint in" in capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(CheckpointError, match=r"damaged \(.*optimizer.pt has 100 bytes"):
        train(load_config(None, sft(toy, tmp_path / "other", *STEPS, f"train.resume={out / 'checkpoint-00000002'}")))


def test_checkpoint_without_manifest_names_the_file_it_cannot_read(toy, four_steps, tmp_path):
    """Checkpoints written before manifests existed load unchecked; a bad file is still named."""
    out = copy_run(four_steps, tmp_path / "run")
    for step in (2, 4):
        (out / f"checkpoint-{step:08d}" / ckpt.MANIFEST).unlink()
    (out / "checkpoint-00000004" / "scheduler.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(CheckpointError, match=r"scheduler.json cannot be read \(UnicodeDecodeError"):
        resume_auto(toy, out)


def test_missing_rank_file_warns(toy, four_steps, tmp_path, capsys):
    out = copy_run(four_steps, tmp_path / "run")
    shutil.rmtree(out / "checkpoint-00000004")
    (out / "checkpoint-00000002" / ckpt.MANIFEST).unlink()  # an old-style checkpoint: nothing to verify against
    (out / "checkpoint-00000002" / "rank-0.json").unlink()
    resume_auto(toy, out)
    assert "rank-0.json is missing" in capsys.readouterr().err


def test_torn_last_metrics_line_is_tolerated(toy, four_steps, tmp_path, capsys):
    out = copy_run(four_steps, tmp_path / "run")
    shutil.rmtree(out / "checkpoint-00000004")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # killed mid-append
    result = resume_auto(toy, out)
    assert [r["step"] for r in result.history] == [1, 2, 3, 4]
    assert "half-written last line" in capsys.readouterr().err
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


class FullDisk:
    """open() whose files accept `room` bytes, then raise ENOSPC like a full disk."""

    def __init__(self, room: int):
        self.room = room

    def __call__(self, path, mode="r", *args, **kwargs):
        real = open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return real
        outer = self

        class Writer:
            def __getattr__(self, name):
                return getattr(real, name)

            def write(self, data):
                outer.room -= len(data)
                if outer.room < 0:
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))
                return real.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                real.close()

        return Writer()


def test_disk_full_during_a_save_names_it_and_keeps_the_last_checkpoint(toy, four_steps, tmp_path, monkeypatch):
    from test_checkpoint import _save, _trained

    model, optimizer, scheduler = _trained(steps=1)
    _save(tmp_path, 1, model, optimizer, scheduler)
    monkeypatch.setattr(ckpt, "open", FullDisk(room=1000), raising=False)  # torch.save writes through open()
    with pytest.raises(StorageError, match=r"disk full while writing .*checkpoint-00000002.tmp.*checkpoint-00000001 is intact"):
        _save(tmp_path, 2, model, optimizer, scheduler)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-00000001"]
    assert ckpt.verify_checkpoint(tmp_path / "checkpoint-00000001") is None


def test_unwritable_folders_are_named_before_any_work(toy, tmp_path, monkeypatch, capsys):
    import pathlib

    def refuse(self, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)
    with pytest.raises(StorageError, match=r"--out=.*not writable"):
        check_writable(tmp_path / "x", "--out")
    assert main(["train", *sft(toy, tmp_path / "run", "train.max_steps=1")]) == 2
    assert "train.output_dir=" in capsys.readouterr().err
    eval_set = toy / "train.jsonl"
    assert main(["evaluate", "train.mode=sft", f"model.name_or_path={toy / 'student'}", "--sets", str(eval_set),
                 "--out", str(tmp_path / "ev")]) == 2
    assert "--out=" in capsys.readouterr().err and not (tmp_path / "ev" / "results.json").exists()
    assert main(["generate", "--checkpoint", str(toy / "student"), "--prompt", "hi", "--out",
                 str(tmp_path / "gen" / "out.jsonl")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_enospc_anywhere_is_one_line(monkeypatch, capsys):
    import csdistill.config as config

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x.bin")

    monkeypatch.setattr(config, "config_command", full)
    assert main(["config"]) == 2
    assert capsys.readouterr().err == "csdistill: error: disk full while writing /data/x.bin: free some space " \
                                      "(or write elsewhere) and rerun\n"
