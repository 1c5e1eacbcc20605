"""The teacher's LM head, saved once beside a hidden-state cache: logits = scale · (hidden·Wᵀ + b).

head.safetensors holds weight (V, d) and bias (V,) (when the head has one) in the teacher's own
parameter dtype, so the stored head is the live one bit for bit; the spec records its rows, d,
whether it has a bias, the architecture's final logit scale (models.final_logit_scale) and a
sha256 of the tensors, which a training run checks before it uses the head.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from csdistill.cache.store import HEAD_FILE
from csdistill.config import ConfigError
from csdistill.files import atomic_path

# a head whose logits differ from the model's own by more than this (relative to their scale) is
# not "hidden·Wᵀ + b": the architecture transforms its logits in a way the cache does not know
TRANSFORM_TOLERANCE = 1e-2


def _digest(weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    hasher = hashlib.sha256()
    for tensor in (weight, bias):
        if tensor is not None:
            hasher.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def head_spec(model) -> dict:
    """What a hidden cache records about `model`'s head (raises on an unsupported logit transform)."""
    from csdistill.models import final_logit_scale, unwrap_lm_head

    weight, bias = unwrap_lm_head(model)
    return {"rows": int(weight.shape[0]), "hidden_size": int(weight.shape[1]), "bias": bias is not None,
            "logit_scale": final_logit_scale(model), "dtype": str(weight.dtype).removeprefix("torch."),
            "sha256": _digest(weight, bias)}


def write_head(out: Path, model) -> None:
    from safetensors.torch import save_file
    from csdistill.models import unwrap_lm_head

    weight, bias = unwrap_lm_head(model)
    tensors = {"weight": weight.detach().cpu().contiguous()}
    if bias is not None:
        tensors["bias"] = bias.detach().cpu().contiguous()
    with atomic_path(out / HEAD_FILE) as temp:
        save_file(tensors, str(temp))


@dataclass
class StoredHead:
    """The teacher head of a hidden cache: weight (V, d), bias (V,) | None (the logit scale folded in)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float = 1.0

    def logits(self, hidden: torch.Tensor, vocab: int) -> torch.Tensor:
        """(N, vocab) teacher logits of hidden (N, d), in the dtype F.linear computes in here."""
        bias = None if self.bias is None else self.bias[:vocab]  # a padded head's extra rows dropped
        return F.linear(hidden.to(self.weight.dtype), self.weight[:vocab], bias)  # autocast may cast both

    def to(self, device) -> "StoredHead":
        return StoredHead(self.weight.to(device), None if self.bias is None else self.bias.to(device), self.scale)


def load_head(directory: Path, manifest: dict) -> StoredHead:
    """The checked head of a hidden cache (its sha256 must be the manifest's)."""
    from safetensors.torch import load_file

    path, spec = Path(directory) / HEAD_FILE, manifest.get("head") or {}
    where = f"train.teacher_cache={str(directory)!r}"
    try:
        tensors = load_file(str(path))
        weight, bias = tensors["weight"], tensors.get("bias")
    except FileNotFoundError:
        raise ConfigError(f"{where}: {HEAD_FILE} is missing; rebuild the cache with `csdistill teacher cache "
                          "--store hidden`") from None
    except Exception as err:  # noqa: BLE001 - truncated / not safetensors / no weight
        raise ConfigError(f"{where}: {HEAD_FILE} is unreadable ({type(err).__name__}: {err}); rebuild the cache") from None
    if _digest(weight, bias) != spec.get("sha256") or tuple(weight.shape) != (spec.get("rows"), spec.get("hidden_size")):
        raise ConfigError(f"{where}: {HEAD_FILE} (V={weight.shape[0]}, d={weight.shape[1]}, sha256 "
                          f"{_digest(weight, bias)[:12]}) is not the head the manifest records (V={spec.get('rows')}, "
                          f"d={spec.get('hidden_size')}, sha256 {str(spec.get('sha256'))[:12]}); rebuild the cache")
    scale = float(spec.get("logit_scale", 1.0))
    if scale != 1.0:  # fold the scale into the head: scale·(hWᵀ + b) = h(scale·W)ᵀ + scale·b
        weight, bias = weight * scale, None if bias is None else bias * scale
    return StoredHead(weight, bias, scale)


def check_head_matches_model(head_logits: torch.Tensor, model_logits: torch.Tensor, model_name: str) -> None:
    """ConfigError when the model's own logits (N, V) are not its head's (N, V): an unknown transform."""
    if head_logits.numel() == 0:
        return
    gap = float((head_logits.float() - model_logits.float()).abs().max())
    size = float(model_logits.float().abs().max()) + 1.0
    if gap > TRANSFORM_TOLERANCE * size:
        raise ConfigError(f"teacher.name_or_path={model_name!r}: its logits differ from hidden·Wᵀ + b by up to {gap:.3g} "
                          "(the architecture transforms its final logits in a way csdistill does not know); use "
                          "`teacher cache --store topk`")
