"""Fused engine mechanics against the full-logits reference: first-chunk write of the weight and
bias sums, reused logits buffers (gradient written in place when compiled), the accumulate flag
and the chunk rule by bytes — loss and every gradient, on odd shapes (3 × 47 positions, V = 123)."""
import pytest
import torch
from test_fused import _assert_match, _setup, _unfused, _value_and_grads

from csdistill.errors import UserError
from csdistill.losses import default_chunk_size, fused_linear_distill

BATCH = (3, 47)  # 141 positions, 20 masked → 121 valid


def _fused(tensors, labels, **kwargs):
    return _value_and_grads(lambda: fused_linear_distill(labels=labels, **kwargs, **tensors), tensors)


@pytest.mark.parametrize("accumulate", ["float32", "compute"])
@pytest.mark.parametrize("chunk_size", [1, 16, 121, 500])  # per-row chunks, a short last chunk, one, oversize
def test_first_chunk_write_and_reused_buffers_match_full_logits(accumulate, chunk_size):
    tensors, labels = _setup(seed=80 + chunk_size, batch=BATCH, n_masked=20)
    fused = _fused(tensors, labels, loss="jsd", beta=0.3, chunk_size=chunk_size, compile=False,
                   accumulate=accumulate)  # float32 inputs: "compute" is float32 as well
    _assert_match(fused, _value_and_grads(lambda: _unfused(tensors, labels, "jsd", beta=0.3), tensors))


def test_compiled_in_place_gradient_matches_full_logits_with_bias_and_short_last_chunk():
    """Compiled chunks of 32 over 121 rows: the last (25) is padded to 32 and the gradient is
    written over the student's logits buffer; loss and gradients as on full logits."""
    tensors, labels = _setup(seed=90, batch=BATCH, n_masked=20)
    for loss, params in (("csd", {"weighting": "TS"}), ("fkl", {})):
        fused = _fused(tensors, labels, loss=loss, chunk_size=32, compile=True, **params)
        _assert_match(fused, _value_and_grads(lambda: _unfused(tensors, labels, loss, **params), tensors))


def test_compiled_loss_maths_in_row_slices_matches_full_logits_with_one_graph(monkeypatch):
    """A slice budget of 8 rows (V = 123): each 32-row chunk runs the compiled maths in 4 slices
    (one graph), gradients written slice by slice; a -inf entry still reruns chunks eagerly."""
    from torch._dynamo.utils import counters

    from csdistill.losses import chunked

    monkeypatch.setattr(chunked, "LOSS_SLICE_BYTES", 8 * 4 * 123)
    assert chunked.loss_slice_rows(32, 123) == 8 and chunked.loss_slice_rows(20, 123) == 20
    tensors, labels = _setup(seed=94, batch=BATCH, n_masked=20)
    counters.clear()
    fused = _fused(tensors, labels, loss="jsd", beta=0.7, chunk_size=32, compile=True)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    _assert_match(fused, _value_and_grads(lambda: _unfused(tensors, labels, "jsd", beta=0.7), tensors))
    for key in ("student_bias", "teacher_bias"):
        tensors[key] = tensors[key].detach().index_fill(0, torch.tensor([3]), -torch.inf)
    tensors["student_bias"].requires_grad_()
    masked = _fused(tensors, labels, loss="jsd", beta=0.7, chunk_size=32, compile=True)
    _assert_match(masked, _value_and_grads(lambda: _unfused(tensors, labels, "jsd", beta=0.7), tensors))


@pytest.mark.parametrize("accumulate", ["float32", "compute"])
@pytest.mark.parametrize("compile", [False, True])
def test_all_masked_batch_gives_zero_loss_and_zero_grads_in_input_dtypes(accumulate, compile):
    tensors, labels = _setup(seed=91, batch=BATCH, dtype=torch.bfloat16)
    labels = torch.full_like(labels, -100)
    value, grads = _fused(tensors, labels, chunk_size=16, compile=compile, accumulate=accumulate)
    assert float(value) == 0.0
    for key, grad in grads.items():
        assert grad.dtype == torch.bfloat16 and grad.shape == tensors[key].shape, key
        assert not grad.any(), key


def _weight_grad_error(tensors, labels, reference, **kwargs) -> float:
    grad = _fused(tensors, labels, **kwargs)[1]["student_weight"]
    return float((grad.double() - reference).norm() / reference.norm())


def test_bf16_accumulate_compute_matches_and_float32_accumulation_is_more_exact():
    """bf16 inputs in one-row chunks (121 weight-gradient additions): both modes match the
    full-logits reference within bf16 tolerance; against the float64 gradient of the same
    rounded inputs the float32 sum is clearly closer than the bf16 one."""
    tensors, labels = _setup(seed=92, batch=BATCH, n_masked=20, dtype=torch.bfloat16)
    reference_run = _value_and_grads(lambda: _unfused(tensors, labels, "fkl"), tensors)
    runs = {accumulate: _fused(tensors, labels, loss="fkl", chunk_size=1, compile=False,
                               accumulate=accumulate) for accumulate in ("float32", "compute")}
    for run in runs.values():
        _assert_match(run, reference_run, rtol=3e-2, atol=3e-3)
    exact = {k: v.detach().double().requires_grad_(k.startswith("student")) for k, v in tensors.items()}
    reference = _value_and_grads(lambda: _unfused(exact, labels, "fkl"), exact)[1]["student_weight"]
    errors = {accumulate: _weight_grad_error(tensors, labels, reference, loss="fkl", chunk_size=1,
                                             compile=False, accumulate=accumulate)
              for accumulate in ("float32", "compute")}
    assert errors["float32"] < 0.5 * errors["compute"], errors
    assert errors["float32"] < 1e-2, errors


def test_chunk_rule_is_a_byte_budget_and_bad_accumulate_is_a_user_error():
    assert [default_chunk_size(v, torch.bfloat16) for v in (16000, 49152, 131072, 151936)] == [
        1024, 832, 320, 256]  # twice the float32 rows (384, 128, 128 above 16000), multiples of 64
    assert default_chunk_size(49152, torch.float32) == default_chunk_size(49152) == 384
    tensors, labels = _setup(seed=93)
    with pytest.raises(UserError, match=r"accumulate='bf16'.*float32 or compute.*loss.accumulate"):
        fused_linear_distill(labels=labels, accumulate="bf16", **tensors)
