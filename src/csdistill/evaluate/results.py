"""Typed views of the results JSON that `csdistill evaluate` writes, and the accessors its readers use.

results.json = Results; sets/<set>.json = SetResult. The files stay plain JSON (these are TypedDicts, so an
older file reads as it always did); readers (compare, report, significance, benchmarks) go through the
accessors below instead of spelling out nested keys, so a missing metric is None in one place.
"""

from __future__ import annotations

from typing import TypedDict


class Stat(TypedDict, total=False):
    """A metric over the passes: mean ± std over the sampling seeds, one value per seed; n: records scored."""

    mean: float | None
    std: float | None
    per_seed: list[float]
    n: int


class Distribution(TypedDict, total=False):
    """Distribution tasks, per prompt over the passes' samples, then averaged; entropies in nats."""

    valid: float
    tvd: float
    kl: float
    distinct: float
    entropy: float
    true_entropy: float


class SetResult(TypedDict, total=False):
    n_examples: int
    passes: list[str]
    seeds: list[int]
    greedy: bool
    rouge_l: Stat
    bleu: Stat
    chrf: Stat
    semantic: Stat
    exact_match: Stat
    self_bleu: dict  # {"per_prompt": float | None, "set": Stat}
    distinct_1: Stat
    distinct_2: Stat
    distribution: Distribution
    fidelity: dict[str, float]  # forward_kl, reverse_kl, csd_ss, top1_agreement, student_nll
    calibration: dict[str, float]  # ece, ...
    comet: Stat
    generations: list[str]  # generations files, relative to the evaluation folder
    key: str


class Results(TypedDict, total=False):
    model: str | None
    teacher: str | None
    config_hash: str
    command: str
    date: str
    machine: dict
    run: dict  # loss, weighting, mode, seeds, greedy
    config: dict
    label: str
    sets: dict[str, SetResult]


def sets_of(result: Results) -> dict[str, SetResult]:
    """{set name: its results}."""
    return result["sets"]


def stat(set_result: SetResult, metric: str) -> tuple[float | None, float | None]:
    """(mean, std) of a metric such as 'rouge_l' or 'exact_match'; (None, None) where the set lacks it."""
    value = set_result.get(metric) or {}
    return value.get("mean"), value.get("std")


def mean_of(set_result: SetResult, metric: str) -> float | None:
    return stat(set_result, metric)[0]


def exact_count(set_result: SetResult) -> int:
    """How many records an answer checker scored (exact match)."""
    return (set_result.get("exact_match") or {}).get("n", 0)


def n_examples(set_result: SetResult) -> int:
    return set_result.get("n_examples", 0)


def distribution(set_result: SetResult) -> Distribution | None:
    return set_result.get("distribution") or None


def entropy_ratio(dist: Distribution) -> float:
    """Sampled entropy / true entropy (1 = as diverse as the truth)."""
    return dist["entropy"] / max(dist["true_entropy"], 1e-9)


def fidelity(set_result: SetResult, key: str) -> float | None:
    """A teacher-forced fidelity number ('forward_kl', 'top1_agreement', ...), None when not measured."""
    return (set_result.get("fidelity") or {}).get(key)


def ece(set_result: SetResult) -> float | None:
    return (set_result.get("calibration") or {}).get("ece")


def diversity_value(set_result: SetResult) -> float | None:
    """Self-BLEU across the seeds' samples per prompt, else over the set (single pass)."""
    sb = set_result.get("self_bleu") or {}
    if sb.get("per_prompt") is not None:
        return sb["per_prompt"]
    return (sb.get("set") or {}).get("mean")


def generation_files(set_result: SetResult) -> list[str]:
    """The set's generations files (one per pass), relative to its evaluation folder."""
    return list(set_result.get("generations") or [])
