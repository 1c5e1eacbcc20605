"""The comparison from start to finish: training runs (and the lr sweep), evaluation, table, report; its CLI."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from csdistill.compare.noise import noise_analysis
from csdistill.compare.plan import SWEEP_SEED, Layout, Row, base_overrides, eval_config, inputs_fingerprint, training_jobs
from csdistill.compare.specs import (RunSpec, parse_baselines, parse_decodes, parse_floats, parse_losses, parse_lrs,
                                     parse_seeds)
from csdistill.compare.table import comparison_table, headline_scores, selection_score
from csdistill.compare.workers import evaluate_rows
from csdistill.config import Config, ConfigError, load_config
from csdistill.files import atomic_write_text
from csdistill.jobs import available_cores, core_slots, run_jobs

CAPTION = ("Rows trained per seed: mean ± std over the training seeds (one seed: ± over the sampling seeds); "
           "teacher and student start: ± over the sampling seeds. EM = exact match %; ROUGE-L (F × 100) against the "
           "test references; sampled = temperature-1 samples, one pass per eval seed; Self-BLEU across those samples "
           "(lower = more diverse); FKL / top-1 / ECE: teacher-forced on the references. Best per column in bold.")


@dataclass
class CompareOptions:
    """What to compare and how (the base config is compare()'s own argument)."""

    specs: Sequence[RunSpec]  # the table's runs
    seeds: Sequence[int]  # training seeds; every run trains at each
    layout: Layout  # where everything goes
    test_sets: dict | list | None = None  # JSONL paths or {name: records | path}; default eval.sets
    validation_sets: dict | list | None = None  # what --lr-sweep scores on; default data.validation_file
    lrs: dict[str, float] = field(default_factory=dict)  # {run name or loss: lr}; others train.lr or the sweep
    lr_sweep: Sequence[float] = ()  # learning rates to choose from, per run not in lrs
    decodes: Sequence[str] = ("sampled",)
    baselines: Sequence[str] = ("teacher", "start")  # extra rows; start: the untrained student start (no KD)
    labels: dict[str, str] = field(default_factory=dict)  # row name -> label, over the specs' own
    eval_generation: dict = field(default_factory=dict)  # generation fields evaluation overrides, e.g. batch_size
    jobs: int = 0  # CPU: runs at once (0 = one per core)
    progress: bool = True
    title: str = "csdistill compare"
    intro: Sequence[str] = ()
    caption: str = CAPTION
    notes: str = ""
    command: str = "csdistill compare"


@dataclass
class CompareResult:
    rows: list[Row]  # every row with its results per decoding
    results: list[dict]  # results dicts of the shown decoding, one per model, in row order (the report's rows)
    table: str  # the headline markdown table
    numbers: dict  # {label: {column: [mean, std]}}
    report: Path  # report.md
    lrs: dict[str, float]  # the learning rate each run trained with
    seconds: dict[str, float]  # wall time per stage
    noise: str  # the noise section's markdown ("" when no column has two contenders)
    noise_numbers: dict


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def sweep_lrs(specs: Sequence[RunSpec], grid: Sequence[float], cfg: Config, layout: Layout, sets, decode: str,
              slots, progress: bool) -> dict[str, float]:
    """Best learning rate per run on the validation sets (seed SWEEP_SEED, selection_score); sweep.json."""
    base, inputs = base_overrides(cfg), inputs_fingerprint(cfg)
    by_lr = {lr: training_jobs(specs, [SWEEP_SEED], {s.name: lr for s in specs}, base, cfg, layout,
                               layout.sweep / f"lr{lr:g}", inputs) for lr in grid}
    run_jobs([job for jobs in by_lr.values() for job in jobs.values()], slots, "lr sweep", progress)
    rows = [Row(f"lr{lr:g}/{spec.name}", spec.label, {None: jobs[spec, SWEEP_SEED].model_path})
            for lr, jobs in by_lr.items() for spec in specs]
    evaluate_rows(rows, cfg.teacher.name_or_path, sets, {decode: eval_config(cfg, decode)}, layout.sweep / "eval",
                  len(available_cores()), progress, "csdistill compare --lr-sweep", slots)
    scores = {spec.name: {} for spec in specs}
    for row in rows:
        lr, name = row.name.split("/")
        scores[name][float(lr[2:])] = selection_score(row.results[decode][0])
    best = {name: max(s, key=lambda lr: (s[lr] == s[lr], s[lr])) for name, s in scores.items()}  # NaN never wins
    text = json.dumps({"seed": SWEEP_SEED, "decode": decode, "score": "selection_score",
                       "scores": {n: {f"{lr:g}": v for lr, v in s.items()} for n, s in scores.items()}, "best": best}, indent=1)
    _write_atomic(layout.sweep / "sweep.json", text)
    for name, s in scores.items():
        print(f"[compare] lr sweep {name}: " + ", ".join(f"{lr:g} -> {v:.2f}" for lr, v in s.items()) + f"; best {best[name]:g}")
    return best


def load_test_records(sets, cfg: Config) -> dict[str, list[dict]]:
    """{set: records} as evaluation loaded them (eval.max_examples, the teacher's tokenizer for chat records)."""
    from csdistill.evaluate.runner import load_sets
    from csdistill.models import load_tokenizer

    return load_sets(sets, cfg.eval.max_examples, cfg.data.skip_bad_records, load_tokenizer(cfg.teacher.name_or_path))


def _check_inputs(cfg: Config, options: CompareOptions) -> dict | list:
    """The test sets; raises on a comparison that cannot run."""
    if not cfg.teacher.name_or_path:
        raise ConfigError("teacher.name_or_path is empty: compare scores every run against a teacher; set it in --config")
    test_sets = options.test_sets or list(cfg.eval.sets)
    if not test_sets:
        raise ConfigError("eval.sets is empty: list the test JSONL files in the config, e.g. eval.sets: [test.jsonl]")
    return test_sets


def choose_lrs(cfg: Config, options: CompareOptions, slots, seconds: dict) -> dict[str, float]:
    """{run name: lr}: options.lrs (by run name, then loss), else the sweep's choice, else train.lr."""
    t0 = time.perf_counter()
    chosen = {s.name: options.lrs.get(s.name, options.lrs.get(s.loss)) for s in options.specs}
    if options.lr_sweep and any(v is None for v in chosen.values()):
        open_specs = [s for s in options.specs if chosen[s.name] is None]
        if options.validation_sets is None and not cfg.data.validation_file:
            raise ConfigError("--lr-sweep scores on data.validation_file, which is empty; set it in --config")
        validation = options.validation_sets or {"validation": cfg.data.validation_file}
        chosen.update(sweep_lrs(open_specs, options.lr_sweep, cfg, options.layout, validation, options.decodes[0],
                                slots, options.progress))
        seconds["lr sweep"] = time.perf_counter() - t0
    return {name: lr if lr is not None else cfg.train.lr for name, lr in chosen.items()}


def compare(cfg: Config, options: CompareOptions) -> CompareResult:
    """Train every (spec, seed) from the base config's student start, evaluate every row on the test sets
    with each decoding, write the table and report. cfg: the base config (not changed)."""
    t0 = time.perf_counter()
    test_sets = _check_inputs(cfg, options)
    layout, specs, seeds, teacher = options.layout, options.specs, options.seeds, cfg.teacher.name_or_path
    labels = {**{s.name: s.label for s in specs}, "teacher": "teacher", "start": "student start (no KD)", **options.labels}
    slots = core_slots(options.jobs)
    seconds: dict[str, float] = {}
    chosen = choose_lrs(cfg, options, slots, seconds)
    runs = training_jobs(specs, seeds, chosen, base_overrides(cfg), cfg, layout, layout.runs, inputs_fingerprint(cfg))
    seconds["training"] = run_jobs(list(runs.values()), slots, f"{len(runs)} runs, {len(slots)} at once", options.progress)

    t1 = time.perf_counter()
    rows = [Row(b, labels[b], {None: Path(teacher if b == "teacher" else cfg.model.name_or_path)}) for b in options.baselines]
    rows += [Row(s.name, labels[s.name], {seed: runs[s, seed].model_path.resolve() for seed in seeds}) for s in specs]
    cfgs = {d: eval_config(cfg, d, options.eval_generation) for d in options.decodes}
    evaluate_rows(rows, teacher, test_sets, cfgs, layout.eval, len(available_cores()), options.progress,
                  options.command, slots)
    seconds["evaluation"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    table, numbers = comparison_table(rows, options.decodes)
    noise, noise_numbers = noise_analysis(rows, headline_scores(rows, options.decodes, load_test_records(test_sets, cfg),
                                                                layout.eval), labels)
    result = CompareResult(rows, [], table, numbers, layout.report / "report.md", chosen, seconds, noise, noise_numbers)
    write_report(result, options, labels, [j.out for j in runs.values()], len(slots))
    return result


def write_report(result: CompareResult, options: CompareOptions, labels: dict[str, str], metrics_dirs: list[Path],
                 n_slots: int) -> None:
    """report/report.md (the table and noise section above the full report) and report/compare.json;
    fills result.results with the report's rows."""
    from csdistill.report import build_report

    decodes, seeds, rows = options.decodes, options.seeds, result.rows
    shown = "sampled" if "sampled" in decodes else decodes[0]  # the fidelity-diversity plot wants samples
    flat = [(row, seed, r) for row in rows for seed, r in zip(row.models, row.results[shown])]
    result.results = [r for _, _, r in flat]
    report_labels = [row.label if seed is None or len(seeds) == 1 else f"{row.label} · seed {seed}" for row, seed, _ in flat]
    report = build_report(result.results, options.layout.report, metrics_dirs=metrics_dirs, title="Full report",
                          labels=report_labels, command=options.command)
    lr_line = "Learning rates: " + ", ".join(f"{labels[name]} {lr:g}" for name, lr in result.lrs.items()) + \
        (f" (chosen on the validation split from {', '.join(f'{v:g}' for v in options.lr_sweep)})"
         if options.lr_sweep else "") + "."
    head = [f"# {options.title}", "", *options.intro, "",
            "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()) +
            f" ({len(available_cores())} cores, {n_slots} runs at once).", "",
            "## Comparison", "", options.caption, "", result.table, "", lr_line, "", options.notes, "",
            *(["## Which differences are outside the noise", "", result.noise, ""] if result.noise else []), "---", ""]
    report.write_text("\n".join(head) + report.read_text())
    _write_atomic(options.layout.report / "compare.json", json.dumps(
        {"command": options.command, "seeds": list(seeds), "decodes": list(decodes), "lrs": result.lrs,
         "seconds": result.seconds, "rows": result.numbers, "noise": result.noise_numbers}, indent=1))
    result.report = report


# --------------------------------------------------------------------------- the command

SFT_LABEL = "SFT on the data's responses (SeqKD)"  # the base config's responses: the teacher's, for SeqKD
DEFAULT_LOSSES = "sft,fkl,rkl,srkl,csd:SS,csd:TS,csd:US"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="base training config: student start, teacher, data, "
                                                               "eval.sets (the test sets), recipe")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the base config, e.g. train.max_steps=50")
    parser.add_argument("--losses", default=DEFAULT_LOSSES,
                        help=f"runs, comma-separated: sft (no KD), a registry loss, csd:<w1w2> (default {DEFAULT_LOSSES})")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated (default 0); every loss runs each")
    parser.add_argument("--out", default="runs/compare", help="work folder (reruns reuse finished runs)")
    parser.add_argument("--lr", default="", help="learning rates: 3e-4 (all) or fkl=3e-4,csd:SS=1e-4 "
                                                 "(others: train.lr, or the sweep)")
    parser.add_argument("--lr-sweep", default="", help=f"choose each run's lr from these on data.validation_file "
                                                       f"(seed {SWEEP_SEED}), e.g. 1e-4,3e-4,1e-3")
    parser.add_argument("--decode", default=None, help="greedy, sampled or greedy,sampled (default: the config's "
                                                       "eval.greedy / generation.do_sample)")
    parser.add_argument("--baselines", default="teacher,start", help="extra rows: teacher, start (the untrained "
                                                                     "student start), both, or none")
    parser.add_argument("--jobs", type=int, default=0, help="CPU: runs at once, cores split between them (0 = one per core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _command_line(args: argparse.Namespace) -> str:
    return shlex.join(["csdistill", "compare", "--config", args.config, *args.overrides, "--losses", args.losses,
                       "--seeds", args.seeds, "--out", args.out, *(["--lr", args.lr] if args.lr else []),
                       *(["--lr-sweep", args.lr_sweep] if args.lr_sweep else []),
                       *(["--decode", args.decode] if args.decode else [])])


def compare_from_args(args: argparse.Namespace) -> CompareResult:
    from csdistill.errors import check_writable

    cfg = load_config(args.config, args.overrides)
    specs = parse_losses(args.losses)
    options = CompareOptions(
        specs, parse_seeds(args.seeds), Layout.under(args.out), lrs=parse_lrs(args.lr, specs),
        lr_sweep=parse_floats(args.lr_sweep, "--lr-sweep") if args.lr_sweep else (),
        decodes=parse_decodes(args.decode, cfg), baselines=parse_baselines(args.baselines), jobs=args.jobs,
        progress=not args.no_progress, command=_command_line(args), labels={"sft": SFT_LABEL},
        intro=[f"Base config `{args.config}`; student start `{cfg.model.name_or_path}`; teacher "
               f"`{cfg.teacher.name_or_path}`; seeds {args.seeds}."])
    check_writable(args.out, "--out")  # after the flags are checked, before any work
    return compare(cfg, options)


def compare_command(args: argparse.Namespace) -> int:
    """`csdistill compare`; its user errors (ConfigError, CompareError, ...) reach the CLI's one-line boundary."""
    print_summary(compare_from_args(args))
    return 0


def print_summary(result: CompareResult) -> None:
    """The table, the wall time per stage and where the report is (compare and quickstart)."""
    print()
    print(result.table)
    print()
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))
    print(f"report: {result.report}")
