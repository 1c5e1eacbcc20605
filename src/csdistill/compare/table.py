"""Scores of evaluated runs and the comparison's headline table (rows = runs, columns = metrics)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable, Sequence

from csdistill.compare.plan import Row
from csdistill.evaluate import results as R


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def is_free_text(set_result: R.SetResult) -> bool:
    """Scored against reference texts (ROUGE-L): not a distribution task, and not every record exact-checked
    (a mixed set, e.g. open prompts with a few GSM8K-style ones, gets both EM and ROUGE-L)."""
    return not R.distribution(set_result) and bool(set_result.get("rouge_l")) and \
        R.exact_count(set_result) < R.n_examples(set_result)


def summary_scores(result: R.Results) -> dict[str, float | None]:
    """Means over one evaluated run's sets (None where no set has the metric): exact (EM %, exact tasks),
    valid / tvd / entropy_ratio (sampled entropy / true entropy; distribution tasks), rouge (ROUGE-L of the
    other sets), self_bleu / distinct_2 (diversity), ece, fkl / top1 (teacher-forced fidelity to the teacher)."""
    sets = list(R.sets_of(result).values())
    dist = [d for d in map(R.distribution, sets) if d]
    free = [s for s in sets if is_free_text(s)]
    return {"exact": _mean(R.mean_of(s, "exact_match") for s in sets if s.get("exact_match")),
            "valid": _mean(d["valid"] for d in dist), "tvd": _mean(d["tvd"] for d in dist),
            "entropy_ratio": _mean(map(R.entropy_ratio, dist)),
            "rouge": _mean(R.mean_of(s, "rouge_l") for s in free),
            "self_bleu": _mean(map(R.diversity_value, free)),
            "distinct_2": _mean(R.mean_of(s, "distinct_2") for s in free),
            "ece": _mean(map(R.ece, free)),
            "fkl": _mean(R.fidelity(s, "forward_kl") for s in sets),
            "top1": _mean(R.fidelity(s, "top1_agreement") for s in sets)}


def set_score(s: R.SetResult) -> float | None:
    """One set's score to choose settings by (higher is better): exact match % on exact-checked records,
    100 * (1 - TVD) on distribution tasks, ROUGE-L on free text; a mixed set (open prompts with a few
    checkable ones) the mean of its EM and ROUGE-L, so neither a handful of exact records nor the text
    alone decides."""
    parts = [R.mean_of(s, "exact_match")] if s.get("exact_match") else []
    if R.distribution(s):
        parts.append(100.0 * (1.0 - R.distribution(s)["tvd"]))
    elif s.get("rouge_l") and (not parts or is_free_text(s)):
        parts.append(R.mean_of(s, "rouge_l"))
    return statistics.fmean(parts) if parts else None


def selection_score(result: R.Results) -> float:
    """The mean over sets of set_score (NaN when no set has a score)."""
    scores = [v for v in map(set_score, R.sets_of(result).values()) if v is not None]
    return statistics.fmean(scores) if scores else float("nan")


def over_seeds(row: Row, decode: str, get: Callable[[R.Results], tuple]) -> tuple[float | None, float | None]:
    """(mean, std) of a metric: one model -> its own (std over sampling seeds, if any); several seeds ->
    mean and std over the training seeds of each seed's mean."""
    values = [get(r) for r in row.results[decode]]
    if len(values) == 1:
        return values[0]
    means = [v[0] for v in values if v[0] is not None]
    if not means:
        return None, None
    return statistics.fmean(means), statistics.stdev(means) if len(means) > 1 else 0.0


def table_columns(sample: R.Results, decodes: Sequence[str]) -> list:
    """report.Column specs over Rows, from the sets of one results dict: EM per exact set, ROUGE-L per
    free-text set, distribution scores, diversity (sampled), then teacher fidelity and ECE once."""
    sets = R.sets_of(sample)
    exact = [s for s, r in sets.items() if r.get("exact_match")]
    dist = [s for s, r in sets.items() if R.distribution(r)]
    free = [s for s, r in sets.items() if is_free_text(r)]

    def metric(decode, set_name, key):
        return lambda row: over_seeds(row, decode, lambda r: R.stat(R.sets_of(r).get(set_name, {}), key))

    def summary(decode, key, scale=1.0):
        def get(r):
            value = summary_scores(r)[key]
            return (None if value is None else scale * value), None
        return lambda row: over_seeds(row, decode, get)

    columns = []
    for decode in decodes:
        tag = f" ({decode})" if len(decodes) > 1 else ""
        columns += [(f"{s} EM ↑{tag}", metric(decode, s, "exact_match"), 1, 1) for s in exact]
        if len(exact) > 1:
            columns.append((f"exact avg ↑{tag}", summary(decode, "exact"), 1, 1))
        columns += [(f"{s} ROUGE-L ↑{tag}", metric(decode, s, "rouge_l"), 1, 1) for s in free]
        if dist:
            columns += [(f"dist valid ↑{tag}", summary(decode, "valid"), 1, 3), (f"dist TVD ↓{tag}", summary(decode, "tvd"), -1, 3),
                        (f"dist entropy/true{tag}", summary(decode, "entropy_ratio"), 0, 2)]
        if free and decode == "sampled":
            columns += [(f"Self-BLEU{tag}", summary(decode, "self_bleu"), 0, 1),
                        (f"distinct-2{tag}", summary(decode, "distinct_2"), 0, 3)]
    first = decodes[0]  # teacher-forced metrics do not depend on the decoding
    columns += [("FKL to teacher ↓", summary(first, "fkl"), -1, 3), ("top-1 agree ↑", summary(first, "top1"), 1, 3)]
    if free:
        columns.append(("ECE ↓", summary(first, "ece"), -1, 3))
    return columns


def comparison_table(rows: list[Row], decodes: Sequence[str]) -> tuple[str, dict]:
    """(markdown, {label: {column: [mean, std]}}) of the rows."""
    from csdistill.report import markdown_table

    columns = table_columns(rows[0].results[decodes[0]][0], decodes)
    numbers = {row.label: {col[0]: list(col[1](row)) for col in columns} for row in rows}
    return markdown_table([row.label for row in rows], rows, columns), numbers


def headline_scores(rows: list[Row], decodes: Sequence[str], records: dict[str, list[dict]],
                    eval_dir: Path) -> dict[tuple[str, str, str], dict]:
    """{(decode, set, metric): {row name: (seeds, examples) per-example scores}} from the saved generations;
    metric: exact_match on exact-checked records, rouge_l on free-text sets (see evaluate/significance.py)."""
    import torch

    from csdistill.evaluate.significance import example_scores, read_predictions

    out: dict = {}
    for decode in decodes:
        for row in rows:
            per_seed: dict[tuple[str, str], list] = {}
            for seed, result in zip(row.models, row.results[decode]):
                folder = eval_dir / decode / row.folder(seed)
                for name, set_result in R.sets_of(result).items():
                    passes = [read_predictions(folder / f, len(records[name])) for f in R.generation_files(set_result)]
                    scores = example_scores(passes, records[name])
                    if not is_free_text(set_result):
                        scores.pop("rouge_l", None)
                    for metric, values in scores.items():
                        per_seed.setdefault((name, metric), []).append(values)
            for (name, metric), values in per_seed.items():
                out.setdefault((decode, name, metric), {})[row.name] = torch.stack(values)
    return out
