"""Loss registry: short names → per-position functions ``fn(student_logits, teacher_logits)``.

Each function checks its own parameters; :func:`get_loss` validates eagerly by calling the bound
function once on a 2-token dummy, so the checks live in one place (the function) and a bad
config fails at construction, not at the first training step.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

from csdistill.losses import divergences as div
from csdistill.losses.csd import csd, csd_kernel
from csdistill.errors import UserError
from csdistill.losses.divergences import (ab_divergence, dld, forward_kl, generalized_jsd,
                                          jeffreys, reverse_kl, skew_forward_kl,
                                          skew_reverse_kl, symmetric_kl, tvd)

_LOSSES: dict[str, Callable] = {
    "csd": csd,
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "skl": skew_forward_kl,
    "srkl": skew_reverse_kl,
    "jsd": generalized_jsd,
    "tvd": tvd,
    "sym_kl": symmetric_kl,
    "jeffreys": jeffreys,
    "ab": ab_divergence,
    "dld": dld,
}
LOSS_NAMES: tuple[str, ...] = tuple(_LOSSES)
# The unchecked (loss, exact gradient) kernel behind each public function (ops.closed_form_loss).
_KERNELS: dict[str, Callable] = {
    "csd": csd_kernel, "fkl": div.forward_kl_kernel, "rkl": div.reverse_kl_kernel,
    "skl": div.skew_forward_kl_kernel, "srkl": div.skew_reverse_kl_kernel,
    "jsd": div.generalized_jsd_kernel, "tvd": div.tvd_kernel, "sym_kl": div.symmetric_kl_kernel,
    "jeffreys": div.jeffreys_kernel, "ab": div.ab_kernel, "dld": div.dld_kernel,
}


def _lookup(name: str) -> Callable:
    if name not in _LOSSES:
        raise UserError(f"loss={name!r} is unknown; choose one of {', '.join(LOSS_NAMES)}.")
    return _LOSSES[name]


def loss_param_names(name: str) -> tuple[str, ...]:
    """Keyword parameters the named loss accepts (everything after the two logits tensors)."""
    parameters = list(inspect.signature(_lookup(name)).parameters)
    return tuple(parameters[2:])


def get_loss(name: str, **params) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-position loss ``fn(student_logits (..., V), teacher_logits (..., V)) -> (...)``.

    Unknown names, unknown parameters and out-of-range values raise ValueError now.
    """
    fn = _lookup(name)
    accepted = loss_param_names(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(f"loss {name!r} got unknown parameter(s) {unknown}; it accepts "
                         f"{list(accepted)}.")
    bound = functools.partial(fn, **params)
    with torch.no_grad():
        bound(torch.zeros(1, 2), torch.zeros(1, 2))  # runs the function's own parameter checks
    return bound


def get_loss_kernel(name: str, **params) -> Callable:
    """The checked loss's kernel with every parameter bound (defaults included):
    ``kernel(student_logits, teacher_logits, masked, need_grad) -> (loss (...), grad (..., V))``.

    Parameters are validated as by :func:`get_loss`; the kernel itself checks nothing (the fused
    engine checks the logits of each chunk, see chunked.py).
    """
    get_loss(name, **params)  # validates the name and the parameters
    bound = inspect.signature(_LOSSES[name]).bind(None, None, **params)
    bound.apply_defaults()
    full = {key: value for key, value in list(bound.arguments.items())[2:]}
    full = {key: float(value) if isinstance(value, int) and not isinstance(value, bool) else value
            for key, value in full.items()}  # kernels see floats, as the public functions pass them
    return functools.partial(_KERNELS[name], **full)
