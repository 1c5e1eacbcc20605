"""Plain text for the auxiliary LM loss: documents -> EOS-separated ids -> fixed-size blocks."""

from __future__ import annotations

from pathlib import Path

from csdistill.data.formats import load_records
from csdistill.errors import UserError


def pack_blocks(documents: list[list[int]], eos_token_id: int, block_size: int) -> list[list[int]]:
    """Concatenate documents, each followed by EOS, and cut into full blocks of block_size ids
    (the remainder shorter than a block is dropped, as in GPT pre-training)."""
    if block_size < 2:
        raise UserError(f"block_size={block_size}: must be >= 2 (a block predicts its next tokens)")
    stream = [token for doc in documents for token in (*doc, eos_token_id)]
    return [stream[start:start + block_size] for start in range(0, len(stream) - block_size + 1, block_size)]


def encode_long(tokenizer, text: str, piece_chars: int = 100_000) -> list[int]:
    """Token ids of `text`, tokenised in pieces of at most piece_chars characters cut after a newline
    where there is one: a fast tokenizer needs ~400 bytes per character of its input at once, so a
    30 MB document in one call would take 12 GB."""
    ids: list[int] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + piece_chars)
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline > start else end
        ids.extend(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        start = end
    return ids


def load_text_chunks(path: str | Path, tokenizer, block_size: int) -> list[dict]:
    """[{input_ids, labels}] blocks of block_size ids from a .txt file (one document) or text JSONL
    (one document per record); labels = input_ids (every position is trained)."""
    if tokenizer.eos_token_id is None:
        raise UserError("load_text_chunks: the tokenizer has no eos_token to separate documents; set one")
    records = load_records(path, format="text").records
    documents = [encode_long(tokenizer, r["text"]) for r in records]
    blocks = pack_blocks(documents, tokenizer.eos_token_id, block_size)
    return [{"input_ids": block, "labels": list(block)} for block in blocks]
