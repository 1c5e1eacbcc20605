"""Results JSONs -> report.md with markdown tables and PNG plots.

    csdistill report runs/a/eval runs/b/eval/results.json --metrics runs/a runs/b --out report

Tables: rows = runs (loss, weighting, seed count), columns = sets (+ the average); the primary
metric of a set is exact match when it has an answer checker, else ROUGE-L; the best mean per
column is bold. Plots (matplotlib's object API, no pyplot state, so any backend works):
fidelity vs diversity, training curves from <run_dir>/metrics.jsonl, teacher-fidelity bars.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
from pathlib import Path
from typing import Callable, Sequence
from csdistill.errors import UserError
from csdistill.evaluate import results as R
from csdistill.evaluate.results import diversity_value  # noqa: F401  (its old home; compare and scripts import it)

# (key in a set's "fidelity" dict, label, higher is better)
FIDELITY_METRICS = (
    ("forward_kl", "forward KL ↓", False),
    ("reverse_kl", "reverse KL ↓", False),
    ("csd_ss", "CSD(SS) ↓", False),
    ("top1_agreement", "top-1 agreement ↑", True),
    ("student_nll", "student NLL ↓", False),
)


# --------------------------------------------------------------------------- loading


def load_results(source: str | Path | dict) -> dict:
    """A results dict from a dict, a results JSON, or an evaluation folder holding results.json."""
    if isinstance(source, dict):
        result = source
        where = "results dict"
    else:
        path = Path(source)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"results {str(path)!r} not found; pass a results.json written by `csdistill evaluate` "
                             "or the --out folder that holds it")
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"results {str(path)!r} is not valid JSON ({err.msg} at line {err.lineno})") from None
        except UnicodeDecodeError:
            raise UserError(f"results {str(path)!r} is not UTF-8 text; pass a results.json") from None
        if not isinstance(result, dict):
            raise UserError(f"results {str(path)!r}: expected a JSON object, got {type(result).__name__}")
        result = {**result, "_path": str(path)}
        where = str(path)
    if not isinstance(result, dict) or not isinstance(result.get("sets"), dict):
        raise UserError(f"{where}: no 'sets' mapping; is this a `csdistill evaluate` results JSON?")
    _check_shape(result, where)
    return result


# What a results JSON's sets hold, per key: a dict of numbers (None allowed; per_seed a list of numbers).
_METRIC_KEYS = ("rouge_l", "bleu", "chrf", "semantic", "exact_match", "self_bleu", "distinct_1", "distinct_2",
                "calibration", "fidelity", "distribution")


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_metric(value, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected an object of numbers, got {type(value).__name__} {value!r:.40}")
    for key, item in value.items():
        if isinstance(item, dict):
            _check_metric(item, f"{where}.{key}")
        elif isinstance(item, list):
            if not all(_is_number(x) for x in item):
                raise UserError(f"{where}.{key}: expected a list of numbers, got {item!r:.40}")
        elif not _is_number(item):
            raise UserError(f"{where}.{key}: expected a number, got {type(item).__name__} {item!r:.40}")


def _check_shape(result: dict, where: str) -> None:
    """Name the first malformed field (file and key path) instead of failing later inside a table."""
    for key in ("run", "machine"):
        if key in result and not isinstance(result[key], (dict, str, type(None))):
            raise UserError(f"{where}: {key}: expected an object, got {type(result[key]).__name__}")
    for name, set_result in R.sets_of(result).items():
        if not isinstance(set_result, dict):
            raise UserError(f"{where}: sets.{name}: expected an object of metrics, got "
                             f"{type(set_result).__name__} {set_result!r:.40}; rerun `csdistill evaluate`")
        for key in _METRIC_KEYS:
            try:
                _check_metric(set_result.get(key), f"sets.{name}.{key}")
            except ValueError as err:
                raise UserError(f"{where}: {err}; rerun `csdistill evaluate` or fix the file") from None


def load_metrics_log(run_dir: str | Path) -> list[dict]:
    """Lines of <run_dir>/metrics.jsonl (or the file itself) that carry a 'step'."""
    path = Path(run_dir)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"--metrics {str(run_dir)!r}: no metrics.jsonl there; pass the trainer's train.output_dir")
    from csdistill.train.logging import read_metrics  # tolerates a half-written last line

    return [row for row in read_metrics(path) if "step" in row]


# --------------------------------------------------------------------------- labels and numbers


def run_label(result: dict) -> str:
    """'csd SS · 5 seeds' from the run's training config (loss, weighting) and its seed count."""
    if result.get("label"):
        return str(result["label"])
    run = result.get("run") or {}
    loss = run.get("loss", "?")
    name = "sft" if run.get("mode") == "sft" else f"{loss} {run.get('weighting', '')}" if loss == "csd" else loss
    seeds = "greedy" if run.get("greedy") else f"{len(run.get('seeds', []))} seeds"
    return f"{name} · {seeds}"


def unique_labels(results: Sequence[dict], labels: Sequence[str] | None = None) -> list[str]:
    """Given labels or run_label(); duplicates get the model's name (then an index) appended."""
    if labels:
        if len(labels) != len(results):
            raise UserError(f"--labels: {len(labels)} labels for {len(results)} results; give one per results file")
        return list(labels)
    names = [run_label(r) for r in results]
    out = []
    for name, result in zip(names, results):
        if names.count(name) > 1:
            name = f"{name} ({Path(str(result.get('model', ''))).name or '?'})"
        out.append(name if name not in out else f"{name} #{len(out) + 1}")
    return out


def primary_metric(set_result: R.SetResult) -> tuple[str, R.Stat | None]:
    """('exact_match' | 'rouge_l', its {"mean","std","per_seed"})."""
    kind = "exact_match" if set_result.get("exact_match") else "rouge_l"
    return kind, set_result.get(kind)


def average_over_sets(result: dict, sets: Sequence[str]) -> dict | None:
    """Primary metric averaged over sets: per seed when all sets share the seeds, then mean ± std."""
    by_name = R.sets_of(result)
    stats = [primary_metric(by_name[s])[1] for s in sets if s in by_name]
    if len(stats) != len(sets) or any(st is None or st.get("mean") is None for st in stats):
        return None
    lengths = {len(st.get("per_seed") or []) for st in stats}
    if len(lengths) == 1 and 0 not in lengths:
        from csdistill.evaluate.metrics import mean_std

        return mean_std([sum(vals) / len(vals) for vals in zip(*(st["per_seed"] for st in stats))])
    return {"mean": sum(st["mean"] for st in stats) / len(stats), "std": None}


def _mean_over_sets(result: dict, get: Callable[[dict], float | None]) -> float | None:
    values = [get(s) for s in R.sets_of(result).values()]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(value: float | None, std: float | None = None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if std is None else f"{value:.{digits}f} ± {std:.{digits}f}"


def _nested(d: dict | None, *keys):
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


# --------------------------------------------------------------------------- markdown tables

# A column: header, value getter (result -> (mean, std | None)), +1 higher is better / -1 lower / 0 no best, digits.
Column = tuple[str, Callable[[dict], tuple[float | None, float | None]], int, int]


def markdown_table(labels: Sequence[str], results: Sequence[dict], columns: Sequence[Column]) -> str:
    """Rows = runs, one column per spec; the best mean of each directed column in bold."""
    values = [[col[1](r) for col in columns] for r in results]
    lines = ["| run | " + " | ".join(col[0] for col in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    best = []
    for j, (_, _, direction, _) in enumerate(columns):
        means = [row[j][0] for row in values if row[j][0] is not None]
        distinct = len(means) > 1 and max(means) - min(means) > 1e-12  # no bold when all runs tie
        best.append((max(means) if direction > 0 else min(means)) if direction and distinct else None)
    for label, row in zip(labels, values):
        cells = []
        for j, (mean, std) in enumerate(row):
            text = _fmt(mean, std, columns[j][3])
            cells.append(f"**{text}**" if best[j] is not None and mean is not None and abs(mean - best[j]) < 1e-12 else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def set_names(results: Sequence[dict]) -> list[str]:
    """Union of the set names, in order of first appearance."""
    names: list[str] = []
    for result in results:
        names.extend(s for s in R.sets_of(result) if s not in names)
    return names


def main_columns(results: Sequence[dict]) -> list[Column]:
    """One column per set (primary metric, mean ± std over seeds) and the average over sets."""
    sets = set_names(results)
    columns: list[Column] = []
    for name in sets:
        kind = next(primary_metric(R.sets_of(r)[name])[0] for r in results if name in R.sets_of(r))
        short = "EM" if kind == "exact_match" else "ROUGE-L"

        def get(r, name=name):
            set_result = R.sets_of(r).get(name)
            return R.stat(set_result, primary_metric(set_result)[0]) if set_result else (None, None)

        columns.append((f"{name} ({short})", get, 1, 2))

    def average(r):
        stat = average_over_sets(r, sets)
        return (stat["mean"], stat["std"]) if stat else (None, None)  # a mean_std dict, not a results field

    if len(sets) > 1:
        columns.append(("average", average, 1, 2))
    return columns


def _avg_column(header: str, path: tuple, direction: int, digits: int) -> Column:
    return (header, lambda r: (_mean_over_sets(r, lambda s: _nested(s, *path)), None), direction, digits)


def summary_columns() -> list[Column]:
    """Averages over each run's sets: generation quality, diversity, calibration, teacher fidelity."""
    columns = [
        _avg_column("ROUGE-L ↑", ("rouge_l", "mean"), 1, 2),
        _avg_column("BLEU ↑", ("bleu", "mean"), 1, 2),
        _avg_column("chrF ↑", ("chrf", "mean"), 1, 2),
        _avg_column("semantic ↑", ("semantic", "mean"), 1, 2),
        ("Self-BLEU", lambda r: (_mean_over_sets(r, diversity_value), None), 0, 2),
        _avg_column("distinct-1", ("distinct_1", "mean"), 0, 3),
        _avg_column("distinct-2", ("distinct_2", "mean"), 0, 3),
        _avg_column("ECE ↓", ("calibration", "ece"), -1, 4),
    ]
    columns += [_avg_column(label, ("fidelity", key), 1 if up else -1, 4) for key, label, up in FIDELITY_METRICS]
    return columns


def distribution_columns() -> list[Column]:
    keys = (("valid", "valid ↑", 1), ("tvd", "TVD ↓", -1), ("kl", "KL(emp‖true) ↓", -1),
            ("distinct", "distinct outputs", 0), ("entropy", "entropy (nats)", 0), ("true_entropy", "true entropy", 0))
    return [_avg_column(label, ("distribution", key), direction, 3) for key, label, direction in keys]


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def plot_fidelity_diversity(labels: Sequence[str], results: Sequence[dict], path: Path) -> Path | None:
    """Scatter: x = Self-BLEU (avg over sets), y = primary metric (avg over sets, ± std); one point per run."""
    sets = set_names(results)
    points = [(label, _mean_over_sets(r, diversity_value), average_over_sets(r, sets)) for label, r in zip(labels, results)]
    points = [(label, x, y) for label, x, y in points if x is not None and y is not None]
    if not points:
        return None
    fig = _figure(6.4, 4.6)
    ax = fig.add_subplot()
    markers = "osD^v<>pXh*"
    for k, (label, x, y) in enumerate(points):
        ax.errorbar(x, y["mean"], yerr=y["std"] or 0.0, fmt=markers[k % len(markers)], markersize=8, capsize=3,
                    label=label, color=f"C{k % 10}")
    ax.set_xlabel("Self-BLEU across samples (lower = more diverse)")
    kinds = {primary_metric(s)[0] for r in results for s in R.sets_of(r).values()}
    ax.set_ylabel(" / ".join("exact match (%)" if k == "exact_match" else "ROUGE-L" for k in sorted(kinds, reverse=True))
                  + " (avg over sets)")
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), max(high, 1.0))  # scores are in [0, 100]
    ax.set_title("Fidelity vs diversity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path)
    return path


def plot_training_curves(logs: dict[str, list[dict]], path: Path) -> Path | None:
    """Loss (and validation loss when logged) and learning rate vs step, one line per run."""
    if not any(logs.values()):
        return None
    fig = _figure(10, 4)
    loss_ax, lr_ax = fig.subplots(1, 2)
    for k, (name, rows) in enumerate(logs.items()):
        for key, ax, style in (("loss", loss_ax, "-"), ("val_loss", loss_ax, "o--"), ("lr", lr_ax, "-")):
            pts = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
            if pts:
                label = name if key != "val_loss" else f"{name} (validation)"
                ax.plot(*zip(*pts), style, color=f"C{k % 10}", label=label, markersize=4)
    for ax, title in ((loss_ax, "training loss"), (lr_ax, "learning rate")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    losses = [y for line in loss_ax.get_lines() for y in line.get_ydata()]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 30:  # runs of different losses: scales differ
        loss_ax.set_yscale("log")
        loss_ax.set_title("training loss (log scale)")
    fig.savefig(path)
    return path


def plot_teacher_fidelity(labels: Sequence[str], results: Sequence[dict], path: Path) -> Path | None:
    """One panel per fidelity metric (avg over sets), a horizontal bar per run."""
    panels = []
    for key, title, _ in FIDELITY_METRICS:
        values = [_mean_over_sets(r, lambda s, key=key: R.fidelity(s, key)) for r in results]
        if any(v is not None for v in values):
            panels.append((title, [v if v is not None else 0.0 for v in values]))
    if not panels:
        return None
    fig = _figure(2.6 * len(panels) + 1.5, 0.45 * len(results) + 1.6)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    rows = list(range(len(results)))
    for ax, (title, values) in zip(axes, panels):
        bars = ax.barh(rows, values, color=[f"C{k % 10}" for k in rows])
        ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
        top = 1.0 if "agreement" in title else max(values) or 1.0
        ax.set_xlim(0, 1.25 * top)  # all these metrics are >= 0; the margin leaves room for the labels
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    axes[0].set_yticks(rows, labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("Teacher fidelity on reference responses (teacher forcing)", fontsize=10)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- report.md


def _provenance(labels: Sequence[str], results: Sequence[dict]) -> list[str]:
    lines = ["## Runs", ""]
    for label, r in zip(labels, results):
        machine = r.get("machine")
        machine = ", ".join(f"{k}={v}" for k, v in machine.items()) if isinstance(machine, dict) else machine
        lines += [f"### {label}", "",
                  f"- model: `{r.get('model', '?')}`; teacher: `{r.get('teacher') or '–'}`",
                  f"- results: `{r.get('_path', '(in memory)')}`",
                  f"- command: `{r.get('command', '?')}`",
                  f"- date: {r.get('date', '?')}; machine: {machine or '?'}",
                  f"- config hash: `{r.get('config_hash', '?')}`", ""]
    return lines


def render_markdown(title: str, labels: Sequence[str], results: Sequence[dict], plots: dict[str, Path],
                    command: str = "build_report()") -> str:
    """The whole report.md text: tables, plot links (relative), provenance."""
    now = datetime.datetime.now().isoformat(timespec="seconds")
    parts = [f"# {title}", "", f"Built {now} on {platform.node()} by `{command}`.", "",
             "## Main results", "",
             "Mean ± std over generation seeds; ROUGE-L is F × 100 (max over references), EM is exact-match %. "
             "Best per column in bold.", "", markdown_table(labels, results, main_columns(results)), "",
             "## Averages over sets", "",
             "Self-BLEU / distinct-n measure diversity (no best marked: it trades off with fidelity). "
             "Fidelity columns are token means under teacher forcing on the references. semantic: cosine × 100 of "
             "sentence embeddings, max over references (eval.semantic; – when off).", "",
             markdown_table(labels, results, summary_columns()), ""]
    if any(R.distribution(s) for r in results for s in R.sets_of(r).values()):
        parts += ["## Distribution tasks", "", "Per prompt over the seeds' samples, then averaged; entropies in nats.", "",
                  markdown_table(labels, results, distribution_columns()), ""]
    captions = {"fidelity_diversity": "Fidelity vs diversity", "training_curves": "Training curves",
                "teacher_fidelity": "Teacher fidelity"}
    if plots:
        parts += ["## Plots", ""]
        parts += [f"![{captions[name]}]({path.name})\n" for name, path in plots.items()]
    return "\n".join(parts + _provenance(labels, results))


def build_report(results: Sequence[str | Path | dict], out_dir: str | Path, metrics_dirs: Sequence[str | Path] = (),
                 title: str = "csdistill report", labels: Sequence[str] | None = None,
                 command: str = "build_report()") -> Path:
    """Write out_dir/report.md and its PNG plots from results JSONs (paths, folders or dicts); returns report.md."""
    if not results:
        raise UserError("build_report: no results given; pass at least one results.json")
    loaded = [load_results(r) for r in results]
    names = unique_labels(loaded, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logs = {Path(d).name or str(d): load_metrics_log(d) for d in metrics_dirs}
    candidates = {
        "fidelity_diversity": plot_fidelity_diversity(names, loaded, out / "fidelity_diversity.png"),
        "training_curves": plot_training_curves(logs, out / "training_curves.png") if logs else None,
        "teacher_fidelity": plot_teacher_fidelity(names, loaded, out / "teacher_fidelity.png"),
    }
    plots = {name: path for name, path in candidates.items() if path is not None}
    report = out / "report.md"
    report.write_text(render_markdown(title, names, loaded, plots, command))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="results.json files (or the evaluate --out folders holding them)")
    parser.add_argument("--out", default="report", help="folder for report.md and the plots")
    parser.add_argument("--metrics", nargs="+", default=[], metavar="RUN_DIR",
                        help="training run folders whose metrics.jsonl to plot")
    parser.add_argument("--title", default="csdistill report", help="report title")
    parser.add_argument("--labels", nargs="+", default=None, help="one row label per results file")


def report_command(args: argparse.Namespace) -> int:
    """`csdistill report`; user errors go to the CLI's one-line handler (cli.main)."""
    from csdistill.errors import check_writable

    command = shlex.join(["csdistill", "report", *args.results, "--out", args.out, "--title", args.title,
                          *(["--metrics", *args.metrics] if args.metrics else []),
                          *(["--labels", *args.labels] if args.labels else [])])
    check_writable(args.out, "--out")
    path = build_report(args.results, args.out, args.metrics, title=args.title, labels=args.labels, command=command)
    print(f"wrote {path}")
    return 0
