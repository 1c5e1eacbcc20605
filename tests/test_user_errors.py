"""Every user error is one line at the CLI (`csdistill: error: ...`, exit 2), the traceback only with
--debug / CSDISTILL_DEBUG=1; bugs keep their traceback; Ctrl-C is one line (exit 130)."""

import pytest

import csdistill.config as config
from csdistill.cli import main
from csdistill.config import ConfigError, load_config
from csdistill.errors import DEBUG_ENV, UserError, is_user_error
from csdistill.train import train
from helpers import sft_args as sft, write_toy_run


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = write_toy_run(tmp_path_factory.mktemp("toy"), n_train=16)
    return root


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err  # may hold transformers' progress bars before it
    ours = [line for line in err.splitlines() if line.startswith("csdistill:")]
    assert len(ours) == 1 and ours[0].startswith("csdistill: error: ") and "Traceback" not in err, err
    return ours[0]


@pytest.mark.parametrize("extra, expect", [
    (["model.name_or_path=preset:nonesuch"], "unknown model preset 'nonesuch'"),
    (["model.tokenizer=/no/tokenizer"], "'/no/tokenizer': the path does not exist"),
    (["model.name_or_path=someorg/not-cached"], "HF_HUB_OFFLINE"),
    (["train.lm_coef=0.5", "data.lm_file=/no/lm.txt"], "data.lm_file='/no/lm.txt'"),
    (["data.template=plainish"], "data.template='plainish' is neither a named template"),
    (["train.resume=/no/checkpoint"], "train.resume='/no/checkpoint': not a checkpoint"),
    (["model.lora.enabled=true", "model.lora.target_modules=[nomod]"], "model.lora.target_modules"),
])
def test_user_errors_from_models_data_and_checkpoints_are_one_line(toy, tmp_path, capsys, extra, expect):
    args = sft(toy, tmp_path / "run", "train.max_steps=1", *extra)
    assert main(["train", *args]) == 2
    assert expect in one_line_error(capsys)


def test_debug_flag_or_env_shows_the_traceback(toy, tmp_path, capsys, monkeypatch):
    args = ["train", *sft(toy, tmp_path / "run", "model.name_or_path=preset:nonesuch")]
    with pytest.raises(ValueError, match="unknown model preset"):
        main(["--debug", *args])
    with pytest.raises(ValueError, match="unknown model preset"):
        main([*args, "--debug"])  # anywhere on the line
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="unknown model preset"):
        main(args)


def test_bugs_keep_their_traceback_and_ctrl_c_is_one_line(monkeypatch, capsys):
    def bug(args):
        a, b = [1, 2, 3]  # a ValueError inside csdistill that no raise statement meant for the user

    monkeypatch.setattr(config, "config_command", bug)
    with pytest.raises(ValueError, match="too many values"):
        main(["config"])

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(config, "config_command", interrupted)
    assert main(["config"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("csdistill: interrupted") and err.count("\n") == 1


def test_is_user_error_is_the_user_error_type():
    from csdistill.data.collate import batches

    with pytest.raises(UserError) as own:
        list(batches([1], 0, None))  # raised where the mistake is found, as a UserError
    assert is_user_error(own.value)
    with pytest.raises(ValueError) as foreign:
        int("x")
    assert not is_user_error(foreign.value)
    assert is_user_error(ConfigError("x")) and is_user_error(UserError("y"))


@pytest.mark.parametrize("override, key", [
    ("train.adam_betas=[0.9,1.0]", "train.adam_betas"), ("train.adam_betas=[0.9]", "train.adam_betas"),
    ("train.lr=nan", "train.lr"), ("train.lr=.inf", "train.lr"), ("train.weight_decay=-0.1", "train.weight_decay"),
    ("model.lora.r=0", "model.lora.r"), ("generation.top_k=-1", "generation.top_k"),
    ("train.save_every=-1", "train.save_every"), ("train.num_threads=-1", "train.num_threads"),
    ("eval.seeds=[1,x]", "eval.seeds"), ("train.adam_betas=[0.9", "train.adam_betas"),
    ("train.output_dir=", "train.output_dir"),
])
def test_config_validates_ranges_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["train.mode=sft", override])


def test_string_overrides_stay_strings():
    cfg = load_config(None, ["train.mode=sft", "data.template=Q: {question}", "train.resume=[x", "model.tokenizer=yes"])
    assert cfg.data.template == "Q: {question}" and cfg.train.resume == "[x" and cfg.model.tokenizer == "yes"
    assert load_config(None, ["train.mode=sft", "train.lr=3e-4"]).train.lr == 3e-4  # numbers still parse
    assert load_config(None, ["train.mode=sft", "eval.seeds=10,20"]).eval.seeds == [10, 20]  # comma lists too


def test_diverging_run_is_one_line_with_a_hint_and_keeps_the_last_checkpoint(toy, tmp_path, capsys):
    out = tmp_path / "run"
    args = sft(toy, out, "train.mode=kd", f"teacher.name_or_path={toy / 'teacher'}", "train.lr=1e6",
               "train.max_steps=6", "train.save_every=1")
    assert main(["train", *args]) == 2
    err = one_line_error(capsys)
    assert "training diverged at step" in err and "lower train.lr (now 1e+06" in err
    kept = sorted(out.glob("checkpoint-*"))
    assert kept and f"the last checkpoint {kept[-1]} is kept" in err
    from csdistill.checkpoint import verify_checkpoint
    from safetensors.torch import load_file

    assert verify_checkpoint(kept[-1]) is None
    assert all(t.isfinite().all() for t in load_file(kept[-1] / "model" / "model.safetensors").values())
    with pytest.raises(UserError, match="diverged"):  # the same error from the library
        train(load_config(None, [*args, "train.overwrite=true"]))
