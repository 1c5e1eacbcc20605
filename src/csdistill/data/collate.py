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

from typing import Iterator, Sequence

import torch

from csdistill.data.templates import PromptTemplate, build_prompt
from csdistill.losses.reduce import IGNORE_INDEX
from csdistill.errors import UserError


def prompt_token_ids(tokenizer, prompt: str, max_prompt_length: int) -> list[int]:
    """The prompt's ids with the tokenizer's own special prefix (e.g. Llama's BOS, none for GPT-2 or
    the char tokenizer), never a trailing EOS; left-truncated to max_prompt_length, keeping a BOS."""
    ids = list(tokenizer(prompt)["input_ids"])
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
    response_ids = list(tokenizer(record.get("response") or "", add_special_tokens=False)["input_ids"])
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


def encode_prompts(prompts: Sequence[str], tokenizer, max_prompt_length: int) -> dict[str, torch.Tensor]:
    """Prompt texts -> LEFT-padded input_ids (B, P) and attention_mask (B, P) for generation."""
    if not prompts:
        raise UserError("encode_prompts: no prompts given")
    ids = [prompt_token_ids(tokenizer, p, max_prompt_length) for p in prompts]
    if any(not seq for seq in ids):
        raise UserError("encode_prompts: a prompt encodes to no tokens; generation needs at least one prompt token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(tokenizer)
    return left_pad(ids, pad)


def batches(examples: Sequence, batch_size: int, generator: torch.Generator) -> Iterator[list]:
    """One epoch of `examples` in a seeded random order, `batch_size` at a time (last batch may be short)."""
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: must be >= 1")
    order = torch.randperm(len(examples), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        yield [examples[i] for i in order[start:start + batch_size]]
