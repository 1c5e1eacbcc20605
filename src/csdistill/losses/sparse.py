"""Sparse-teacher losses: CSD and the KL family from a stored top-k teacher (``loss.sparse_tail``).

A sparse teacher holds, per valid position, the top-k token ids K (k,), the teacher's
log-probabilities log p at K, log p(y) of the actual next token y (kept also when y ∉ K) and
the log tail mass log(1 − Σ_K p). The support is S = K ∪ {y} (|S| = k or k + 1).

Exactness. On any set of tokens log p_x − log p_y = t_x − t_y (the log-partition cancels), so
the stored log-probabilities *are* the teacher's logits on S up to one per-position constant.
CSD depends only on logit differences, so its residual r = s − t on S is exact: no guess of the
teacher's mass off the support is needed. The KL family, by contrast, needs normalised p.

Two tail modes build a *reduced* pair of logits per position and call the very same dense
per-position function on it (one formula per loss: ``csd.csd``, ``divergences.*``):

- ``support`` (width k + 1): student s_S, teacher log p_S. The dense function's softmax
  renormalises both on S: q̃ = q_S / Σ_S q, p̃ = p_S / Σ_S p; CSD's U weight is 1/|S|. A duplicate
  column (y ∈ K) is masked (-inf in both, the dense masked-entry rule: weight 0, probability 0).
- ``bucket`` (width k + 2): the same plus one complement entry b = V \\ S on both sides:
  student log Σ_{v∉S} e^{s_v} (a logsumexp over the student's O(V) logits), teacher
  log(e^{tail} − p(y)·[y ∉ K]). Softmax over S ∪ {b} then gives exactly (q_S, q_b) and
  (p_S, p_b): the loss of the distributions coarsened to S ∪ {b}, which constrains the
  student's mass off the support. The teacher tail is stored at τ = 1 only, so bucket needs
  temperature = 1. An empty complement (|S| = V) masks b on both sides; a teacher tail that
  underflows to 0 while the student's complement is not empty is floored at ``TAIL_FLOOR``.

Value and frozen-weight gradient. With reduced logits ŝ (width m = k+1 or k+2), ŝ_j = s_{v_j}
for support columns and ŝ_b = logsumexp_{v∉S} s_v, the dense CSD gives, weights w1, w2 detached
and computed on the reduced set, c = r̂ − E_w1 r̂, δ = E_w2 c:

    L = ½ [E_w1 c² + E_w2 c²],     ∂L/∂ŝ_j = (w1_j + w2_j) c_j − w1_j δ        (O(m))

and the chain rule through the reduction: ∂L/∂s_v = ∂L/∂ŝ_j for v = v_j ∈ S, and
∂L/∂s_v = ∂L/∂ŝ_b · softmax_{v∉S}(s)_v off S (bucket mode only; 0 in support mode). The KL
family likewise: e.g. fkl ∂/∂ŝ = q̂ − p̂. Cost per position: O(m) for the loss plus the O(V)
logsumexp of the student (bucket) — the teacher side never touches V.

Shapes: student_logits (N, V) at the valid positions, ``SparseTeacher`` fields (N, k) / (N,).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch

from csdistill.losses.checks import check_choice
from csdistill.errors import UserError

SPARSE_TAILS = ("support", "bucket")
SPARSE_LOSS_NAMES = ("csd", "fkl", "rkl", "skl", "srkl", "jsd", "tvd", "sym_kl", "jeffreys")
TAIL_FLOOR = math.log(torch.finfo(torch.float32).tiny)  # ≈ −87.3: the least mass float32 holds
_FAR = -1e30  # finite "excluded" logit: exp underflows to 0 and logsumexp's backward stays finite


@dataclass(frozen=True)
class SparseTeacher:
    """The teacher at N positions, top-k form. Slicing rows (``teacher[a:b]``, a bool mask or an
    index tensor) slices every field, so the chunked engine can treat it like teacher rows."""

    ids: torch.Tensor  # (N, k) int64 top-k token ids, by decreasing log-probability
    logprobs: torch.Tensor  # (N, k) float teacher log p at ids
    target_logprob: torch.Tensor  # (N,) float teacher log p of the actual next token
    log_tail: torch.Tensor  # (N,) float log(1 − Σ_topk p)
    labels: torch.Tensor  # (N,) int64 the actual next token

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    def __getitem__(self, index) -> "SparseTeacher":
        return SparseTeacher(*(field[index] for field in self._fields()))

    def _fields(self) -> tuple:
        return self.ids, self.logprobs, self.target_logprob, self.log_tail, self.labels

    def to(self, device) -> "SparseTeacher":
        return SparseTeacher(*(field.to(device) for field in self._fields()))

    @staticmethod
    def cat(parts: list["SparseTeacher"]) -> "SparseTeacher":
        return SparseTeacher(*(torch.cat(group) for group in zip(*(p._fields() for p in parts))))


@torch.no_grad()
def sparse_from_logits(teacher_logits: torch.Tensor, labels: torch.Tensor, k: int) -> SparseTeacher:
    """Top-k form of dense teacher logits (N, V) with the actual next tokens labels (N,).

    All in float32: log p = log_softmax(t); the tail is a logsumexp over the complement of the
    top-k (exact, not 1 − Σ p, which cancels catastrophically when the top-k holds ~all mass).
    """
    vocab = teacher_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise UserError(f"top-k={k} is invalid for a vocabulary of V={vocab}; choose 1 <= k <= V.")
    log_p = torch.log_softmax(teacher_logits.float(), -1)  # (N, V)
    logprobs, ids = log_p.topk(k, dim=-1)  # (N, k), sorted
    target = log_p.gather(1, labels.long()[:, None])[:, 0]  # (N,)
    log_tail = log_p.scatter(1, ids, -math.inf).logsumexp(-1)  # (N,); -inf when k = V
    return SparseTeacher(ids, logprobs, target, log_tail, labels.long())


def reduced_logits(student_logits: torch.Tensor, teacher: SparseTeacher, tail: str = "support"):
    """(student (N, m), teacher (N, m)) float32 on S = top-k ∪ {label} (+ the bucket), m = k+1 (+1).

    The student part is differentiable (gather + logsumexp); masked columns are -inf in both."""
    _check_sparse(student_logits, teacher)
    student = student_logits.float()  # (N, V)
    labels = teacher.labels[:, None]  # (N, 1)
    duplicate = (teacher.ids == labels).any(-1, keepdim=True)  # (N, 1): y ∈ top-k
    support = torch.cat([teacher.ids, labels], 1)  # (N, k+1)
    extra = _extra_column(duplicate, support)  # (N, k+1): the label column when y ∈ top-k
    student_support = student.gather(1, support).masked_fill(extra, -math.inf)  # (N, k+1)
    teacher_support = torch.cat([teacher.logprobs.float(), teacher.target_logprob.float()[:, None]], 1)
    teacher_support = teacher_support.masked_fill(extra, -math.inf)  # (N, k+1)
    if tail == "support":
        return student_support, teacher_support
    student_tail = student.scatter(1, support, _FAR).logsumexp(-1, keepdim=True)  # (N, 1)
    teacher_tail = _teacher_complement(teacher, duplicate)  # (N, 1)
    empty = (teacher.k + (~duplicate).long()) >= student.shape[-1]  # (N, 1): S covers the vocabulary
    student_tail = student_tail.masked_fill(empty, -math.inf)
    teacher_tail = teacher_tail.clamp_min(TAIL_FLOOR).masked_fill(empty, -math.inf)
    return torch.cat([student_support, student_tail], 1), torch.cat([teacher_support, teacher_tail], 1)


def _extra_column(duplicate: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """(N, k+1) bool: True only at the label column of rows whose label is already in the top-k."""
    mask = torch.zeros(support.shape, dtype=torch.bool, device=support.device)
    mask[:, -1:] = duplicate
    return mask


def _teacher_complement(teacher: SparseTeacher, duplicate: torch.Tensor) -> torch.Tensor:
    """log p(V \\ S) = log(e^tail − p(y)·[y ∉ K]) (N, 1); −inf when nothing is left."""
    log_tail = teacher.log_tail.float()[:, None]  # (N, 1)
    ratio = torch.exp(teacher.target_logprob.float()[:, None] - log_tail).clamp(max=1.0)
    ratio = ratio.masked_fill(duplicate | torch.isinf(log_tail), 0.0)  # y ∈ K or no tail: nothing to remove
    return log_tail + torch.log1p(-ratio)


def _check_sparse(student_logits: torch.Tensor, teacher: SparseTeacher) -> None:
    """Shapes and id range; a cache of another vocabulary is a clear error, not an index crash."""
    n, vocab = student_logits.shape
    if teacher.ids.dim() != 2 or teacher.ids.shape[0] != n or teacher.labels.shape != (n,):
        raise UserError(f"sparse teacher rows {tuple(teacher.ids.shape)} do not match the student's {n} "
                         "valid positions; the cache must be built from the same data and lengths.")
    if n and int(torch.maximum(teacher.ids.max(), teacher.labels.max())) >= vocab:
        raise UserError(f"sparse teacher holds token ids up to {int(teacher.ids.max())} but the student "
                         f"has V={vocab} logits; the cache was built with a different vocabulary — "
                         "re-run `csdistill teacher cache` with this tokenizer.")


def get_sparse_loss(name: str, tail: str = "support", **params) -> Callable:
    """Per-position loss ``fn(student_logits (N, V), teacher: SparseTeacher) -> (N,)`` float32.

    The dense loss ``name`` (registry, with its own parameter checks) on the reduced logits of
    ``tail`` mode (see module docstring)."""
    from csdistill.losses.registry import get_loss

    check_choice("sparse_tail", tail, SPARSE_TAILS, "sparse loss")
    if name not in SPARSE_LOSS_NAMES:
        raise UserError(f"loss={name!r} has no sparse-teacher form (it needs the full teacher logits); "
                         f"with a top-k teacher cache choose one of {', '.join(SPARSE_LOSS_NAMES)}.")
    if tail == "bucket" and params.get("temperature", 1.0) != 1.0:
        raise UserError(f"loss.sparse_tail='bucket' with loss.temperature={params['temperature']}: the cache "
                         "stores the teacher's tail mass at temperature 1 only; set loss.temperature=1 or "
                         "loss.sparse_tail=support.")
    dense = get_loss(name, **params)
    return functools.partial(_sparse_loss, dense, tail)


def _sparse_loss(dense: Callable, tail: str, student_logits: torch.Tensor,
                 teacher: SparseTeacher) -> torch.Tensor:
    return dense(*reduced_logits(student_logits, teacher, tail))  # (N,)
