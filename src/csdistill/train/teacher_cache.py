"""Teacher logits kept in memory across epochs (`train.cache_teacher_logits`, kd mode only).

Off-policy KD on a fixed dataset shows the teacher the same sequences every epoch; a small student
then spends most of its step time waiting for the teacher's forward pass. The cache stores, per
training sequence, the teacher's logits at that sequence's valid (predicting) positions, so every
epoch after the first skips the teacher. Keys are the sequence's unpadded tokens and labels, so a
sequence hits whatever batch or padding it arrives in. Values are stored in the dtype the teacher
produced them in (bf16 under autocast), i.e. exactly what the uncached path would pass to the loss.

Memory: Σ over sequences of (valid positions × V) values — e.g. 4000 sequences × 12 positions × 101
ids × 2 bytes ≈ 10 MB on the built-in suite; at a real vocabulary it is large: keep it for small data.
"""

from __future__ import annotations

from typing import Callable

import torch


def sequence_keys(batch: dict[str, torch.Tensor]) -> list[bytes]:
    """One key per row: its unpadded input_ids and labels. batch tensors (B, T), right-padded."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()  # (B,)
    ids, labels = batch["input_ids"].cpu(), batch["labels"].cpu()
    return [ids[i, :n].numpy().tobytes() + b"|" + labels[i, :n].numpy().tobytes() for i, n in enumerate(lengths)]


class TeacherLogitCache:
    """{sequence key: teacher logits (n_valid_i, V)}; `logits` returns the (N, V) rows of a batch."""

    def __init__(self) -> None:
        self._store: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def logits(self, batch: dict[str, torch.Tensor], valid: torch.Tensor,
               compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Teacher logits at `valid` (B, T) positions, flattened row-major like `logits[valid]`: (N, V).

        `compute()` runs the teacher on the whole batch and returns those (N, V) rows; it is called
        only when some row of the batch is not cached yet (then every row is stored).
        """
        keys = sequence_keys(batch)
        if all(key in self._store for key in keys):
            self.hits += len(keys)
            return torch.cat([self._store[key] for key in keys]).to(valid.device)
        self.misses += len(keys)
        rows = compute()  # (N, V)
        for key, part in zip(keys, rows.split(valid.sum(dim=1).tolist())):
            self._store[key] = part.detach().clone()
        return rows
