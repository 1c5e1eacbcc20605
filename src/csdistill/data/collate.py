"""Records -> token ids with labels, and batches of them.

An encoded example is ``{"input_ids": [int], "labels": [int], "prompt_length": int}``:
``input_ids = prompt + response + EOS``; ``labels`` is aligned with ``input_ids`` (HF convention,
NOT shifted) and holds ``IGNORE_INDEX`` on the prompt, the response ids (and EOS) elsewhere. The
loss side shifts (``losses.reduce.shift_labels``), so the position that predicts the first response
token — the last prompt position — carries a loss.

Training batches are right-padded (``collate``); generation prompts are left-padded
(``encode_prompts``) so that every row's next token sits in the last column.
"""

from __future__ import annotations

import sys
from typing import Iterator, Sequence

import torch

from csdistill.data.templates import PromptTemplate, build_prompt
from csdistill.losses.reduce import IGNORE_INDEX
from csdistill.errors import UserError


CHARS_PER_TOKEN = 16  # generous: English BPE averages ~4 characters a token, the char tokenizer 1
MARGIN_TOKENS = 16  # tokens beyond those kept, so that the kept ones lie well away from a window's cut


def _window(text: str, width: int, end: str) -> str | None:
    """About `width` characters at that end of `text`, cut at whitespace (None: no whitespace to cut at)."""
    if end == "tail":
        cut = next((i for i in range(len(text) - width, len(text)) if text[i].isspace()), None)
        return None if cut is None else text[cut:]
    cut = next((i for i in range(width, 0, -1) if text[i].isspace()), None)
    return None if cut is None else text[:cut]


def window_token_ids(tokenizer, text: str, keep: int, end: str, add_special_tokens: bool = True) -> list[int]:
    """Ids of `text` whose first (end='head') or last (end='tail') `keep` equal the whole text's.

    A fast tokenizer holds ~400 bytes per input character (400 MB for a 1M-character record), so a
    long text is tokenised over windows at that end only: w = (keep + MARGIN_TOKENS) x CHARS_PER_TOKEN
    and 2w characters, each cut at whitespace. Their ids are used when the w-window gives at least
    keep + MARGIN_TOKENS ids and both windows agree on the kept ones (a cut that changed them, e.g. a
    tokenizer matching left to right through a space-free run, would not agree); otherwise, and for
    short texts, the whole text is tokenised."""
    width = (keep + MARGIN_TOKENS) * CHARS_PER_TOKEN
    windows = [_window(text, w, end) for w in (width, 2 * width)] if len(text) > 2 * width else [None]
    if None not in windows:
        short, wide = (list(tokenizer(w, add_special_tokens=add_special_tokens)["input_ids"]) for w in windows)
        kept = slice(len(short) - keep, None) if end == "tail" else slice(0, keep)
        wide_kept = slice(len(wide) - keep, None) if end == "tail" else slice(0, keep)
        if len(short) >= keep + MARGIN_TOKENS and short[kept] == wide[wide_kept]:
            return short
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def prompt_token_ids(tokenizer, prompt: str, max_prompt_length: int) -> list[int]:
    """The prompt's ids with the tokenizer's own special prefix (e.g. Llama's BOS, none for GPT-2 or
    the char tokenizer), never a trailing EOS; left-truncated to max_prompt_length, keeping a BOS."""
    ids = window_token_ids(tokenizer, prompt, max_prompt_length + 1, "tail")  # + 1: a trailing EOS
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if ids and eos is not None and ids[-1] == eos and eos != bos:
        ids = ids[:-1]  # tokenizers that close every text with EOS: the prompt is not finished
    if len(ids) <= max_prompt_length:
        return ids
    if bos is not None and ids[0] == bos and max_prompt_length > 1:
        return [bos] + ids[len(ids) - max_prompt_length + 1:]
    return ids[len(ids) - max_prompt_length:]


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token; responses end with "
                         "EOS: set tokenizer.eos_token (or use a tokenizer that has one)")
    return tokenizer.eos_token_id


def encode_response(prompt_ids: Sequence[int], response_ids: Sequence[int], max_length: int) -> dict:
    """An example from token ids (e.g. a generated completion, EOS included if it was generated).

    The prompt is kept whole; the response is cut so that the total fits max_length. Adds no EOS.
    """
    room = max(0, max_length - len(prompt_ids))
    response = [int(t) for t in response_ids[:room]]
    prompt = [int(t) for t in prompt_ids]
    return {"input_ids": prompt + response, "labels": [IGNORE_INDEX] * len(prompt) + response,
            "prompt_length": len(prompt)}


def encode_example(record: dict, tokenizer, template: str | PromptTemplate, max_prompt_length: int,
                   max_length: int) -> dict:
    """prompt (left-truncated to max_prompt_length tokens) + response + EOS, cut to max_length tokens."""
    if max_length <= max_prompt_length:
        raise UserError(f"data.max_length={max_length} must exceed data.max_prompt_length={max_prompt_length} "
                         "to leave room for the response")
    prompt_ids = prompt_token_ids(tokenizer, build_prompt(record, template), max_prompt_length)
    response_ids = window_token_ids(tokenizer, record.get("response") or "", max_length, "head",
                                    add_special_tokens=False)
    return encode_response(prompt_ids, response_ids + [_eos_id(tokenizer)], max_length)


def collate(examples: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids (B, T) long, attention_mask (B, T) long, labels (B, T) long
    (IGNORE_INDEX on padding). Other keys of the examples are ignored."""
    if not examples:
        raise UserError("collate: no examples; pass at least one encoded example")
    if pad_token_id is None:
        raise UserError("collate: pad_token_id is None; set tokenizer.pad_token (load_tokenizer sets it to EOS)")
    width = max(len(ex["input_ids"]) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        assert len(ex["labels"]) == n, "labels must align with input_ids"
        input_ids[row, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.as_tensor(ex["labels"], dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """input_ids (B, P) and attention_mask (B, P), left-padded to the longest sequence."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)  # (B, P)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, P)
    for row, seq in enumerate(sequences):
        if len(seq):
            input_ids[row, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def prompt_pad_id(tokenizer) -> int:
    """The id generation prompts are left-padded with: pad, else EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(tokenizer)


def encode_prompt_ids(prompts: Sequence[str], tokenizer, max_prompt_length: int,
                      what: str = "generation prompts") -> list[list[int]]:
    """Each prompt's ids (prompt_token_ids), with one warning for unknown tokens among them (`what`
    names the prompts' source in it)."""
    if not prompts:
        raise UserError("encode_prompts: no prompts given")
    ids = [prompt_token_ids(tokenizer, p, max_prompt_length) for p in prompts]
    if any(not seq for seq in ids):
        raise UserError("encode_prompts: a prompt encodes to no tokens; generation needs at least one prompt token")
    warn_unknown_tokens(ids, prompts, tokenizer, what)
    return ids


def encode_prompts(prompts: Sequence[str], tokenizer, max_prompt_length: int,
                   what: str = "generation prompts") -> dict[str, torch.Tensor]:
    """Prompt texts -> LEFT-padded input_ids (B, P) and attention_mask (B, P) for generation."""
    return left_pad(encode_prompt_ids(prompts, tokenizer, max_prompt_length, what), prompt_pad_id(tokenizer))


_WARNED: set[str] = set()  # warnings already printed by this process (evaluation passes repeat prompts)


def warn_unknown_tokens(id_lists: Sequence[Sequence[int]], sources: Sequence[str | dict], tokenizer, what: str) -> int:
    """One warning (once per process) when token ids hold the tokenizer's unknown token, e.g. characters
    outside the character tokenizer's alphabet: how many, in how many texts, which characters.

    id_lists[i] are the ids of sources[i] (a text, or a record whose string fields were encoded);
    `what` names where they come from (data.train_file, an evaluation set, generation prompts).
    Returns the count. A tokenizer whose unknown token doubles as EOS/BOS/pad (GPT-2's
    <|endoftext|>; byte-level BPE never produces it) is not checked: its ids cannot tell them apart."""
    unk = tokenizer.unk_token_id
    if unk is None or unk in (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id):
        return 0
    counts = [list(ids).count(unk) for ids in id_lists]
    total = sum(counts)
    if total:
        vocab = tokenizer.get_vocab()
        texts = [s if isinstance(s, str) else " ".join(v for v in s.values() if isinstance(v, str))
                 for s, c in zip(sources, counts) if c]
        unknown = sorted({ch for text in texts for ch in text if ch not in vocab and not ch.isspace()})[:8]
        shown = f" (characters such as {' '.join(map(repr, unknown))})" if unknown else ""
        message = (f"csdistill: warning: {what}: {total} tokens in {sum(1 for c in counts if c)} texts became the "
                   f"unknown token {tokenizer.unk_token!r}{shown}: the model cannot tell them apart; use a tokenizer "
                   "that covers them or clean the data")
        if message not in _WARNED:
            _WARNED.add(message)
            print(message, file=sys.stderr, flush=True)
    return total


def batches(examples: Sequence, batch_size: int, generator: torch.Generator) -> Iterator[list]:
    """One epoch of `examples` in a seeded random order, `batch_size` at a time (last batch may be short)."""
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: must be >= 1")
    order = torch.randperm(len(examples), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        yield [examples[i] for i in order[start:start + batch_size]]
