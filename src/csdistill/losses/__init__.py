"""Distillation losses: CSD, the baseline divergences, masking/reduction and the fused head.

Per-position functions map ``(student_logits, teacher_logits)`` of shape (..., V) to a float32
(...) loss; ``reduce.token_mean`` is the only reduction; ``fused_linear_distill`` projects hidden
states chunk by chunk and calls the same functions. See ``checks`` for the bad-input policy.
"""
from csdistill.losses.checks import align_teacher_vocab, set_check_finite
from csdistill.losses.chunked import default_chunk_size, fused_linear_distill
from csdistill.losses.csd import WEIGHTINGS, csd
from csdistill.losses.divergences import (ab_divergence, cross_entropy, dld, forward_kl,
                                          generalized_jsd, jeffreys, reverse_kl, skew_forward_kl,
                                          skew_reverse_kl, symmetric_kl, tvd)
from csdistill.losses.reduce import (IGNORE_INDEX, count_valid, shift_labels, token_mean,
                                     valid_mask)
from csdistill.losses.registry import LOSS_NAMES, get_loss, loss_param_names

__all__ = [
    "IGNORE_INDEX", "LOSS_NAMES", "WEIGHTINGS", "ab_divergence", "align_teacher_vocab",
    "count_valid", "cross_entropy", "csd", "default_chunk_size", "dld", "forward_kl",
    "fused_linear_distill", "generalized_jsd", "get_loss", "jeffreys", "loss_param_names",
    "reverse_kl", "set_check_finite", "shift_labels", "skew_forward_kl", "skew_reverse_kl",
    "symmetric_kl", "token_mean", "tvd", "valid_mask",
]
