"""`csdistill quickstart`: the whole pipeline on the built-in task suite, offline, defaults only.

Stages (each folder under --out; a finished stage whose settings did not change is reused, so a
rerun only does what is new — in particular the teacher is trained once):

  suite/       the task suite (train / validation / test / warmup JSONL)       `csdistill data tasks`
  teacher/     the teacher, SFT on train                                         `csdistill train` (sft)
  student_init/ the shared warm start: a short SFT of the small student on the disjoint warmup split
  students/<run>/ from that warm start: SFT alone (the no-distillation baseline) and one KD run per loss,
               run in parallel, one process per CPU core (pinned, one thread each)
  eval/sampled/<run>/  exact match per task, distribution fidelity/diversity, teacher fidelity
  report/      report.md + plots

The last three are `csdistill compare` (the compare package) over the suite: this module holds only what is
specific to the suite (its plans, the teacher and warm-start stages, the learning rates, per-task test sets
and the perfect-sampler line).

Every training stage is a `csdistill train` subprocess on a YAML config written under configs/, so each
step can be rerun or changed by hand. Why the recipe looks like this (warm start, per-loss learning rates,
teacher-logit cache, pinned processes): see docs/LOG.md and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from csdistill.compare import CompareOptions, CompareResult, Layout, RunSpec, compare, parse_losses
from csdistill.config import load_config
from csdistill.errors import UserError
from csdistill.jobs import Job, available_cores, run_jobs

# Learning rate per run (AdamW, cosine, 1200 steps from the shared warm start): the best of a sweep over
# {1e-3, 3e-3, 1e-2} on the validation split (`python benchmarks/paper_table.py`, 2026-11-28; RESULTS.md).
# Keys: run names (csd_<w1w2>), then loss names as the fallback for runs the sweep did not cover.
LOSS_LR: dict[str, float] = {"sft": 1e-2, "csd_SS": 3e-3, "csd_US": 1e-2, "csd_TS": 1e-2, "fkl": 1e-2, "rkl": 3e-3,
                             "skl": 3e-3, "srkl": 3e-3, "jsd": 1e-2, "tvd": 1e-3, "dld": 1e-2,
                             "csd": 3e-3, "sym_kl": 3e-3, "jeffreys": 3e-3, "ab": 3e-3}
DEFAULT_LOSSES = ("csd:SS", "csd:TS", "fkl", "rkl", "srkl")
PAPER_LOSSES = ("csd:SS", "csd:US", "csd:TS", "fkl", "rkl", "skl", "srkl", "jsd", "tvd", "dld")


@dataclass(frozen=True)
class Plan:
    """Sizes of one quickstart preset: suite splits, steps per stage, evaluation passes."""

    n_train: int
    n_validation: int
    n_test: int
    n_warmup: int
    teacher: str  # model preset of the teacher
    student: str  # model preset of every student
    teacher_steps: int
    teacher_lr: float
    warmup_steps: int  # the shared student warm start
    student_steps: int  # every student run (SFT baseline and KD)
    batch_size: int
    eval_seeds: tuple[int, ...]
    max_new_tokens: int


PLANS = {
    # Seconds: what the end-to-end test runs. Too short to learn the tasks; it proves the plumbing.
    "tiny": Plan(n_train=200, n_validation=25, n_test=25, n_warmup=50, teacher="tiny-llama", student="suite-student",
                 teacher_steps=30, teacher_lr=3e-3, warmup_steps=10, student_steps=12, batch_size=16,
                 eval_seeds=(10, 20), max_new_tokens=24),
    # About 8 minutes on 2 CPU cores: a ~0.9M-parameter teacher that masters the exact tasks and a
    # ~27k-parameter student (1/32) that cannot on its own within the budget.
    "default": Plan(n_train=4000, n_validation=200, n_test=200, n_warmup=400, teacher="suite-teacher",
                    student="suite-student", teacher_steps=2500, teacher_lr=3e-3, warmup_steps=150,
                    student_steps=1200, batch_size=32, eval_seeds=(10, 20, 30, 40, 50), max_new_tokens=40),
}


# --------------------------------------------------------------------------- stage configs

# How suite records become sequences, for training and evaluation alike.
DATA_SETTINGS = ("data.template=plain", "data.max_prompt_length=64", "data.max_length=128")


def _data_overrides(suite: Path) -> list[str]:
    return [f"data.validation_file={suite / 'validation.jsonl'}", *DATA_SETTINGS]


def _recipe(plan: Plan, steps: int) -> list[str]:
    """The training recipe every stage shares (output folder, lr and seed are each stage's own)."""
    return ["model.precision=bf16", f"train.max_steps={steps}", f"train.batch_size={plan.batch_size}",
            f"train.warmup_steps={max(1, steps // 20)}", "train.weight_decay=0.0", "train.log_every=10",
            "train.progress=false", f"generation.max_new_tokens={plan.max_new_tokens}"]


def teacher_overrides(suite: Path, plan: Plan, out: Path, seed: int) -> list[str]:
    return [f"model.name_or_path=preset:{plan.teacher}@{seed}", "train.mode=sft", f"train.output_dir={out}",
            f"train.lr={plan.teacher_lr}", f"train.seed={seed}", f"data.train_file={suite / 'train.jsonl'}",
            *_data_overrides(suite), *_recipe(plan, plan.teacher_steps)]


def warm_start_overrides(suite: Path, plan: Plan, out: Path, seed: int, teacher: Path) -> list[str]:
    return [f"model.name_or_path=preset:{plan.student}@{seed}", f"model.tokenizer={teacher}", "train.mode=sft",
            f"train.output_dir={out}", "train.lr=3e-3", f"train.seed={seed}", f"data.train_file={suite / 'warmup.jsonl'}",
            *_data_overrides(suite), *_recipe(plan, plan.warmup_steps)]


def student_base(suite: Path, plan: Plan, init: Path, teacher: Path) -> list[str]:
    """The base config of `compare` over the suite: every student starts from the warm start `init`."""
    return [f"model.name_or_path={init}", f"teacher.name_or_path={teacher}", f"data.train_file={suite / 'train.jsonl'}",
            *_data_overrides(suite), *_recipe(plan, plan.student_steps), "train.mode=kd",
            "train.cache_teacher_logits=true", f"eval.seeds={list(plan.eval_seeds)}"]


def run_lrs(specs: list[RunSpec], lrs: dict[str, float] | None) -> dict[str, float]:
    """lrs (by run name, then loss) over LOSS_LR (by run name, then loss)."""
    lrs = lrs or {}
    return {s.name: lrs.get(s.name, lrs.get(s.loss, LOSS_LR.get(s.name, LOSS_LR[s.loss]))) for s in specs}


# --------------------------------------------------------------------------- suite-specific evaluation


def task_sets(suite: Path, split: str = "test") -> dict[str, list[dict]]:
    """A held-out split as one set per task (exact match / distribution scores per task)."""
    if split not in ("test", "validation"):
        raise UserError(f"eval_split={split!r}: choose test or validation")
    sets: dict[str, list[dict]] = {}
    for line in (suite / f"{split}.jsonl").read_text().splitlines():
        record = json.loads(line)
        sets.setdefault(record["task"], []).append(record)
    return dict(sorted(sets.items(), key=lambda kv: kv[0]))


def perfect_sampler(sets: dict[str, list[dict]], n_samples: int, seed: int = 0) -> dict[str, float] | None:
    """The distribution columns' floor: scores of `n_samples` draws per prompt from the true
    distribution itself (small samples cannot reach TVD 0 or the true entropy). Means over sets."""
    import random

    from csdistill.evaluate.metrics import aggregate_distribution, distribution_scores
    from csdistill.seeding import derive_seed
    from csdistill.tasks.registry import get_task

    per_set = []
    for name, records in sets.items():
        spec = get_task(records[0]["task"]) if records and records[0].get("task") else None
        if spec is None or spec.kind != "distribution":
            continue
        scores = []
        for i, record in enumerate(records):
            truth = spec.true_distribution(record)
            rng = random.Random(derive_seed(seed, 0, 0, f"perfect_sampler/{name}/{i}"))
            samples = rng.choices(list(truth), weights=list(truth.values()), k=n_samples)
            scores.append(distribution_scores(samples, record, truth, spec.check))
        per_set.append(aggregate_distribution(scores))
    if not per_set:
        return None
    return {"valid": sum(a["valid"] for a in per_set) / len(per_set), "tvd": sum(a["tvd"] for a in per_set) / len(per_set),
            "entropy_ratio": sum(a["entropy"] / max(a["true_entropy"], 1e-9) for a in per_set) / len(per_set)}


def perfect_sampler_line(sets: dict[str, list[dict]], n_samples: int) -> str:
    ref = perfect_sampler(sets, n_samples)
    if ref is None:
        return ""
    return (f"Reference for the distribution columns: {n_samples} draws per prompt from the *true* distribution "
            f"score valid {ref['valid']:.3f}, TVD {ref['tvd']:.3f}, entropy/true {ref['entropy_ratio']:.2f} — "
            "the best a perfect sampler reaches with this few samples.")


# --------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PLANS), default="default",
                        help="default: ~8 minutes on 2 CPU cores; tiny: under a minute (plumbing only)")
    parser.add_argument("--out", default="runs/quickstart", help="work folder (reruns reuse finished stages)")
    parser.add_argument("--losses", default=",".join(DEFAULT_LOSSES),
                        help="KD runs, comma-separated: a registry loss, csd:<w1w2> for CSD weightings "
                             f"(default {','.join(DEFAULT_LOSSES)}; the SFT-only baseline always runs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the suite, the models and every run")
    parser.add_argument("--jobs", type=int, default=0, help="student runs at once, one core each (0 = one per core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


@dataclass
class QuickstartResult:
    results: list[dict]  # evaluation results: the teacher, then one per student run
    report: Path  # report.md
    seconds: dict[str, float]  # wall time per stage
    table: str  # the comparison table and the perfect-sampler line


def quickstart(preset: str = "default", out: str | Path = "runs/quickstart", losses=DEFAULT_LOSSES, seed: int = 0,
               jobs: int = 0, progress: bool = True, plan: Plan | None = None, lrs: dict[str, float] | None = None,
               run_seed: int | None = None, tag: str = "", eval_split: str = "test") -> QuickstartResult:
    """Suite, teacher and warm start, then `compare` over the suite.

    seed: the suite and the teacher. run_seed (default: seed): the students' warm start, data order and
    sampling. tag: a name for this set of student runs (their folders get the suffix), so that several
    sweeps or seeds share one suite and teacher. lrs: learning rate per run name or loss (default LOSS_LR).
    eval_split: 'test' (held out) or 'validation' (for choosing settings without touching test).
    """
    plan = plan or PLANS[preset]
    run_seed = seed if run_seed is None else run_seed
    specs = [RunSpec("sft"), *parse_losses(losses, allow_sft=False)]
    out = Path(out)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    suite, teacher, init = _suite_teacher_and_warm_start(out, plan, seed, run_seed, progress, seconds)
    suffix = f"_{tag}" if tag else ""
    layout = Layout(out / f"students{suffix}", out / "configs" / (tag or "."), out / f"eval{suffix}",
                    out / f"report{suffix}", out / f"sweep{suffix}", flat=True)
    sets = task_sets(suite, eval_split)
    notes = perfect_sampler_line(sets, len(plan.eval_seeds))
    options = CompareOptions(specs, [run_seed], layout, test_sets=sets, lrs=run_lrs(specs, lrs), decodes=("sampled",),
                             baselines=("teacher",), eval_generation={"batch_size": 128}, jobs=jobs, progress=progress,
                             title=f"csdistill quickstart ({preset})", intro=_intro(plan, seconds), caption=CAPTION,
                             notes=notes, command=f"csdistill quickstart --preset {preset}")
    result: CompareResult = compare(load_config(None, student_base(suite, plan, init, teacher)), options)
    seconds.update({"students": result.seconds["training"], "evaluation": result.seconds["evaluation"],
                    "total": time.perf_counter() - t0})
    return QuickstartResult(result.results, result.report, seconds, result.table + "\n\n" + notes)


def _suite_teacher_and_warm_start(out: Path, plan: Plan, seed: int, run_seed: int, progress: bool,
                                  seconds: dict) -> tuple[Path, Path, Path]:
    """The suite, the teacher (SFT) and the students' warm start, each reused when unchanged; (suite folder,
    teacher model, warm-start model). Adds each stage's seconds to `seconds`."""
    from csdistill.tasks.suite import write_suite

    suite = out / "suite"
    all_cores = [available_cores()]
    t0 = time.perf_counter()
    write_suite(suite, seed, n_train=plan.n_train, n_validation=plan.n_validation, n_test=plan.n_test,
                n_warmup=plan.n_warmup)  # deterministic: rewriting gives identical files
    seconds["suite"] = time.perf_counter() - t0
    suite_id = hashlib.sha256(b"".join((suite / f"{split}.jsonl").read_bytes()
                                        for split in ("train", "validation", "warmup"))).hexdigest()[:12]
    teacher = Job("teacher", teacher_overrides(suite, plan, out / "teacher", seed), out / "teacher",
                  out / "configs", plan.teacher_steps, inputs=suite_id)
    seconds["teacher"] = run_jobs([teacher], all_cores, "teacher (SFT)", progress)
    init_dir = out / ("student_init" if run_seed == seed else f"student_init_seed{run_seed}")
    init = Job(init_dir.name, warm_start_overrides(suite, plan, init_dir, run_seed, teacher.model_path),
               init_dir, out / "configs", plan.warmup_steps, after=(teacher,), inputs=suite_id)
    seconds["student warm start"] = run_jobs([init], all_cores, "student warm start", progress)
    return suite, teacher.model_path, init.model_path


CAPTION = ("EM = exact match % (mean ± std over the sampling seeds); distribution tasks: share of valid outputs, "
           "total variation distance of the sampled outputs from the true distribution, and sampled entropy / true "
           "entropy (1 = as diverse as the truth); fidelity = teacher-forced token means on the test references.")


def _intro(plan: Plan, seconds: dict) -> list[str]:
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    return [f"Teacher `{plan.teacher}` SFT for {plan.teacher_steps} steps; every student `{plan.student}` starts from "
            f"the same warm start ({plan.warmup_steps} SFT steps on the disjoint warmup split) and trains "
            f"{plan.student_steps} steps of batch {plan.batch_size} on the train split: SFT alone, or KD with each loss. "
            f"Test split: {plan.n_test} prompts; {len(plan.eval_seeds)} sampled answers each (temperature 1).", "",
            f"Before the comparison: {stages}."]


def quickstart_command(args: argparse.Namespace) -> int:
    """`csdistill quickstart`; its user errors reach the CLI's one-line boundary."""
    from csdistill.compare import print_summary
    from csdistill.errors import check_writable

    losses = parse_losses(args.losses, allow_sft=False)  # a bad --losses fails before the folder is made
    check_writable(args.out, "--out")
    print_summary(quickstart(args.preset, args.out, [s.key for s in losses], args.seed, args.jobs,
                             progress=not args.no_progress))
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="csdistill quickstart")
    add_arguments(parser)
    sys.exit(quickstart_command(parser.parse_args()))
