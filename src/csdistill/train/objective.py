"""The training objective of one micro-batch part, the window's token counts, and validation loss.

Normalisation (method.md §1 Reduction): every part's per-position losses are summed and divided by
that part's valid-token count over the WHOLE accumulation window and all processes, counted before
the first backward. The gradient of the step is then the gradient of one big-batch token mean,
whatever grad_accum and the number of processes (DDP averages gradients over processes, so each
process scales its loss by the number of processes).

  response parts:  kd_ratio · loss.scale · distill + (1 − kd_ratio) · CE     (sft: CE)
  paired:          the same on teacher_response and student_response, summed
  lm part:         train.lm_coef · CE on the plain-text batch
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from csdistill.config import Config, ConfigError
from csdistill.errors import UserError
from csdistill.losses import cross_entropy, fused_linear_distill
from csdistill.losses.chunked import fused_linear_sparse_distill
from csdistill.losses.reduce import count_valid, shift_labels, token_mean, valid_mask
from csdistill.train.teacher_cache import TeacherCache


@dataclass
class Objective:
    cfg: Config
    loss_fn: Callable | None  # per-position distillation loss (None in sft mode)
    loss_params: dict
    vocab_size: int  # shared id range of student and teacher: compare logits[..., :vocab_size]
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    teacher_cache: TeacherCache | None = None  # train.cache_teacher_logits (dense) or train.teacher_cache (topk | hidden)


def window_counts(accelerator, window) -> dict[str, torch.Tensor]:
    """Per part name: valid (predicting) positions over the window, summed over processes; plus
    'tokens' (non-pad input tokens, for throughput). Every process holds the same part names."""
    names = sorted({name for micro in window for name in micro.parts})
    local = torch.zeros(len(names) + 1, dtype=torch.float64)
    for micro in window:
        for name, batch in micro.parts.items():
            local[names.index(name)] += count_valid(shift_labels(batch["labels"]))
            local[-1] += batch["attention_mask"].sum()
    total = accelerator.reduce(local.to(accelerator.device), reduction="sum").cpu()
    counts = {name: total[i].clamp(min=1.0).float() for i, name in enumerate(names)}  # all-masked: loss 0
    counts["tokens"] = total[-1]
    return counts


def _forward_logits(model, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)


def _teacher_logits(objective: Objective, teacher, batch: dict, valid: torch.Tensor) -> torch.Tensor:
    """Teacher logits at the valid positions, (N, V_teacher); from the cache when it holds the batch."""
    def compute() -> torch.Tensor:
        with torch.no_grad():
            return _forward_logits(teacher, batch)[valid]

    if objective.teacher_cache is None:
        return compute()
    return objective.teacher_cache.rows(batch, valid, None if teacher is None else compute)


def _cached_rows(objective: Objective, batch: dict, labels: torch.Tensor, valid: torch.Tensor):
    """The disk cache's rows at the valid positions (SparseTeacher | HiddenRows), checked against the
    batch's next tokens."""
    rows = objective.teacher_cache.rows(batch, valid)
    if not torch.equal(rows.labels, labels[valid]):
        raise ConfigError(f"train.teacher_cache={objective.cfg.train.teacher_cache!r}: the cached next tokens differ "
                          "from this batch's labels; the cache was built from other data — re-run `csdistill teacher cache`")
    return rows


def ce_term(objective: Objective, model, batch: dict, num_valid: torch.Tensor) -> torch.Tensor:
    from csdistill.models import response_logits

    labels = shift_labels(batch["labels"])  # (B, T): label of the token each position predicts
    valid = valid_mask(labels)  # (B, T); the head and the loss maths run on the N valid rows only
    with objective.autocast():
        logits = response_logits(model, batch, valid)  # (N, V)
    return token_mean(cross_entropy(logits, labels[valid]), labels[valid], num_valid_tokens=num_valid)


def _hidden_teacher_logits(objective: Objective, batch: dict, labels: torch.Tensor, valid: torch.Tensor):
    """(N, V) teacher logits of a hidden-state cache, h·Wᵀ + b for this batch only (unfused path)."""
    rows = _cached_rows(objective, batch, labels, valid)
    return objective.teacher_cache.head.to(valid.device).logits(rows.hidden, objective.vocab_size)


def distill_term(objective: Objective, student, teacher, batch: dict, num_valid: torch.Tensor,
                 kd_ratio: float = 1.0, scale: float = 1.0) -> torch.Tensor:
    """kd_ratio · scale · token_mean(distill) + (1 − kd_ratio) · token_mean(CE), one part."""
    if objective.cfg.loss.fused:
        return _fused_distill_term(objective, student, teacher, batch, num_valid, kd_ratio, scale)
    labels = shift_labels(batch["labels"])
    valid = valid_mask(labels)  # (B, T); prompt and padding rows never reach the loss maths
    V = objective.vocab_size
    with objective.autocast():
        student_logits = _forward_logits(student, batch)[valid]  # (N, V_student)
        if _store(objective) == "topk":
            teacher_rows = _cached_rows(objective, batch, labels, valid)  # (N, k) top-k form
        elif _store(objective) == "hidden":
            teacher_rows = _hidden_teacher_logits(objective, batch, labels, valid)  # (N, V), this batch only
        else:
            teacher_rows = _teacher_logits(objective, teacher, batch, valid)[:, :V]  # (N, V)
    per_position = objective.loss_fn(student_logits[:, :V], teacher_rows)  # (N,) float32
    loss = kd_ratio * scale * token_mean(per_position, labels[valid], num_valid_tokens=num_valid)
    if kd_ratio < 1.0:
        ce = cross_entropy(student_logits, labels[valid])  # (N,)
        loss = loss + (1.0 - kd_ratio) * token_mean(ce, labels[valid], num_valid_tokens=num_valid)
    return loss


def _fused_distill_term(objective: Objective, student, teacher, batch: dict, num_valid: torch.Tensor,
                        kd_ratio: float, scale: float) -> torch.Tensor:
    from csdistill.models import hidden_states_and_head

    labels = shift_labels(batch["labels"])
    V = objective.vocab_size
    with objective.autocast():
        hidden, weight, bias = hidden_states_and_head(student, batch["input_ids"], batch["attention_mask"])  # (B,T,H), (V,H)
    if _store(objective) == "topk":  # student side chunked, teacher side sparse
        rows = _cached_rows(objective, batch, labels, valid_mask(labels))
        with objective.autocast():
            distill = fused_linear_sparse_distill(hidden, weight[:V], rows, labels, objective.loss_fn,
                                                  objective.cfg.loss.chunk_size or None,
                                                  None if bias is None else bias[:V], num_valid,
                                                  accumulate=objective.cfg.loss.accumulate)
        return _with_ce(objective, kd_ratio * scale * distill, hidden, weight, bias, labels, num_valid, kd_ratio)
    with objective.autocast():
        with torch.no_grad():
            t_hidden, t_weight, t_bias = _teacher_hidden_and_head(objective, teacher, batch, labels)
        # The engine computes its chunk matmuls in the dtype autocast picks (losses/chunked.compute_dtype).
        distill = fused_linear_distill(
            hidden, weight[:V], t_hidden, t_weight[:V], labels, loss=objective.cfg.loss.name,
            chunk_size=objective.cfg.loss.chunk_size or None, compile=objective.cfg.loss.compile,
            accumulate=objective.cfg.loss.accumulate,
            student_bias=None if bias is None else bias[:V],
            teacher_bias=None if t_bias is None else t_bias[:V], num_valid_tokens=num_valid, **objective.loss_params)
    return _with_ce(objective, kd_ratio * scale * distill, hidden, weight, bias, labels, num_valid, kd_ratio)


def _with_ce(objective: Objective, loss, hidden, weight, bias, labels, num_valid, kd_ratio: float):
    """loss + (1 − kd_ratio) · CE of the fused path's student head."""
    if kd_ratio < 1.0:
        # The CE term needs student logits: computed at the valid positions only, (N, V).
        valid = valid_mask(labels)
        with objective.autocast():
            logits = torch.nn.functional.linear(hidden[valid], weight, bias)  # (N, V)
        ce = cross_entropy(logits, labels[valid])  # (N,)
        loss = loss + (1.0 - kd_ratio) * token_mean(ce, labels[valid], num_valid_tokens=num_valid)
    return loss


def _store(objective: Objective) -> str:
    """"" (live teacher), "dense" (in-memory logits), or a disk cache's store: "topk" | "hidden"."""
    return "" if objective.teacher_cache is None else objective.teacher_cache.store


def _teacher_hidden_and_head(objective: Objective, teacher, batch: dict, labels: torch.Tensor):
    """The teacher's final hidden states (B, T, d) and head (V, d), (V,) | None: live, or from a
    hidden-state cache (its rows scattered back to the valid positions; the rest stay zero, unused)."""
    from csdistill.models import hidden_states_and_head

    if _store(objective) != "hidden":
        return hidden_states_and_head(teacher, batch["input_ids"], batch["attention_mask"])
    valid = valid_mask(labels)
    rows = _cached_rows(objective, batch, labels, valid)
    head = objective.teacher_cache.head.to(valid.device)
    hidden = head.weight.new_zeros(*valid.shape, rows.hidden.shape[-1])  # (B, T, d) in the head's dtype
    hidden[valid] = rows.hidden.to(hidden.dtype)  # a bf16 store is upcast exactly
    return hidden, head.weight, head.bias


def part_loss(objective: Objective, student, teacher, name: str, batch: dict, num_valid: torch.Tensor) -> torch.Tensor:
    """The training loss of one part of a micro-batch (already divided by the window's count)."""
    t = objective.cfg.train
    if name == "lm":
        return t.lm_coef * ce_term(objective, student, batch, num_valid)
    if objective.loss_fn is None:  # sft
        return ce_term(objective, student, batch, num_valid)
    return distill_term(objective, student, teacher, batch, num_valid, t.kd_ratio, objective.cfg.loss.scale)


@torch.no_grad()
def validation_loss(objective: Objective, accelerator, student, teacher, examples: list[dict], pad_token_id: int) -> float | None:
    """Token-mean loss on held-out dataset responses over all processes: CE for sft, else the
    distillation loss alone (no kd_ratio, no loss.scale). None when there is no held-out data."""
    from csdistill.data.collate import collate

    shard = examples[accelerator.process_index::accelerator.num_processes]
    sums = torch.zeros(2, dtype=torch.float64)  # (loss sum, valid positions)
    was_training = student.training
    student.eval()
    for start in range(0, len(shard), objective.cfg.train.batch_size):
        batch = collate(shard[start:start + objective.cfg.train.batch_size], pad_token_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        one = torch.ones((), device=accelerator.device)  # num_valid_tokens=1: the masked sum
        if objective.loss_fn is None:
            total = ce_term(objective, student, batch, one)
        else:
            total = distill_term(objective, student, teacher, batch, one)
        sums += torch.tensor([total.item(), count_valid(shift_labels(batch["labels"]))], dtype=torch.float64)
    student.train(was_training)
    sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    return None if sums[1] == 0 else float(sums[0] / sums[1])
