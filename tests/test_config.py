"""config.py: defaults < YAML < dotted overrides; unknown keys and invalid values name the key and the fix."""

import pytest
import yaml

from csdistill.cli import main
from csdistill.config import (Config, ConfigError, config_from_dict, config_hash, field_help, load_config,
                              to_dict, to_yaml)

SFT = ["train.mode=sft"]


def write(tmp_path, data) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_overrides_beat_yaml_beat_defaults(tmp_path):
    path = write(tmp_path, {"train": {"mode": "sft", "lr": 3e-4, "batch_size": 4}})
    cfg = load_config(path, ["train.lr=1e-5", "data.max_length=300"])
    assert cfg.train.lr == 1e-5  # override wins over YAML
    assert cfg.train.batch_size == 4  # YAML wins over default
    assert cfg.data.max_length == 300 and cfg.train.grad_accum == Config().train.grad_accum


def test_cli_style_overrides_for_a_distillation_run():
    cfg = load_config(None, ["teacher.name_or_path=preset:tiny-llama", "train.lr=1e-4", "loss.name=csd",
                             "loss.weighting=TS", "train.adam_betas=[0.9,0.95]", "loss.lam=none"])
    assert (cfg.train.lr, cfg.loss.name, cfg.loss.weighting) == (1e-4, "csd", "TS")
    assert cfg.train.adam_betas == [0.9, 0.95] and cfg.loss.lam is None


@pytest.mark.parametrize("override, named", [
    (["train.lrr=1"], "train.lrr"),
    (["trainer.lr=1"], "trainer"),
    (["train.mode=distill"], "train.mode"),
    (["model.precision=fp16"], "model.precision"),
    (["train.scheduler=step"], "train.scheduler"),
    (["train.batch_size=two"], "train.batch_size"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.kd_ratio=1.5"], "train.kd_ratio"),
    (["loss.fused=maybe"], "loss.fused"),
    (["data.max_length=100", "data.max_prompt_length=200"], "data.max_length"),
    (["train.lm_coef=1.0"], "data.lm_file"),
    (["train.lr"], "train.lr"),
])
def test_bad_keys_and_values_name_the_key(override, named):
    with pytest.raises(ConfigError) as err:
        load_config(None, SFT + override)
    assert named in str(err.value)


def test_unknown_key_lists_valid_keys_and_bad_choice_lists_choices():
    with pytest.raises(ConfigError, match="valid keys here: .*max_steps"):
        load_config(None, SFT + ["train.max_step=3"])
    with pytest.raises(ConfigError, match="sft, kd, imitkd, gkd, adaptive, seqkd, paired"):
        load_config(None, ["train.mode=distill"])


def test_distillation_without_teacher_is_an_error():
    with pytest.raises(ConfigError, match="teacher.name_or_path"):
        load_config(None, ["train.mode=kd"])


def test_bad_loss_name_or_weighting_is_an_error():
    pytest.importorskip("csdistill.losses")
    base = ["teacher.name_or_path=preset:tiny-llama"]
    with pytest.raises(ConfigError, match="loss"):
        load_config(None, base + ["loss.name=no_such_loss"])
    with pytest.raises(ConfigError, match="loss"):
        load_config(None, base + ["loss.weighting=XQ"])


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, {"train": 3}))


def test_round_trip_and_hash():
    cfg = load_config(None, SFT + ["train.lr=2e-5", "eval.seeds=[1,2]"])
    again = config_from_dict(yaml.safe_load(to_yaml(cfg)))
    assert to_dict(again) == to_dict(cfg)
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(None, SFT + ["train.lr=3e-5"])) != config_hash(cfg)


def test_every_field_has_help():
    rows = field_help()
    assert len(rows) > 50
    assert all(help_text for _, _, help_text in rows), [key for key, _, h in rows if not h]
    assert any(key == "train.mode" and "sft|kd" in help_text for key, _, help_text in rows)


def test_cli_config_prints_resolved_yaml_and_reports_errors(capsys):
    assert main(["config", "train.mode=sft", "train.lr=7e-4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 7e-4
    assert main(["config", "train.mode=sft", "train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err
    assert main(["train", "train.mode=sft", "model.precision=fp8"]) == 2
    err = capsys.readouterr().err
    assert "model.precision" in err and "fp32, bf16" in err
