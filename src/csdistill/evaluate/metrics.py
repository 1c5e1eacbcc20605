"""Text-level evaluation metrics: pure functions of strings (and, for ECE, of tensors).

- ROUGE-L: F-measure x 100 from the ``rouge_score`` package, max over references.
- BLEU / chrF: corpus-level sacreBLEU scores (multi-reference).
- Self-BLEU (sacreBLEU sentence BLEU of each sample against the others) and distinct-n.
- Exact match through the task registry, and the distributional scores of tasks whose true
  output distribution is known (validity, TVD, KL, entropies).
- Expected calibration error from an equal-width confidence histogram.

Scores on a 0-100 scale: ROUGE-L, BLEU, chrF, Self-BLEU, exact match (percent).
Scores on a 0-1 scale: distinct-n, valid share, TVD, ECE. Entropies and KL in nats.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from functools import lru_cache
from typing import Callable, Sequence

import torch
from csdistill.errors import UserError


# --------------------------------------------------------------------------- aggregation


def mean_std(per_seed: Sequence[float]) -> dict:
    """{"mean", "std", "per_seed"}; std is the population std (ddof=0) over seeds, 0 for one seed."""
    values = [float(v) for v in per_seed]
    if not values:
        return {"mean": None, "std": None, "per_seed": []}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {"mean": mean, "std": std, "per_seed": values}


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------- ROUGE-L, BLEU, chrF


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    # Stemming on, as in the S-NI / MiniLLM evaluation scripts the paper's numbers come from.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure x 100 of one prediction: the maximum over its references (0 if none)."""
    scorer = _rouge_scorer()
    scores = [scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references]
    return 100.0 * max(scores) if scores else 0.0


def mean_rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over examples of :func:`rouge_l`; predictions[i] is scored against references[i]."""
    if len(predictions) != len(references):
        raise UserError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        return 0.0
    return sum(rouge_l(p, r) for p, r in zip(predictions, references)) / len(predictions)


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacreBLEU's layout: one stream per reference slot, None where an example has fewer refs."""
    width = max((len(r) for r in references), default=0)
    return [[r[k] if k < len(r) else None for r in references] for k in range(width)]


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacreBLEU corpus BLEU (13a tokeniser, 0-100) with a variable number of references."""
    import sacrebleu

    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), _reference_streams(references)).score)


def corpus_chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacreBLEU corpus chrF (0-100) with a variable number of references."""
    import sacrebleu

    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_chrf(list(predictions), _reference_streams(references)).score)


# --------------------------------------------------------------------------- diversity


def _closest_other_length(length: int, counts: Counter, distinct: list[int]) -> int:
    """sacreBLEU's closest reference length (ties -> the shorter) among all lengths but one copy of `length`."""
    if counts[length] > 1:
        return length
    k = bisect.bisect_left(distinct, length)
    below = distinct[k - 1] if k > 0 else None
    above = distinct[k + 1] if k + 1 < len(distinct) else None
    if below is None or (above is not None and above - length < length - below):
        return above
    return below


def self_bleu(samples: Sequence[str]) -> float | None:
    """Self-BLEU (0-100): mean over i of sacreBLEU sentence BLEU(samples[i], refs = all other samples).

    100 means every sample repeats the others; lower is more diverse. None for fewer than 2 samples.
    Equals averaging `sacrebleu.sentence_bleu` (13a, exp smoothing, effective order) but in
    O(total n-grams): the clipped reference count of an n-gram over "all others" is the largest
    count among samples, or the second largest when sample i holds the largest.
    """
    from sacrebleu.metrics.bleu import BLEU, MAX_NGRAM_ORDER
    from sacrebleu.metrics.helpers import extract_all_word_ngrams
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    if len(samples) < 2:
        return None
    order, tokenize = MAX_NGRAM_ORDER, Tokenizer13a()
    stats = [extract_all_word_ngrams(tokenize(s.rstrip()), 1, order) for s in samples]  # (Counter, length)
    top: dict[tuple, list] = {}  # n-gram -> [largest count, its sample, second largest count]
    for i, (ngrams, _) in enumerate(stats):
        for ngram, c in ngrams.items():
            best = top.setdefault(ngram, [0, -1, 0])
            if c > best[0]:
                best[:] = [c, i, best[0]]
            elif c > best[2]:
                best[2] = c
    lengths = Counter(length for _, length in stats)
    distinct = sorted(lengths)
    scores = []
    for i, (ngrams, length) in enumerate(stats):
        correct, total = [0] * order, [0] * order
        for ngram, c in ngrams.items():
            best = top[ngram]
            total[len(ngram) - 1] += c
            correct[len(ngram) - 1] += min(c, best[2] if best[1] == i else best[0])
        ref_len = _closest_other_length(length, lengths, distinct)
        scores.append(BLEU.compute_bleu(correct, total, length, ref_len, smooth_method="exp", effective_order=True).score)
    return float(sum(scores) / len(scores))


def self_bleu_per_prompt(samples_by_prompt: Sequence[Sequence[str]]) -> float | None:
    """Mean over prompts of the Self-BLEU of that prompt's samples (one per seed); None if < 2 each."""
    return _mean([self_bleu(samples) for samples in samples_by_prompt])


def distinct_n(texts: Sequence[str], n: int) -> float:
    """distinct-n: unique n-grams / total n-grams over all texts (white-space tokens); 0 if none."""
    counts: Counter = Counter()
    for text in texts:
        tokens = text.split()
        counts.update(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


# --------------------------------------------------------------------------- exact match


def exact_match(predictions: Sequence[str], records: Sequence[dict], check: Callable[[str, dict], bool]) -> float:
    """Percent of predictions[i] that `check(prediction, records[i])` accepts."""
    if not predictions:
        return 0.0
    return 100.0 * sum(bool(check(p, r)) for p, r in zip(predictions, records)) / len(predictions)


# --------------------------------------------------------------------------- distribution tasks


def entropy(probs: Sequence[float]) -> float:
    """Shannon entropy in nats of a probability vector (zeros ignored)."""
    return -sum(p * math.log(p) for p in probs if p > 0)


def empirical_distribution(samples: Sequence[str]) -> dict[str, float]:
    """Share of each sample string (stripped of surrounding white space, as the task checkers do)."""
    counts = Counter(s.strip() for s in samples)
    return {k: c / len(samples) for k, c in counts.items()}


def distribution_scores(samples: Sequence[str], record: dict, true_distribution: dict[str, float],
                        check: Callable[[str, dict], bool]) -> dict:
    """Scores of one prompt's samples against its known output distribution.

    Outputs are compared after `str.strip()` (case matters, as in the suite's checkers). Invalid samples (check false) are their own
    outcome with true probability 0, so they count in `tvd`.
    - valid: share of samples that `check` accepts
    - tvd: ½ Σ_x |p_emp(x) − p_true(x)| over all outcomes
    - kl: KL(p_emp_valid ‖ p_true) over the valid samples (renormalised), nats; None if none valid.
      inf if a valid sample lies outside the declared support; biased upwards for few samples.
    - distinct: number of distinct outputs; entropy / true_entropy: nats.
    """
    if not samples:
        raise UserError("distribution_scores needs at least one sample")
    true = {k.strip(): float(v) for k, v in true_distribution.items()}
    valid = [s for s in samples if check(s, record)]
    emp = empirical_distribution(samples)
    invalid_share = 1.0 - len(valid) / len(samples)
    outcomes = set(true) | set(emp)
    valid_emp = empirical_distribution(valid) if valid else {}
    tvd = 0.5 * sum(abs(emp.get(x, 0.0) - true.get(x, 0.0)) for x in outcomes)
    kl = None
    if valid_emp:
        kl = sum(q * math.log(q / true[x]) if true.get(x, 0.0) > 0 else math.inf for x, q in valid_emp.items())
    return {
        "valid": 1.0 - invalid_share,
        "tvd": tvd,
        "kl": kl,
        "distinct": len(emp),
        "entropy": entropy(emp.values()),
        "true_entropy": entropy(true.values()),
    }


def aggregate_distribution(per_prompt: Sequence[dict]) -> dict:
    """Means over prompts of each distribution score. `kl` averages the prompts with a finite KL;
    `kl_infinite` counts those with a valid sample outside the declared support (None = no valid sample)."""
    keys = ("valid", "tvd", "distinct", "entropy", "true_entropy")
    out = {k: _mean([p[k] for p in per_prompt]) for k in keys}
    kls = [p["kl"] for p in per_prompt if p["kl"] is not None]
    out["kl"] = _mean([k for k in kls if math.isfinite(k)])
    out["kl_infinite"] = sum(1 for k in kls if not math.isfinite(k))
    out["n_prompts"] = len(per_prompt)
    return out


# --------------------------------------------------------------------------- calibration


def calibration_histogram(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """Equal-width bins over [0, 1]: rows (count, sum of confidence, sum of correct) -> (3, n_bins).

    confidence (N,) in [0, 1], correct (N,) bool/0-1. Bin b holds conf in (b/n, (b+1)/n]; 0 goes to
    bin 0. Histograms of batches add up, so ECE can be accumulated in a stream.
    """
    if n_bins < 1:
        raise UserError(f"eval.calibration_bins={n_bins}: must be >= 1")
    conf = confidence.detach().reshape(-1).double()
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    hist = torch.zeros(3, n_bins, dtype=torch.float64)
    hist[0].index_add_(0, bins, torch.ones_like(conf))
    hist[1].index_add_(0, bins, conf)
    hist[2].index_add_(0, bins, correct.detach().reshape(-1).double())
    return hist


def expected_calibration_error(hist: torch.Tensor) -> float:
    """ECE = Σ_b (n_b / N) · |acc_b − conf_b| from a (3, n_bins) histogram; 0 for an empty one."""
    counts, conf_sum, correct_sum = hist
    total = counts.sum()
    if total == 0:
        return 0.0
    return float((conf_sum - correct_sum).abs().sum() / total)  # n_b·|acc_b − conf_b| = |Σcorrect − Σconf|
