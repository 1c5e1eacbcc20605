"""Masking/reduction (reduce.py), the registry, and the bad-input policy with its messages."""
import pytest
import torch

from csdistill.losses import (IGNORE_INDEX, LOSS_NAMES, count_valid, csd, get_loss,
                              loss_param_names, set_check_finite, shift_labels, token_mean,
                              valid_mask)
from csdistill.losses import align_teacher_vocab


def test_shift_labels_aligns_each_position_with_the_token_it_predicts():
    labels = torch.tensor([[-100, -100, 5, 6, 7], [-100, 8, 9, -100, -100]])
    shifted = shift_labels(labels)
    assert shifted.tolist() == [[-100, 5, 6, 7, -100], [8, 9, -100, -100, -100]]
    assert valid_mask(shifted).sum() == count_valid(shifted) == 5
    with pytest.raises(ValueError, match=r"\(B, T\).*\(5,\)"):
        shift_labels(labels[0])


def test_token_mean_masks_nan_and_counts_once():
    per_position = torch.tensor([[1.0, float("nan"), 3.0], [5.0, 7.0, float("inf")]],
                                requires_grad=True)
    labels = torch.tensor([[1, IGNORE_INDEX, 2], [3, 4, IGNORE_INDEX]])
    value = token_mean(per_position, labels)
    value.backward()
    assert value.item() == pytest.approx(16.0 / 4)
    assert torch.isfinite(per_position.grad).all() and per_position.grad[0, 1] == 0
    assert token_mean(per_position, labels, num_valid_tokens=8).item() == pytest.approx(2.0)
    assert token_mean(per_position, valid_mask(labels)).item() == pytest.approx(4.0)


def test_token_mean_of_nothing_is_zero_not_nan():
    per_position = torch.ones(2, 3, requires_grad=True)
    value = token_mean(per_position, torch.full((2, 3), IGNORE_INDEX))
    value.backward()
    assert value.item() == 0.0 and (per_position.grad == 0).all()


def test_token_mean_rejects_bad_shapes_and_counts():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        token_mean(torch.ones(2, 3), torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_valid_tokens=-1"):
        token_mean(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long), num_valid_tokens=-1)


def test_registry_names_and_parameters():
    assert LOSS_NAMES == ("csd", "fkl", "rkl", "skl", "srkl", "jsd", "tvd", "sym_kl",
                          "jeffreys", "ab", "dld")
    assert loss_param_names("csd") == ("weighting", "temperature", "mix_alpha")
    assert loss_param_names("jsd") == ("beta", "temperature")
    assert loss_param_names("dld") == ("weight", "normalize", "temperature")
    student, teacher = torch.randn(2, 5, 17), torch.randn(2, 5, 17)
    torch.testing.assert_close(get_loss("csd", weighting="TS", temperature=1.5)(student, teacher),
                               csd(student, teacher, "TS", 1.5))


@pytest.mark.parametrize("name,params,pattern", [
    ("nope", {}, r"loss='nope'.*csd, fkl, rkl"),
    ("csd", {"weighting": "SX"}, r"weighting='SX'.*'SS'"),
    ("csd", {"temperature": 0.0}, r"temperature=0.0.*> 0"),
    ("csd", {"mix_alpha": 1.5}, r"mix_alpha=1.5.*\[0, 1\]"),
    ("csd", {"lam": 0.1}, r"unknown parameter.*lam.*weighting"),
    ("skl", {"lam": -0.1}, r"lam=-0.1.*\[0, 1\]"),
    ("sym_kl", {"lam": 2}, r"lam=2.*\[0, 1\]"),
    ("jsd", {"beta": 1.1}, r"beta=1.1.*\[0, 1\]"),
    ("fkl", {"temperature": -1.0}, r"temperature=-1.0"),
    ("ab", {"alpha": float("nan")}, r"alpha=nan"),
    ("dld", {"normalize": "l2"}, r"normalize='l2'.*'none', 'mean', 'min', 'max', 'std', 'range'"),
    ("dld", {"weight": "M"}, r"weight='M'.*'S', 'T', 'U'"),
])
def test_bad_names_and_parameters_fail_at_construction(name, params, pattern):
    with pytest.raises(ValueError, match=pattern):
        get_loss(name, **params)


def test_shape_and_vocab_mismatch_name_both_shapes():
    with pytest.raises(ValueError, match=r"vocab mismatch.*V=17.*V=19"):
        csd(torch.randn(2, 17), torch.randn(2, 19))
    with pytest.raises(ValueError, match=r"shape mismatch.*\(2, 17\).*\(3, 17\)"):
        get_loss("fkl")(torch.randn(2, 17), torch.randn(3, 17))
    padded = torch.randn(2, 19)
    assert align_teacher_vocab(padded, 17).shape == (2, 17)
    with pytest.raises(ValueError, match=r"teacher V=15 < student V=17"):
        align_teacher_vocab(torch.randn(2, 15), 17)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_nan_and_positive_inf_logits_are_rejected(name):
    fn = get_loss(name)
    student, teacher = torch.randn(4, 9), torch.randn(4, 9)
    bad = student.clone()
    bad[1, 2] = bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite student logits .* at 2 positions.*fp16"):
        fn(bad, teacher)
    bad_teacher = teacher.clone()
    bad_teacher[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite teacher logits .* at 1 positions"):
        fn(student, bad_teacher)


def test_negative_inf_must_be_consistent_and_leave_a_token():
    student, teacher = torch.randn(4, 9), torch.randn(4, 9)
    one_sided = student.clone()
    one_sided[2, 3] = float("-inf")
    with pytest.raises(ValueError, match=r"only one model at 1 positions"):
        csd(one_sided, teacher)
    with pytest.raises(ValueError, match=r"every vocabulary entry"):
        csd(torch.full((2, 3), float("-inf")), torch.full((2, 3), float("-inf")))
    masked_s, masked_t = one_sided, teacher.clone()
    masked_t[2, 3] = float("-inf")
    for name in ("ab", "dld"):
        with pytest.raises(ValueError, match=f"{name}: masked"):
            get_loss(name)(masked_s, masked_t)


def test_finite_check_can_be_disabled():
    bad = torch.randn(2, 5)
    bad[0, 0] = float("nan")
    previous = set_check_finite(False)
    try:
        assert torch.isnan(csd(bad, torch.randn(2, 5))[0])
    finally:
        set_check_finite(previous)
    assert previous is True
