"""Input checks shared by every loss: shapes, vocabularies, finiteness, parameter ranges.

Bad-input policy (the same for every per-position loss and for the fused engine):

- ``student_logits`` and ``teacher_logits`` must have identical shapes ``(..., V)``. A different
  last dimension is a vocabulary mismatch and raises ``UserError`` (a ValueError) naming both sizes. A teacher
  with a *padded* vocabulary of the same family (e.g. 152064 vs 151936) is accepted only by
  :func:`align_teacher_vocab` / the fused engine, which compare the shared id range ``[0, V_s)``.
- NaN or ``+inf`` in either tensor raises ``UserError`` (a ValueError) with the number of affected positions.
- ``-inf`` is allowed only as a *masked vocabulary entry*: at the same index in both models (a
  banned token). :func:`check_logits` returns the mask of such entries; CSD treats them as outside
  the support (residual 0, weight 0), the KL family gives them probability 0 in both models, and
  ``dld``/``ab`` reject them. ``-inf`` in one model only, or a position with no finite entry,
  raises ``UserError`` (a ValueError).
- The finiteness check costs one sum reduction per tensor in the common all-finite case; the
  slower per-entry scan only runs when that sum is not finite. Disable it with
  ``set_check_finite(False)`` (e.g. in a benchmark); then non-finite inputs give NaN silently.
"""
from __future__ import annotations

import math

import torch
from csdistill.errors import NonFiniteLogitsError, UserError

_CHECK_FINITE = True


def set_check_finite(enabled: bool) -> bool:
    """Turn the logits finiteness check on or off for all losses; returns the previous setting."""
    global _CHECK_FINITE
    previous, _CHECK_FINITE = _CHECK_FINITE, bool(enabled)
    return previous


def check_same_shape(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Raise UserError unless both logits tensors have the same shape ``(..., V)``."""
    s_shape, t_shape = tuple(student_logits.shape), tuple(teacher_logits.shape)
    if not s_shape or not t_shape:
        raise UserError(f"logits must have shape (..., V); got student_logits {s_shape}, "
                         f"teacher_logits {t_shape}")
    if s_shape[-1] != t_shape[-1]:
        raise UserError(
            f"vocab mismatch: student_logits has V={s_shape[-1]} (shape {s_shape}), teacher_logits "
            f"has V={t_shape[-1]} (shape {t_shape}). Models must share a "
            "tokenizer; for a padded teacher vocabulary use align_teacher_vocab(teacher_logits, "
            f"{s_shape[-1]}) to compare the shared id range.")
    if s_shape != t_shape:
        raise UserError(
            f"shape mismatch: student_logits {s_shape} vs teacher_logits {t_shape}; both must be "
            "(..., V) over the same positions.")


def align_teacher_vocab(teacher_logits: torch.Tensor, student_vocab_size: int) -> torch.Tensor:
    """Slice a padded teacher vocabulary to the student's: ``teacher_logits[..., :V_s]``.

    Models of one family often pad the head differently (151936 vs 152064); ids ``>= V_s`` are
    padding the student can never emit, so only the shared range ``[0, V_s)`` is compared.
    A teacher vocabulary *smaller* than the student's means different tokenizers: ValueError.
    """
    teacher_vocab = teacher_logits.shape[-1]
    if teacher_vocab < student_vocab_size:
        raise UserError(
            f"vocab mismatch: teacher V={teacher_vocab} < student V={student_vocab_size}; a "
            "teacher vocabulary smaller than the student's is not a padded copy of it — the "
            "models must share a tokenizer.")
    return teacher_logits[..., :student_vocab_size]


def _count_positions(bad: torch.Tensor) -> int:
    """Number of positions (rows over the last dim) with any True entry."""
    return int(bad.any(dim=-1).sum()) if bad.dim() > 0 else int(bad)


def _scan_non_finite(logits: torch.Tensor, who: str) -> torch.Tensor:
    """Raise on NaN/+inf in ``logits``; return the bool mask of -inf entries (..., V)."""
    bad = torch.isnan(logits) | (logits == math.inf)
    n_bad = _count_positions(bad)
    if n_bad:
        raise NonFiniteLogitsError(
            f"non-finite {who} logits (NaN or +inf) at {n_bad} positions; check for fp16 overflow "
            "or a diverged model (compute in bf16/fp32). Only -inf is allowed, as a masked "
            "vocabulary entry present in both models.")
    return logits == -math.inf


def check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor):
    """Validate a logits pair; return None, or the bool mask (..., V) of masked (-inf) entries.

    Shapes must match (see :func:`check_same_shape`). When the finiteness check is enabled,
    NaN/+inf raise NonFiniteLogitsError, and -inf must appear at the same entries in both tensors.
    """
    check_same_shape(student_logits, teacher_logits)
    if not _CHECK_FINITE:
        return None
    with torch.no_grad():
        total = student_logits.detach().float().sum() + teacher_logits.detach().float().sum()
        if bool(torch.isfinite(total)):
            return None  # fast path: a finite sum means every entry is finite
        student_masked = _scan_non_finite(student_logits.detach(), "student")
        teacher_masked = _scan_non_finite(teacher_logits.detach(), "teacher")
        one_sided = student_masked ^ teacher_masked
        if bool(one_sided.any()):
            raise UserError(
                f"-inf logits in only one model at {_count_positions(one_sided)} positions; "
                "-inf is allowed only as a masked vocabulary entry, at the same index in both "
                "student_logits and teacher_logits.")
        if bool(student_masked.all(dim=-1).any()):
            raise UserError("a position has every vocabulary entry at -inf; at least one "
                             "token must stay unmasked.")
        return student_masked if bool(student_masked.any()) else None  # sum overflowed only


def check_positive(name: str, value: float, loss: str) -> None:
    """Raise UserError unless ``value`` is a finite number > 0."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{loss}: {name}={value!r} is invalid; it must be a finite number > 0 "
                         f"(e.g. {name}=1.0).")


def check_unit_interval(name: str, value: float, loss: str) -> None:
    """Raise UserError unless ``value`` is a number in [0, 1]."""
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UserError(f"{loss}: {name}={value!r} is out of range; it must lie in [0, 1].")


def check_real(name: str, value: float, loss: str) -> None:
    """Raise UserError unless ``value`` is a finite real number."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{loss}: {name}={value!r} is invalid; it must be a finite real number.")


def check_choice(name: str, value, choices, loss: str) -> None:
    """Raise UserError unless ``value`` is one of ``choices`` (listed in the message)."""
    if value not in choices:
        raise UserError(f"{loss}: {name}={value!r} is not valid; choose one of "
                         f"{', '.join(repr(c) for c in choices)}.")


def reject_masked(masked, loss: str) -> None:
    """Raise ValueError when masked (-inf) vocabulary entries reach a loss that cannot skip them."""
    if masked is not None:
        raise UserError(f"{loss}: masked (-inf) vocabulary entries are not supported by this "
                         "loss; use csd or a KL-family loss, or replace -inf by a finite value.")
