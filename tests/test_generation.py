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


# ----------------------------------------------------------------------------- the batched decoder

from csdistill.generation import generate_seed_texts, length_buckets, next_tokens, row_uniforms, sample_rows  # noqa: E402
from reference_decoding import greedy_loop, uncached_row  # noqa: E402

MANY = ["reverse: cat dog", "ab", "copy: sun", "a much longer prompt than the rest", "x", "sort: c b a", "hi there"]


def _frequent_token(model, batch, steps=12):
    """A token the greedy rows emit often: as EOS it ends rows at different steps (rows get dropped)."""
    new = greedy_loop(model, batch["input_ids"], batch["attention_mask"], steps, -1, 0)
    return int(torch.mode(new.flatten()).values)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_greedy_rows_equal_the_plain_loop_token_for_token(preset):
    model = tiny_model(preset, seed=5)
    batch = encode_prompts(MANY, tiny_tokenizer(), max_prompt_length=32)
    eos = _frequent_token(model, batch)
    ref = greedy_loop(model, batch["input_ids"], batch["attention_mask"], 12, eos, 0)
    out = sample_rows(model, batch["input_ids"], batch["attention_mask"], GenerationConfig(do_sample=False,
                      max_new_tokens=12), None, eos, 0)
    new = out.sequences[:, out.prompt_length:]
    assert 0 < (new == eos).any(dim=1).sum() < len(MANY)  # some rows finished early: the decoder dropped them
    assert torch.equal(new, ref)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_sampled_rows_equal_an_uncached_row_by_row_reference(preset):
    model = tiny_model(preset, seed=5)
    tok = tiny_tokenizer()
    gen = GenerationConfig(do_sample=True, temperature=1.3, top_k=20, top_p=0.95, max_new_tokens=10)
    batch = encode_prompts(MANY[:4], tok, max_prompt_length=32)
    eos = _frequent_token(model, batch)
    uniforms = row_uniforms([1, 2], range(4), gen.max_new_tokens)  # (8, N), prompt-major
    out = sample_rows(model, batch["input_ids"], batch["attention_mask"], gen, uniforms, eos, 0, copies=2)
    P = out.prompt_length
    for row in range(8):
        prompt = batch["input_ids"][row // 2][batch["attention_mask"][row // 2].bool()]
        expected = uncached_row(model, prompt.tolist(), gen, uniforms[row], eos)
        got = out.sequences[row, P:][out.completion_mask[row, P:]].tolist()
        assert got == expected, row


def test_a_seed_draws_the_same_texts_alone_as_beside_other_seeds():
    model, tok = tiny_model(seed=5), tiny_tokenizer()
    gen = GenerationConfig(do_sample=True, temperature=1.5, max_new_tokens=12)
    together = generate_seed_texts(model, tok, MANY, gen, [10, 20, 30], batch_size=3)
    alone = generate_seed_texts(model, tok, MANY, gen, [20], batch_size=5)[0]
    assert together[1] == alone  # other seeds, another batch size and bucketing: the same draws
    assert together[0] != together[1] != together[2]
    assert generate_texts(model, tok, MANY, gen, seed=30, batch_size=2) == together[2]


def test_greedy_texts_are_shared_by_all_seeds_and_independent_of_batching():
    model, tok = tiny_model(seed=5), tiny_tokenizer()
    texts = generate_seed_texts(model, tok, MANY, GREEDY, [1, 2], batch_size=3)
    assert texts[0] == texts[1] == generate_texts(model, tok, MANY, GREEDY, seed=0, batch_size=1)


def test_length_buckets_sort_stably_and_cover_every_prompt():
    assert length_buckets([3, 1, 2, 1, 5], 2) == [[1, 3], [2, 0], [4]]


def test_inverse_cdf_pick_follows_the_probabilities_and_skips_filtered_tokens():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4000, 4)
    u = (torch.arange(4000) + 0.5) / 4000  # an even grid of uniforms
    picks = next_tokens(logits, GenerationConfig(do_sample=True), u)
    assert torch.allclose(torch.bincount(picks, minlength=4) / 4000.0, probs, atol=1e-3)
    top2 = next_tokens(logits, GenerationConfig(do_sample=True, top_k=2), u)
    assert set(top2.tolist()) == {0, 1}
    assert int(next_tokens(logits[:1], GenerationConfig(do_sample=True), torch.tensor([1.0 - 1e-9]))) == 3


def test_bf16_decoding_keeps_a_seed_independent_of_batching():
    model, tok = tiny_model(seed=5), tiny_tokenizer()
    gen = GenerationConfig(do_sample=True, temperature=1.5, max_new_tokens=12)
    together = generate_seed_texts(model, tok, MANY, gen, [10, 20], batch_size=3, precision="bf16")
    assert together[1] == generate_seed_texts(model, tok, MANY, gen, [20], batch_size=7, precision="bf16")[0]
    assert any(t for t in together[0])
