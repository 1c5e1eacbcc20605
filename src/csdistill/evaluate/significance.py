"""Which differences between two models' scores are outside the noise.

A paired, two-level bootstrap: each resample draws the test examples with replacement (the same draw for
both rows: they answered the same prompts) and, independently per row, the training seeds with
replacement. The 95 % interval of the difference of means covers both sources of noise the table's
± std does not separate: which prompts are in the test set, and which seed trained the student.
With two or three training seeds the seed level is rough (a bootstrap cannot see variation that two
seeds did not show); an interval that excludes 0 is evidence, not proof.

Scores come from the generations that evaluation saved (generations/<set>.<pass>.jsonl), so finished
comparisons can be analysed afresh. Per example, a decoding's score is the mean over its passes
(sampling seeds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from csdistill.errors import UserError
from csdistill.files import jsonl_lines

N_RESAMPLES = 2000
LEVEL = 0.95


def read_predictions(path: Path, n: int) -> list[str]:
    """The predictions of one generations file, in record order (n lines expected)."""
    lines = [json.loads(line) for line in jsonl_lines(path)]
    if len(lines) != n:
        raise UserError(f"{path}: {len(lines)} generations for a set of {n} records; re-run the evaluation")
    return [line["prediction"] for line in sorted(lines, key=lambda line: line["index"])]


def example_scores(passes: Sequence[Sequence[str]], records: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Per-example scores of one model on one set, averaged over passes.

    passes: [pass][record] predictions. Returns {"rouge_l": (E,) over every record with a reference,
    "exact_match": (E_exact,) 0/100 over the exact-checked records}; a metric no record has is left out.
    """
    from csdistill.evaluate import metrics as M
    from csdistill.evaluate.scoring import record_references, task_specs

    references = [record_references(r) for r in records]
    specs = task_specs("scores", records)
    out: dict[str, torch.Tensor] = {}
    referenced = [i for i, refs in enumerate(references) if refs]
    if referenced:
        out["rouge_l"] = torch.tensor([[M.rouge_l(p[i], references[i]) for i in referenced] for p in passes],
                                      dtype=torch.float64).mean(0)
    exact = [i for i, s in enumerate(specs) if s is not None and s.kind == "exact"]
    if exact:
        out["exact_match"] = torch.tensor([[100.0 * bool(specs[i].check(p[i], records[i])) for i in exact]
                                           for p in passes], dtype=torch.float64).mean(0)
    return out


def bootstrap_difference(a: torch.Tensor, b: torch.Tensor, seed: int = 0, n_resamples: int = N_RESAMPLES,
                         level: float = LEVEL) -> dict:
    """Difference of mean scores, a minus b, with its bootstrap interval.

    a: (Sa, E), b: (Sb, E): per training seed (rows) and test example (columns, the same examples in both).
    Returns {"delta", "low", "high", "p_greater" (share of resamples with a ahead), "separated" (the
    interval excludes 0)}.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise UserError(f"bootstrap_difference: a {tuple(a.shape)} and b {tuple(b.shape)} must be (seeds, examples) "
                         "over the same, non-empty examples")
    g = torch.Generator().manual_seed(seed)
    n = a.shape[1]
    examples = torch.randint(n, (n_resamples, n), generator=g)  # (B, E), shared by both rows

    def resampled_means(x: torch.Tensor) -> torch.Tensor:
        seeds = torch.randint(x.shape[0], (n_resamples, x.shape[0]), generator=g)  # (B, S)
        per_example = x[seeds].mean(1)  # (B, E): the mean over the drawn seeds
        return per_example.gather(1, examples).mean(1)  # (B,)

    deltas = resampled_means(a) - resampled_means(b)  # (B,)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(deltas, torch.tensor([tail, 1.0 - tail], dtype=deltas.dtype)).tolist()
    return {"delta": float(a.mean() - b.mean()), "low": low, "high": high,
            "p_greater": float((deltas > 0).double().mean()), "separated": low > 0 or high < 0}


def format_difference(d: dict, digits: int = 1) -> str:
    """'+2.3 [+0.4, +4.1]' in bold where the interval excludes 0."""
    text = f"{d['delta']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"
    return f"**{text}**" if d["separated"] else text
