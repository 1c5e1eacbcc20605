"""Models: presets, loading (and its errors), LoRA student, frozen teacher, vocab check, fused-path head."""

import logging
import time

import pytest
import torch

from csdistill import models
from csdistill.config import load_config
from csdistill.models import (PRESETS, check_vocab, hidden_states_and_head, load_model, load_student, load_teacher,
                              load_tokenizer, register_preset, unwrap_lm_head)
from helpers import tiny_model, tiny_tokenizer

IDS = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 40, 41, 42]])  # (2, 5); row 1 left-padded
MASK = (IDS != 0).long()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_deterministically_and_runs(preset):
    a, b = tiny_model(preset, seed=3), tiny_model(preset, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), tiny_model(preset, seed=4).parameters()))
    logits = a(input_ids=IDS, attention_mask=MASK).logits
    assert logits.shape == (2, 5, len(tiny_tokenizer())) and torch.isfinite(logits).all()
    if preset.startswith("tiny"):  # the test presets stay 2-layer so tests run in seconds
        assert a.config.num_hidden_layers == 2 if hasattr(a.config, "num_hidden_layers") else a.config.n_layer == 2


def test_preset_init_leaves_the_global_rng_alone_and_seed_suffix_wins():
    state = torch.get_rng_state()
    model = load_model("preset:tiny-llama@1", seed=0)
    assert torch.equal(state, torch.get_rng_state())
    reference = tiny_model(seed=1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        load_model("preset:nope")
    with pytest.raises(ValueError, match="integer seed"):
        load_model("preset:tiny-llama@x")


def test_register_preset(monkeypatch):
    monkeypatch.setattr(models, "PRESETS", dict(PRESETS))  # leave the real registry unchanged
    register_preset("test-wide", lambda vocab_size: PRESETS["tiny-llama-small"](vocab_size))
    assert load_model("preset:test-wide", vocab_size=50).get_output_embeddings().weight.shape == (50, 32)
    with pytest.raises(ValueError, match="preset name"):
        register_preset("a@b", lambda v: None)


def test_load_model_and_tokenizer_from_a_saved_dir(tmp_path):
    model, tok = tiny_model("tiny-gpt2", seed=2), tiny_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    with torch.no_grad():
        assert torch.allclose(loaded(IDS).logits, model(IDS).logits, atol=1e-6)
    assert load_tokenizer(str(tmp_path)).get_vocab() == tok.get_vocab()


def test_tokenizer_for_presets_and_missing_pad(tmp_path, caplog):
    assert len(load_tokenizer("preset:tiny-llama")) == len(tiny_tokenizer())
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "teacher")
    tok.add_tokens(["<only-in-student>"])  # the teacher's (saved) tokenizer lacks it
    assert "<only-in-student>" not in load_tokenizer("preset:tiny-llama", fallback=str(tmp_path / "teacher")).get_vocab()
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    with caplog.at_level(logging.WARNING):
        assert load_tokenizer(str(tmp_path / "nopad")).pad_token == "<eos>"
    assert "no pad_token" in caplog.text


def test_missing_model_errors_are_fast_and_clear(tmp_path):
    start = time.monotonic()
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE") as info:
        load_model("csdistill-test-org/no-such-model")
    assert "csdistill-test-org/no-such-model" in str(info.value)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        load_tokenizer("csdistill-test-org/no-such-model")
    with pytest.raises(ValueError, match="path does not exist"):
        load_model(str(tmp_path / "nothing" / "here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="save_pretrained"):
        load_model(str(tmp_path / "empty"))
    assert time.monotonic() - start < 5


def _kd_config(*overrides):
    return load_config(None, ["teacher.name_or_path=preset:tiny-llama@1", *overrides])


def test_lora_student_trains_only_adapters():
    cfg = _kd_config("model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8")
    student = load_student(cfg, tiny_tokenizer())
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable) and student.training
    assert any(not p.requires_grad for p in student.parameters())
    plain = load_student(_kd_config(), tiny_tokenizer())
    assert all(p.requires_grad for p in plain.parameters())
    bad = _kd_config("model.lora.enabled=true", "model.lora.target_modules=[nope_proj]")
    with pytest.raises(ValueError, match="target_modules"):
        load_student(bad, tiny_tokenizer())


def test_teacher_is_frozen_and_merges_its_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_model(seed=1)
    base.save_pretrained(tmp_path / "base")
    adapted = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, param in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)  # a non-zero adapter, so merging changes the logits
    adapted.save_pretrained(tmp_path / "adapter")
    cfg = _kd_config(f"teacher.name_or_path={tmp_path / 'base'}", f"teacher.adapter={tmp_path / 'adapter'}")
    teacher = load_teacher(cfg, tiny_tokenizer())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not hasattr(teacher, "peft_config")  # merged into plain weights
    with torch.no_grad():
        expected = adapted.eval()(input_ids=IDS, attention_mask=MASK).logits
        assert torch.allclose(teacher(input_ids=IDS, attention_mask=MASK).logits, expected, atol=1e-5)
        assert not torch.allclose(tiny_model(seed=1)(input_ids=IDS, attention_mask=MASK).logits, expected, atol=1e-3)
    with pytest.raises(ValueError, match="teacher.adapter"):
        load_teacher(_kd_config(f"teacher.adapter={tmp_path / 'none'}"), tiny_tokenizer())


def test_check_vocab_same_padded_and_mismatched(caplog):
    tok = tiny_tokenizer()
    V = len(tok)
    assert check_vocab(tok, tiny_tokenizer(), tiny_model(seed=0), tiny_model(seed=1)) == V
    with caplog.at_level(logging.WARNING):
        assert check_vocab(tok, tok, tiny_model(vocab_size=V + 7), tiny_model(vocab_size=V + 3)) == V + 3
    assert "shared ids" in caplog.text
    other = tiny_tokenizer()
    other.add_tokens(["<extra_a>", "<extra_b>"])
    with pytest.raises(ValueError) as info:
        check_vocab(tok, other, tiny_model(), tiny_model(vocab_size=V + 2))
    message = str(info.value)
    assert "tokenizers differ" in message and f"{V} tokens" in message and f"{V + 2} tokens" in message
    assert "<extra_a>" in message and "same model family" in message
    with pytest.raises(ValueError, match="outside a head"):
        check_vocab(other, other, tiny_model(vocab_size=V), tiny_model(vocab_size=V + 2))


def _assert_head_reproduces_logits(model):
    with torch.no_grad():
        logits = model(input_ids=IDS, attention_mask=MASK).logits  # (2, 5, V)
        hidden, weight, bias = hidden_states_and_head(model, IDS, MASK)
    assert hidden.shape == (*IDS.shape, weight.shape[1]) and weight.shape[0] == logits.shape[-1]
    rebuilt = hidden @ weight.T + (0 if bias is None else bias)
    assert torch.allclose(rebuilt, logits, atol=1e-5), (rebuilt - logits).abs().max()


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-qwen2"])
def test_hidden_states_and_head_reproduce_the_logits(preset):
    _assert_head_reproduces_logits(tiny_model(preset))


def test_hidden_states_and_head_through_peft_with_gradients():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    _assert_head_reproduces_logits(model)
    weight, _ = unwrap_lm_head(model)
    assert weight is model.get_base_model().lm_head.weight
    hidden, weight, bias = hidden_states_and_head(model, IDS, MASK)
    (hidden @ weight.T).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    lora_head = peft.get_peft_model(tiny_model(), peft.LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="lm_head"):
        unwrap_lm_head(lora_head)


def test_student_larger_tokenizer_than_model_is_an_error():
    tok = tiny_tokenizer()
    tok.add_tokens(["<x>"])
    with pytest.raises(ValueError, match="output rows"):
        models._check_tokenizer_fits(tiny_model(), tok, "model.name_or_path")
