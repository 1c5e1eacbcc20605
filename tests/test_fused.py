"""Fused chunked head + loss vs the naive full-logits path: values and every gradient."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode  # tracks every aten op's output

from csdistill.losses import (IGNORE_INDEX, LOSS_NAMES, fused_linear_distill, get_loss,
                              token_mean)

V_S, V_T, H_S, H_T = 123, 130, 16, 24  # teacher vocab padded past the student's


def _setup(seed=0, batch=(3, 19), n_masked=10, dtype=torch.float32):
    """Hidden states, heads and aligned labels; 3·19 − 10 = 47 valid positions."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V_S, batch, generator=gen)
    labels.view(-1)[torch.randperm(labels.numel(), generator=gen)[:n_masked]] = IGNORE_INDEX
    tensors = dict(
        student_hidden=torch.randn(*batch, H_S, generator=gen),
        student_weight=0.3 * torch.randn(V_S, H_S, generator=gen),
        student_bias=0.1 * torch.randn(V_S, generator=gen),
        teacher_hidden=torch.randn(*batch, H_T, generator=gen),
        teacher_weight=0.3 * torch.randn(V_T, H_T, generator=gen),
        teacher_bias=0.1 * torch.randn(V_T, generator=gen))
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    for key in ("student_hidden", "student_weight", "student_bias"):
        tensors[key].requires_grad_()
    return tensors, labels


def _unfused(tensors, labels, loss, num_valid_tokens=None, **params):
    """The naive reference: full (.., V) logits, teacher sliced to the shared vocabulary."""
    student = torch.nn.functional.linear(tensors["student_hidden"], tensors["student_weight"],
                                         tensors["student_bias"])
    with torch.no_grad():
        teacher = torch.nn.functional.linear(tensors["teacher_hidden"], tensors["teacher_weight"],
                                             tensors["teacher_bias"])[..., :V_S]
    return token_mean(get_loss(loss, **params)(student, teacher), labels, num_valid_tokens)


def _value_and_grads(fn, tensors):
    value = fn()
    keys = ("student_hidden", "student_weight", "student_bias")
    grads = torch.autograd.grad(value, [tensors[k] for k in keys])
    return value.detach(), dict(zip(keys, grads))


def _assert_match(fused, unfused, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(fused[0], unfused[0], rtol=rtol, atol=atol)
    for key, grad in unfused[1].items():
        assert fused[1][key].dtype == grad.dtype, key
        torch.testing.assert_close(fused[1][key], grad, rtol=rtol, atol=atol, msg=lambda m: key + m)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_fused_matches_unfused_for_every_registry_loss(loss):
    tensors, labels = _setup(seed=LOSS_NAMES.index(loss))
    fused = _value_and_grads(lambda: fused_linear_distill(labels=labels, loss=loss, chunk_size=5,
                                                          **tensors), tensors)
    _assert_match(fused, _value_and_grads(lambda: _unfused(tensors, labels, loss), tensors))


@pytest.mark.parametrize("chunk_size", [1, 5, 46, 47, None])
def test_chunk_size_does_not_change_the_result_and_params_are_forwarded(chunk_size):
    tensors, labels = _setup(seed=20)
    params = dict(weighting="TS", temperature=1.5)
    fused = _value_and_grads(lambda: fused_linear_distill(
        labels=labels, chunk_size=chunk_size, **tensors, **params), tensors)
    _assert_match(fused, _value_and_grads(lambda: _unfused(tensors, labels, "csd", **params),
                                          tensors))


def test_global_token_count_and_grad_output_scaling():
    tensors, labels = _setup(seed=21)
    fused = _value_and_grads(lambda: 3.0 * fused_linear_distill(
        labels=labels, loss="jsd", beta=0.1, num_valid_tokens=100, chunk_size=7, **tensors),
        tensors)
    unfused = _value_and_grads(lambda: 3.0 * _unfused(tensors, labels, "jsd", 100, beta=0.1),
                               tensors)
    _assert_match(fused, unfused)


def test_all_masked_batch_gives_zero_loss_and_zero_grads():
    tensors, labels = _setup(seed=22)
    value, grads = _value_and_grads(lambda: fused_linear_distill(
        labels=torch.full_like(labels, IGNORE_INDEX), **tensors), tensors)
    assert value.item() == 0.0
    assert all(bool((g == 0).all()) for g in grads.values())


def test_bf16_inputs_match_float32_within_tolerance():
    tensors, labels = _setup(seed=23, dtype=torch.bfloat16)
    fused = _value_and_grads(lambda: fused_linear_distill(labels=labels, chunk_size=5, **tensors),
                             tensors)
    assert fused[0].dtype == torch.float32
    assert all(fused[1][k].dtype == torch.bfloat16 for k in fused[1])
    unfused = _value_and_grads(lambda: _unfused(tensors, labels, "csd"), tensors)
    # bf16 logits are rounded to 8 bits of mantissa in both paths; the weight gradient is
    # accumulated in float32 by the fused path and in one bf16 matmul by the unfused one.
    _assert_match(fused, unfused, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("loss", ["csd", "fkl"])
def test_fp32_inputs_under_bf16_autocast_match_the_unfused_path(loss):
    """As in the trainer: fp32 hidden states and heads, logits computed under CPU bf16 autocast."""
    tensors, labels = _setup(seed=30 + len(loss))  # 47 valid positions; chunks of 5 leave 2 over

    def under_autocast(fn):
        def run():
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                return fn()
        return run

    fused = _value_and_grads(under_autocast(lambda: fused_linear_distill(
        labels=labels, loss=loss, chunk_size=5, **tensors)), tensors)
    unfused = _value_and_grads(under_autocast(lambda: _unfused(tensors, labels, loss)), tensors)
    assert fused[0].dtype == torch.float32
    assert all(fused[1][k].dtype == torch.float32 for k in fused[1])  # each input's own dtype
    # Both paths round the logits (and the head-gradient matmul operands) to bf16; see the bf16 test.
    _assert_match(fused, unfused, rtol=2e-2, atol=2e-3)


def test_only_requested_gradients_and_no_grad_mode():
    tensors, labels = _setup(seed=24)
    tensors["student_hidden"].requires_grad_(False)
    value = fused_linear_distill(labels=labels, loss="fkl", **tensors)
    (weight_grad,) = torch.autograd.grad(value, tensors["student_weight"], retain_graph=True)
    assert weight_grad.abs().sum() > 0
    with torch.no_grad():
        again = fused_linear_distill(labels=labels, loss="fkl", **tensors)
    torch.testing.assert_close(again, value.detach())


class _LogitsShapeTracker(TorchDispatchMode):
    """Records the most rows of any newly allocated (non-view) op output with last dim V."""

    def __init__(self):
        super().__init__()
        self.max_rows = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # a view (e.g. weight.t()) allocates nothing
            return out
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.dim() and tensor.shape[-1] in (V_S, V_T):
                self.max_rows = max(self.max_rows, tensor.numel() // tensor.shape[-1])
        return out


def test_engine_never_forms_logits_for_all_positions():
    tensors, labels = _setup(seed=25)
    with _LogitsShapeTracker() as tracker:
        fused_linear_distill(labels=labels, chunk_size=5, **tensors).backward()
    assert tracker.max_rows == 5  # one chunk of positions, never the 47 valid (or 57) ones
    with _LogitsShapeTracker() as tracker:
        _unfused(tensors, labels, "csd").backward()
    assert tracker.max_rows >= 57  # the tracker does see full logits when they exist


def test_a_callable_loss_sees_only_valid_chunks():
    tensors, labels = _setup(seed=26)
    seen = []

    def spy(student_logits, teacher_logits):
        seen.append(student_logits.shape[0])
        return get_loss("rkl")(student_logits, teacher_logits)

    fused = fused_linear_distill(labels=labels, loss=spy, chunk_size=10, **tensors)
    assert seen == [10, 10, 10, 10, 7]
    torch.testing.assert_close(fused, _unfused(tensors, labels, "rkl"))


def test_bad_inputs_name_both_sizes():
    tensors, labels = _setup(seed=27)
    small_teacher = dict(tensors, teacher_weight=tensors["teacher_weight"][:100],
                         teacher_bias=None)
    with pytest.raises(ValueError, match=r"teacher_weight has V=100.*student_weight V=123"):
        fused_linear_distill(labels=labels, **small_teacher)
    with pytest.raises(ValueError, match=r"student_hidden shape \(3, 19, 16\).*labels shape"
                                         r" \(3, 18\)"):
        fused_linear_distill(labels=labels[:, :18], **tensors)
    with pytest.raises(ValueError, match=r"teacher_weight shape \(130, 24\).*H=16"):
        fused_linear_distill(labels=labels, **dict(tensors, teacher_hidden=torch.randn(3, 19, 16)))
    with pytest.raises(ValueError, match=r"student_bias shape \(7,\) != \(123,\)"):
        fused_linear_distill(labels=labels, **dict(tensors, student_bias=torch.zeros(7)))
    with pytest.raises(ValueError, match=r"chunk_size=0"):
        fused_linear_distill(labels=labels, chunk_size=0, **tensors)
    with pytest.raises(ValueError, match=r"loss_params \['beta'\]"):
        fused_linear_distill(labels=labels, loss=get_loss("fkl"), beta=0.5, **tensors)
    with pytest.raises(ValueError, match=r"weighting='XS'"):
        fused_linear_distill(labels=labels, weighting="XS", **tensors)
    nan_hidden = tensors["student_hidden"].detach().clone()
    nan_hidden[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite student logits"):
        fused_linear_distill(labels=torch.zeros_like(labels),
                             **dict(tensors, student_hidden=nan_hidden))


TEMPERATURE_CASES = [("fkl", {}), ("rkl", {}), ("skl", {"lam": 0.3}), ("srkl", {"lam": 0.3}),
                     ("jsd", {"beta": 0.1}), ("tvd", {}), ("sym_kl", {}), ("jeffreys", {}),
                     ("ab", {"alpha": 0.5, "beta": 0.3}), ("dld", {"weight": "S", "normalize": "std"}),
                     ("csd", {"weighting": "MS"})]


@pytest.mark.parametrize("loss,params", TEMPERATURE_CASES, ids=[c[0] for c in TEMPERATURE_CASES])
def test_fused_matches_unfused_with_temperature_and_masked_bias(loss, params):
    """τ ≠ 1 and, where the loss allows it, two vocabulary entries banned through -inf biases."""
    tensors, labels = _setup(seed=40 + TEMPERATURE_CASES.index((loss, params)))
    if loss not in ("ab", "dld"):
        for key in ("student_bias", "teacher_bias"):
            tensors[key] = tensors[key].detach().index_fill(0, torch.tensor([3, 70]), -torch.inf)
        tensors["student_bias"].requires_grad_()
    params = dict(params, temperature=1.7)
    fused = _value_and_grads(lambda: fused_linear_distill(labels=labels, loss=loss, chunk_size=9,
                                                          **tensors, **params), tensors)
    _assert_match(fused, _value_and_grads(lambda: _unfused(tensors, labels, loss, **params),
                                          tensors))


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_fp32_inputs_under_bf16_autocast_match_the_unfused_path_for_every_loss(loss):
    tensors, labels = _setup(seed=60 + LOSS_NAMES.index(loss))

    def run(fn):
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            return fn()

    fused = _value_and_grads(lambda: run(lambda: fused_linear_distill(
        labels=labels, loss=loss, chunk_size=7, **tensors)), tensors)
    unfused = _value_and_grads(lambda: run(lambda: _unfused(tensors, labels, loss)), tensors)
    assert all(fused[1][k].dtype == torch.float32 for k in fused[1])
    _assert_match(fused, unfused, rtol=2e-2, atol=2e-3)  # both round logits and grads to bf16


def test_compiled_chunks_match_eager_without_recompiling_and_recheck_bad_chunks():
    """One small compiled run (compile takes seconds): 47 positions in chunks of 20 — the last
    one (7 rows) is padded to 20, so one graph serves all three; a -inf entry (masked vocab)
    reruns its chunks eagerly with masking, a NaN still raises the eager path's error."""
    from torch._dynamo.utils import counters

    tensors, labels = _setup(seed=70)
    params = dict(loss="jsd", beta=0.3, temperature=1.3, chunk_size=20)
    eager = _value_and_grads(lambda: fused_linear_distill(labels=labels, compile=False, **params,
                                                          **tensors), tensors)
    counters.clear()
    compiled = _value_and_grads(lambda: fused_linear_distill(labels=labels, compile=True, **params,
                                                             **tensors), tensors)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    _assert_match(compiled, eager)
    for key in ("student_bias", "teacher_bias"):
        tensors[key] = tensors[key].detach().index_fill(0, torch.tensor([5]), -torch.inf)
    tensors["student_bias"].requires_grad_()
    masked = _value_and_grads(lambda: fused_linear_distill(labels=labels, compile=True, **params,
                                                           **tensors), tensors)
    _assert_match(masked, _value_and_grads(lambda: _unfused(
        tensors, labels, "jsd", beta=0.3, temperature=1.3), tensors))
    tensors["teacher_bias"] = tensors["teacher_bias"].index_fill(0, torch.tensor([6]), torch.nan)
    with pytest.raises(ValueError, match=r"non-finite teacher logits"):
        fused_linear_distill(labels=labels, compile=True, **params, **tensors)


def test_failed_compilation_falls_back_to_eager_with_one_warning(monkeypatch):
    from csdistill.losses import chunked

    def broken(*args):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(chunked, "_COMPILED_CHUNK_MATHS", broken)
    monkeypatch.setattr(chunked, "_COMPILE_FAILED", False)
    tensors, labels = _setup(seed=71)
    with pytest.warns(RuntimeWarning, match=r"no C\+\+ compiler here.*loss.compile=false"):
        value = fused_linear_distill(labels=labels, loss="fkl", compile=True, chunk_size=10,
                                     **tensors)
    assert chunked._COMPILE_FAILED
    torch.testing.assert_close(value, _unfused(tensors, labels, "fkl"))


def test_compile_flag_and_chunk_rule():
    from csdistill.losses import default_chunk_size

    tensors, labels = _setup(seed=72)
    with pytest.raises(ValueError, match=r"compile='yes'.*auto, true or false"):
        fused_linear_distill(labels=labels, compile="yes", **tensors)
    assert [default_chunk_size(v) for v in (4096, 49152, 131072, 151936, 262144, 10**6)] == [
        1024, 384, 128, 128, 64, 64]
