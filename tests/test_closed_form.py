"""Closed-form logit gradients (one kernel per loss) against autograd through the float64
reference, on odd shapes: masked vocabulary entries, temperature, bf16 inputs, no-grad mode."""
import pytest
import torch

import reference as ref
from csdistill.losses import LOSS_NAMES, get_loss
from csdistill.losses.registry import get_loss_kernel
from test_losses_baselines import CASES

SHAPE = (3, 5, 67)
MASKABLE = [c for c in CASES if c[0] not in ("ab", "dld")] + [  # ab and dld reject -inf
    ("csd", {"weighting": w, "temperature": 1.5}) for w in ("SS", "TS", "UM", "UU")]


def _reference(name, params):
    if name == "csd":
        return lambda s, t: ref.csd_pairwise(s, t, **params)
    return lambda s, t: ref.BASELINES[name](s, t, **params)


def _pair(seed, shape=SHAPE, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    student, teacher = 2.0 * torch.randn(shape, generator=gen), 2.0 * torch.randn(shape, generator=gen)
    return student.to(dtype), teacher.to(dtype)


def _value_and_grad(fn, student, teacher, upstream):
    student = student.detach().clone().requires_grad_()
    value = fn(student, teacher)
    (value * upstream).sum().backward()
    return value.detach(), student.grad


def _upstream(seed=1):
    return torch.rand(SHAPE[:-1], generator=torch.Generator().manual_seed(seed)) + 0.5


@pytest.mark.parametrize("name,params", MASKABLE, ids=[f"{n}-{p}" for n, p in MASKABLE])
def test_masked_entries_match_the_reference_on_the_support(name, params):
    """-inf at the same entries in both models = the loss over the other entries only; the
    gradient there is the reference's and exactly 0 at the masked entries."""
    student, teacher = _pair(seed=len(str(params)) + 40)
    keep = torch.ones(SHAPE[-1], dtype=torch.bool)
    keep[[0, 7, 30, 66]] = False
    upstream = _upstream()
    value, grad = _value_and_grad(get_loss(name, **params), student.masked_fill(~keep, -torch.inf),
                                  teacher.masked_fill(~keep, -torch.inf), upstream)
    value_ref, grad_ref = _value_and_grad(_reference(name, params), student[..., keep].double(),
                                          teacher[..., keep].double(), upstream.double())
    torch.testing.assert_close(value.double(), value_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad[..., keep].double(), grad_ref, rtol=1e-3, atol=1e-5)
    assert (grad[..., ~keep] == 0).all()


BF16_CASES = CASES[::3] + [("csd", {"weighting": "SS"}), ("csd", {"weighting": "MT"})]


@pytest.mark.parametrize("name,params", BF16_CASES, ids=[f"{n}-{p}" for n, p in BF16_CASES])
def test_bf16_logits_get_float32_maths_and_a_bf16_gradient(name, params):
    student, teacher = _pair(seed=50, dtype=torch.bfloat16)
    upstream = _upstream(2)
    value, grad = _value_and_grad(get_loss(name, **params), student, teacher, upstream)
    assert value.dtype == torch.float32 and grad.dtype == torch.bfloat16
    value_ref, grad_ref = _value_and_grad(_reference(name, params), student.double(),
                                          teacher.double(), upstream.double())
    torch.testing.assert_close(value.double(), value_ref, rtol=1e-4, atol=1e-5)  # float32 maths
    scale = grad_ref.abs().amax(-1, keepdim=True)  # bf16 keeps 8 bits of each gradient entry
    torch.testing.assert_close(grad.double() / scale, grad_ref / scale, rtol=0, atol=8e-3)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_kernel_without_grad_gives_the_same_loss(name):
    student, teacher = _pair(seed=51)
    kernel = get_loss_kernel(name)
    loss, grad = kernel(student, teacher, None, False)
    assert grad is None
    torch.testing.assert_close(loss, get_loss(name)(student, teacher))
    loss_with_grad, grad = kernel(student, teacher, None, True)
    torch.testing.assert_close(loss_with_grad, loss)
    assert grad.shape == SHAPE and grad.dtype == torch.float32


def test_kernel_binds_every_default_and_validates():
    assert get_loss_kernel("jsd").keywords == {"beta": 0.5, "temperature": 1.0}
    assert get_loss_kernel("skl", lam=1).keywords == {"lam": 1.0, "temperature": 1.0}
    with pytest.raises(ValueError, match=r"beta=2"):
        get_loss_kernel("jsd", beta=2)
