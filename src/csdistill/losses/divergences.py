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
from csdistill.losses.ops import closed_form_loss, row_dot
from csdistill.losses.reduce import IGNORE_INDEX
from csdistill.errors import UserError

_MASKED_LOGIT = -1e30  # finite stand-in for -inf: exp underflows to exactly 0, no NaN in 0·log 0


# Each loss is a public, checked function plus an unchecked kernel
#   kernel(student_logits, teacher_logits, masked, need_grad, **params) → (loss (...), grad (..., V))
# that returns the exact gradient w.r.t. the raw student logits (ops.closed_form_loss). For the
# probability losses the kernel works on z = s/τ with q = softmax(z_s), p = softmax(z_t):
# writing h = ∂L/∂log q (log q taken as free), the softmax chain rule gives
#   ∂L/∂z_s = h − q·Σ_k h_k,   and ∂L/∂s = (∂L/∂z_s)/τ.
# The fused engine (chunked.py) calls the same kernels chunk by chunk, compiled or not.


def _log_softmaxes(student_logits, teacher_logits, masked, temperature: float):
    """float32 log-softmaxes (log q, log p), each (..., V), of the masked-filled logits / τ."""
    student, teacher = student_logits.float(), teacher_logits.float()
    if masked is not None:
        student = student.masked_fill(masked, _MASKED_LOGIT)
        teacher = teacher.masked_fill(masked, _MASKED_LOGIT)
    if temperature != 1.0:
        student, teacher = student / temperature, teacher / temperature
    return F.log_softmax(student, -1), F.log_softmax(teacher, -1)


def _raw_grad(grad_z, masked, temperature: float):
    """∂L/∂(s/τ) (..., V) → ∂L/∂s, in place: divide by τ, zero at masked entries."""
    if temperature != 1.0:
        grad_z = grad_z.div_(temperature)
    if masked is not None:
        grad_z = grad_z.masked_fill_(masked, 0.0)
    return grad_z


def _softmax_backward(h, q):
    """h − q·Σ h: the gradient w.r.t. the logits of L, given h = ∂L/∂log q (..., V). In place on h."""
    return h.sub_(q * h.sum(-1, keepdim=True))


def _checked(kernel, loss: str, student_logits, teacher_logits, temperature: float, **params):
    """The public wrapper: checks, then the kernel through ops.closed_form_loss."""
    check_positive("temperature", temperature, loss)
    masked = check_logits(student_logits, teacher_logits)
    return closed_form_loss(kernel, student_logits, teacher_logits, masked,
                            temperature=float(temperature), **params)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(λ·a + (1−λ)·b) in log space (..., V); λ = weight_a ∈ [0, 1]."""
    if weight_a == 0.0:
        return log_b
    if weight_a == 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def forward_kl_kernel(student_logits, teacher_logits, masked, need_grad, temperature=1.0):
    """KL(p‖q) = Σ p (log p − log q); ∂/∂z_s = q − p."""
    log_q, log_p = _log_softmaxes(student_logits, teacher_logits, masked, temperature)
    p = log_p.exp()
    loss = row_dot(p, log_p.sub_(log_q))  # (...)
    if not need_grad:
        return loss, None
    return loss, _raw_grad(log_q.exp_().sub_(p), masked, temperature)  # q − p, in log_q's buffer


def reverse_kl_kernel(student_logits, teacher_logits, masked, need_grad, temperature=1.0):
    """KL(q‖p) = Σ q d, d = log q − log p; h = q (d + 1), ∂/∂z_s = q (d − KL)."""
    log_q, log_p = _log_softmaxes(student_logits, teacher_logits, masked, temperature)
    q, log_ratio = log_q.exp(), log_q.sub_(log_p)  # (..., V) each; d in log_q's buffer
    loss = row_dot(q, log_ratio)
    if not need_grad:
        return loss, None
    return loss, _raw_grad(log_ratio.sub_(loss.unsqueeze(-1)).mul_(q), masked, temperature)


def forward_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """Forward KL(p_teacher ‖ q_student) = Σ p (log p − log q); mode-covering. (..., V) → (...).

    Gradient w.r.t. the student logits: (q − p) / τ, closed form (forward_kl_kernel)."""
    return _checked(forward_kl_kernel, "fkl", student_logits, teacher_logits, temperature)


def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """Reverse KL(q_student ‖ p_teacher) = Σ q (log q − log p); mode-seeking. (..., V) → (...).

    Gradient: q ⊙ (log q − log p − KL) / τ."""
    return _checked(reverse_kl_kernel, "rkl", student_logits, teacher_logits, temperature)


def skew_forward_kl_kernel(student_logits, teacher_logits, masked, need_grad, lam=0.1,
                           temperature=1.0):
    """KL(p‖m), m = λp + (1−λ)q; h = −u, u = p·(1−λ)q/m ∈ [0, p], ∂/∂z_s = q Σu − u."""
    if lam == 0.0:
        return forward_kl_kernel(student_logits, teacher_logits, masked, need_grad, temperature)
    log_q, log_p = _log_softmaxes(student_logits, teacher_logits, masked, temperature)
    log_m = _log_mix(log_p, log_q, lam)
    p = log_p.exp()
    loss = row_dot(p, log_p - log_m)
    if not need_grad:
        return loss, None
    if lam == 1.0:  # m = p: the loss is identically 0
        return loss, torch.zeros_like(log_q)
    u = log_q.add(math.log1p(-lam)).sub_(log_m).exp_().mul_(p)  # (1−λ)q/m ≤ 1: no overflow
    grad = log_q.exp_().mul_(u.sum(-1, keepdim=True)).sub_(u)
    return loss, _raw_grad(grad, masked, temperature)


def skew_reverse_kl_kernel(student_logits, teacher_logits, masked, need_grad, lam=0.1,
                           temperature=1.0):
    """KL(q‖m), m = λq + (1−λ)p; h = q (d + 1 − r), d = log q − log m, r = λq/m ∈ [0, 1]."""
    if lam == 0.0:
        return reverse_kl_kernel(student_logits, teacher_logits, masked, need_grad, temperature)
    log_q, log_p = _log_softmaxes(student_logits, teacher_logits, masked, temperature)
    if lam == 1.0:  # m = q: the loss and its gradient are identically 0
        zeros = torch.zeros_like(log_q)
        return zeros.sum(-1), (zeros if need_grad else None)
    log_m = _log_mix(log_q, log_p, lam)
    q = log_q.exp()
    log_ratio = log_q.sub_(log_m)  # d, in log_q's buffer
    loss = row_dot(q, log_ratio)
    if not need_grad:
        return loss, None
    ratio = log_ratio.add(math.log(lam)).exp_()  # r = λq/m ≤ 1
    h = log_ratio.sub_(ratio).mul_(q)  # q (d − r)
    return loss, _raw_grad(_softmax_backward(h, q), masked, temperature)


def skew_forward_kl(student_logits, teacher_logits, lam: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Skew forward KL(p ‖ λp + (1−λ)q) (DistiLLM); λ ∈ [0, 1], λ = 0 is forward KL. → (...)."""
    check_unit_interval("lam", lam, "skl")
    return _checked(skew_forward_kl_kernel, "skl", student_logits, teacher_logits, temperature,
                    lam=float(lam))


def skew_reverse_kl(student_logits, teacher_logits, lam: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Skew reverse KL(q ‖ λq + (1−λ)p) (DistiLLM); λ ∈ [0, 1], λ = 0 is reverse KL. → (...)."""
    check_unit_interval("lam", lam, "srkl")
    return _checked(skew_reverse_kl_kernel, "srkl", student_logits, teacher_logits, temperature,
                    lam=float(lam))


def generalized_jsd_kernel(student_logits, teacher_logits, masked, need_grad, beta=0.5,
                           temperature=1.0):
    """β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q. The m-terms cancel in the derivative:
    ∂L/∂q = (1−β)(log q − log m), so ∂/∂z_s = (1−β) q ⊙ (log q − log m − KL(q‖m))."""
    if beta == 0.0:
        return forward_kl_kernel(student_logits, teacher_logits, masked, need_grad, temperature)
    if beta == 1.0:
        return reverse_kl_kernel(student_logits, teacher_logits, masked, need_grad, temperature)
    log_q, log_p = _log_softmaxes(student_logits, teacher_logits, masked, temperature)
    log_m = _log_mix(log_p, log_q, beta)
    q = log_q.exp()
    teacher_part = row_dot(log_p.exp(), log_p.sub_(log_m))  # KL(p‖m)
    log_ratio = log_q.sub_(log_m)  # log q − log m, in log_q's buffer
    student_part = row_dot(q, log_ratio)  # KL(q‖m)
    loss = beta * teacher_part + (1.0 - beta) * student_part
    if not need_grad:
        return loss, None
    grad = log_ratio.sub_(student_part.unsqueeze(-1)).mul_(q).mul_(1.0 - beta)
    return loss, _raw_grad(grad, masked, temperature)


def generalized_jsd(student_logits, teacher_logits, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """Generalised JSD(β) = β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q (TRL GKD convention).

    The formula vanishes at β ∈ {0, 1}; by TRL's convention β = 0 is forward KL(p‖q) and β = 1
    is reverse KL(q‖p) (special-cased). The paper's JS baseline is β = 0.1. → (...).
    """
    check_unit_interval("beta", beta, "jsd")
    return _checked(generalized_jsd_kernel, "jsd", student_logits, teacher_logits, temperature,
                    beta=float(beta))


def tvd_kernel(student_logits, teacher_logits, masked, need_grad, temperature=1.0):
    """½ Σ |p − q|; h = ½ q ⊙ sign(q − p) (sign 0 at ties, as autograd's abs)."""
    log_q, log_p = _log_softmaxes(student_logits, teacher_logits, masked, temperature)
    q = log_q.exp_()  # in log_q's buffer
    difference = q - log_p.exp_()  # q − p
    loss = 0.5 * difference.abs().sum(-1)
    if not need_grad:
        return loss, None
    h = difference.sign_().mul_(q).mul_(0.5)
    return loss, _raw_grad(_softmax_backward(h, q), masked, temperature)


def tvd(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """Total variation distance ½ Σ |p − q| (symmetric), in [0, 1]. (..., V) → (...)."""
    return _checked(tvd_kernel, "tvd", student_logits, teacher_logits, temperature)


def symmetric_kl_kernel(student_logits, teacher_logits, masked, need_grad, lam=0.9,
                        temperature=1.0):
    """(1−λ)·KL(p‖q) + λ·KL(q‖p); ∂/∂z_s = (1−λ)(q − p) + λ q ⊙ (d − KL(q‖p)), d = log q − log p."""
    log_q, log_p = _log_softmaxes(student_logits, teacher_logits, masked, temperature)
    q, p = log_q.exp(), log_p.exp()
    log_ratio = log_q.sub_(log_p)  # d
    reverse = row_dot(q, log_ratio)  # KL(q‖p)
    loss = (1.0 - lam) * -row_dot(p, log_ratio) + lam * reverse
    if not need_grad:
        return loss, None
    grad = log_ratio.sub_(reverse.unsqueeze(-1)).mul_(q).mul_(lam)
    grad += q.sub_(p).mul_(1.0 - lam)
    return loss, _raw_grad(grad, masked, temperature)


def symmetric_kl(student_logits, teacher_logits, lam: float = 0.9,
                 temperature: float = 1.0) -> torch.Tensor:
    """Symmetric KL (1−λ)·KL(p‖q) + λ·KL(q‖p); λ ∈ [0, 1] weighs the reverse direction. → (...)."""
    check_unit_interval("lam", lam, "sym_kl")
    return _checked(symmetric_kl_kernel, "sym_kl", student_logits, teacher_logits, temperature,
                    lam=float(lam))


def jeffreys_kernel(student_logits, teacher_logits, masked, need_grad, temperature=1.0):
    """KL(p‖q) + KL(q‖p) = 2·symmetric KL at λ = ½ (its gradient is twice that one's)."""
    loss, grad = symmetric_kl_kernel(student_logits, teacher_logits, masked, need_grad, 0.5,
                                     temperature)
    return 2.0 * loss, (None if grad is None else grad.mul_(2.0))


def jeffreys(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """Jeffreys divergence KL(p‖q) + KL(q‖p) = Σ (p − q)(log p − log q). (..., V) → (...)."""
    return _checked(jeffreys_kernel, "jeffreys", student_logits, teacher_logits, temperature)


def ab_kernel(student_logits, teacher_logits, masked, need_grad, alpha=0.2, beta=0.7,
              temperature=1.0):
    """D_AB (see ab_divergence); h = q^(α+β) (1 − (p/q)^α)/α (→ q^β log(q/p) at α = 0)."""
    reject_masked(masked, "ab")
    log_q, log_p = _log_softmaxes(student_logits, teacher_logits, masked, temperature)
    log_ratio = log_p - log_q  # (..., V)
    loss = _ab_value(log_q, log_p, log_ratio, alpha, beta)
    if not need_grad:
        return loss, None
    if alpha == 0.0:
        h = log_ratio.neg_()
    else:
        h = torch.expm1(log_ratio.mul_(alpha)).div_(-alpha)
    h.mul_(log_q.mul(alpha + beta).exp_())  # × q^(α+β)
    return loss, _raw_grad(_softmax_backward(h, log_q.exp_()), masked, temperature)


def _ab_value(log_q, log_p, log_ratio, alpha: float, beta: float) -> torch.Tensor:
    """The AB-divergence value (...) from log q, log p, log(p/q) (..., V), with its limit cases."""
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


def ab_divergence(student_logits, teacher_logits, alpha: float = 0.2, beta: float = 0.7,
                  temperature: float = 1.0) -> torch.Tensor:
    """Alpha-beta divergence D_AB^(α,β)(p_teacher ‖ q_student) (Cichocki et al. 2011; ABKD).

    General case: −1/(αβ) Σ [p^α q^β − α/(α+β) p^(α+β) − β/(α+β) q^(α+β)]. Limits:
    β = 0: 1/α² Σ [p^α log(p^α/q^α) − p^α + q^α];  α = 0: 1/β² Σ [q^β log(q^β/p^β) − q^β + p^β];
    α + β = 0: 1/α² Σ [(p/q)^α − 1 − α log(p/q)];  α = β = 0: ½ Σ (log p − log q)².
    (α, β) = (1, 0) is forward KL(p‖q); (0, 1) is reverse KL. → (...). Finite logits only.
    Gradient w.r.t. log q (then the softmax chain rule): q^(α+β)·(1 − (p/q)^α)/α, one formula
    for every case (its α → 0 limit is q^β·log(q/p)).
    """
    check_real("alpha", alpha, "ab")
    check_real("beta", beta, "ab")
    return _checked(ab_kernel, "ab", student_logits, teacher_logits, temperature,
                    alpha=float(alpha), beta=float(beta))


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
        return centred / _std(centred).clamp_min(1e-12)
    low = logits.amin(-1, keepdim=True)
    return (logits - low) / (logits.amax(-1, keepdim=True) - low).clamp_min(1e-12)


def _std(centred: torch.Tensor) -> torch.Tensor:
    """Population std (..., 1) of already-centred values (..., V)."""
    return centred.square().mean(-1, keepdim=True).sqrt()


def _extreme_indicator(logits: torch.Tensor, extreme: torch.Tensor) -> torch.Tensor:
    """1/k at the k entries equal to the row's min/max (..., V): how autograd splits amin/amax."""
    hits = (logits == extreme).float()
    return hits.div_(hits.sum(-1, keepdim=True))


def _normalize_backward(grad_hat, logits, normalized, normalize: str):
    """∂L/∂s (..., V) from g = ∂L/∂ŝ through the normalisation ŝ(s) of _normalize_logits."""
    if normalize == "none":
        return grad_hat
    total = grad_hat.sum(-1, keepdim=True)  # Σ g, (..., 1)
    if normalize == "mean":
        return grad_hat.sub_(total / logits.shape[-1])
    if normalize in ("min", "max"):
        extreme = logits.amin(-1, keepdim=True) if normalize == "min" else logits.amax(-1, keepdim=True)
        return grad_hat.sub_(_extreme_indicator(logits, extreme).mul_(total))
    if normalize == "std":  # ŝ = c/σ: (g − mean g − ŝ·mean(g ŝ))/σ; σ clamped is a constant
        scale = _std(logits - logits.mean(-1, keepdim=True))
        projection = torch.where(scale < 1e-12, 0.0, row_dot(grad_hat, normalized).unsqueeze(-1))
        vocab = logits.shape[-1]
        return (grad_hat - total / vocab - normalized * (projection / vocab)) / scale.clamp_min(1e-12)
    low, high = logits.amin(-1, keepdim=True), logits.amax(-1, keepdim=True)  # range: ŝ = (s − lo)/R
    spread = high - low
    projection = torch.where(spread < 1e-12, 0.0, row_dot(grad_hat, normalized).unsqueeze(-1))
    grad = grad_hat + _extreme_indicator(logits, low).mul_(projection - total)
    grad -= _extreme_indicator(logits, high).mul_(projection)
    return grad.div_(spread.clamp_min(1e-12))


def dld_kernel(student_logits, teacher_logits, masked, need_grad, weight="U", normalize="none",
               temperature=1.0):
    """Σ w (ŝ − t̂)²; ∂/∂ŝ = 2 w (ŝ − t̂), then back through the normalisation."""
    reject_masked(masked, "dld")
    student, teacher = student_logits.float(), teacher_logits.float()
    student_hat = _normalize_logits(student, normalize)
    difference = student_hat - _normalize_logits(teacher, normalize)  # (..., V)
    if weight == "U":
        weights = None
        loss = row_dot(difference, difference) / difference.shape[-1]
    else:
        weights = torch.softmax((student if weight == "S" else teacher) / temperature, -1)
        loss = row_dot(weights, difference.square())
    if not need_grad:
        return loss, None
    grad_hat = difference.mul_(2.0 / difference.shape[-1] if weights is None else 2.0)
    if weights is not None:
        grad_hat.mul_(weights)
    return loss, _normalize_backward(grad_hat, student, student_hat, normalize)


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
    masked = check_logits(student_logits, teacher_logits)
    return closed_form_loss(dld_kernel, student_logits, teacher_logits, masked, weight=weight,
                            normalize=normalize, temperature=float(temperature))


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SFT loss −log q(label) per position: logits (..., V), labels (...) → float32 (...).

    Positions with label == IGNORE_INDEX get 0. Labels must already be aligned (shift_labels).
    """
    if tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise UserError(f"cross_entropy: logits shape {tuple(logits.shape)} does not match labels "
                         f"shape {tuple(labels.shape)}; expected logits (..., V) and labels (...).")
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           reduction="none", ignore_index=IGNORE_INDEX)  # (N,)
    return flat.reshape(labels.shape)
