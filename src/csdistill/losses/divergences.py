"""Baseline distillation divergences, per position, as pure functions of logits.

Notation: p = softmax(teacher_logits / τ), q = softmax(student_logits / τ), both float32.
Every function takes ``(student_logits, teacher_logits)`` of shape (..., V), any float dtype, and
returns a float32 (...) tensor — no reduction (see ``reduce.token_mean``). Gradients flow to the
student only (the teacher is detached). ``temperature`` τ only rescales the logits before the
softmax; **no τ² factor is applied** — the trainer may scale the loss.
Masked vocabulary entries (-inf in both models, see ``checks``) get probability 0 in both
distributions and contribute nothing; ``ab_divergence`` and ``dld`` reject them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from csdistill.losses.checks import (check_choice, check_logits, check_positive, check_real,
                                     check_unit_interval, reject_masked)
from csdistill.losses.ops import row_dot
from csdistill.losses.reduce import IGNORE_INDEX

_MASKED_LOGIT = -1e30  # finite stand-in for -inf: exp underflows to exactly 0, no NaN in 0·log 0


def _prepared_logits(student_logits, teacher_logits, temperature: float, loss: str,
                     allow_masked: bool = True):
    """Checked float32 logits (student, teacher), each (..., V), masked entries filled and divided by τ;
    the teacher is detached."""
    check_positive("temperature", temperature, loss)
    masked = check_logits(student_logits, teacher_logits)
    if not allow_masked:
        reject_masked(masked, loss)
    student, teacher = student_logits.float(), teacher_logits.detach().float()
    if masked is not None:
        student = student.masked_fill(masked, _MASKED_LOGIT)
        teacher = teacher.masked_fill(masked, _MASKED_LOGIT)
    if temperature != 1.0:
        student, teacher = student / temperature, teacher / temperature
    return student, teacher


def _log_probs(student_logits, teacher_logits, temperature: float, loss: str,
               allow_masked: bool = True):
    """Checked float32 log-softmaxes (log q, log p), each (..., V); the teacher is detached."""
    student, teacher = _prepared_logits(student_logits, teacher_logits, temperature, loss, allow_masked)
    return F.log_softmax(student, -1), F.log_softmax(teacher, -1)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a‖b) = Σ a (log a − log b) from log-probabilities (..., V) → (...)."""
    return row_dot(log_a.exp(), log_a - log_b)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(λ·a + (1−λ)·b) in log space (..., V); λ = weight_a ∈ [0, 1]."""
    if weight_a == 0.0:
        return log_b
    if weight_a == 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


class _ForwardKLFunction(torch.autograd.Function):
    """KL(softmax(t) ‖ softmax(s)) of prepared logits, (..., V) → (...), with the closed-form gradient
    ∂/∂s = softmax(s) − softmax(t) computed in the forward pass. Only that (..., V) tensor is kept for
    backward (autograd through two log-softmaxes keeps three). Not twice differentiable."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        log_q, log_p = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
        p = log_p.exp()
        loss = row_dot(p, log_p - log_q)  # (...)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(log_q.exp_().sub_(p))  # q − p, in log_q's buffer
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.unsqueeze(-1), None


def forward_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """Forward KL(p_teacher ‖ q_student) = Σ p (log p − log q); mode-covering. (..., V) → (...).

    Gradient w.r.t. the student logits: (q − p) / τ, closed form (see _ForwardKLFunction)."""
    student, teacher = _prepared_logits(student_logits, teacher_logits, temperature, "fkl")
    return _ForwardKLFunction.apply(student, teacher)


def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """Reverse KL(q_student ‖ p_teacher) = Σ q (log q − log p); mode-seeking. (..., V) → (...)."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature, "rkl")
    return _kl(log_q, log_p)


def skew_forward_kl(student_logits, teacher_logits, lam: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Skew forward KL(p ‖ λp + (1−λ)q) (DistiLLM); λ ∈ [0, 1], λ = 0 is forward KL. → (...)."""
    check_unit_interval("lam", lam, "skl")
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature, "skl")
    return _kl(log_p, _log_mix(log_p, log_q, lam))


def skew_reverse_kl(student_logits, teacher_logits, lam: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Skew reverse KL(q ‖ λq + (1−λ)p) (DistiLLM); λ ∈ [0, 1], λ = 0 is reverse KL. → (...)."""
    check_unit_interval("lam", lam, "srkl")
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature, "srkl")
    return _kl(log_q, _log_mix(log_q, log_p, lam))


def generalized_jsd(student_logits, teacher_logits, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """Generalised JSD(β) = β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q (TRL GKD convention).

    The formula vanishes at β ∈ {0, 1}; by TRL's convention β = 0 is forward KL(p‖q) and β = 1
    is reverse KL(q‖p) (special-cased). The paper's JS baseline is β = 0.1. → (...).
    """
    check_unit_interval("beta", beta, "jsd")
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature, "jsd")
    if beta == 0.0:
        return _kl(log_p, log_q)
    if beta == 1.0:
        return _kl(log_q, log_p)
    log_m = _log_mix(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def tvd(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """Total variation distance ½ Σ |p − q| (symmetric), in [0, 1]. (..., V) → (...)."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature, "tvd")
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def symmetric_kl(student_logits, teacher_logits, lam: float = 0.9,
                 temperature: float = 1.0) -> torch.Tensor:
    """Symmetric KL (1−λ)·KL(p‖q) + λ·KL(q‖p); λ ∈ [0, 1] weighs the reverse direction. → (...)."""
    check_unit_interval("lam", lam, "sym_kl")
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature, "sym_kl")
    return (1.0 - lam) * _kl(log_p, log_q) + lam * _kl(log_q, log_p)


def jeffreys(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """Jeffreys divergence KL(p‖q) + KL(q‖p) = Σ (p − q)(log p − log q). (..., V) → (...)."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature, "jeffreys")
    return row_dot(log_p.exp() - log_q.exp(), log_p - log_q)


def ab_divergence(student_logits, teacher_logits, alpha: float = 0.2, beta: float = 0.7,
                  temperature: float = 1.0) -> torch.Tensor:
    """Alpha-beta divergence D_AB^(α,β)(p_teacher ‖ q_student) (Cichocki et al. 2011; ABKD).

    General case: −1/(αβ) Σ [p^α q^β − α/(α+β) p^(α+β) − β/(α+β) q^(α+β)]. Limits:
    β = 0: 1/α² Σ [p^α log(p^α/q^α) − p^α + q^α];  α = 0: 1/β² Σ [q^β log(q^β/p^β) − q^β + p^β];
    α + β = 0: 1/α² Σ [(p/q)^α − 1 − α log(p/q)];  α = β = 0: ½ Σ (log p − log q)².
    (α, β) = (1, 0) is forward KL(p‖q); (0, 1) is reverse KL. → (...). Finite logits only.
    """
    check_real("alpha", alpha, "ab")
    check_real("beta", beta, "ab")
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature, "ab",
                              allow_masked=False)
    log_ratio = log_p - log_q  # (..., V)
    if alpha == 0.0 and beta == 0.0:
        return 0.5 * log_ratio.square().sum(-1)
    if alpha + beta == 0.0:
        scaled = alpha * log_ratio
        return (torch.expm1(scaled) - scaled).sum(-1) / alpha**2
    if beta == 0.0:
        p_a, q_a = (alpha * log_p).exp(), (alpha * log_q).exp()
        return (p_a * (alpha * log_ratio) - p_a + q_a).sum(-1) / alpha**2
    if alpha == 0.0:
        p_b, q_b = (beta * log_p).exp(), (beta * log_q).exp()
        return (q_b * (-beta * log_ratio) - q_b + p_b).sum(-1) / beta**2
    total = alpha + beta  # expm1 form: the constants cancel exactly, keeping small α, β accurate
    terms = (torch.expm1(alpha * log_p + beta * log_q)
             - (alpha / total) * torch.expm1(total * log_p)
             - (beta / total) * torch.expm1(total * log_q))
    return terms.sum(-1) / (-alpha * beta)


DLD_WEIGHTS = ("S", "T", "U")
DLD_NORMALIZE = ("none", "mean", "min", "max", "std", "range")


def _normalize_logits(logits: torch.Tensor, normalize: str) -> torch.Tensor:
    """ŝ (..., V): none s; mean s − mean s; min s − min s; max s − max s;
    std (s − mean s)/std s; range (s − min s)/(max s − min s)."""
    if normalize == "none":
        return logits
    if normalize == "mean":
        return logits - logits.mean(-1, keepdim=True)
    if normalize == "min":
        return logits - logits.amin(-1, keepdim=True)
    if normalize == "max":
        return logits - logits.amax(-1, keepdim=True)
    if normalize == "std":
        centred = logits - logits.mean(-1, keepdim=True)
        return centred / centred.square().mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    low = logits.amin(-1, keepdim=True)
    return (logits - low) / (logits.amax(-1, keepdim=True) - low).clamp_min(1e-12)


def dld(student_logits, teacher_logits, weight: str = "U", normalize: str = "none",
        temperature: float = 1.0) -> torch.Tensor:
    """Direct logit distillation Σ_k w_k (ŝ_k − t̂_k)², each model's logits normalised alike.

    weight: U = 1/V (a mean), S = softmax(s/τ) detached, T = softmax(t/τ); τ affects only S/T.
    normalize: none | mean | min | max | std (z-score) | range (min-max to [0, 1]).
    DLD(U, none) is the logit MSE whose optimum is only s = t (CSD's optimum is s = t + c·1).
    (..., V) → (...). Finite logits only.
    """
    check_choice("weight", weight, DLD_WEIGHTS, "dld")
    check_choice("normalize", normalize, DLD_NORMALIZE, "dld")
    check_positive("temperature", temperature, "dld")
    reject_masked(check_logits(student_logits, teacher_logits), "dld")
    student, teacher = student_logits.float(), teacher_logits.detach().float()
    difference = _normalize_logits(student, normalize) - _normalize_logits(teacher, normalize)
    squared = difference.square()  # (..., V)
    if weight == "U":
        return squared.mean(-1)
    source = student.detach() if weight == "S" else teacher
    return row_dot(torch.softmax(source / temperature, -1), squared)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SFT loss −log q(label) per position: logits (..., V), labels (...) → float32 (...).

    Positions with label == IGNORE_INDEX get 0. Labels must already be aligned (shift_labels).
    """
    if tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise ValueError(f"cross_entropy: logits shape {tuple(logits.shape)} does not match labels "
                         f"shape {tuple(labels.shape)}; expected logits (..., V) and labels (...).")
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           reduction="none", ignore_index=IGNORE_INDEX)  # (N,)
    return flat.reshape(labels.shape)
