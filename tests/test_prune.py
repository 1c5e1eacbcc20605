"""Pruning a teacher into a student (prune.py, `csdistill student init`) on tiny Llama, Qwen2 and GPT-2 models.

Each pruned model is checked against a manual reference on the teacher itself: keeping everything is the
identity, dropping layers equals running only the kept layers, dropping MLP neurons or attention heads
equals zeroing their output-projection weights.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from csdistill import prune
from csdistill.cli import main
from csdistill.models import PRESETS
from helpers import tiny_tokenizer

FAMILIES = ["tiny-llama", "tiny-qwen2", "tiny-gpt2"]
VOCAB = 101  # the char tokenizer


def deep_model(preset: str, layers: int = 5, seed: int = 0):
    """The tiny preset with `layers` layers and random weights (norm weights perturbed too)."""
    config = PRESETS[preset](VOCAB)
    config.num_hidden_layers = layers  # GPT2Config maps n_layer to this too
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[0]] * layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        for name, param in model.named_parameters():
            if "norm" in name or "ln_" in name:
                param.data.add_(0.1 * torch.randn_like(param))
    return model.eval()


def batch(rows: int = 3, length: int = 13, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (rows, length), generator=generator)  # (B, T)
    mask = torch.ones_like(ids)
    mask[0, length - 4:] = 0  # right padding on the first row
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, data: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**data, use_cache=False).logits  # (B, T, V); no cache: the reference keeps old layer_idx


def valid_close(a: torch.Tensor, b: torch.Tensor, data: dict, atol: float = 1e-5) -> None:
    keep = data["attention_mask"].bool()
    torch.testing.assert_close(a[keep], b[keep], atol=atol, rtol=1e-4)


@pytest.fixture(scope="module", params=FAMILIES)
def teacher_and_stats(request):
    model = deep_model(request.param)
    return model, prune.collect_statistics(model, [batch(seed=1), batch(rows=2, length=9, seed=2)])


# ----------------------------------------------------------------------------- pure scores


def test_block_influence_and_angular_distance_from_the_cosine_matrix():
    cosine = torch.eye(4)  # (L+1, L+1) for L = 3 layers
    cosine[0, 1] = cosine[1, 0] = 0.5
    cosine[1, 2] = cosine[2, 1] = 1.0
    cosine[2, 3] = cosine[3, 2] = 0.0
    cosine[0, 2] = cosine[2, 0] = 0.5
    cosine[1, 3] = cosine[3, 1] = -1.0
    torch.testing.assert_close(prune.block_influence(cosine), torch.tensor([0.5, 0.0, 1.0]))
    torch.testing.assert_close(prune.angular_distance(cosine, 1), torch.tensor([1 / 3, 0.0, 0.5]))
    torch.testing.assert_close(prune.angular_distance(cosine, 2), torch.tensor([1 / 3, 1.0]))
    assert prune.choose_layers("block-influence", 3, 2, cosine) == [0, 2]  # layer 1 changes nothing
    assert prune.choose_layers("angular", 3, 1, cosine) == [2]  # the block 0-1 turns h least (span 2)
    assert prune.choose_layers("angular", 3, 2, cosine) == [0, 2]


def test_evenly_spaced_keeps_first_and_last_and_the_count():
    for total in (2, 5, 30):
        for keep in range(1, total + 1):
            kept = prune.evenly_spaced(total, keep)
            assert len(kept) == keep and kept == sorted(set(kept))
            if keep > 1:
                assert kept[0] == 0 and kept[-1] == total - 1
    assert prune.evenly_spaced(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]


def test_top_k_sorted_breaks_ties_by_index():
    assert prune.top_k_sorted(torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0]), 2) == [1, 2]


def test_choose_heads_respects_gqa_groups():
    scores = torch.tensor([1.0, 2.0, 9.0, 0.0, 5.0, 5.0])  # 6 heads, 3 KV groups of 2: sums 3, 9, 10
    assert prune.choose_heads(scores, 6, 3, 6, 3) == [0, 1, 2, 3, 4, 5]
    assert prune.choose_heads(scores, 6, 3, 3, 3) == [1, 2, 4]  # one head per group
    assert prune.choose_heads(scores, 6, 3, 4, 2) == [2, 3, 4, 5]  # the two best groups, both heads


# ----------------------------------------------------------------------------- statistics


def test_statistics_ignore_padding_and_match_hidden_states():
    model = deep_model("tiny-llama", layers=3)
    data = batch()
    stats = prune.collect_statistics(model, [data])
    assert stats.tokens == int(data["attention_mask"].sum())
    torch.testing.assert_close(torch.diagonal(stats.mean("cosine")), torch.ones(4))
    first = {k: v[:1, :9] for k, v in data.items()}  # the first row without its padding
    rest = {k: v[1:] for k, v in data.items()}
    split = [prune.collect_statistics(model, [part]) for part in (first, rest)]
    for name in ("cosine", "neuron", "head", "channel"):
        torch.testing.assert_close(getattr(stats, name), getattr(split[0], name) + getattr(split[1], name),
                                   atol=1e-4, rtol=1e-5)
    with torch.no_grad():  # reference: hidden states 0 .. L-1 are the layers' inputs
        hidden = model(**data, output_hidden_states=True).hidden_states
    keep = data["attention_mask"].bool()
    cos = [torch.nn.functional.cosine_similarity(hidden[i][keep], hidden[i + 1][keep], dim=-1).mean() for i in range(2)]
    torch.testing.assert_close(prune.block_influence(stats.mean("cosine"))[:2], 1 - torch.stack(cos), atol=1e-5,
                               rtol=1e-5)


# ----------------------------------------------------------------------------- pruned models vs references


def test_keeping_everything_is_the_identity(teacher_and_stats):
    teacher, stats = teacher_and_stats
    student = prune.prune_model(teacher, prune.make_plan(teacher, stats))
    data = batch(seed=3)
    valid_close(logits(student, data), logits(teacher, data), data, atol=0)
    assert prune.parameter_count(student) == prune.parameter_count(teacher)


@pytest.mark.parametrize("method", prune.DEPTH_METHODS)
def test_dropping_layers_equals_running_the_kept_layers(teacher_and_stats, method):
    teacher, stats = teacher_and_stats
    plan = prune.make_plan(teacher, stats, layers=3, depth_method=method)
    student = prune.prune_model(teacher, plan)
    reference = copy.deepcopy(teacher)
    stack = prune.decoder_layers(reference)
    kept = torch.nn.ModuleList([stack[i] for i in plan.layers])
    if prune.model_family(teacher) == "gpt2":
        reference.transformer.h = kept
    else:
        reference.model.layers = kept
    reference.config.num_hidden_layers = 3
    if getattr(reference.config, "layer_types", None):
        reference.config.layer_types = [reference.config.layer_types[i] for i in plan.layers]
    assert len(plan.layers) == 3 and prune.model_shape(student).layers == 3
    data = batch(seed=4)
    valid_close(logits(student, data), logits(reference, data), data)


def _zero_output_columns(model, family: str, kept_neurons: dict, kept_heads: dict, head_dim: int) -> None:
    """The reference for width pruning: the pruned neurons' / heads' output weights set to zero."""
    for index, layer in enumerate(prune.decoder_layers(model)):
        if family == "gpt2":
            weight = layer.mlp.c_proj.weight  # (I, H)
            drop = [i for i in range(weight.shape[0]) if i not in kept_neurons[index]]
            weight.data[drop] = 0
            continue
        down = layer.mlp.down_proj.weight  # (H, I)
        down.data[:, [i for i in range(down.shape[1]) if i not in kept_neurons[index]]] = 0
        out = layer.self_attn.o_proj.weight  # (H, heads * head_dim)
        for head in range(out.shape[1] // head_dim):
            if head not in kept_heads[index]:
                out.data[:, head * head_dim:(head + 1) * head_dim] = 0


def test_width_pruning_equals_zeroing_the_pruned_units(teacher_and_stats):
    teacher, stats = teacher_and_stats
    family, shape = prune.model_family(teacher), prune.model_shape(teacher)
    width = {"mlp": 37} if family == "gpt2" else {"mlp": 37, "heads": 2, "kv_heads": 1}
    plan = prune.make_plan(teacher, stats, **width)
    student = prune.prune_model(teacher, plan)
    got = prune.model_shape(student)
    assert got.mlp == 37 and got.layers == shape.layers
    if family != "gpt2":
        assert (got.heads, got.kv_heads, got.head_dim) == (2, 1, shape.head_dim)
        assert all(len(set(h // 2 for h in plan.heads[i])) == 1 for i in plan.layers)  # one GQA group kept
        assert all(plan.neurons[i] == prune.top_k_sorted(stats.neuron[i], 37) for i in plan.layers)
    assert prune.student_parameter_count(teacher, plan) == prune.parameter_count(student)
    reference = copy.deepcopy(teacher)
    _zero_output_columns(reference, family, plan.neurons, plan.heads, shape.head_dim)
    data = batch(seed=5)
    valid_close(logits(student, data), logits(reference, data), data)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2"])
def test_hidden_pruning_slices_every_hidden_dimension(preset):
    teacher = deep_model(preset, layers=2)
    stats = prune.collect_statistics(teacher, [batch()])
    plan = prune.make_plan(teacher, stats, hidden=40, layers=1, depth_method="uniform")
    student = prune.prune_model(teacher, plan)
    assert plan.hidden == prune.top_k_sorted(stats.channel, 40)
    assert student.config.hidden_size == 40 and student.config.num_hidden_layers == 1
    assert prune.student_parameter_count(teacher, plan) == prune.parameter_count(student)
    torch.testing.assert_close(student.get_input_embeddings().weight,
                               teacher.get_input_embeddings().weight[:, plan.hidden])
    assert logits(student, batch()).shape == (3, 13, VOCAB)
    full = prune.prune_model(teacher, prune.make_plan(teacher, stats, hidden=64))  # all channels: identity
    data = batch(seed=6)
    valid_close(logits(full, data), logits(teacher, data), data, atol=0)


def test_bad_sizes_name_the_flag():
    teacher = deep_model("tiny-llama", layers=2)
    stats = prune.collect_statistics(teacher, [batch()])
    with pytest.raises(ValueError, match="--layers 3"):
        prune.make_plan(teacher, stats, layers=3)
    with pytest.raises(ValueError, match="--heads 3.*multiple of 2"):
        prune.make_plan(teacher, stats, heads=3)
    with pytest.raises(ValueError, match="query heads per KV group"):
        prune.make_plan(teacher, stats, heads=4, kv_heads=1)
    with pytest.raises(ValueError, match="GPT-2"):
        gpt2 = deep_model("tiny-gpt2", layers=2)
        prune.make_plan(gpt2, prune.collect_statistics(gpt2, [batch()]), heads=2)


# ----------------------------------------------------------------------------- the command


def test_student_init_writes_a_loadable_folder_with_provenance(tmp_path, capsys):
    teacher = deep_model("tiny-llama", layers=4)
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer().save_pretrained(tmp_path / "teacher")
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text("".join(json.dumps({"instruction": f"copy {w}", "input": "", "response": w}) + "\n"
                                   for w in ("cat dog", "sun moon", "red blue")))
    out = tmp_path / "student"
    assert main(["student", "init", "--teacher", str(tmp_path / "teacher"), "--out", str(out), "--layers", "2",
                 "--mlp", "64", "--calibration", str(calibration)]) == 0
    info = json.loads((out / "csdistill_student.json").read_text())
    assert len(info["kept_layers"]) == 2 and info["student_shape"]["mlp"] == 64
    assert info["student_parameters"] < info["teacher_parameters"]
    assert len(info["block_influence"]) == 4 and all(0 <= x <= 2 for x in info["block_influence"])
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 2 and (out / "tokenizer.json").is_file()
    assert "parameters" in capsys.readouterr().out
    # the folder is never overwritten: one line, exit code 2
    assert main(["student", "init", "--teacher", str(tmp_path / "teacher"), "--out", str(out), "--layers", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
