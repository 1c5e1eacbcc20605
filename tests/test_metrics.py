"""Text metrics on hand-computed examples."""

import math

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from csdistill.evaluate import metrics as M
from csdistill.seeding import make_generator
from csdistill.tasks.registry import TaskSpec, get_task


def test_rouge_l_hand_computed_and_equals_rouge_score():
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 of 6 tokens each -> F = 5/6.
    assert M.rouge_l("the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(500 / 6)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pred, refs = "Running dogs were barking loudly", ["the dog runs", "dogs barked loudly while running"]
    expected = 100 * max(scorer.score(r, pred)["rougeL"].fmeasure for r in refs)
    assert M.rouge_l(pred, refs) == pytest.approx(expected)
    assert M.rouge_l(pred, refs) == pytest.approx(M.rouge_l(pred, refs[1:]))  # max over references
    assert M.rouge_l("anything", []) == 0.0


def test_mean_rouge_l_and_mean_std():
    assert M.mean_rouge_l(["a b", "c"], [["a b"], ["d"]]) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="reference lists"):
        M.mean_rouge_l(["a"], [])
    agg = M.mean_std([10.0, 20.0, 30.0])
    assert agg["mean"] == 20.0 and agg["std"] == pytest.approx(math.sqrt(200 / 3)) and agg["per_seed"] == [10, 20, 30]
    assert M.mean_std([5.0])["std"] == 0.0


def test_bleu_chrf_identical_is_100_and_variable_references():
    preds = ["the quick brown fox jumps", "a lazy dog sleeps here"]
    refs = [["the quick brown fox jumps", "other"], ["a lazy dog sleeps here"]]
    assert M.corpus_bleu(preds, refs) == pytest.approx(100.0)
    assert M.corpus_chrf(preds, refs) == pytest.approx(100.0)
    assert M.corpus_bleu(["x y z w"], [["a b c d"]]) == pytest.approx(0.0)


def test_self_bleu_identical_is_100_distinct_is_lower():
    assert M.self_bleu(["the cat sat on the mat"] * 4) == pytest.approx(100.0)
    assert M.self_bleu(["one two three four", "five six seven eight"]) == pytest.approx(0.0)
    assert M.self_bleu(["only one"]) is None
    assert M.self_bleu_per_prompt([["a b c d"] * 2, ["w x y z", "p q r s"]]) == pytest.approx(50.0)


def test_distinct_n_known_list():
    texts = ["a b a b", "a c"]
    assert M.distinct_n(texts, 1) == pytest.approx(3 / 6)  # {a, b, c} of 6 unigrams
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 4)  # {ab, ba, ac} of 4 bigrams
    assert M.distinct_n(["a"], 2) == 0.0


def test_fast_self_bleu_equals_naive_sacrebleu():
    gen = make_generator(0, stream="test")
    words = "the a cat dog sat ran on mat , . big red home".split()
    samples = [" ".join(words[i] for i in torch.randint(len(words), (int(n),), generator=gen).tolist())
               for n in torch.randint(0, 12, (15,), generator=gen)]
    samples += [samples[3], "", "the cat sat on the mat ."]  # duplicates, empty, punctuation
    naive = [sacrebleu.sentence_bleu(h, [s for j, s in enumerate(samples) if j != i]).score
             for i, h in enumerate(samples)]
    assert M.self_bleu(samples) == pytest.approx(sum(naive) / len(naive), abs=1e-9)


def test_exact_match_gsm8k_checker():
    check = get_task("gsm8k").check
    records = [{"answer": "so 3 + 4 = 7\n#### 7"}, {"answer": "#### 1,200"}, {"answer": "#### 5"}]
    preds = ["The answer is 7.", "#### 1200", "#### 6"]
    assert M.exact_match(preds, records, check) == pytest.approx(200 / 3)


def test_distribution_scores_constructed():
    true = {"heads ": 0.5, "tails": 0.5}
    spec = TaskSpec("coin", "distribution", lambda p, r: p.strip() in ("heads", "tails"), lambda r: true)
    samples = ["heads", " heads\n", "tails", "edge"]
    s = M.distribution_scores(samples, {}, true, spec.check)
    assert s["valid"] == pytest.approx(0.75)
    # empirical: heads .5, tails .25, edge .25 -> TVD = ½(0 + .25 + .25)
    assert s["tvd"] == pytest.approx(0.25)
    assert s["kl"] == pytest.approx(2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3))
    assert s["distinct"] == 3
    assert s["entropy"] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert s["true_entropy"] == pytest.approx(math.log(2))
    perfect = M.distribution_scores(["heads", "tails"], {}, true, spec.check)
    assert perfect["tvd"] == pytest.approx(0.0) and perfect["kl"] == pytest.approx(0.0)
    none_valid = M.distribution_scores(["edge"], {}, true, spec.check)
    assert none_valid["valid"] == 0.0 and none_valid["kl"] is None and none_valid["tvd"] == pytest.approx(1.0)
    agg = M.aggregate_distribution([s, perfect, none_valid])
    assert agg["valid"] == pytest.approx((0.75 + 1 + 0) / 3) and agg["n_prompts"] == 3
    assert agg["kl"] == pytest.approx(s["kl"] / 2) and agg["kl_infinite"] == 0  # None skipped
    outside = M.distribution_scores(["heads", "HEADS"], {}, true, lambda p, r: True)  # valid but not in support
    assert outside["kl"] == math.inf and M.aggregate_distribution([outside, perfect])["kl_infinite"] == 1


def test_ece_constructed_case_and_streaming():
    conf = torch.tensor([0.95, 0.95, 0.25, 0.25])
    correct = torch.tensor([1, 0, 0, 0])
    # bin (14/15, 1]: acc .5 vs conf .95; bin (3/15, 4/15]: acc 0 vs conf .25; each holds half the mass.
    hist = M.calibration_histogram(conf, correct, 15)
    assert M.expected_calibration_error(hist) == pytest.approx(0.5 * 0.45 + 0.5 * 0.25)
    split = M.calibration_histogram(conf[:1], correct[:1]) + M.calibration_histogram(conf[1:], correct[1:])
    assert torch.equal(split, hist)
    calibrated = M.calibration_histogram(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1, 1, 0]), 15)
    assert M.expected_calibration_error(calibrated) == pytest.approx(0.0)
    assert M.expected_calibration_error(torch.zeros(3, 15)) == 0.0
    with pytest.raises(ValueError, match="calibration_bins"):
        M.calibration_histogram(conf, correct, 0)


def test_distribution_scores_on_the_builtin_suite():
    from csdistill.tasks.suite import make_suite

    record = next(r for r in make_suite(0, n_train=20, n_validation=5, n_test=10)["test"] if r["task"] == "choice")
    spec = get_task("choice")
    true = spec.true_distribution(record)
    top = max(true, key=true.get)
    s = M.distribution_scores([top] * 4 + ["not a colour"], record, true, spec.check)
    assert s["valid"] == pytest.approx(0.8) and s["distinct"] == 2
    assert s["kl"] == pytest.approx(-math.log(true[top]))  # all valid mass on one outcome
    assert s["tvd"] == pytest.approx(0.5 * (abs(0.8 - true[top]) + (1 - true[top]) + 0.2))


def test_text_scores_over_passes_skip_records_without_references():
    from csdistill.evaluate.scoring import text_scores

    passes = [["the cat sat", "anything"], ["a dog ran", "anything else"]]
    out = text_scores(passes, [["the cat sat"], []])
    assert out["n_with_references"] == 1
    assert out["rouge_l"]["per_seed"] == pytest.approx([100.0, 0.0]) and out["rouge_l"]["mean"] == pytest.approx(50.0)
    assert out["self_bleu"]["per_prompt"] == pytest.approx(M.self_bleu_per_prompt(list(zip(*passes))))
    assert out["distinct_1"]["per_seed"] == pytest.approx([1.0, 1.0])


def test_task_scores_exact_and_distribution():
    from csdistill.evaluate.scoring import task_scores, task_specs

    records = [{"instruction": "q", "answer": "#### 7", "task": "gsm8k"},
               {"instruction": "pick: pink cyan gold lime", "task": "choice"}, {"instruction": "open"}]
    specs = task_specs("s", records)
    passes = [["it is 7", "pink", "x"], ["it is 8", "cyan", "y"]]
    out = task_scores(passes, records, specs)
    assert out["exact_match"]["per_seed"] == [100.0, 0.0] and out["exact_match"]["n"] == 1
    assert out["distribution"]["valid"] == 1.0 and out["distribution"]["distinct"] == 2
    with pytest.raises(ValueError, match=r"set 's', record 0: unknown task 'nope'"):
        task_specs("s", [{"instruction": "q", "task": "nope"}])


def test_comet_is_optional_with_a_clear_message():
    from csdistill.evaluate.scoring import comet_scores

    try:
        import comet  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="unbabel-comet"):
            comet_scores("missing.ckpt", ["src"], [["mt"]], [["ref"]])
    else:
        with pytest.raises(ValueError, match="not found"):
            comet_scores("missing.ckpt", ["src"], [["mt"]], [["ref"]])
