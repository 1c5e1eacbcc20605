"""The key of one training sequence: a digest of its unpadded input_ids and labels.

Shared by the writers (cache/runner.py, cache/vllm.py) and the reader (train/teacher_cache.py),
so a sequence hits its cached rows whatever batch or padding it arrives in.
"""
from __future__ import annotations

import hashlib

import torch


def sequence_digest(input_ids: torch.Tensor, labels: torch.Tensor) -> bytes:
    """16-byte key of one unpadded sequence: input_ids (n,), labels (n,) (unshifted)."""
    payload = input_ids.cpu().long().numpy().tobytes() + b"|" + labels.cpu().long().numpy().tobytes()
    return hashlib.sha256(payload).digest()[:16]


def sequence_keys(batch: dict[str, torch.Tensor]) -> list[bytes]:
    """One key per row of a right-padded batch (tensors (B, T))."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()  # (B,)
    return [sequence_digest(batch["input_ids"][i, :n], batch["labels"][i, :n]) for i, n in enumerate(lengths)]


def example_key(example: dict) -> bytes:
    """The key of an encoded example {input_ids, labels} — the same as its row in any batch."""
    return sequence_digest(torch.as_tensor(example["input_ids"]), torch.as_tensor(example["labels"]))
