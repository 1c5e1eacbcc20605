"""Concrete Score Distillation loss, exact value in O(V) with its exact gradient.

Per position, with residual r = s − t (student minus teacher logits, float32):

    L = ½ Σ_y Σ_x w1(y)·w2(x)·(r[x] − r[y])²

Factorised weights (w1, w2 probability vectors) give the closed form. Centring on the w1 mean,
c = r − E_w1 r, kills the cross term (E_w1 c = 0), leaving a sum of non-negative terms:

    L = ½ [E_w1(c²) + E_w2(c²)]            (= ½[Var_w1 r + Var_w2 r + (E_w1 r − E_w2 r)²])

Gradient w.r.t. the student logits with the weights held constant (detached), δ = E_w2 c:

    ∂L/∂s_k = w1_k (r_k − E_w2 r) + w2_k (r_k − E_w1 r) = (w1_k + w2_k) c_k − w1_k δ

The teacher never receives gradient. ``csd_kernel`` computes that gradient during the forward
pass (only when the student requires grad); ``ops.closed_form_loss`` stores it alone, instead of
autograd's several V-sized intermediates, and backward just scales it. Double backward is not
supported.
"""
from __future__ import annotations

import torch

from csdistill.losses.checks import check_choice, check_logits, check_positive, check_unit_interval
from csdistill.losses.ops import closed_form_loss, row_dot

WEIGHT_CODES = ("S", "T", "U", "M")  # student, teacher, uniform, mixture α·T + (1−α)·S
WEIGHTINGS = tuple(a + b for a in WEIGHT_CODES for b in WEIGHT_CODES)  # all 16 (w1, w2) pairs


def csd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, weighting: str = "SS",
        temperature: float = 1.0, mix_alpha: float = 0.15) -> torch.Tensor:
    """CSD per position: ½ Σ_y Σ_x w1(y) w2(x) (r[x] − r[y])², r = student − teacher logits.

    student_logits, teacher_logits: (..., V), any float dtype (maths in float32).
    weighting: two letters (w1, w2) over S = softmax(s/τ) detached, T = softmax(t/τ),
      U = 1/V (a mean, never a tensor), M = mix_alpha·T + (1 − mix_alpha)·S. "SS" is the
      paper's default (mode-seeking); "TS" is mode-covering. L is symmetric in (w1, w2).
    temperature: τ > 0, changes only the S/T/M weights, never the residual.
    Returns the float32 loss (...) — no reduction (see reduce.token_mean). L ≥ 0, invariant to
    s → s + c·1, and 0 iff r is constant on the support of the weights. Masked vocabulary
    entries (-inf in both models) are outside the support: residual 0, weight 0.
    """
    check_choice("weighting", weighting, WEIGHTINGS, "csd")
    check_positive("temperature", temperature, "csd")
    check_unit_interval("mix_alpha", mix_alpha, "csd")
    masked = check_logits(student_logits, teacher_logits)  # None or (..., V) bool
    return closed_form_loss(csd_kernel, student_logits, teacher_logits, masked,
                            weighting=weighting, temperature=float(temperature),
                            mix_alpha=float(mix_alpha))


def csd_kernel(student_logits, teacher_logits, masked, need_grad: bool, weighting: str = "SS",
               temperature: float = 1.0, mix_alpha: float = 0.15):
    """Unchecked CSD: (L (...), ∂L/∂s (..., V) or None), both float32 (see ops.closed_form_loss)."""
    student = student_logits.float()  # (..., V)
    teacher = teacher_logits.float()  # (..., V)
    residual = student - teacher  # (..., V), owned: modified in place below
    if masked is not None:
        residual.masked_fill_(masked, 0.0)  # -inf − -inf = NaN → outside the support
    weights = _weights(set(weighting), student, teacher, temperature, mix_alpha, masked)
    return _closed_form(residual, weights[weighting[0]], weights[weighting[1]],
                        same=weighting[0] == weighting[1], need_grad=need_grad)


def _weights(codes: set, student, teacher, temperature: float, mix_alpha: float, masked) -> dict:
    """Weight vectors (..., V) for the requested codes; U is None (uniform mean) when unmasked."""
    weights = {}
    if codes & {"S", "M"}:
        weights["S"] = torch.softmax(student if temperature == 1.0 else student / temperature, -1)
    if codes & {"T", "M"}:
        weights["T"] = torch.softmax(teacher if temperature == 1.0 else teacher / temperature, -1)
    if "M" in codes:
        weights["M"] = torch.lerp(weights["S"], weights["T"], mix_alpha)  # α·T + (1−α)·S
    if "U" in codes:
        weights["U"] = None if masked is None else _uniform_on_support(masked)
    return weights


def _uniform_on_support(masked: torch.Tensor) -> torch.Tensor:
    """Uniform weights (..., V) over the unmasked entries (only built when some are masked)."""
    support = (~masked).float()  # (..., V)
    return support / support.sum(-1, keepdim=True)


def _expect(weight, values: torch.Tensor) -> torch.Tensor:
    """E_w[values] over the last dim: (...). weight None means uniform 1/V."""
    return values.mean(-1) if weight is None else row_dot(weight, values)


def _scaled(weight, values: torch.Tensor) -> torch.Tensor:
    """w ⊙ values (..., V); weight None means uniform 1/V."""
    return values / values.shape[-1] if weight is None else weight * values


def _closed_form(residual, w1, w2, same: bool, need_grad: bool):
    """Return (L (...), ∂L/∂s (..., V) or None). Consumes ``residual`` (and w1 when same)."""
    centred = residual.sub_(_expect(w1, residual).unsqueeze(-1))  # c = r − E_w1 r, (..., V)
    if same:  # w1 = w2 = w: L = E_w c², grad = 2 w c
        if w1 is None:
            loss = row_dot(centred, centred) / centred.shape[-1]
            return loss, (centred.mul_(2.0 / centred.shape[-1]) if need_grad else None)
        weighted = w1.mul_(centred)  # w ⊙ c, in the weight's own buffer
        loss = row_dot(weighted, centred)
        return loss, (weighted.mul_(2.0) if need_grad else None)
    squared = centred.square()  # (..., V)
    loss = 0.5 * (_expect(w1, squared) + _expect(w2, squared))
    del squared
    if not need_grad:
        return loss, None
    shift = _expect(w2, centred).unsqueeze(-1)  # δ = E_w2 c, (..., 1)
    grad = _scaled(w2, centred)
    grad += _scaled(w1, centred.sub_(shift))  # w2 ⊙ c + w1 ⊙ (c − δ)
    return loss, grad
