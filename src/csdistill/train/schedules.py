"""Learning-rate schedules, the step budget, and the DistiLLM-style adaptive generation threshold."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from csdistill.config import TrainConfig
from csdistill.errors import UserError


def lr_multiplier(name: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier on the peak lr at optimizer step `step` (0-based): linear warm-up, then the named decay.

    cosine: ½(1 + cos(π·progress)) from 1 to 0; linear: 1 − progress; constant: 1.
    progress runs from 0 (end of warm-up) to 1 (last step).
    """
    if name not in ("cosine", "linear", "constant"):
        raise UserError(f"train.scheduler={name!r} is not valid; choose one of: cosine, linear, constant")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)  # never exactly 0: the first step must move the weights
        decay_steps = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / decay_steps, 1.0)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if name == "linear":
            return 1.0 - progress
        return 1.0

    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg.scheduler, cfg.warmup_steps, total_steps))


def total_steps(cfg: TrainConfig, num_examples: int, world_size: int) -> int:
    """Optimizer steps: train.max_steps, else ceil(epochs · examples / global batch)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    global_batch = cfg.batch_size * cfg.grad_accum * world_size  # sequences per optimizer step
    return max(1, math.ceil(cfg.epochs * num_examples / global_batch))


@dataclass
class AdaptiveThreshold:
    """DistiLLM's adaptive off-policy schedule (method.md §3).

    `threshold` (a) starts at 0. After each validation: if the loss rose by >= `loss_rise` over the
    reference (the previous validation loss), a <- min(a + `increment`, 1). The reference is then
    updated to the new loss, as in the reference implementation.
    """

    increment: float
    loss_rise: float
    threshold: float = 0.0
    reference: float | None = None

    def update(self, val_loss: float) -> None:
        if self.reference is not None and val_loss - self.reference >= self.loss_rise:
            self.threshold = min(self.threshold + self.increment, 1.0)
        self.reference = val_loss

    def choose(self, u: float, step: int, total: int, buffer_full: bool) -> str:
        """'generate' (fresh student samples), 'buffer' (replay batch) or 'dataset', from a uniform draw u."""
        a = self.threshold
        if u < a * (1.0 - step / total) or (u < a and not buffer_full):
            return "generate"
        if u < a:
            return "buffer"
        return "dataset"

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.threshold = float(state["threshold"])
        self.reference = None if state["reference"] is None else float(state["reference"])
