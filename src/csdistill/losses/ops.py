"""Tiny tensor helpers shared by the loss modules, and the one closed-form-gradient mechanism."""
from __future__ import annotations

import torch


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_k a_k b_k over the last dim: (..., V), (..., V) → (...).

    einsum lowers to a batched matmul: no (..., V) temporary, ~2× faster on CPU than
    ``torch.linalg.vecdot`` or ``(a * b).sum(-1)``, which both materialise the product.
    """
    return torch.einsum("...v,...v->...", a, b)


def closed_form_loss(kernel, student_logits: torch.Tensor, teacher_logits: torch.Tensor, masked,
                     **params) -> torch.Tensor:
    """Apply a loss kernel whose exact student-logit gradient is computed in its forward pass.

    kernel(student_logits, teacher_logits, masked, need_grad, **params) → (loss (...) float32,
    ∂loss/∂student_logits (..., V) float32 or None) — raw logits in, gradient w.r.t. the raw
    logits out (temperature and masking included). Only that one (..., V) tensor is kept for
    backward, instead of autograd's several intermediates; backward just scales it. The fused
    engine (``chunked``) calls the same kernels directly. Not twice differentiable.
    """
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    return _ClosedForm.apply(student_logits, teacher_logits.detach(), kernel, masked, need_grad,
                             params)


class _ClosedForm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits, teacher_logits, kernel, masked, need_grad, params):
        loss, grad = kernel(student_logits, teacher_logits, masked, need_grad, **params)
        if need_grad:
            ctx.input_dtype = student_logits.dtype
            ctx.save_for_backward(grad)
        return loss  # (...)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors  # (..., V) float32
        grad_student = (grad * grad_output.unsqueeze(-1)).to(ctx.input_dtype)
        return grad_student, None, None, None, None, None
