"""Which differences in the headline table are outside the noise: every student row against the best one
and every pair, with paired-bootstrap 95 % intervals (evaluate/significance.py)."""

from __future__ import annotations

from csdistill.compare.plan import Row

METRIC_LABEL = {"exact_match": "EM", "rouge_l": "ROUGE-L"}
TIE = 1e-9  # means closer than this (relative to the larger) are tied


def top_rows(means: dict[str, float]) -> list[str]:
    """The rows that share the highest mean (one when there is a unique best), in the given order."""
    top = max(means.values())
    return [n for n in means if abs(means[n] - top) <= TIE * max(1.0, abs(top))]


def _cell(name: str, tied: list[str], means: dict[str, float], pairs: dict, every: int) -> str:
    from csdistill.evaluate.significance import format_difference

    if name not in means:
        return "–"
    if name in tied:
        word = "best" if len(tied) == 1 else "all tied" if len(tied) == every else "tied best"
        return f"{word} ({means[name]:.1f})"
    return format_difference(pairs[name][tied[0]])


def noise_columns(rows: list[Row], scores: dict) -> list[tuple[str, list[str], dict, dict]]:
    """[(title, top rows, {row: mean}, {a: {b: bootstrap a - b}})] per headline column with 2+ contenders.
    The teacher is no contender (the references are its own answers)."""
    from csdistill.evaluate.significance import bootstrap_difference

    contenders = [row.name for row in rows if row.name != "teacher"]
    columns = []
    for index, ((decode, name, metric), by_row) in enumerate(scores.items()):
        names = [n for n in contenders if n in by_row]
        if len(names) < 2:
            continue
        means = {n: float(by_row[n].mean()) for n in names}
        pairs = {a: {b: bootstrap_difference(by_row[a], by_row[b], seed=1000 * index + i * len(names) + j)
                     for j, b in enumerate(names) if b != a} for i, a in enumerate(names)}
        columns.append((f"{name} {METRIC_LABEL[metric]} ({decode})", top_rows(means), means, pairs))
    return columns


def noise_analysis(rows: list[Row], scores: dict, labels: dict[str, str]) -> tuple[str, dict]:
    """(markdown, numbers) of noise_columns. numbers[column]: {"best": the unique best row, or None when
    several rows share the top mean ("tied": those rows), "means", "pairs"}."""
    from csdistill.evaluate.significance import format_difference

    columns = noise_columns(rows, scores)
    if not columns:
        return "", {}
    numbers = {title: {"best": tied[0] if len(tied) == 1 else None, **({"tied": tied} if len(tied) > 1 else {}),
                       "means": means, "pairs": pairs} for title, tied, means, pairs in columns}
    contenders = [row.name for row in rows if row.name != "teacher"]
    lines = ["Difference from the best row per column, with its paired-bootstrap 95 % interval over test prompts "
             "and training seeds; **bold**: the interval excludes 0 (behind the best beyond the noise), plain: "
             "inside the noise. Where rows share the top mean there is no single best: they read \"tied best\" "
             "(\"all tied\" when every row does) and the others are compared with the first of them.", "",
             "| run | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {labels.get(n, n)} | " + " | ".join(_cell(n, tied, means, pairs, len(means))
                                                      for _, tied, means, pairs in columns) + " |" for n in contenders]
    for title, _, means, pairs in columns:
        order = sorted(means, key=lambda n: -means[n])
        lines += ["", f"**{title}**, row minus column (95 % interval; bold: excludes 0):", "",
                  "| | " + " | ".join(labels.get(n, n) for n in order) + " |", "|---" * (len(order) + 1) + "|"]
        lines += [f"| {labels.get(a, a)} ({means[a]:.1f}) | " +
                  " | ".join("" if a == b else format_difference(pairs[a][b]) for b in order) + " |" for a in order]
    return "\n".join(lines), numbers
