"""`csdistill quickstart`: the whole pipeline on the built-in task suite, offline, defaults only.

Stages (each folder under --out; a finished stage whose settings did not change is reused, so a
rerun only does what is new — in particular the teacher is trained once):

  suite/       the task suite (train / validation / test / warmup JSONL)       `csdistill data tasks`
  teacher/     the teacher, SFT on train                                         `csdistill train` (sft)
  student_init/ the shared warm start: a short SFT of the small student on the disjoint warmup split
  students/<run>/ from that warm start: SFT alone (the no-distillation baseline) and one KD run per loss,
               run in parallel, one process per CPU core (pinned, one thread each)
  eval/<run>/  exact match per task, distribution fidelity/diversity, teacher fidelity   `csdistill evaluate`
  report/      report.md + plots                                                 `csdistill report`

Every training stage is a `csdistill train` subprocess on a YAML config written under configs/, so each
step can be rerun or changed by hand. Why the recipe looks like this (warm start, per-loss learning rates,
teacher-logit cache, pinned processes): see docs/LOG.md and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from csdistill.config import ConfigError, load_config, to_yaml

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
    # About ten minutes on 2 CPU cores: a ~0.9M-parameter teacher that masters the exact tasks and a
    # ~27k-parameter student (1/32) that cannot on its own within the budget.
    "default": Plan(n_train=4000, n_validation=200, n_test=200, n_warmup=400, teacher="suite-teacher",
                    student="suite-student", teacher_steps=2500, teacher_lr=3e-3, warmup_steps=150,
                    student_steps=1200, batch_size=32, eval_seeds=(10, 20, 30, 40, 50), max_new_tokens=40),
}


class QuickstartError(RuntimeError):
    """A stage failed: names the stage, its log file and the log's last lines."""


# --------------------------------------------------------------------------- runs and their configs


@dataclass(frozen=True)
class RunSpec:
    """One student run: 'sft' (no distillation) or a registry loss with its weighting."""

    loss: str  # "sft" or a registry loss name
    weighting: str = ""  # csd only

    @property
    def name(self) -> str:
        return f"{self.loss}_{self.weighting}" if self.weighting else self.loss

    @property
    def label(self) -> str:
        if self.loss == "sft":
            return "SFT only (no KD)"
        return f"CSD ({self.weighting})" if self.loss == "csd" else self.loss.upper() if len(self.loss) <= 4 else self.loss


def parse_losses(text: str | list[str] | tuple[str, ...]) -> list[RunSpec]:
    """'csd:SS,csd:TS,fkl' -> RunSpecs (validated against the loss registry)."""
    from csdistill.losses import get_loss

    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not items:
        raise ConfigError("--losses is empty; give e.g. --losses csd:SS,csd:TS,fkl,rkl,srkl")
    specs = []
    for item in items:
        name, _, weighting = item.partition(":")
        kwargs = {"weighting": weighting.upper()} if weighting else {}
        if weighting and name != "csd":
            raise ConfigError(f"--losses: {item!r}: only csd takes a weighting (csd:SS, csd:TS, ...)")
        try:
            get_loss(name, **kwargs)
        except ValueError as err:
            raise ConfigError(f"--losses: {item!r}: {err}") from None
        specs.append(RunSpec(name, weighting.upper() if name == "csd" else ""))
    return specs


# How suite records become sequences, for training and evaluation alike.
DATA_SETTINGS = ("data.template=plain", "data.max_prompt_length=64", "data.max_length=128")


def _data_overrides(suite: Path, plan: Plan) -> list[str]:
    return [f"data.validation_file={suite / 'validation.jsonl'}", *DATA_SETTINGS]


def _train_overrides(plan: Plan, out: Path, steps: int, lr: float, seed: int, threads: int) -> list[str]:
    return ["model.precision=bf16", f"train.output_dir={out}", f"train.max_steps={steps}", f"train.lr={lr}",
            f"train.batch_size={plan.batch_size}", f"train.seed={seed}", f"train.warmup_steps={max(1, steps // 20)}",
            "train.weight_decay=0.0", "train.log_every=10", "train.progress=false", f"train.num_threads={threads}",
            f"generation.max_new_tokens={plan.max_new_tokens}"]


def teacher_overrides(suite: Path, plan: Plan, out: Path, seed: int, threads: int) -> list[str]:
    return [f"model.name_or_path=preset:{plan.teacher}@{seed}", "train.mode=sft",
            f"data.train_file={suite / 'train.jsonl'}", *_data_overrides(suite, plan),
            *_train_overrides(plan, out, plan.teacher_steps, plan.teacher_lr, seed, threads)]


def warm_start_overrides(suite: Path, plan: Plan, out: Path, seed: int, threads: int, teacher: Path) -> list[str]:
    return [f"model.name_or_path=preset:{plan.student}@{seed}", f"model.tokenizer={teacher}", "train.mode=sft",
            f"data.train_file={suite / 'warmup.jsonl'}", *_data_overrides(suite, plan),
            *_train_overrides(plan, out, plan.warmup_steps, 3e-3, seed, threads)]


def student_overrides(spec: RunSpec, suite: Path, plan: Plan, out: Path, seed: int, threads: int,
                      init: Path, teacher: Path, lr: float | None = None) -> list[str]:
    lr = lr if lr is not None else LOSS_LR.get(spec.name, LOSS_LR[spec.loss])
    common = [f"model.name_or_path={init}", f"data.train_file={suite / 'train.jsonl'}", *_data_overrides(suite, plan),
              *_train_overrides(plan, out, plan.student_steps, lr, seed, threads)]
    if spec.loss == "sft":
        return [*common, "train.mode=sft"]
    return [*common, "train.mode=kd", f"teacher.name_or_path={teacher}", f"loss.name={spec.loss}",
            *([f"loss.weighting={spec.weighting}"] if spec.weighting else []), "train.cache_teacher_logits=true"]


# --------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """One `csdistill train` subprocess: its config, folder and CPU cores."""

    name: str
    overrides: list[str]
    out: Path
    config_dir: Path
    steps: int
    after: tuple[Job, ...] = ()  # stages whose output this one reads: their stamps are part of its stamp
    inputs: str = ""  # fingerprint of input files (the suite)
    cores: list[int] = field(default_factory=list)
    process: subprocess.Popen | None = None
    log: object = None

    @property
    def config_path(self) -> Path:
        return self.config_dir / f"{self.name}.yaml"

    @property
    def model_path(self) -> Path:
        return self.out / "final"

    def stamp(self) -> str:
        """Hash of the settings this stage chose (not of the whole resolved config, so that a new config
        field with a default does not invalidate finished stages; thread count excluded), of its input
        files and of the stamps of the stages it reads (a retrained teacher retrains its students)."""
        settings = sorted(o for o in self.overrides if not o.startswith(("train.num_threads=", "train.progress=")))
        material = [settings, self.inputs, [job.stamp() for job in self.after]]
        return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:12]

    def done(self) -> bool:
        """Finished earlier with the same settings (the stamp is written only after success)."""
        stamp = self.out / "quickstart_stamp.json"
        return (self.model_path / "config.json").is_file() and stamp.is_file() and \
            json.loads(stamp.read_text()).get("settings_hash") == self.stamp()

    def steps_done(self) -> int:
        metrics = self.out / "metrics.jsonl"
        if not metrics.is_file():
            return 0
        lines = metrics.read_text().strip().splitlines()
        try:
            return int(json.loads(lines[-1])["step"]) if lines else 0
        except (ValueError, KeyError):
            return 0

    def start(self) -> None:
        cfg = load_config(None, self.overrides)  # validated here: a bad setting fails before any process starts
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(to_yaml(cfg))
        if self.out.exists():  # an interrupted or outdated run: start it afresh
            import shutil

            shutil.rmtree(self.out)
        self.out.mkdir(parents=True)
        self.log = (self.out / "train.log").open("w")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "OMP_NUM_THREADS": str(max(1, len(self.cores)))}
        cores = set(self.cores)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "csdistill.cli", "train", "--config", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores and hasattr(os, "sched_setaffinity") else None)

    def finish(self) -> None:
        """After the process exited: raise with the log's tail on failure, else write the stamp."""
        self.log.close()
        if self.process.returncode != 0:
            tail = "\n".join((self.out / "train.log").read_text(errors="replace").splitlines()[-15:])
            raise QuickstartError(f"stage {self.name!r} failed (exit {self.process.returncode}); "
                                  f"log: {self.out / 'train.log'}; config: {self.config_path}\n{tail}")
        (self.out / "quickstart_stamp.json").write_text(json.dumps({"settings_hash": self.stamp()}))


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def run_jobs(jobs: list[Job], slots: list[list[int]], desc: str, progress: bool = True) -> float:
    """Run `jobs`, at most len(slots) at once, job i on the cores of a free slot; one progress bar over
    all their steps (with ETA). Finished jobs with unchanged settings are skipped. Returns seconds."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    todo = [job for job in jobs if not job.done()]
    for job in jobs:
        if job not in todo:
            print(f"[quickstart] {job.name}: finished earlier with the same settings, reusing {job.model_path}")
    if not todo:
        return 0.0
    bar = tqdm(total=sum(j.steps for j in todo), desc=desc, unit="step", dynamic_ncols=True, disable=not progress)
    running: dict[int, Job] = {}
    pending = list(todo)
    try:
        while pending or running:
            for slot in range(len(slots)):
                if slot not in running and pending:
                    job = pending.pop(0)
                    job.cores = slots[slot]
                    job.start()
                    running[slot] = job
            time.sleep(0.5)
            for slot, job in list(running.items()):
                if job.process.poll() is not None:
                    job.finish()
                    del running[slot]
            bar.n = sum(j.steps if j.process and j.process.poll() is not None else j.steps_done() for j in todo)
            bar.refresh()
    except BaseException:
        for job in running.values():
            job.process.kill()
        raise
    finally:
        bar.close()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- evaluation and report


def task_sets(suite: Path, split: str = "test") -> dict[str, list[dict]]:
    """A held-out split as one set per task (exact match / distribution scores per task)."""
    if split not in ("test", "validation"):
        raise ValueError(f"eval_split={split!r}: choose test or validation")
    sets: dict[str, list[dict]] = {}
    for line in (suite / f"{split}.jsonl").read_text().splitlines():
        record = json.loads(line)
        sets.setdefault(record["task"], []).append(record)
    return dict(sorted(sets.items(), key=lambda kv: kv[0]))


def evaluate_runs(models: dict[str, Path], labels: dict[str, str], teacher_path: Path, suite: Path, plan: Plan,
                  out: Path, threads: int, progress: bool, split: str = "test") -> list[dict]:
    """Evaluate each model on the per-task sets of a split against the teacher; results dicts in order."""
    import torch
    from tqdm import tqdm

    from csdistill.evaluate.runner import evaluate_model, resolve_model_dir
    from csdistill.models import load_model, load_tokenizer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar over the models instead of one per weight file
    torch.set_num_threads(threads)
    cfg = load_config(None, ["train.mode=sft", *DATA_SETTINGS, f"eval.seeds={list(plan.eval_seeds)}", f"generation.max_new_tokens={plan.max_new_tokens}",
                             "generation.batch_size=128"])
    teacher = load_model(str(teacher_path)).eval()
    sets = task_sets(suite, split)
    results = []
    for name, path in tqdm(models.items(), desc=f"evaluate ({split})", unit="model", disable=not progress):
        model = teacher if path == teacher_path else load_model(str(path)).eval()
        tokenizer = load_tokenizer(str(path))
        _, train_cfg = resolve_model_dir(str(path))  # the config saved beside the model: labels the run
        results.append(evaluate_model(model, tokenizer, sets, cfg, teacher=teacher, out_dir=out / name,
                                      progress=False, command="csdistill quickstart", model_name=str(path),
                                      teacher_name=str(teacher_path), label=labels[name], train_cfg=train_cfg))
    return results


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


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summary_scores(result: dict) -> dict[str, float | None]:
    """Means over one evaluated run's sets (None where no set has the metric): exact (EM %, exact tasks),
    valid / tvd / entropy_ratio (sampled entropy / true entropy; distribution tasks), fkl / top1
    (teacher-forced fidelity to the teacher)."""
    sets = list(result["sets"].values())
    dist = [s["distribution"] for s in sets if s.get("distribution")]
    fidelity = [s.get("fidelity") or {} for s in sets]
    return {"exact": _mean(s["exact_match"]["mean"] for s in sets if s.get("exact_match")),
            "valid": _mean(d["valid"] for d in dist), "tvd": _mean(d["tvd"] for d in dist),
            "entropy_ratio": _mean(d["entropy"] / max(d["true_entropy"], 1e-9) for d in dist),
            "fkl": _mean(f.get("forward_kl") for f in fidelity), "top1": _mean(f.get("top1_agreement") for f in fidelity)}


def comparison_table(results: list[dict]) -> str:
    """Markdown: exact match per exact task, then summary_scores as columns."""
    from csdistill.report import markdown_table

    def em(task):
        return lambda r: tuple((r["sets"].get(task, {}).get("exact_match") or {}).get(k) for k in ("mean", "std"))

    def summary(key):
        return lambda r: (summary_scores(r)[key], None)

    exact = [t for t in results[0]["sets"] if results[0]["sets"][t].get("exact_match")]
    columns = [(f"{t} EM ↑", em(t), 1, 1) for t in exact]
    columns += [("exact avg ↑", summary("exact"), 1, 1), ("dist valid ↑", summary("valid"), 1, 3),
                ("dist TVD ↓", summary("tvd"), -1, 3), ("dist entropy/true", summary("entropy_ratio"), 0, 2),
                ("FKL to teacher ↓", summary("fkl"), -1, 3), ("top-1 agree ↑", summary("top1"), 1, 3)]
    return markdown_table([r.get("label", "?") for r in results], results, columns)


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


def quickstart(preset: str = "default", out: str | Path = "runs/quickstart", losses=DEFAULT_LOSSES, seed: int = 0,
               jobs: int = 0, progress: bool = True, plan: Plan | None = None, lrs: dict[str, float] | None = None,
               run_seed: int | None = None, tag: str = "", eval_split: str = "test") -> dict:
    """Run every stage; returns {"results": [...], "report": path, "seconds": {stage: s}, "table": md}.

    seed: the suite and the teacher. run_seed (default: seed): the students' warm start, data order and
    sampling. tag: a name for this set of student runs (their folders get the suffix), so that several
    sweeps or seeds share one suite and teacher. lrs: learning rate per run name or loss (default LOSS_LR).
    eval_split: 'test' (held out) or 'validation' (for choosing settings without touching test).
    """
    from csdistill.report import build_report
    from csdistill.tasks.suite import write_suite

    plan = plan or PLANS[preset]
    run_seed = seed if run_seed is None else run_seed
    specs = [RunSpec("sft"), *parse_losses(losses)]
    out = Path(out)
    suffix = f"_{tag}" if tag else ""
    suite, configs = out / "suite", out / "configs" / (tag or ".")
    cores = available_cores()
    width = max(1, min(jobs or len(cores), len(cores)))
    parallel_slots = [[c] for c in cores[:width]]  # one core per student process
    all_cores = [cores]
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    write_suite(suite, seed, n_train=plan.n_train, n_validation=plan.n_validation, n_test=plan.n_test,
                n_warmup=plan.n_warmup)  # deterministic: rewriting gives identical files
    seconds["suite"] = time.perf_counter() - t0

    suite_id = hashlib.sha256(b"".join((suite / f"{split}.jsonl").read_bytes()
                                        for split in ("train", "validation", "warmup"))).hexdigest()[:12]
    teacher = Job("teacher", teacher_overrides(suite, plan, out / "teacher", seed, len(cores)), out / "teacher",
                  out / "configs", plan.teacher_steps, inputs=suite_id)
    seconds["teacher"] = run_jobs([teacher], all_cores, "teacher (SFT)", progress)
    init_dir = out / ("student_init" if run_seed == seed else f"student_init_seed{run_seed}")
    init = Job(init_dir.name, warm_start_overrides(suite, plan, init_dir, run_seed, len(cores), teacher.model_path),
               init_dir, out / "configs", plan.warmup_steps, after=(teacher,), inputs=suite_id)
    seconds["student warm start"] = run_jobs([init], all_cores, "student warm start", progress)
    runs = out / f"students{suffix}"
    students = [Job(spec.name, student_overrides(spec, suite, plan, runs / spec.name, run_seed, 1, init.model_path,
                                                 teacher.model_path,
                                                 (lrs or {}).get(spec.name, (lrs or {}).get(spec.loss))),
                    runs / spec.name, configs, plan.student_steps, after=(teacher, init), inputs=suite_id) for spec in specs]
    seconds["students"] = run_jobs(students, parallel_slots, f"students ({len(students)} runs, {width} at once)", progress)

    t1 = time.perf_counter()
    models = {"teacher": teacher.model_path.resolve(), **{s.name: j.model_path.resolve() for s, j in zip(specs, students)}}
    labels = {"teacher": "teacher", **{s.name: s.label for s in specs}}
    results = evaluate_runs(models, labels, models["teacher"], suite, plan, out / f"eval{suffix}", len(cores), progress,
                            eval_split)
    seconds["evaluation"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0

    table = comparison_table(results) + "\n\n" + perfect_sampler_line(task_sets(suite, eval_split), len(plan.eval_seeds))
    report = build_report(results, out / f"report{suffix}", metrics_dirs=[j.out for j in students],
                          title="Full report", command=f"csdistill quickstart --preset {preset}")
    _append_summary(report, plan, preset, table, seconds, cores, width)
    return {"results": results, "report": report, "seconds": seconds, "table": table}


def _append_summary(report: Path, plan: Plan, preset: str, table: str, seconds: dict, cores: list[int], width: int) -> None:
    """Prepend the quickstart's own summary (what ran, how long, the comparison table) to report.md."""
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    head = [f"# csdistill quickstart ({preset})", "",
            f"Teacher `{plan.teacher}` SFT for {plan.teacher_steps} steps; every student `{plan.student}` starts from "
            f"the same warm start ({plan.warmup_steps} SFT steps on the disjoint warmup split) and trains "
            f"{plan.student_steps} steps of batch {plan.batch_size} on the train split: SFT alone, or KD with each loss. "
            f"Test split: {plan.n_test} prompts; {len(plan.eval_seeds)} sampled answers each (temperature 1).", "",
            f"Wall time: {stages} ({len(cores)} cores, {width} student runs at once).", "",
            "## Comparison", "",
            "EM = exact match % (mean over seeds); distribution tasks: share of valid outputs, total variation "
            "distance of the sampled outputs from the true distribution, and sampled entropy / true entropy "
            "(1 = as diverse as the truth); fidelity = teacher-forced token means on the test references.", "",
            table, "", "---", ""]
    text = report.read_text()
    report.write_text("\n".join(head) + text)


def quickstart_command(args: argparse.Namespace) -> int:
    try:
        summary = quickstart(args.preset, args.out, args.losses, args.seed, args.jobs, progress=not args.no_progress)
    except (ConfigError, QuickstartError, ValueError) as err:
        print(f"csdistill quickstart: error: {err}", file=sys.stderr)
        return 2
    print()
    print(summary["table"])
    print()
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items()))
    print(f"report: {summary['report']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="csdistill quickstart")
    add_arguments(parser)
    sys.exit(quickstart_command(parser.parse_args()))
