"""Baseline divergences against their float64 textbook formulas, plus their properties."""
import pytest
import torch

import reference as ref
from csdistill.losses import cross_entropy, get_loss

SHAPE = (3, 7, 123)
CASES = [  # (registry name, params) — defaults, edge values and every AB limit
    ("fkl", {}), ("fkl", {"temperature": 1.5}), ("rkl", {}), ("rkl", {"temperature": 0.5}),
    ("skl", {}), ("skl", {"lam": 0.0}), ("skl", {"lam": 0.5, "temperature": 2.0}),
    ("srkl", {}), ("srkl", {"lam": 1.0}), ("jsd", {}), ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.0}), ("jsd", {"beta": 1.0}), ("tvd", {}), ("sym_kl", {}),
    ("sym_kl", {"lam": 0.3, "temperature": 1.5}), ("jeffreys", {}), ("ab", {}),
    ("ab", {"alpha": 1.0, "beta": 0.0}), ("ab", {"alpha": 0.0, "beta": 0.6}),
    ("ab", {"alpha": 0.0, "beta": 0.0}), ("ab", {"alpha": 0.5, "beta": -0.5}),
    ("ab", {"alpha": -0.3, "beta": 0.8, "temperature": 1.5}),
] + [("dld", {"weight": w, "normalize": n, "temperature": 1.5})
     for w in ("U", "S", "T") for n in ("none", "mean", "min", "max", "std", "range")]


def _pair(seed=0, shape=SHAPE):
    gen = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(shape, generator=gen), 2.0 * torch.randn(shape, generator=gen)


def _value_and_grad(fn, student, teacher, upstream):
    student = student.clone().requires_grad_()
    value = fn(student, teacher)
    (value * upstream).sum().backward()
    return value.detach(), student.grad


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_value_and_gradient_match_float64_formula(name, params):
    student, teacher = _pair(seed=len(str(params)))
    upstream = torch.rand(SHAPE[:-1], generator=torch.Generator().manual_seed(2)) + 0.5
    value, grad = _value_and_grad(get_loss(name, **params), student, teacher, upstream)
    value_ref, grad_ref = _value_and_grad(lambda s, t: ref.BASELINES[name](s, t, **params),
                                          student.double(), teacher.double(), upstream.double())
    assert value.dtype == torch.float32 and value.shape == SHAPE[:-1]
    torch.testing.assert_close(value.double(), value_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-3, atol=1e-5)


NON_DEGENERATE = [c for c in CASES[::2] if c[1].get("lam") != 1.0]  # srkl λ=1 is identically 0


@pytest.mark.parametrize("name,params", NON_DEGENERATE, ids=[f"{n}-{p}" for n, p in NON_DEGENERATE])
def test_zero_on_identical_inputs_and_positive_otherwise(name, params):
    fn = get_loss(name, **params)
    student, teacher = _pair(seed=3)
    assert fn(teacher, teacher).abs().max() < 1e-5
    assert fn(student, teacher).min() > 0.0


def test_jsd_limits_are_forward_and_reverse_kl():
    student, teacher = _pair(seed=4)
    torch.testing.assert_close(get_loss("jsd", beta=0.0)(student, teacher),
                               get_loss("fkl")(student, teacher))
    torch.testing.assert_close(get_loss("jsd", beta=1.0)(student, teacher),
                               get_loss("rkl")(student, teacher))


@pytest.mark.parametrize("limit,nearby", [
    ((0.0, 0.7), (1e-3, 0.7)), ((0.5, 0.0), (0.5, 1e-3)), ((0.5, -0.5), (0.5, -0.499)),
    ((0.0, 0.0), (1e-3, 1e-3))])
def test_ab_divergence_limits_are_continuous(limit, nearby):
    student, teacher = _pair(seed=5)
    at_limit = get_loss("ab", alpha=limit[0], beta=limit[1])(student, teacher)
    near = get_loss("ab", alpha=nearby[0], beta=nearby[1])(student, teacher)
    torch.testing.assert_close(near, at_limit, rtol=3e-2, atol=1e-3)


def test_ab_special_cases_are_kl():
    student, teacher = _pair(seed=6)
    torch.testing.assert_close(get_loss("ab", alpha=1.0, beta=0.0)(student, teacher),
                               get_loss("fkl")(student, teacher), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(get_loss("ab", alpha=0.0, beta=1.0)(student, teacher),
                               get_loss("rkl")(student, teacher), rtol=1e-4, atol=1e-5)


def test_temperature_rescales_logits_without_tau_squared():
    student, teacher = _pair(seed=7)
    torch.testing.assert_close(get_loss("fkl", temperature=2.0)(student, teacher),
                               get_loss("fkl")(student / 2.0, teacher / 2.0))


def test_dld_uniform_has_only_the_exact_optimum():
    student, teacher = _pair(seed=8)
    assert get_loss("dld")(teacher + 1.0, teacher).min() > 0.99  # MSE sees the shift
    assert get_loss("dld", normalize="mean")(teacher + 1.0, teacher).max() < 1e-5


@pytest.mark.parametrize("name", ["fkl", "rkl", "skl", "srkl", "jsd", "tvd", "sym_kl", "jeffreys"])
def test_kl_family_gives_masked_entries_zero_probability(name):
    student, teacher = _pair(seed=9, shape=(2, 9))
    keep = torch.ones(9, dtype=torch.bool)
    keep[[1, 4]] = False
    s_inf = student.masked_fill(~keep, float("-inf")).requires_grad_()
    value = get_loss(name)(s_inf, teacher.masked_fill(~keep, float("-inf")))
    value.sum().backward()
    torch.testing.assert_close(value, get_loss(name)(student[:, keep], teacher[:, keep]))
    assert torch.isfinite(s_inf.grad).all() and (s_inf.grad[:, ~keep] == 0).all()


def test_cross_entropy_matches_reference_and_ignores_masked():
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(3, 7, 123, generator=gen)
    labels = torch.randint(0, 123, (3, 7), generator=gen)
    labels[0, :3] = -100
    value = cross_entropy(logits.bfloat16(), labels)
    assert value.dtype == torch.float32 and (value[0, :3] == 0).all()
    torch.testing.assert_close(value.double(), ref.cross_entropy(logits.bfloat16(), labels),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(3, 7, 123\).*\(3, 6\)"):
        cross_entropy(logits, labels[:, :6])
