"""The paired two-level bootstrap behind compare's noise analysis, against an explicit loop."""

import pytest
import torch

from csdistill.evaluate.significance import bootstrap_difference, example_scores, format_difference


def _loop_deltas(a, b, seed, n_resamples):
    """The same draws as bootstrap_difference, one resample at a time."""
    g = torch.Generator().manual_seed(seed)
    n = a.shape[1]
    examples = torch.randint(n, (n_resamples, n), generator=g)
    seeds_a = torch.randint(a.shape[0], (n_resamples, a.shape[0]), generator=g)
    seeds_b = torch.randint(b.shape[0], (n_resamples, b.shape[0]), generator=g)
    deltas = []
    for k in range(n_resamples):
        mean_a = sum(float(a[i, j]) for i in seeds_a[k] for j in examples[k]) / (a.shape[0] * n)
        mean_b = sum(float(b[i, j]) for i in seeds_b[k] for j in examples[k]) / (b.shape[0] * n)
        deltas.append(mean_a - mean_b)
    return torch.tensor(deltas, dtype=torch.float64)


def test_interval_matches_an_explicit_loop_on_odd_shapes():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 7, generator=g, dtype=torch.float64) * 100
    b = torch.rand(1, 7, generator=g, dtype=torch.float64) * 100
    d = bootstrap_difference(a, b, seed=5, n_resamples=300)
    deltas = _loop_deltas(a, b, 5, 300)
    low, high = torch.quantile(deltas, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    assert d["low"] == pytest.approx(low) and d["high"] == pytest.approx(high)
    assert d["p_greater"] == pytest.approx(float((deltas > 0).double().mean()))
    assert d["delta"] == pytest.approx(float(a.mean() - b.mean()))


def test_a_consistent_gap_is_separated_and_a_tie_is_not():
    g = torch.Generator().manual_seed(1)
    b = torch.rand(2, 40, generator=g, dtype=torch.float64) * 50
    ahead = bootstrap_difference(b + 5.0, b, seed=0)
    assert ahead["separated"] and ahead["low"] > 0 and ahead["p_greater"] > 0.975
    assert ahead["delta"] == pytest.approx(5.0)
    tie = bootstrap_difference(b, b.flip(0), seed=0)  # the same scores, seeds swapped
    assert not tie["separated"] and tie["low"] <= 0 <= tie["high"]
    assert format_difference(ahead).startswith("**+5.0 [") and not format_difference(tie).startswith("**")


def test_seed_to_seed_spread_keeps_a_gap_inside_the_noise():
    """Same per-example noise, but one row's two training seeds disagree by far more than the gap."""
    g = torch.Generator().manual_seed(2)
    base = torch.rand(1, 40, generator=g, dtype=torch.float64) * 10
    steady = base.expand(2, 40)
    spread = torch.cat([base + 21.0, base - 19.0])  # mean gap +1, seeds 40 apart
    d = bootstrap_difference(spread, steady, seed=0)
    assert d["delta"] == pytest.approx(1.0) and not d["separated"]
    prompts_only = bootstrap_difference(spread.mean(0, keepdim=True), steady[:1], seed=0)
    assert prompts_only["separated"]  # the same means, seen as one model each: prompt noise alone is tiny


@pytest.mark.parametrize("a, b", [(torch.zeros(2, 3), torch.zeros(2, 4)), (torch.zeros(3), torch.zeros(3)),
                                  (torch.zeros(1, 0), torch.zeros(1, 0))])
def test_mismatched_shapes_are_rejected(a, b):
    with pytest.raises(ValueError, match="same, non-empty examples"):
        bootstrap_difference(a, b)


def test_example_scores_average_over_passes():
    records = [{"instruction": "Add", "response": "the answer is 4 #### 4", "task": "gsm8k", "answer": "4"},
               {"instruction": "Say hi", "response": "hello there friend"},
               {"instruction": "Nothing to check", "response": ""}]
    passes = [["#### 4", "hello there friend", "x"], ["#### 5", "goodbye", "y"]]
    scores = example_scores(passes, records)
    assert scores["exact_match"].tolist() == [50.0]  # right in one pass of two
    assert scores["rouge_l"].shape == (2,)  # the record without a reference is not scored
    assert scores["rouge_l"][1] == pytest.approx(50.0)  # 100 then 0
