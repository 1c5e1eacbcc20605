"""checkpoint.py: atomic save, exact restore (weights, optimizer, scheduler, RNG), rotation, HF export."""

import json
import random

import pytest
import torch
from accelerate import Accelerator

from csdistill.checkpoint import (checkpoint_path, list_checkpoints, load_checkpoint, resolve_resume, rng_state,
                                  save_checkpoint, set_rng_state)
from helpers import tiny_model, tiny_tokenizer


def _trained(seed: int = 0, steps: int = 2):
    model = tiny_model(seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    ids = torch.randint(5, 40, (2, 6), generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def _save(root, step, model, optimizer, scheduler, **kw):
    acc = Accelerator(cpu=True)
    return save_checkpoint(root, step, accelerator=acc, model=model, tokenizer=tiny_tokenizer(), optimizer=optimizer,
                           scheduler=scheduler, trainer_state={"step": step, "source": {"x": 1}},
                           rank_state={"rng": rng_state()}, config_yaml="train:\n  lr: 0.001\n", **kw)


def test_round_trip_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    model, optimizer, scheduler = _trained()
    torch.manual_seed(123)
    random.seed(5)
    path = _save(tmp_path, 2, model, optimizer, scheduler)
    expect = (torch.rand(3), random.random())
    assert path == checkpoint_path(tmp_path, 2) and path.is_dir()
    assert not list(tmp_path.glob("*.tmp"))
    assert {"model", "optimizer.pt", "scheduler.json", "trainer_state.json", "rank-0.json", "config.yaml"} <= {p.name for p in path.iterdir()}
    assert list((path / "model").glob("*.safetensors")) and not list(path.rglob("*.bin"))
    torch.load(path / "optimizer.pt", weights_only=True)  # no arbitrary objects in the optimizer file

    other, other_opt, other_sched = _trained(seed=9, steps=1)
    state, rank = load_checkpoint(path, accelerator=Accelerator(cpu=True), model=other, optimizer=other_opt,
                                  scheduler=other_sched)
    assert state == {"step": 2, "source": {"x": 1}} and "rng" in rank
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    for p, q in zip(model.parameters(), other.parameters()):
        s, t = optimizer.state[p], other_opt.state[q]
        assert torch.equal(s["exp_avg"], t["exp_avg"]) and torch.equal(s["exp_avg_sq"], t["exp_avg_sq"])
    assert other_sched.last_epoch == scheduler.last_epoch and other_sched.get_last_lr() == scheduler.get_last_lr()
    assert torch.equal(torch.rand(3), expect[0]) and random.random() == expect[1]


def test_rng_state_is_json():
    state = json.loads(json.dumps(rng_state()))
    a = (torch.rand(2), random.random())
    set_rng_state(state)
    assert torch.equal(torch.rand(2), a[0]) and random.random() == a[1]


def test_final_checkpoint_loads_with_transformers_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, optimizer, scheduler = _trained()
    path = _save(tmp_path, 2, model, optimizer, scheduler, final=True)
    assert (tmp_path / "final").resolve() == (path / "model").resolve()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "final")
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    ids = torch.tensor([[tokenizer.bos_token_id or 1, 5, 6]])
    out = loaded.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (1, 7)


def test_rotation_keeps_newest_and_ignores_debris(tmp_path):
    model, optimizer, scheduler = _trained(steps=1)
    (tmp_path / "checkpoint-00000099.tmp").mkdir(parents=True)  # a save killed half-way
    for step in (1, 2, 3):
        _save(tmp_path, step, model, optimizer, scheduler, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000002", "checkpoint-00000003"]
    assert resolve_resume("auto", tmp_path) == checkpoint_path(tmp_path, 3)
    _save(tmp_path, 3, model, optimizer, scheduler, keep=2)  # re-saving a step replaces it
    assert len(list_checkpoints(tmp_path)) == 2


def test_resolve_resume_cases(tmp_path):
    assert resolve_resume("", tmp_path) is None
    assert resolve_resume("auto", tmp_path / "nothing-yet") is None
    with pytest.raises(ValueError, match="train.resume"):
        resolve_resume(str(tmp_path), tmp_path)


def test_lora_student_saves_adapter_and_merged_model(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = tiny_model(seed=0)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # non-zero adapter so merging changes the weights
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    path = _save(tmp_path, 1, model, optimizer, scheduler, final=True)
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(path / "model")
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(input_ids=ids).logits, atol=1e-5)
    assert hasattr(model, "peft_config") and any("lora" in n for n, _ in model.named_parameters())  # not merged in place
