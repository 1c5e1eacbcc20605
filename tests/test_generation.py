"""Generation: greedy = HF generate with left padding, seeded sampling, completion mask at EOS, texts, CLI."""

import json

import pytest
import torch

from csdistill.cli import main
from csdistill.config import GenerationConfig
from csdistill.data import encode_prompts
from csdistill.generation import filter_logits, generate_texts, sample
from csdistill.seeding import make_generator
from helpers import tiny_model, tiny_tokenizer, write_jsonl

PROMPTS = ["reverse: cat dog", "ab", "copy: sun"]  # different lengths -> left padding
GREEDY = GenerationConfig(do_sample=False, max_new_tokens=10)


def _prompts():
    return encode_prompts(PROMPTS, tiny_tokenizer(), max_prompt_length=32)


def _sample(model, gen, seed=0, eos=2):
    batch = _prompts()
    return sample(model, batch["input_ids"], batch["attention_mask"], gen, make_generator(seed, 0, 0, "t"), eos, 0)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_greedy_equals_hf_generate_with_left_padding(preset):
    model = tiny_model(preset, seed=5)
    batch = _prompts()
    ours = _sample(model, GREEDY)
    hf = model.generate(**batch, do_sample=False, max_new_tokens=10, pad_token_id=0, eos_token_id=2)
    assert ours.prompt_length == batch["input_ids"].shape[1]
    assert torch.equal(ours.sequences, hf)
    eos = int(ours.sequences[0, ours.prompt_length + 2])  # a token row 0 emits third: make it the EOS
    ours = _sample(model, GREEDY, eos=eos)
    hf = model.generate(**batch, do_sample=False, max_new_tokens=10, pad_token_id=0, eos_token_id=eos)
    assert torch.equal(ours.sequences, hf)


def test_completion_mask_covers_tokens_through_the_first_eos():
    model = tiny_model(seed=5)
    free = _sample(model, GREEDY)
    P = free.prompt_length
    eos = int(free.sequences[0, P + 2])
    out = _sample(model, GREEDY, eos=eos)
    assert not out.completion_mask[:, :P].any()
    for row in range(len(PROMPTS)):
        new, mask = out.sequences[row, P:].tolist(), out.completion_mask[row, P:].tolist()
        end = new.index(eos) + 1 if eos in new else len(new)
        assert mask == [True] * end + [False] * (len(new) - end)
        assert all(t == 0 for t in new[end:])  # pad after EOS
    assert out.completion_mask[0, P:].sum() <= 3


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = tiny_model(seed=5)
    gen = GenerationConfig(do_sample=True, temperature=1.5, max_new_tokens=12)
    torch.manual_seed(123)
    a = _sample(model, gen, seed=1)
    torch.manual_seed(456)  # the global RNG plays no part
    b = _sample(model, gen, seed=1)
    c = _sample(model, gen, seed=2)
    assert torch.equal(a.sequences, b.sequences) and not torch.equal(a.sequences, c.sequences)


def test_top_k_one_equals_greedy_and_mode_is_restored():
    model = tiny_model(seed=5).train()
    top1 = _sample(model, GenerationConfig(do_sample=True, top_k=1, max_new_tokens=10))
    assert model.training
    assert torch.equal(top1.sequences, _sample(model, GREEDY).sequences)
    tiny_p = _sample(model, GenerationConfig(do_sample=True, top_p=1e-6, max_new_tokens=10))
    assert torch.equal(tiny_p.sequences, top1.sequences)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.81)).tolist() == [[False, False, False, True]]
    assert not torch.isinf(filter_logits(logits)).any()


def test_sampling_never_draws_padding_rows_of_the_head():
    tok = tiny_tokenizer()
    model = tiny_model(seed=5, vocab_size=len(tok) + 50)
    with torch.no_grad():
        model.get_output_embeddings().weight[len(tok):] *= 0
        model.get_output_embeddings().weight[len(tok):, 0] = 100.0  # padding rows would win every draw
    batch = _prompts()
    out = sample(model, batch["input_ids"], batch["attention_mask"], GenerationConfig(max_new_tokens=6),
                 make_generator(0), 2, 0, vocab_size=len(tok))
    assert int(out.sequences.max()) < len(tok)


def test_generate_texts_strip_eos_and_reproduce():
    tok, model = tiny_tokenizer(), tiny_model(seed=5)
    gen = GenerationConfig(do_sample=True, max_new_tokens=8, batch_size=2)
    texts = generate_texts(model, tok, PROMPTS, gen, seed=10, max_prompt_length=32)
    assert len(texts) == 3 and all(isinstance(t, str) and "<eos>" not in t for t in texts)
    assert texts == generate_texts(model, tok, PROMPTS, gen, seed=10, max_prompt_length=32)
    greedy = generate_texts(model, tok, PROMPTS, GREEDY, seed=0, max_prompt_length=32, batch_size=3)
    ids = _sample(model, GREEDY).sequences[:, _prompts()["input_ids"].shape[1]:]
    assert greedy == [tok.decode(row, skip_special_tokens=True) for row in ids]


def test_generate_command_writes_instruction_jsonl(tmp_path, capsys):
    tiny_model(seed=5).save_pretrained(tmp_path / "ckpt" / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt" / "model")
    write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": "copy: cat", "task": "copy"}])
    out = tmp_path / "gen.jsonl"
    code = main(["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "hello", "--prompts-file",
                 str(tmp_path / "prompts.jsonl"), "--out", str(out), "generation.max_new_tokens=5", "data.template=plain"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["instruction"] for r in rows] == ["hello", "copy: cat"] and rows[1]["task"] == "copy"
    assert all(isinstance(r["response"], str) and len(r["response"]) <= 5 for r in rows)
    assert "### hello" in capsys.readouterr().out
    assert main(["generate", "--checkpoint", str(tmp_path / "ckpt")]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_generate_needs_no_teacher_while_train_still_does(tmp_path, capsys):
    tiny_model(seed=5).save_pretrained(tmp_path / "ckpt" / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt" / "model")
    generate = ["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "hello", "generation.max_new_tokens=3"]
    assert main(generate) == 0  # the default train.mode (kd) and no teacher.name_or_path
    assert "### hello" in capsys.readouterr().out
    kd_yaml = tmp_path / "kd.yaml"
    kd_yaml.write_text("train:\n  mode: kd\n")  # a training config whose teacher comes from the command line
    assert main([*generate, "--config", str(kd_yaml)]) == 0
    capsys.readouterr()
    assert main([*generate, "generation.top_p=2"]) == 2  # other fields are still validated, and named
    assert "generation.top_p" in capsys.readouterr().err
    assert main(["train", "train.max_steps=1"]) == 2  # training validation is not weakened
    assert "teacher.name_or_path" in capsys.readouterr().err
