"""Scaled reproduction of the paper's Table 1 on the built-in task suite (not a test; ~1 hour on 2 cores).

Every loss in the registry (CSD in SS/US/TS, FKL, RKL, SKL, SRKL, JSD, TVD, DLD) plus the SFT-only
baseline, distilled from one teacher into the quickstart's small student, over several student seeds:

  1. learning-rate sweep (run seed 100, scored on the *validation* split): for each lr in --sweep, every
     run; the best lr per run by the suite score (below) is kept -> best_lrs.json
  2. the table: every run with its best lr, for each seed in --seeds, scored on the *test* split
  3. paper_table.md (mean ± std over seeds) and paper_table.png

Suite score of one evaluation: the mean over the five tasks of exact match % (reverse, sort, shift) and
100·(1 − TVD) of the sampled output distribution (choice, grammar), each averaged over the 5 sampling seeds.

    python benchmarks/paper_table.py --out runs/paper_table            # sweep + 3 seeds (~1 h)
    python benchmarks/paper_table.py --out runs/paper_table --no-sweep  # the quickstart's LOSS_LR
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from csdistill.compare import RunSpec, parse_losses, summary_scores
from csdistill.evaluate import results as R
from csdistill.quickstart import LOSS_LR, PAPER_LOSSES, quickstart
from csdistill.report import markdown_table


def set_score(set_result: R.SetResult) -> float | None:
    """Exact match % for exact tasks, 100·(1 − TVD) for distribution tasks."""
    if set_result.get("exact_match"):
        return R.mean_of(set_result, "exact_match")
    if R.distribution(set_result):
        return 100.0 * (1.0 - R.distribution(set_result)["tvd"])
    return None


def run_scores(result: dict) -> dict[str, float]:
    """The numbers the table reports for one evaluated run (shares and agreement in %)."""
    summary = summary_scores(result)
    scores = [v for v in (set_score(s) for s in R.sets_of(result).values()) if v is not None]
    return {**summary, "score": statistics.fmean(scores), "valid": 100.0 * summary["valid"],
            "top1": 100.0 * summary["top1"]}


def by_label(results: list[dict]) -> dict[str, dict[str, float]]:
    return {r["label"]: run_scores(r) for r in results}


def sweep(out: Path, losses: str, lrs: list[float], progress: bool) -> dict[str, float]:
    """Best lr per run name on the validation split (run seed 100); `losses` as for --losses."""
    specs = parse_losses(losses)
    table: dict[str, dict[float, float]] = {}
    for lr in lrs:
        summary = quickstart("default", out, losses, seed=0, progress=progress, run_seed=100, tag=f"sweep_lr{lr:g}",
                             eval_split="validation", lrs={s.loss: lr for s in [RunSpec("sft"), *specs]})
        for spec, result in zip([RunSpec("sft"), *specs], summary.results[1:]):
            table.setdefault(spec.name, {})[lr] = run_scores(result)["score"]
    best = {name: max(scores, key=scores.get) for name, scores in table.items()}
    (out / "sweep.json").write_text(json.dumps({"scores": {k: {f"{lr:g}": v for lr, v in s.items()}
                                                           for k, s in table.items()}, "best": best}, indent=1))
    print("\nlearning-rate sweep (validation suite score):")
    for name, scores in table.items():
        print(f"  {name:10s} " + "  ".join(f"lr {lr:g}: {v:6.2f}" for lr, v in scores.items()) + f"  -> {best[name]:g}")
    return best


COLUMNS = (("suite score ↑", "score", 1, 2), ("exact EM ↑", "exact", 1, 1), ("dist valid % ↑", "valid", 1, 1),
           ("dist TVD ↓", "tvd", -1, 3), ("entropy / true", "entropy_ratio", 0, 2), ("FKL to teacher ↓", "fkl", -1, 3),
           ("top-1 agree % ↑", "top1", 1, 1))


def aggregate(per_seed: list[dict[str, dict[str, float]]]) -> tuple[list[str], list[dict]]:
    """Rows (labels) and per-row {key: (mean, std over seeds)}."""
    labels = list(per_seed[0])
    rows = []
    for label in labels:
        row = {}
        for _, key, _, _ in COLUMNS:
            values = [seed[label][key] for seed in per_seed]
            row[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        rows.append(row)
    return labels, rows


def render(labels: list[str], rows: list[dict], lrs: dict[str, float], seeds: list[int], minutes: float) -> str:
    columns = [(title, (lambda row, key=key: row[key]), direction, digits) for title, key, direction, digits in COLUMNS]
    table = markdown_table([f"{label} (lr {lrs.get(label, '')})" if label in lrs else label for label in labels],
                           rows, columns)
    return (f"Student seeds {seeds}; mean ± std over seeds (each seed: 5 sampled answers per test prompt). "
            f"Total wall time {minutes:.0f} min.\n\n{table}\n")


def plot(labels: list[str], rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.2), dpi=120, layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    ax.barh(labels[::-1], [r["score"][0] for r in rows][::-1], xerr=[r["score"][1] for r in rows][::-1], color="tab:blue")
    ax.set_xlabel("suite score (mean ± std over seeds)")
    ax.grid(axis="x", alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    for label, r in zip(labels, rows):
        ax2.errorbar(r["tvd"][0], r["exact"][0], xerr=r["tvd"][1], yerr=r["exact"][1], fmt="o", capsize=3)
        ax2.annotate(label, (r["tvd"][0], r["exact"][0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax2.set_xlabel("distribution tasks: TVD to truth (lower = better)")
    ax2.set_ylabel("exact tasks: exact match %")
    ax2.grid(alpha=0.3)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/paper_table")
    parser.add_argument("--seeds", default="0,1,2", help="student seeds of the table")
    parser.add_argument("--losses", default=",".join(PAPER_LOSSES))
    parser.add_argument("--sweep", default="1e-3,3e-3,1e-2", help="learning rates of the sweep")
    parser.add_argument("--no-sweep", action="store_true", help="use the quickstart's LOSS_LR")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    out, progress = Path(args.out), not args.no_progress
    specs = parse_losses(args.losses)
    t0 = time.perf_counter()
    if args.no_sweep:
        best = {s.name: LOSS_LR.get(s.name, LOSS_LR[s.loss]) for s in [RunSpec("sft"), *specs]}
    else:
        best = sweep(out, args.losses, [float(x) for x in args.sweep.split(",")], progress)
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = []
    for seed in seeds:
        summary = quickstart("default", out, args.losses, seed=0, progress=progress, run_seed=seed, tag=f"seed{seed}",
                             lrs=best)
        per_seed.append(by_label(summary.results))
        print(summary.table)
    labels, rows = aggregate(per_seed)
    spec_labels = {s.label: best[s.name] for s in [RunSpec("sft"), *specs]}
    text = render(labels, rows, spec_labels, seeds, (time.perf_counter() - t0) / 60)
    (out / "paper_table.md").write_text(text)
    (out / "paper_table.json").write_text(json.dumps({"seeds": seeds, "lrs": best, "per_seed": per_seed}, indent=1))
    plot(labels, rows, out / "paper_table.png")
    print(text)
    print(f"wrote {out / 'paper_table.md'} and {out / 'paper_table.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
