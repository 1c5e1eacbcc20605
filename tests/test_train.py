"""The training loop end to end on tiny models: every mode from the CLI, learning, exact accumulation,
fused = unfused, metrics/checkpoints, and the bad-input cases."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from csdistill.cli import main
from csdistill.config import ConfigError, MODES, load_config
from csdistill.train import train
from helpers import tiny_model, tiny_tokenizer, toy_instruction_records, write_jsonl, write_toy_run

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
QUIET = ["train.progress=false", "train.num_threads=1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Toy instruction data, a tiny saved student and teacher (same tokenizer), and LM text."""
    return write_toy_run(tmp_path_factory.mktemp("toy"), n_train=40, n_validation=8, n_lm=200)


def kd_args(toy, out, *extra):
    return [f"model.name_or_path={toy / 'student'}", f"teacher.name_or_path={toy / 'teacher'}",
            f"data.train_file={toy / 'train.jsonl'}", f"data.validation_file={toy / 'validation.jsonl'}",
            f"train.output_dir={out}", "data.max_prompt_length=32", "data.max_length=64", "train.mode=kd",
            "train.batch_size=4", "train.lr=1e-3", "generation.max_new_tokens=8", *QUIET, *extra]


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def final_weights(out) -> dict:
    return load_file(Path(out) / "final" / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# --------------------------------------------------------------------------- every mode, from the CLI


@pytest.mark.parametrize("mode", MODES)
def test_every_tiny_preset_runs_from_the_cli(mode, toy, tmp_path, capsys):
    out = tmp_path / mode
    code = main(["train", "--config", str(CONFIGS / f"tiny_{mode}.yaml"), f"data.train_file={toy / 'train.jsonl'}",
                 f"data.validation_file={toy / 'validation.jsonl'}", f"train.output_dir={out}", "train.max_steps=3",
                 "train.save_every=2", "eval.eval_every=2", "generation.max_new_tokens=6", *QUIET])
    assert code == 0
    assert f"mode: {mode}" in capsys.readouterr().out  # the resolved config is printed at start
    history = rows(out)
    assert [r["step"] for r in history] == [2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["loss"] >= 0 for r in history)
    assert all("val_loss" in r and r["tokens_per_s"] > 0 for r in history)
    assert [p.name for p in out.glob("checkpoint-*")] and (out / "final" / "config.json").is_file()
    assert load_config(sorted(out.glob("checkpoint-*"))[-1] / "config.yaml").train.mode == mode


def test_paired_and_seqkd_read_pregenerated_responses(toy, tmp_path):
    records = toy_instruction_records(40, seed=0)
    write_jsonl(tmp_path / "teacher.jsonl", [{**r, "response": "T " + r["response"]} for r in records])
    write_jsonl(tmp_path / "student.jsonl", [{**r, "response": "S"} for r in records])
    files = [f"data.teacher_responses_file={tmp_path / 'teacher.jsonl'}", f"data.student_responses_file={tmp_path / 'student.jsonl'}"]
    result = train(load_config(None, kd_args(toy, tmp_path / "paired", "train.mode=paired", "train.max_steps=2", *files)))
    assert result.step == 2 and result.history[-1]["source"] == "paired"
    result = train(load_config(None, kd_args(toy, tmp_path / "seqkd", "train.mode=seqkd", "train.max_steps=2", files[0])))
    assert result.history[-1]["source"] == "teacher"
    write_jsonl(tmp_path / "partial.jsonl", records[:5])
    with pytest.raises(ConfigError, match="data.teacher_responses_file"):
        train(load_config(None, kd_args(toy, tmp_path / "bad", "train.mode=seqkd",
                                        f"data.teacher_responses_file={tmp_path / 'partial.jsonl'}")))


def test_gkd_lambda_and_adaptive_threshold_choose_the_source(toy, tmp_path):
    always = train(load_config(None, kd_args(toy, tmp_path / "g1", "train.mode=gkd", "train.gkd_lambda=1",
                                             "train.max_steps=2", "train.log_every=1")))
    assert {r["source"] for r in always.history} == {"generate"}
    never = train(load_config(None, kd_args(toy, tmp_path / "g0", "train.mode=gkd", "train.gkd_lambda=0",
                                            "train.max_steps=2", "train.log_every=1")))
    assert {r["source"] for r in never.history} == {"dataset"}
    # adaptive_loss_rise=-1: every validation counts as a rise, so the threshold climbs by 0.5 per eval
    adaptive = train(load_config(None, kd_args(toy, tmp_path / "ad", "train.mode=adaptive", "train.max_steps=8",
                                               "train.log_every=1", "eval.eval_every=1", "train.adaptive_loss_rise=-1",
                                               "train.adaptive_threshold_step=0.5", "train.buffer_size=4")))
    sources = [r["source"] for r in adaptive.history]
    assert sources[:2] == ["dataset", "dataset"]  # a = 0 until the second validation
    assert [r["adaptive_threshold"] for r in adaptive.history][:3] == [0.0, 0.5, 1.0]
    assert "generate" in sources and "buffer" in sources  # buffer (4) fills after one generated batch


# --------------------------------------------------------------------------- learning and exactness


def test_loss_falls_over_50_steps(toy, tmp_path):
    result = train(load_config(None, kd_args(toy, tmp_path / "learn", "train.max_steps=50", "train.log_every=5",
                                             "train.scheduler=constant", "train.lm_coef=0")))
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < 0.5 * losses[0], losses
    sft = train(load_config(None, kd_args(toy, tmp_path / "sft", "train.mode=sft", "train.max_steps=50", "train.lr=5e-3",
                                          "train.log_every=5", "train.scheduler=constant")))
    ce = [r["loss"] for r in sft.history]
    assert ce[-1] < 0.6 * ce[0], ce


def test_gradient_accumulation_is_exact(toy, tmp_path):
    """batch 8 x accum 1 and batch 2 x accum 4 take the same optimizer steps (fp32)."""
    common = ["train.max_steps=3", "train.grad_clip=1.0", "train.lm_coef=1.0", f"data.lm_file={toy / 'lm.txt'}"]
    train(load_config(None, kd_args(toy, tmp_path / "big", "train.batch_size=8", "train.grad_accum=1", *common)))
    train(load_config(None, kd_args(toy, tmp_path / "acc", "train.batch_size=2", "train.grad_accum=4", *common)))
    assert max_diff(final_weights(tmp_path / "big"), final_weights(tmp_path / "acc")) < 1e-5


@pytest.mark.parametrize("precision, rel, weights", [("fp32", 1e-5, 1e-5), ("bf16", 2e-2, None)])
def test_fused_and_unfused_kd_give_the_same_first_step(toy, tmp_path, precision, rel, weights):
    """bf16: both paths run their head matmuls under the same autocast, so the losses agree to bf16
    rounding. Weights are compared in fp32 only: AdamW's first step is lr·sign(grad), so a gradient
    entry near 0 whose sign flips under bf16 rounding moves by 2·lr whatever the agreement."""
    for loss in ("csd", "fkl"):
        runs = {}
        for fused in ("false", "true"):
            out = tmp_path / f"{loss}-{fused}"
            runs[fused] = train(load_config(None, kd_args(toy, out, f"loss.name={loss}", f"loss.fused={fused}",
                                                          "train.max_steps=1", "train.kd_ratio=0.7",
                                                          f"model.precision={precision}")))
        assert runs["true"].loss == pytest.approx(runs["false"].loss, rel=rel)
        if weights is not None:
            assert max_diff(final_weights(tmp_path / f"{loss}-false"), final_weights(tmp_path / f"{loss}-true")) < weights


# --------------------------------------------------------------------------- outputs


def test_metrics_callbacks_and_reloadable_student(toy, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = []

    def callback(step, student, tokenizer):
        seen.append((step, student.training, tokenizer.eos_token_id))
        return {"my_metric": float(step)}

    out = tmp_path / "run"
    result = train(load_config(None, kd_args(toy, out, "train.max_steps=4", "train.log_every=1", "eval.eval_every=2",
                                             "train.tensorboard=true", "train.keep_checkpoints=1", "train.save_every=2")),
                   callbacks=[callback])
    assert [s for s, _, _ in seen] == [2, 4]
    history = rows(out)
    assert [r["step"] for r in history] == [1, 2, 3, 4] and history == result.history
    assert {"step", "loss", "lr", "tokens_per_s", "elapsed"} <= set(history[0]) and "val_loss" not in history[0]
    assert history[1]["my_metric"] == 2.0 and result.val_loss == history[3]["val_loss"]
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("step,loss,lr,tokens_per_s,elapsed,val_loss")
    assert list((out / "tensorboard").glob("events.*"))
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-00000004"]  # keep_checkpoints=1
    model = AutoModelForCausalLM.from_pretrained(result.model_path)
    tokenizer = AutoTokenizer.from_pretrained(result.model_path)
    ids = tokenizer("### Instruction: rev: cat dog", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id).shape[1] > ids.shape[1]


def test_bf16_and_lora_runs(toy, tmp_path):
    from transformers import AutoModelForCausalLM

    bf16 = train(load_config(None, kd_args(toy, tmp_path / "bf16", "model.precision=bf16", "train.max_steps=2")))
    assert torch.isfinite(torch.tensor(bf16.loss))
    lora = train(load_config(None, kd_args(toy, tmp_path / "lora", "model.lora.enabled=true", "model.lora.r=4",
                                           "model.lora.alpha=8", "train.max_steps=2")))
    assert (lora.checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(lora.model_path)  # merged copy


# --------------------------------------------------------------------------- bad inputs


def test_bad_config_and_missing_teacher_exit_2_naming_the_key(toy, tmp_path, capsys):
    assert main(["train", *kd_args(toy, tmp_path / "x", "train.lrr=1")]) == 2
    assert "train.lrr" in capsys.readouterr().err
    assert main(["train", *kd_args(toy, tmp_path / "x", "loss.weighting=QQ")]) == 2
    assert "weighting" in capsys.readouterr().err
    assert main(["train", *kd_args(toy, tmp_path / "x", "teacher.name_or_path=")]) == 2
    assert "teacher.name_or_path" in capsys.readouterr().err


def test_vocab_mismatch_fails_before_the_first_step(toy, tmp_path, monkeypatch):
    import csdistill.train.loop as loop

    other = tmp_path / "other_teacher"
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["<extra_a>", "<extra_b>"])
    tiny_model(seed=1, vocab_size=len(tokenizer)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    monkeypatch.setattr(loop, "train_step", lambda *a: pytest.fail("a step ran before the vocab check"))
    with pytest.raises(ValueError, match="(?i)vocab|tokeni"):
        train(load_config(None, kd_args(toy, tmp_path / "v", f"teacher.name_or_path={other}")))


def test_empty_or_missing_dataset_is_an_error(toy, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="data.train_file"):
        train(load_config(None, kd_args(toy, tmp_path / "e", f"data.train_file={tmp_path / 'empty.jsonl'}")))
    with pytest.raises(ValueError, match="data.train_file"):
        train(load_config(None, kd_args(toy, tmp_path / "e", f"data.train_file={tmp_path / 'nope.jsonl'}")))


def test_lora_run_resumes_from_an_intermediate_checkpoint(toy, tmp_path):
    lora = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "train.max_steps=3", "train.save_every=1",
            "train.keep_checkpoints=0"]
    straight = train(load_config(None, kd_args(toy, tmp_path / "a", *lora)))
    middle = tmp_path / "a" / "checkpoint-00000001"
    assert not (middle / "model").exists() and (middle / "adapter").is_dir()  # merged copy only at the end
    resumed = train(load_config(None, kd_args(toy, tmp_path / "b", *lora, f"train.resume={middle}")))
    assert resumed.step == 3 and [r["step"] for r in resumed.history] == [3]
    a = load_file(straight.checkpoint / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed.checkpoint / "adapter" / "adapter_model.safetensors")
    assert max_diff(a, b) <= 1e-6
