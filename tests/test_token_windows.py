"""Long texts are tokenised over a window at the end that is kept, never whole: the ids equal the
whole-text path's (tokenise everything, then truncate) on ordinary and odd texts, and a 1M-character
prompt costs a window, not 400 MB."""

import random

import pytest

from csdistill.data.collate import (CHARS_PER_TOKEN, IGNORE_INDEX, MARGIN_TOKENS, encode_example, prompt_token_ids,
                                    window_token_ids)
from csdistill.data.tokenizer import build_char_tokenizer
from helpers import WORDS, tiny_tokenizer


def whole_prompt_ids(tokenizer, prompt: str, max_prompt_length: int) -> list[int]:
    """Reference: the whole prompt's ids, then prompt_token_ids' truncation (EOS dropped, BOS kept)."""
    ids = list(tokenizer(prompt)["input_ids"])
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if ids and eos is not None and ids[-1] == eos and eos != bos:
        ids = ids[:-1]
    if len(ids) <= max_prompt_length:
        return ids
    if bos is not None and ids[0] == bos and max_prompt_length > 1:
        return [bos] + ids[len(ids) - max_prompt_length + 1:]
    return ids[len(ids) - max_prompt_length:]


def texts(n_chars: int, seed: int) -> list[str]:
    """Prose with punctuation and newlines, a space-free run, whitespace runs, non-ASCII, digits."""
    rng = random.Random(seed)
    prose = " ".join(rng.choice(WORDS) + rng.choice(["", ",", ".", "\n", "!"]) for _ in range(n_chars // 4))
    return [prose[:n_chars], "".join(rng.choice("abcxyz") for _ in range(n_chars)),
            ("word   \n\n\t" * n_chars)[:n_chars], ("caf\u00e9 na\u00efve 12345 " * n_chars)[:n_chars]]


def windowed(tokenizer, text: str, keep: int) -> bool:
    """True when the window path (not the whole-text fallback) served `text`."""
    return len(window_token_ids(tokenizer, text, keep, "tail")) < len(tokenizer(text)["input_ids"])


def check_equal(tokenizer, text: str, max_prompt_length: int, max_length: int) -> None:
    assert prompt_token_ids(tokenizer, text, max_prompt_length) == whole_prompt_ids(tokenizer, text, max_prompt_length)
    record = {"instruction": "q", "input": "", "response": text}
    example = encode_example(record, tokenizer, "plain", max_prompt_length, max_length)
    response = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    prompt = example["input_ids"][:example["prompt_length"]]
    assert example["input_ids"] == prompt + response[:max_length - len(prompt)]
    assert example["labels"] == [IGNORE_INDEX] * len(prompt) + response[:max_length - len(prompt)]


@pytest.mark.parametrize("max_prompt_length, max_length", [(1, 2), (5, 13), (17, 40), (64, 128)])
@pytest.mark.parametrize("n_chars", [10, 700, 5000])
def test_char_tokenizer_ids_equal_the_whole_text_path(max_prompt_length, max_length, n_chars):
    tokenizer = tiny_tokenizer()
    for text in texts(n_chars, seed=n_chars + max_length):
        check_equal(tokenizer, text, max_prompt_length, max_length)
    if n_chars == 5000:  # long enough: the windows, not the fallback, gave those ids
        assert all(windowed(tokenizer, t, max_prompt_length + 1) for t in texts(n_chars, 0) if " " in t)


def test_a_window_with_too_few_tokens_falls_back_to_the_whole_text():
    long_token = "x" * (2 * CHARS_PER_TOKEN)  # one token of 32 characters: beyond the chars-per-token bound
    tokenizer = build_char_tokenizer(extra_tokens=[long_token])
    text = "a b " + long_token * 200
    assert window_token_ids(tokenizer, text, 4, "tail") == list(tokenizer(text)["input_ids"])
    check_equal(tokenizer, text, 4, 9)


class CountingTokenizer:
    """The char tokenizer, recording the length of every text it is asked to encode."""

    def __init__(self):
        self.inner, self.lengths = tiny_tokenizer(), []

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text))
        return self.inner(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_million_character_prompt_is_tokenised_over_a_window_only():
    tokenizer = CountingTokenizer()
    text = ("lorem ipsum dolor " * 60_000)[:1_000_000]
    ids = prompt_token_ids(tokenizer, text, 256)
    assert len(ids) == 256 and tokenizer.inner.decode(ids) == text[-256:]
    assert max(tokenizer.lengths) <= 2 * (256 + 1 + MARGIN_TOKENS) * CHARS_PER_TOKEN  # the wider window
    tokenizer.lengths.clear()
    example = encode_example({"instruction": "q", "response": text}, tokenizer, "plain", 32, 512)
    assert len(example["input_ids"]) == 512 and max(tokenizer.lengths) <= 2 * (512 + MARGIN_TOKENS) * CHARS_PER_TOKEN


@pytest.mark.real_model
def test_smollm2_tokenizer_ids_equal_the_whole_text_path():
    from pathlib import Path

    from csdistill.model_files import cache_dir

    folder = next((p for p in (cache_dir() / "models" / "smollm2-135m-instruct", Path("/work/models/smollm2"))
                   if (p / "tokenizer.json").is_file()), None)
    if folder is None:
        pytest.skip("SmolLM2 is not fetched (csdistill model fetch smollm2-135m-instruct)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    for max_prompt_length, max_length in ((3, 8), (20, 50), (64, 200)):
        for text in texts(6000, seed=max_length):
            check_equal(tokenizer, text, max_prompt_length, max_length)
        assert windowed(tokenizer, texts(6000, seed=0)[0], max_prompt_length + 1)
