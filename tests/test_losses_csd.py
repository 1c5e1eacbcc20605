"""CSD: parity with the O(V²) float64 reference (values and gradients) and its properties."""
import pytest
import torch

import reference as ref
from csdistill.losses import WEIGHTINGS, csd

SHAPE = (3, 7, 123)  # odd on purpose
TEMPERATURES = (0.5, 1.0, 1.5, 2.0)


def _pair(seed=0, shape=SHAPE, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    student = (scale * torch.randn(shape, generator=gen)).requires_grad_()
    teacher = scale * torch.randn(shape, generator=gen)
    return student, teacher


def _grad(fn, student, upstream):
    student = student.detach().clone().requires_grad_()
    (fn(student) * upstream).sum().backward()
    return student.grad


def test_all_sixteen_weightings_are_accepted():
    assert len(WEIGHTINGS) == 16 and {"SS", "US", "TS", "ST", "SU", "TT", "UU", "TU", "UT",
                                      "MM"} <= set(WEIGHTINGS)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_value_and_gradient_match_pairwise_reference(weighting):
    student, teacher = _pair(seed=len(weighting) + WEIGHTINGS.index(weighting))
    upstream = torch.rand(SHAPE[:-1], generator=torch.Generator().manual_seed(1)) + 0.5
    for temperature in TEMPERATURES:
        kwargs = dict(weighting=weighting, temperature=temperature, mix_alpha=0.3)
        value = csd(student, teacher, **kwargs)
        expected = ref.csd_pairwise(student, teacher, **kwargs)
        assert value.dtype == torch.float32 and value.shape == SHAPE[:-1]
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5)
        grad = _grad(lambda s: csd(s, teacher, **kwargs), student, upstream)
        grad_ref = _grad(lambda s: ref.csd_pairwise(s, teacher, **kwargs), student.double(),
                         upstream.double())
        torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weighting", ["SS", "TS", "US", "MU", "UU"])
def test_gradient_matches_closed_form(weighting):
    student, teacher = _pair(seed=3)
    grad = _grad(lambda s: csd(s, teacher, weighting, temperature=1.5), student, 1.0)
    expected = ref.csd_grad_formula(student.detach(), teacher, weighting, temperature=1.5)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weighting", ["SS", "TS", "UU", "MM", "UT"])
def test_shift_invariance_and_zero_at_optimum(weighting):
    student, teacher = _pair(seed=4)
    shift = 5.0 * torch.randn(SHAPE[:-1] + (1,))  # a different constant per position
    base = csd(student, teacher, weighting)
    torch.testing.assert_close(csd(student + shift, teacher, weighting), base, rtol=1e-4,
                               atol=1e-4)
    at_optimum = csd(teacher + shift, teacher, weighting)
    assert at_optimum.abs().max() < 1e-4 and base.min() > 0.1


def test_uu_is_uniform_variance_and_ss_is_student_weighted_variance():
    student, teacher = _pair(seed=5)
    residual = (student - teacher).detach().double()
    torch.testing.assert_close(csd(student, teacher, "UU").double(),
                               residual.var(-1, unbiased=False), rtol=1e-5, atol=1e-6)
    weight = torch.softmax(student.detach().double(), -1)
    mean = (weight * residual).sum(-1, keepdim=True)
    torch.testing.assert_close(csd(student, teacher, "SS").double(),
                               (weight * (residual - mean) ** 2).sum(-1), rtol=1e-5, atol=1e-6)


def test_symmetry_mixture_endpoints_and_non_negativity():
    student, teacher = _pair(seed=6)
    torch.testing.assert_close(csd(student, teacher, "TS"), csd(student, teacher, "ST"))
    torch.testing.assert_close(csd(student, teacher, "MM", mix_alpha=0.0),
                               csd(student, teacher, "SS"))
    torch.testing.assert_close(csd(student, teacher, "MM", mix_alpha=1.0),
                               csd(student, teacher, "TT"))
    assert all(bool((csd(student, teacher, w) >= 0).all()) for w in WEIGHTINGS)


def test_teacher_gets_no_gradient_and_dtypes():
    student, teacher = _pair(seed=7)
    teacher.requires_grad_()
    csd(student.bfloat16(), teacher, "TS").sum().backward()
    assert teacher.grad is None and student.grad is not None
    bf16_student = student.detach().bfloat16().requires_grad_()
    value = csd(bf16_student, teacher.detach().bfloat16(), "SS")
    value.sum().backward()
    assert value.dtype == torch.float32 and bf16_student.grad.dtype == torch.bfloat16


def test_no_grad_and_single_position():
    student, teacher = _pair(seed=8, shape=(123,))
    with torch.no_grad():
        value = csd(student, teacher, "US")
    assert value.shape == () and not value.requires_grad
    torch.testing.assert_close(value.double(), ref.csd_pairwise(student, teacher, "US"))


def test_large_common_offset_is_accurate():
    """Closed form is centred, so a residual offset of 1e3 costs no precision."""
    student, teacher = _pair(seed=9, scale=0.1)
    value = csd(student.detach() + 1000.0, teacher, "TS")
    expected = ref.csd_pairwise(student.detach().double() + 1000.0, teacher, "TS")
    torch.testing.assert_close(value.double(), expected, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("weighting", ["SS", "TS", "UU", "US", "MM"])
def test_masked_vocabulary_entries_are_outside_the_support(weighting):
    student, teacher = _pair(seed=10, shape=(4, 11))
    masked = torch.zeros(4, 11, dtype=torch.bool)
    masked[0, 3] = masked[2, [0, 5, 10]] = True
    s_inf = student.detach().masked_fill(masked, float("-inf")).requires_grad_()
    value = csd(s_inf, teacher.masked_fill(masked, float("-inf")), weighting, temperature=1.5)
    value.sum().backward()
    for row in range(4):  # same loss as the support-only vocabulary
        keep = ~masked[row]
        expected = ref.csd_pairwise(student[row, keep], teacher[row, keep], weighting, 1.5)
        torch.testing.assert_close(value[row].double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(s_inf.grad).all() and (s_inf.grad[masked] == 0).all()
