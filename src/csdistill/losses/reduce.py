"""The one place for masking and reduction of per-position losses.

Convention (method.md §1 "Reduction"): a causal LM's logit at index i predicts token i+1, so
labels are shifted left once (:func:`shift_labels`); a position is valid iff its shifted label is
not ``IGNORE_INDEX``. Per-position losses are summed over valid positions and divided *once* by the
number of valid tokens in the whole (global) batch, so gradient accumulation and chunking do not
change the result.
"""
from __future__ import annotations

import torch
from csdistill.errors import UserError

IGNORE_INDEX = -100  # label value of positions that carry no loss (prompt, padding)


def valid_mask(labels: torch.Tensor) -> torch.Tensor:
    """Bool mask (...) of positions that carry a loss: ``labels != IGNORE_INDEX``."""
    return labels != IGNORE_INDEX


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Align labels to the positions that predict them: out[:, i] = labels[:, i+1].

    labels: (B, T) token ids with IGNORE_INDEX on prompt/padding. Returns (B, T); the last
    column is IGNORE_INDEX (nothing follows it). Position i is valid iff it predicts a real token.
    """
    if labels.dim() != 2:
        raise UserError(f"shift_labels: labels must have shape (B, T); got {tuple(labels.shape)}. "
                         "Add a batch dimension with labels[None].")
    shifted = torch.full_like(labels, IGNORE_INDEX)  # (B, T)
    shifted[:, :-1] = labels[:, 1:]
    return shifted


def count_valid(labels: torch.Tensor) -> torch.Tensor:
    """Number of valid positions (int64 scalar tensor); labels may also be a bool mask."""
    mask = labels if labels.dtype == torch.bool else valid_mask(labels)
    return mask.sum()


def token_mean(per_position: torch.Tensor, labels_or_mask: torch.Tensor,
               num_valid_tokens=None) -> torch.Tensor:
    """Σ_valid per_position / n — a float32 scalar; 0 (not NaN) when nothing is valid.

    per_position: (...) float; labels_or_mask: (...) labels (IGNORE_INDEX = invalid) or bool mask.
    n = ``num_valid_tokens`` (the global count, for gradient accumulation / data parallelism) if
    given, else the local count. Masking uses ``where`` so NaN at masked positions cannot leak.
    """
    mask = labels_or_mask if labels_or_mask.dtype == torch.bool else valid_mask(labels_or_mask)
    if tuple(per_position.shape) != tuple(mask.shape):
        raise UserError(f"token_mean: per_position shape {tuple(per_position.shape)} != labels/"
                         f"mask shape {tuple(mask.shape)}; pass labels aligned to the positions "
                         "(see shift_labels).")
    total = torch.where(mask, per_position.float(), 0.0).sum()  # ()
    count = mask.sum() if num_valid_tokens is None else _as_count(num_valid_tokens)
    return total / torch.clamp(torch.as_tensor(count, device=total.device), min=1)


def _as_count(num_valid_tokens) -> torch.Tensor:
    """Validate a user-given token count (int or scalar tensor) and return it as a tensor."""
    count = torch.as_tensor(num_valid_tokens)
    if count.numel() != 1 or bool(count < 0):
        raise UserError(f"num_valid_tokens={num_valid_tokens!r} is invalid; pass the global "
                         "number of valid tokens, a non-negative scalar (e.g. count_valid(labels)).")
    return count.reshape(())
