"""`csdistill train --config run.yaml key=value ...`: YAML + dotted overrides reach the run and its checkpoint."""

import shutil
import subprocess
from pathlib import Path

import yaml

from csdistill.cli import main
from csdistill.config import load_config
from helpers import tiny_model, tiny_tokenizer, toy_instruction_records, write_jsonl


def _setup(tmp_path) -> Path:
    write_jsonl(tmp_path / "train.jsonl", toy_instruction_records(12, seed=0))
    tokenizer = tiny_tokenizer()
    for name, seed in (("student", 0), ("teacher", 1)):
        tiny_model(seed=seed).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    run = {"model": {"name_or_path": str(tmp_path / "student")}, "teacher": {"name_or_path": str(tmp_path / "teacher")},
           "data": {"train_file": str(tmp_path / "train.jsonl"), "max_prompt_length": 32, "max_length": 64},
           "train": {"mode": "kd", "output_dir": str(tmp_path / "out"), "max_steps": 2, "batch_size": 4,
                     "lr": 3e-4, "progress": False, "num_threads": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    return tmp_path / "run.yaml"


def test_yaml_plus_overrides_reach_the_saved_config(tmp_path):
    config = _setup(tmp_path)
    assert main(["train", "--config", str(config), "train.lr=1e-4", "loss.name=csd", "loss.weighting=TS",
                 "loss.temperature=1.5"]) == 0
    saved = load_config(tmp_path / "out" / "checkpoint-00000002" / "config.yaml")
    assert (saved.train.lr, saved.loss.name, saved.loss.weighting, saved.loss.temperature) == (1e-4, "csd", "TS", 1.5)
    assert saved.train.max_steps == 2  # from the YAML
    assert (tmp_path / "out" / "config.yaml").is_file()  # also written at start


def test_console_script_trains(tmp_path):
    config = _setup(tmp_path)
    exe = shutil.which("csdistill") or str(Path(__import__("sys").executable).with_name("csdistill"))
    proc = subprocess.run([exe, "train", "--config", str(config), "train.max_steps=1", "loss.weighting=US"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "weighting: US" in proc.stdout  # resolved config printed at start
    assert (tmp_path / "out" / "final" / "config.json").is_file()
    bad = subprocess.run([exe, "train", "--config", str(config), "loss.weighting=ZZ"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "weighting" in bad.stderr and "Traceback" not in bad.stderr
