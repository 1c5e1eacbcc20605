"""Sparse-teacher losses (losses/sparse.py) against a float64 brute force built row by row from the
*dense* teacher logits on the support S = top-k ∪ {label} (plus the complement bucket)."""
import pytest
import torch

import reference as ref
from csdistill.losses import WEIGHTINGS, get_loss
from csdistill.losses.reduce import token_mean
from csdistill.losses.sparse import (SPARSE_LOSS_NAMES, SparseTeacher, get_sparse_loss,
                                     sparse_from_logits)

N, V, K = 7, 37, 5  # odd shapes
KL_REFERENCES = {"fkl": ref.forward_kl, "rkl": ref.reverse_kl, "skl": ref.skew_forward_kl,
                 "srkl": ref.skew_reverse_kl, "jsd": ref.generalized_jsd, "tvd": ref.tvd,
                 "sym_kl": ref.symmetric_kl, "jeffreys": ref.jeffreys}


def _case(seed=0, n=N, vocab=V, k=K):
    generator = torch.Generator().manual_seed(seed)
    student = (2.0 * torch.randn(n, vocab, generator=generator)).requires_grad_(True)
    teacher = 3.0 * torch.randn(n, vocab, generator=generator)
    labels = torch.randint(0, vocab, (n,), generator=generator)
    labels[::2] = teacher[::2].argmax(-1)  # half the labels inside the top-k, half (mostly) outside
    return student, teacher, labels, sparse_from_logits(teacher, labels, k)


def _reduced_row(s, t, ids, label, tail):
    """float64 (s_red, t_red) of one row from the dense logits: S in the row's own order."""
    support = list(dict.fromkeys([*ids.tolist(), int(label)]))
    index = torch.tensor(support)
    s_red, t_red = s[index], t[index]
    rest = torch.tensor([v for v in range(s.shape[0]) if v not in set(support)], dtype=torch.long)
    if tail == "bucket" and len(rest):
        s_red = torch.cat([s_red, s[rest].logsumexp(0, keepdim=True)])
        t_red = torch.cat([t_red, t[rest].logsumexp(0, keepdim=True)])
    return s_red, t_red


def _brute_force(fn, student, teacher, sparse, tail):
    """Σ over rows of fn(s_red, t_red) in float64 and its gradient w.r.t. the student (N, V)."""
    s64 = student.detach().double().requires_grad_(True)
    t64 = teacher.double()
    values = torch.stack([fn(*_reduced_row(s64[i], t64[i], sparse.ids[i], sparse.labels[i], tail))
                          for i in range(s64.shape[0])])
    (grad,) = torch.autograd.grad(values.sum(), s64)
    return values, grad


def _ours(fn, student, sparse):
    values = fn(student, sparse)
    (grad,) = torch.autograd.grad(values.sum(), student)
    return values, grad


def _assert_close(got, want, what, rtol=2e-5, atol=2e-6):
    got_value, got_grad = got
    want_value, want_grad = want
    torch.testing.assert_close(got_value.double(), want_value, rtol=rtol, atol=atol, msg=lambda m: f"{what} value: {m}")
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=rtol, atol=atol, msg=lambda m: f"{what} grad: {m}")


@pytest.mark.parametrize("tail", ["support", "bucket"])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_csd_matches_float64_brute_force(weighting, tail):
    student, teacher, labels, sparse = _case(seed=len(weighting) + WEIGHTINGS.index(weighting))
    assert 0 < int((sparse.ids == labels[:, None]).any(-1).sum()) < N  # both kinds of rows present
    fn = get_sparse_loss("csd", tail, weighting=weighting)
    want = _brute_force(lambda s, t: ref.csd_pairwise(s, t, weighting), student, teacher, sparse, tail)
    _assert_close(_ours(fn, student, sparse), want, f"csd {weighting} {tail}")


@pytest.mark.parametrize("tail", ["support", "bucket"])
@pytest.mark.parametrize("name", sorted(KL_REFERENCES))
def test_kl_family_matches_float64_brute_force(name, tail):
    student, teacher, labels, sparse = _case(seed=3)
    want = _brute_force(KL_REFERENCES[name], student, teacher, sparse, tail)
    _assert_close(_ours(get_sparse_loss(name, tail), student, sparse), want, f"{name} {tail}")


@pytest.mark.parametrize("tail", ["support", "bucket"])
@pytest.mark.parametrize("name, params", [("csd", {"weighting": w}) for w in ("SS", "TS", "UU", "MU", "ST")]
                         + [(name, {}) for name in SPARSE_LOSS_NAMES if name != "csd"])
def test_k_equal_to_vocab_is_the_dense_loss(name, params, tail):
    student, teacher, labels, sparse = _case(seed=5, k=V)
    dense = get_loss(name, **params)
    want = _ours(dense, student, teacher)
    got = _ours(get_sparse_loss(name, tail, **params), student, sparse)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tail", ["support", "bucket"])
@pytest.mark.parametrize("name", ["csd", "fkl", "rkl", "jsd"])
def test_student_shift_invariance_and_exact_teacher_gaps(name, tail):
    student, teacher, labels, sparse = _case(seed=7)
    fn = get_sparse_loss(name, tail)
    base = fn(student, sparse)
    shifted = fn(student + torch.linspace(-50, 50, N)[:, None], sparse)
    torch.testing.assert_close(shifted, base, rtol=1e-4, atol=1e-4)
    # the teacher's shift by any per-row constant gives the same cache (log-probabilities)
    again = sparse_from_logits(teacher + torch.linspace(-9, 9, N)[:, None], labels, K)
    torch.testing.assert_close(fn(student, again), base, rtol=1e-5, atol=1e-5)


def test_all_masked_batch_gives_zero_loss_and_zero_gradient():
    student, teacher, labels, sparse = _case(seed=1)
    empty = sparse[torch.zeros(N, dtype=torch.bool)]
    rows = student[:0]
    per_position = get_sparse_loss("csd", "bucket")(rows, empty)
    loss = token_mean(per_position, torch.zeros(0, dtype=torch.bool))
    loss.backward()
    assert per_position.shape == (0,) and loss.item() == 0.0
    assert student.grad is not None and float(student.grad.abs().sum()) == 0.0


def test_bucket_constrains_off_support_mass_and_support_does_not():
    student, teacher, labels, sparse = _case(seed=2)
    support_fn, bucket_fn = get_sparse_loss("csd", "support"), get_sparse_loss("csd", "bucket")
    off = torch.ones(N, V, dtype=torch.bool)
    off.scatter_(1, torch.cat([sparse.ids, labels[:, None]], 1), False)
    raised = (student + 5.0 * off).detach()  # more student mass off S only
    torch.testing.assert_close(support_fn(raised, sparse), support_fn(student, sparse))
    assert bool((bucket_fn(raised, sparse) != bucket_fn(student, sparse)).all())


def test_bad_inputs_are_clear_errors():
    student, teacher, labels, sparse = _case(seed=4)
    with pytest.raises(ValueError, match="V=20"):
        get_sparse_loss("csd")(student[:, :20], sparse)
    with pytest.raises(ValueError, match="no sparse-teacher form"):
        get_sparse_loss("dld")
    with pytest.raises(ValueError, match="temperature"):
        get_sparse_loss("fkl", "bucket", temperature=2.0)
    with pytest.raises(ValueError, match="sparse_tail"):
        get_sparse_loss("csd", "tails")
    with pytest.raises(ValueError, match="valid positions"):
        get_sparse_loss("csd")(student[:3], sparse)
    nan = SparseTeacher(sparse.ids, sparse.logprobs.clone().fill_(float("nan")), sparse.target_logprob,
                        sparse.log_tail, sparse.labels)
    with pytest.raises(ValueError, match="non-finite"):
        get_sparse_loss("csd")(student, nan)


def test_temperature_in_support_mode_matches_brute_force():
    student, teacher, labels, sparse = _case(seed=6)
    fn = get_sparse_loss("csd", "support", weighting="TS", temperature=2.0)
    want = _brute_force(lambda s, t: ref.csd_pairwise(s, t, "TS", temperature=2.0), student, teacher, sparse, "support")
    _assert_close(_ours(fn, student, sparse), want, "csd TS tau=2")


@pytest.mark.parametrize("tail", ["support", "bucket"])
def test_fused_engine_with_sparse_teacher_matches_unfused(tail):
    from csdistill.losses.chunked import fused_linear_sparse_distill

    generator = torch.Generator().manual_seed(8)
    hidden = torch.randn(3, 11, 8, generator=generator, requires_grad=True)  # (B, T, H)
    weight = torch.randn(V, 8, generator=generator, requires_grad=True)
    bias = torch.randn(V, generator=generator, requires_grad=True)
    labels = torch.randint(0, V, (3, 11), generator=generator)
    labels[0, :4] = labels[2, 7:] = -100
    valid = labels != -100
    sparse = sparse_from_logits(torch.randn(int(valid.sum()), V, generator=generator), labels[valid], K)
    fn = get_sparse_loss("csd", tail, weighting="MS")
    fused = fused_linear_sparse_distill(hidden, weight, sparse, labels, fn, chunk_size=4, student_bias=bias)
    fused_grads = torch.autograd.grad(fused, (hidden, weight, bias))
    plain = token_mean(fn(torch.nn.functional.linear(hidden[valid], weight, bias), sparse), labels[valid])
    plain_grads = torch.autograd.grad(plain, (hidden, weight, bias))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    for got, want in zip(fused_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
