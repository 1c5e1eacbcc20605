"""Demo: ``python -m csdistill.losses.demo`` — every loss on random logits, fused vs unfused.

Prints CSD for all 16 weightings, each baseline, the CSD properties (shift invariance, zero at
s = t + c), and the agreement of the fused chunked head with the full-logits path. CPU, seconds.
"""
from __future__ import annotations

import torch

from csdistill.losses import (LOSS_NAMES, WEIGHTINGS, csd, fused_linear_distill, get_loss,
                              shift_labels, token_mean)


def _logits(gen: torch.Generator, shape=(4, 8, 97)):
    return 2.0 * torch.randn(shape, generator=gen), 2.0 * torch.randn(shape, generator=gen)


def show_losses(gen: torch.Generator) -> None:
    """Mean per-position value of every CSD weighting and every registry baseline."""
    student, teacher = _logits(gen)
    print("CSD by weighting (w1, w2), mean over positions:")
    row = [f"{w}={csd(student, teacher, w).mean():.4f}" for w in WEIGHTINGS]
    for start in range(0, len(row), 4):
        print("  " + "  ".join(row[start:start + 4]))
    shift = csd(student + 3.0, teacher).mean() - csd(student, teacher).mean()
    print(f"shift invariance |L(s+3) − L(s)| = {abs(shift):.2e};  "
          f"L(t + 3, t) = {csd(teacher + 3.0, teacher).abs().max():.2e}")
    print("baselines (default parameters), mean over positions:")
    for name in LOSS_NAMES[1:]:
        print(f"  {name:<9} {get_loss(name)(student, teacher).mean():.4f}")


def show_fused_agreement(gen: torch.Generator, vocab: int = 997, hidden: int = 32) -> None:
    """Fused chunked head vs full logits: value and weight-gradient difference per loss."""
    tokens = torch.randint(0, vocab, (3, 23), generator=gen)
    tokens[:, :5] = -100  # a prompt: no loss there
    labels = shift_labels(tokens)
    student_hidden = torch.randn(3, 23, hidden, generator=gen)
    teacher_hidden = torch.randn(3, 23, hidden + 16, generator=gen)
    weight = (0.2 * torch.randn(vocab, hidden, generator=gen)).requires_grad_()
    teacher_weight = 0.2 * torch.randn(vocab + 7, hidden + 16, generator=gen)  # padded vocab
    print(f"fused vs unfused (V={vocab}, teacher V={vocab + 7}, chunk 8 rows):")
    for name in LOSS_NAMES:
        fused = fused_linear_distill(student_hidden, weight, teacher_hidden, teacher_weight,
                                     labels, loss=name, chunk_size=8)
        (fused_grad,) = torch.autograd.grad(fused, weight)
        teacher_logits = (teacher_hidden @ teacher_weight.t())[..., :vocab]
        full = token_mean(get_loss(name)(student_hidden @ weight.t(), teacher_logits), labels)
        (full_grad,) = torch.autograd.grad(full, weight)
        print(f"  {name:<9} loss {fused.item():.6f} vs {full.item():.6f}  "
              f"max |Δgrad| {(fused_grad - full_grad).abs().max():.1e}")


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    show_losses(gen)
    show_fused_agreement(gen)


if __name__ == "__main__":
    main()
