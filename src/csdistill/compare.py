"""`csdistill compare`: every (loss, seed) trained from one student start, all evaluated, one table.

    csdistill compare --config base.yaml --losses sft,fkl,rkl,srkl,csd:SS,csd:TS,csd:US --seeds 0,1,2 --out DIR

base.yaml is an ordinary training config: model.name_or_path is the student start that every run begins
from, teacher.name_or_path the teacher, data.* the training data (data.validation_file: the split a
learning-rate sweep is scored on), eval.sets the test sets, train.* the recipe. A run changes only
loss.name / loss.weighting (`sft`: train.mode=sft on the same data, i.e. SeqKD when the responses are the
teacher's), train.seed, train.lr and train.output_dir. The quickstart is this command on the built-in suite.

Layout under --out (a rerun reuses every run whose settings and inputs did not change; evaluation reuses
finished sets, see `csdistill evaluate`):
  configs/<run>.yaml      each run's config: rerun one by hand with `csdistill train --config ...`
  runs/<run>/             each run's train.output_dir (<run> = <loss>_seed<k>), stamp.json once finished
  sweep/                  --lr-sweep: one run per (loss, lr) at seed SWEEP_SEED, scored on validation; sweep.json
  eval/<decode>/<row>/    evaluation of each row (teacher, student start, runs) per decoding (greedy / sampled)
  report/report.md        the table (mean ± std over seeds, best in bold), plots, provenance; compare.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from csdistill.config import Config, ConfigError, load_config, to_dict
from csdistill.files import atomic_write_text, file_sha256
from csdistill.jobs import CompareError, Job, available_cores, core_slots, pinned_process, run_jobs

SWEEP_SEED = 100  # the lr sweep trains at its own seed, so the table's seeds stay held out from the choice
DECODES = ("greedy", "sampled")


# --------------------------------------------------------------------------- what to run


@dataclass(frozen=True)
class RunSpec:
    """One row: 'sft' (no distillation: SFT on the training responses) or a registry loss with its weighting."""

    loss: str  # "sft" or a registry loss name
    weighting: str = ""  # csd only

    @property
    def name(self) -> str:
        return f"{self.loss}_{self.weighting}" if self.weighting else self.loss

    @property
    def key(self) -> str:  # as written on the command line: csd:SS
        return f"{self.loss}:{self.weighting}" if self.weighting else self.loss

    @property
    def label(self) -> str:
        if self.loss == "sft":
            return "SFT only (no KD)"
        return f"CSD ({self.weighting})" if self.loss == "csd" else self.loss.upper() if len(self.loss) <= 4 else self.loss


def parse_losses(text: str | Sequence[str], allow_sft: bool = True) -> list[RunSpec]:
    """'sft,csd:SS,fkl' -> RunSpecs, validated against the loss registry (duplicates are errors)."""
    from csdistill.losses import get_loss

    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not items:
        raise ConfigError("--losses is empty; give e.g. --losses sft,csd:SS,csd:TS,fkl,rkl,srkl")
    specs = []
    for item in items:
        name, _, weighting = item.partition(":")
        if name == "sft" and allow_sft and not weighting:
            specs.append(RunSpec("sft"))
            continue
        if weighting and name != "csd":
            raise ConfigError(f"--losses: {item!r}: only csd takes a weighting (csd:SS, csd:TS, ...)")
        try:
            get_loss(name, **({"weighting": weighting.upper()} if weighting else {}))
        except ValueError as err:
            raise ConfigError(f"--losses: {item!r}: {err}" + ("; sft is the no-distillation run" if allow_sft else "")) from None
        specs.append(RunSpec(name, weighting.upper() if name == "csd" else ""))
    duplicates = sorted({s.key for s in specs if specs.count(s) > 1})
    if duplicates:
        raise ConfigError(f"--losses: {', '.join(duplicates)} given twice; list each loss once")
    return specs


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (distinct integers)."""
    items = [s.strip() for s in text.split(",") if s.strip()] if isinstance(text, str) else list(text)
    try:
        seeds = [int(s) for s in items]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: not a list of integers; give e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: give one or more distinct integers, e.g. --seeds 0,1,2")
    return seeds


def parse_lrs(text: str, specs: Sequence[RunSpec]) -> dict[str, float]:
    """'3e-4' (every run) or 'fkl=3e-4,csd:SS=1e-4' -> {run name or loss: lr}; keys must be in --losses."""
    out: dict[str, float] = {}
    for item in (s.strip() for s in (text or "").split(",") if s.strip()):
        key, _, value = item.rpartition("=")
        try:
            lr = float(value)
        except ValueError:
            raise ConfigError(f"--lr {item!r}: {value!r} is not a number; write e.g. --lr fkl=3e-4,csd:SS=1e-4") from None
        if not lr > 0:
            raise ConfigError(f"--lr {item!r}: a learning rate must be > 0")
        if not key:
            out.update({s.name: lr for s in specs})
            continue
        name, _, weighting = key.partition(":")
        target = RunSpec(name, weighting.upper()) if weighting else RunSpec(name)
        if target not in specs and not any(s.loss == name for s in specs):
            raise ConfigError(f"--lr {item!r}: {key!r} is not in --losses ({','.join(s.key for s in specs)})")
        out[target.name] = lr
    return out


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: not a list of numbers; write e.g. {flag} 1e-4,3e-4,1e-3") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{flag} {text!r}: give one or more learning rates > 0, e.g. {flag} 1e-4,3e-4,1e-3")
    return values


def parse_decodes(text: str | None, cfg: Config) -> list[str]:
    """'greedy,sampled' -> ['greedy', 'sampled']; None: what the config's eval settings ask for."""
    if not text:
        return ["greedy" if cfg.eval.greedy or not cfg.generation.do_sample else "sampled"]
    decodes = [s.strip() for s in text.split(",") if s.strip()]
    bad = [d for d in decodes if d not in DECODES]
    if bad or not decodes or len(set(decodes)) != len(decodes):
        raise ConfigError(f"--decode {text!r}: give greedy, sampled or greedy,sampled")
    return decodes


# --------------------------------------------------------------------------- configs of the runs


def base_overrides(cfg: Config) -> list[str]:
    """The config as dotted overrides: every leaf that differs from the default (JSON values, which YAML
    reads back). Defaults are left out, so a config field added later does not change a run's stamp."""
    def leaves(value, default, prefix):
        if isinstance(value, dict):
            for key in value:
                yield from leaves(value[key], default[key], f"{prefix}{key}.")
        elif value != default:
            yield f"{prefix[:-1]}={json.dumps(value)}"

    return list(leaves(to_dict(cfg), to_dict(Config()), ""))


def run_overrides(spec: RunSpec, cfg: Config, seed: int, lr: float, out: Path) -> list[str]:
    """What one run changes in the base config."""
    common = [f"train.seed={seed}", f"train.lr={lr}", f"train.output_dir={out}", "train.progress=false"]
    if spec.loss == "sft":
        cache = ["train.teacher_cache="] if hasattr(cfg.train, "teacher_cache") else []  # a KD-only setting
        return [*common, "train.mode=sft", "train.cache_teacher_logits=false", *cache]
    mode = cfg.train.mode if cfg.train.mode != "sft" else "kd"
    return [*common, f"train.mode={mode}", f"loss.name={spec.loss}",
            *([f"loss.weighting={spec.weighting}"] if spec.weighting else [])]


def _hash_path(path: str) -> str:
    """Content hash of a local file; (name, size, mtime) of a folder's files (a model: retrained = changed);
    the string itself otherwise (a hub id or preset: named in the settings already)."""
    p = Path(path)
    if not path or not p.exists():
        return path
    p = p.resolve()
    if p.is_file():
        return file_sha256(p)[:16]
    stats = sorted((str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in p.rglob("*") if f.is_file())
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def inputs_fingerprint(cfg: Config) -> str:
    """What a run reads besides its settings: the student start, teacher, tokenizer and data files."""
    d = cfg.data
    paths = [cfg.model.name_or_path, cfg.model.tokenizer, cfg.teacher.name_or_path, d.train_file, d.validation_file,
             d.lm_file, d.teacher_responses_file, d.student_responses_file, getattr(cfg.train, "teacher_cache", "")]
    return hashlib.sha256(json.dumps([_hash_path(p) for p in paths]).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- evaluation


@dataclass
class Row:
    """One table row: the teacher, the student start, or one loss over its seeds."""

    name: str  # folder name under eval/<decode>/ (per seed: <name>_seed<k>)
    label: str
    models: dict[int | None, Path]  # seed (None: a model not trained per seed) -> model folder
    results: dict[str, list[dict]] = field(default_factory=dict)  # decode -> one results dict per model

    def folder(self, seed: int | None) -> str:
        """The model's evaluation folder under eval/<decode>/."""
        return self.name if seed is None else f"{self.name}_seed{seed}"


def eval_config(base: Sequence[str], decode: str, extra: Sequence[str] = ()) -> Config:
    """The evaluation settings of one decoding: the base config's data/generation/eval settings."""
    sampled = decode == "sampled"
    return load_config(None, [*base, *extra, f"eval.greedy={str(not sampled).lower()}",
                              *(["generation.do_sample=true"] if sampled else [])])


def evaluate_rows(rows: list[Row], teacher_path: str, sets: dict | list, cfgs: dict[str, Config], out: Path,
                  threads: int, progress: bool, command: str, slots: list[list[int]] | None = None) -> None:
    """Evaluate every model of every row with each decoding's config (fills row.results); the teacher is
    loaded once. Finished sets on disk with the same weights and settings are reused (evaluate_model).
    slots: CPU core groups; with more than one (and no GPU) the models are first evaluated in that many
    pinned worker processes (evaluate_in_workers), and this process only reads what they wrote."""
    import torch

    if slots and len(slots) > 1 and not torch.cuda.is_available():
        evaluate_in_workers(rows, teacher_path, sets, cfgs, out, slots, command, progress)
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from csdistill.evaluate.runner import evaluate_model, resolve_model_dir
    from csdistill.models import load_model, load_tokenizer

    hf_logging.disable_progress_bar()  # one bar over the models instead of one per weight file
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_model(teacher_path).eval().to(device)
    todo = [(row, seed, path) for row in rows for seed, path in row.models.items()]
    for row, seed, path in tqdm(todo, desc="evaluate", unit="model", disable=not progress):
        same = str(path) == str(teacher_path)
        model = teacher if same else load_model(str(path)).eval().to(device)
        tokenizer = load_tokenizer(str(path), fallback=teacher_path)
        _, train_cfg = resolve_model_dir(str(path))  # the config saved beside the model: labels the run
        for decode, cfg in cfgs.items():
            result = evaluate_model(model, tokenizer, sets, cfg, teacher=teacher, out_dir=out / decode / row.folder(seed),
                                    progress=False, command=command, model_name=str(path), teacher_name=teacher_path,
                                    label=row.label, train_cfg=train_cfg)
            row.results.setdefault(decode, []).append(result)
        del model


WORKER_FLAG = "--evaluate-worker"


def evaluate_in_workers(rows: list[Row], teacher_path: str, sets: dict | list, cfgs: dict[str, Config], out: Path,
                        slots: list[list[int]], command: str, progress: bool) -> float:
    """Evaluate the rows' models in len(slots) processes at once, each pinned to one slot's cores with one
    thread per core, the models dealt out in turn (`python -m csdistill.compare --evaluate-worker SPEC`).
    Decoding small batches scales better over processes than over threads. Returns seconds."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    models = [(row, seed, path) for row in rows for seed, path in row.models.items()]
    out.mkdir(parents=True, exist_ok=True)
    named = {k: str(v) if isinstance(v, Path) else v for k, v in sets.items()} if isinstance(sets, dict) else None
    spec_common = {"teacher": str(teacher_path), "sets": named if named is not None else [str(s) for s in sets],
                   "cfgs": {d: base_overrides(cfg) for d, cfg in cfgs.items()}, "out": str(out), "command": command}
    workers = []
    for k, cores in enumerate(slots):
        mine = models[k::len(slots)]
        if not mine:
            continue
        spec = {**spec_common, "models": [{"name": r.name, "label": r.label, "seed": seed, "path": str(path)}
                                          for r, seed, path in mine]}
        spec_path, log_path = out / f"worker-{k}.json", out / f"worker-{k}.log"
        spec_path.write_text(json.dumps(spec, indent=1))
        log = log_path.open("w")
        process = pinned_process(["-m", "csdistill.compare", WORKER_FLAG, str(spec_path)], cores, log)
        workers.append((process, log, log_path))
    bar = tqdm(total=len(models), desc=f"evaluate ({len(workers)} processes)", unit="model", disable=not progress)
    try:
        while any(p.poll() is None for p, *_ in workers):
            time.sleep(1.0)
            bar.n = sum(log_path.read_text(errors="replace").count("[worker] done ") for _, _, log_path in workers)
            bar.refresh()
    except BaseException:
        for process, *_ in workers:
            process.kill()
        raise
    finally:
        bar.close()
        for _, log, *_ in workers:
            log.close()
    for process, _, log_path in workers:
        if process.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise CompareError(f"evaluation worker failed (exit {process.returncode}); log: {log_path}\n{tail}")
    return time.perf_counter() - t0


def _evaluation_worker(spec_path: str) -> None:
    """One worker of evaluate_in_workers: evaluate its models into the shared folders."""
    spec = json.loads(Path(spec_path).read_text())
    cfgs = {d: load_config(None, overrides) for d, overrides in spec["cfgs"].items()}
    for m in spec["models"]:
        row = Row(m["name"], m["label"], {m["seed"]: Path(m["path"])})
        evaluate_rows([row], spec["teacher"], spec["sets"], cfgs, Path(spec["out"]), len(available_cores()), False,
                      spec["command"])
        print(f"[worker] done {row.folder(m['seed'])}", flush=True)


# --------------------------------------------------------------------------- the table


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def is_free_text(set_result: dict) -> bool:
    """Scored against reference texts (ROUGE-L): not a distribution task, and not every record exact-checked
    (a mixed set, e.g. open prompts with a few GSM8K-style ones, gets both EM and ROUGE-L)."""
    exact = set_result.get("exact_match") or {}
    return not set_result.get("distribution") and bool(set_result.get("rouge_l")) and \
        exact.get("n", 0) < set_result.get("n_examples", 0)


def summary_scores(result: dict) -> dict[str, float | None]:
    """Means over one evaluated run's sets (None where no set has the metric): exact (EM %, exact tasks),
    valid / tvd / entropy_ratio (sampled entropy / true entropy; distribution tasks), rouge (ROUGE-L of the
    other sets), self_bleu / distinct_2 (diversity), ece, fkl / top1 (teacher-forced fidelity to the teacher)."""
    sets = list(result["sets"].values())
    dist = [s["distribution"] for s in sets if s.get("distribution")]
    free = [s for s in sets if is_free_text(s)]
    fidelity = [s.get("fidelity") or {} for s in sets]
    from csdistill.report import diversity_value

    return {"exact": _mean(s["exact_match"]["mean"] for s in sets if s.get("exact_match")),
            "valid": _mean(d["valid"] for d in dist), "tvd": _mean(d["tvd"] for d in dist),
            "entropy_ratio": _mean(d["entropy"] / max(d["true_entropy"], 1e-9) for d in dist),
            "rouge": _mean((s.get("rouge_l") or {}).get("mean") for s in free),
            "self_bleu": _mean(diversity_value(s) for s in free),
            "distinct_2": _mean((s.get("distinct_2") or {}).get("mean") for s in free),
            "ece": _mean((s.get("calibration") or {}).get("ece") for s in free),
            "fkl": _mean(f.get("forward_kl") for f in fidelity), "top1": _mean(f.get("top1_agreement") for f in fidelity)}


def set_score(s: dict) -> float | None:
    """One set's score to choose settings by (higher is better): exact match % on exact-checked records,
    100 * (1 - TVD) on distribution tasks, ROUGE-L on free text; a mixed set (open prompts with a few
    checkable ones) the mean of its EM and ROUGE-L, so neither a handful of exact records nor the text
    alone decides."""
    parts = [s["exact_match"]["mean"]] if s.get("exact_match") else []
    if s.get("distribution"):
        parts.append(100.0 * (1.0 - s["distribution"]["tvd"]))
    elif s.get("rouge_l") and (not parts or is_free_text(s)):
        parts.append(s["rouge_l"]["mean"])
    return statistics.fmean(parts) if parts else None


def selection_score(result: dict) -> float:
    """The mean over sets of set_score (NaN when no set has a score)."""
    scores = [v for v in map(set_score, result["sets"].values()) if v is not None]
    return statistics.fmean(scores) if scores else float("nan")


def over_seeds(row: Row, decode: str, get: Callable[[dict], tuple]) -> tuple[float | None, float | None]:
    """(mean, std) of a metric: one model -> its own (std over sampling seeds, if any); several seeds ->
    mean and std over the training seeds of each seed's mean."""
    values = [get(r) for r in row.results[decode]]
    if len(values) == 1:
        return values[0]
    means = [v[0] for v in values if v[0] is not None]
    if not means:
        return None, None
    return statistics.fmean(means), statistics.stdev(means) if len(means) > 1 else 0.0


def table_columns(sample: dict, decodes: Sequence[str]) -> list:
    """report.Column specs over Rows, from the sets of one results dict: EM per exact set, ROUGE-L per
    free-text set, distribution scores, diversity (sampled), then teacher fidelity and ECE once."""
    sets = sample["sets"]
    exact = [s for s, r in sets.items() if r.get("exact_match")]
    dist = [s for s, r in sets.items() if r.get("distribution")]
    free = [s for s, r in sets.items() if is_free_text(r)]

    def metric(decode, set_name, key):
        def get(r):
            stat = r["sets"].get(set_name, {}).get(key) or {}
            return stat.get("mean"), stat.get("std")
        return lambda row: over_seeds(row, decode, get)

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
                for name, set_result in result["sets"].items():
                    passes = [read_predictions(folder / f, len(records[name])) for f in set_result["generations"]]
                    scores = example_scores(passes, records[name])
                    if not is_free_text(set_result):
                        scores.pop("rouge_l", None)
                    for metric, values in scores.items():
                        per_seed.setdefault((name, metric), []).append(values)
            for (name, metric), values in per_seed.items():
                out.setdefault((decode, name, metric), {})[row.name] = torch.stack(values)
    return out


METRIC_LABEL = {"exact_match": "EM", "rouge_l": "ROUGE-L"}


def noise_analysis(rows: list[Row], scores: dict, labels: dict[str, str]) -> tuple[str, dict]:
    """(markdown, numbers): per headline column, every student row against the best one and every pair,
    with paired-bootstrap 95 % intervals (evaluate/significance.py). The teacher is no contender (the
    references are its own answers)."""
    from csdistill.evaluate.significance import bootstrap_difference, format_difference

    contenders = [row.name for row in rows if row.name != "teacher"]
    columns, numbers = [], {}
    for index, ((decode, name, metric), by_row) in enumerate(scores.items()):
        names = [n for n in contenders if n in by_row]
        if len(names) < 2:
            continue
        means = {n: float(by_row[n].mean()) for n in names}
        best = max(names, key=lambda n: means[n])
        pairs = {a: {b: bootstrap_difference(by_row[a], by_row[b], seed=1000 * index + i * len(names) + j)
                     for j, b in enumerate(names) if b != a} for i, a in enumerate(names)}
        title = f"{name} {METRIC_LABEL[metric]} ({decode})"
        columns.append((title, best, means, pairs))
        numbers[title] = {"best": best, "means": means, "pairs": pairs}
    if not columns:
        return "", {}
    lines = ["Difference from the best row per column, with its paired-bootstrap 95 % interval over test prompts "
             "and training seeds; **bold**: the interval excludes 0 (behind the best beyond the noise), plain: "
             "inside the noise.", "",
             "| run | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for n in contenders:
        cells = []
        for _, best, means, pairs in columns:
            if n not in means:
                cells.append("–")
            else:
                cells.append(f"best ({means[n]:.1f})" if n == best else format_difference(pairs[n][best]))
        lines.append(f"| {labels.get(n, n)} | " + " | ".join(cells) + " |")
    for title, _, means, pairs in columns:
        order = sorted(means, key=lambda n: -means[n])
        lines += ["", f"**{title}**, row minus column (95 % interval; bold: excludes 0):", "",
                  "| | " + " | ".join(labels.get(n, n) for n in order) + " |", "|---" * (len(order) + 1) + "|"]
        lines += [f"| {labels.get(a, a)} ({means[a]:.1f}) | " +
                  " | ".join("" if a == b else format_difference(pairs[a][b]) for b in order) + " |" for a in order]
    return "\n".join(lines), numbers


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class Layout:
    """Folders of one comparison (see the module docstring); flat: run folders named <run> without _seed<k>."""

    runs: Path
    configs: Path
    eval: Path
    report: Path
    sweep: Path
    flat: bool = False

    @classmethod
    def under(cls, out: str | Path) -> Layout:
        out = Path(out)
        return cls(out / "runs", out / "configs", out / "eval", out / "report", out / "sweep")

    def run_name(self, spec: RunSpec, seed: int) -> str:
        return spec.name if self.flat else f"{spec.name}_seed{seed}"


def _training_jobs(specs, seeds, lrs, base, base_cfg, layout: Layout, root: Path, inputs: str) -> dict:
    """{(spec, seed): Job} of the table's runs (root: layout.runs, or the sweep's folder)."""
    steps = base_cfg.train.max_steps or 1
    jobs = {}
    for spec in specs:
        for seed in seeds:
            name = layout.run_name(spec, seed)
            out = root / name
            jobs[spec, seed] = Job(name, [*base, *run_overrides(spec, base_cfg, seed, lrs[spec.name], out)], out,
                                   layout.configs if root == layout.runs else root / "configs", steps, inputs=inputs)
    return jobs


def sweep_lrs(specs, grid, base, base_cfg, layout: Layout, inputs: str, slots, sets, decode: str,
              threads: int, progress: bool) -> dict[str, float]:
    """Best learning rate per run on the validation sets (seed SWEEP_SEED, selection_score); sweep.json."""
    by_lr = {lr: _training_jobs(specs, [SWEEP_SEED], {s.name: lr for s in specs}, base, base_cfg, layout,
                                layout.sweep / f"lr{lr:g}", inputs) for lr in grid}
    run_jobs([job for jobs in by_lr.values() for job in jobs.values()], slots, "lr sweep", progress)
    rows = [Row(f"lr{lr:g}/{spec.name}", spec.label, {None: jobs[spec, SWEEP_SEED].model_path})
            for lr, jobs in by_lr.items() for spec in specs]
    cfg = eval_config(base, decode)
    evaluate_rows(rows, base_cfg.teacher.name_or_path, sets, {decode: cfg}, layout.sweep / "eval", threads, progress,
                  "csdistill compare --lr-sweep", slots)
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


def load_test_records(sets, base: Sequence[str], teacher: str) -> dict[str, list[dict]]:
    """{set: records} as evaluation loaded them (eval.max_examples, the teacher's tokenizer for chat records)."""
    from csdistill.evaluate.runner import load_sets
    from csdistill.models import load_tokenizer

    cfg = load_config(None, list(base))
    return load_sets(sets, cfg.eval.max_examples, cfg.data.skip_bad_records, load_tokenizer(teacher))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


CAPTION = ("Rows trained per seed: mean ± std over the training seeds (one seed: ± over the sampling seeds); "
           "teacher and student start: ± over the sampling seeds. EM = exact match %; ROUGE-L (F × 100) against the "
           "test references; sampled = temperature-1 samples, one pass per eval seed; Self-BLEU across those samples "
           "(lower = more diverse); FKL / top-1 / ECE: teacher-forced on the references. Best per column in bold.")


def compare(base: Sequence[str], specs: Sequence[RunSpec], seeds: Sequence[int], layout: Layout, *,
            test_sets: dict | list | None = None, validation_sets: dict | list | None = None,
            lrs: dict[str, float] | None = None, lr_sweep: Sequence[float] = (), decodes: Sequence[str] = ("sampled",),
            baselines: Sequence[str] = ("teacher", "start"), labels: dict[str, str] | None = None,
            eval_overrides: Sequence[str] = (), jobs: int = 0, progress: bool = True, title: str = "csdistill compare",
            intro: Sequence[str] = (), caption: str = CAPTION, notes: str = "", command: str = "csdistill compare") -> dict:
    """Train every (spec, seed) from the base config's student start, evaluate every row on the test sets
    with each decoding, write the table and report. base: the base config as dotted overrides.

    lrs: {run name or loss: lr} (default: train.lr); lr_sweep: learning rates to choose from, per run not in
    lrs, on validation_sets (default data.validation_file). baselines: extra rows, 'teacher' and/or 'start'
    (the untrained student start: no KD). Returns {"rows", "results", "table", "numbers", "report", "lrs", "seconds"}.
    """
    from csdistill.report import build_report

    t0 = time.perf_counter()
    base_cfg = load_config(None, list(base))
    teacher = base_cfg.teacher.name_or_path
    if not teacher:
        raise ConfigError("teacher.name_or_path is empty: compare scores every run against a teacher; set it in --config")
    test_sets = test_sets or list(base_cfg.eval.sets)
    if not test_sets:
        raise ConfigError("eval.sets is empty: list the test JSONL files in the config, e.g. eval.sets: [test.jsonl]")
    labels = {**{s.name: s.label for s in specs}, "teacher": "teacher", "start": "student start (no KD)", **(labels or {})}
    slots = core_slots(jobs)
    threads = len(available_cores())
    inputs = inputs_fingerprint(base_cfg)
    seconds: dict[str, float] = {}
    chosen = {s.name: (lrs or {}).get(s.name, (lrs or {}).get(s.loss)) for s in specs}
    if lr_sweep and any(v is None for v in chosen.values()):
        open_specs = [s for s in specs if chosen[s.name] is None]
        if validation_sets is None and not base_cfg.data.validation_file:
            raise ConfigError("--lr-sweep scores on data.validation_file, which is empty; set it in --config")
        validation_sets = validation_sets or {"validation": base_cfg.data.validation_file}
        chosen.update(sweep_lrs(open_specs, lr_sweep, base, base_cfg, layout, inputs, slots, validation_sets,
                                decodes[0], threads, progress))
        seconds["lr sweep"] = time.perf_counter() - t0
    chosen = {name: lr if lr is not None else base_cfg.train.lr for name, lr in chosen.items()}
    runs = _training_jobs(specs, seeds, chosen, base, base_cfg, layout, layout.runs, inputs)
    seconds["training"] = run_jobs(list(runs.values()), slots, f"{len(runs)} runs, {len(slots)} at once", progress)

    t1 = time.perf_counter()
    rows = [Row(b, labels[b], {None: Path(teacher if b == "teacher" else base_cfg.model.name_or_path)}) for b in baselines]
    rows += [Row(s.name, labels[s.name], {seed: runs[s, seed].model_path.resolve() for seed in seeds}) for s in specs]
    cfgs = {d: eval_config(base, d, eval_overrides) for d in decodes}
    evaluate_rows(rows, teacher, test_sets, cfgs, layout.eval, threads, progress, command, slots)
    seconds["evaluation"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0

    table, numbers = comparison_table(rows, decodes)
    noise, noise_numbers = noise_analysis(rows, headline_scores(rows, decodes, load_test_records(test_sets, base, teacher),
                                                                layout.eval), labels)
    shown = "sampled" if "sampled" in decodes else decodes[0]  # the fidelity-diversity plot wants samples
    flat = [(row, seed, r) for row in rows for seed, r in zip(row.models, row.results[shown])]
    report_labels = [row.label if seed is None or len(seeds) == 1 else f"{row.label} · seed {seed}" for row, seed, _ in flat]
    report = build_report([r for _, _, r in flat], layout.report, metrics_dirs=[j.out for j in runs.values()],
                          title="Full report", labels=report_labels, command=command)
    lr_line = "Learning rates: " + ", ".join(f"{labels[name]} {lr:g}" for name, lr in chosen.items()) + \
        (f" (chosen on the validation split from {', '.join(f'{v:g}' for v in lr_sweep)})" if lr_sweep else "") + "."
    head = [f"# {title}", "", *intro, "",
            "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) +
            f" ({len(available_cores())} cores, {len(slots)} runs at once).", "",
            "## Comparison", "", caption, "", table, "", lr_line, "", notes, "",
            *(["## Which differences are outside the noise", "", noise, ""] if noise else []), "---", ""]
    report.write_text("\n".join(head) + report.read_text())
    _write_atomic(layout.report / "compare.json", json.dumps(
        {"command": command, "seeds": list(seeds), "decodes": list(decodes), "lrs": chosen, "seconds": seconds,
         "rows": numbers, "noise": noise_numbers}, indent=1))
    return {"rows": rows, "results": [r for _, _, r in flat], "table": table, "numbers": numbers, "report": report,
            "lrs": chosen, "seconds": seconds, "noise": noise, "noise_numbers": noise_numbers}


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


def parse_baselines(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip() and s.strip() != "none"]
    bad = [s for s in items if s not in ("teacher", "start")]
    if bad:
        raise ConfigError(f"--baselines {text!r}: {', '.join(bad)} unknown; give teacher, start, teacher,start or none")
    return items


def compare_from_args(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config, args.overrides)
    specs = parse_losses(args.losses)
    command = shlex.join(["csdistill", "compare", "--config", args.config, *args.overrides, "--losses", args.losses,
                          "--seeds", args.seeds, "--out", args.out, *(["--lr", args.lr] if args.lr else []),
                          *(["--lr-sweep", args.lr_sweep] if args.lr_sweep else []),
                          *(["--decode", args.decode] if args.decode else [])])
    return compare(base_overrides(cfg), specs, parse_seeds(args.seeds), Layout.under(args.out),
                   lrs=parse_lrs(args.lr, specs), lr_sweep=parse_floats(args.lr_sweep, "--lr-sweep") if args.lr_sweep else (),
                   decodes=parse_decodes(args.decode, cfg), baselines=parse_baselines(args.baselines), jobs=args.jobs,
                   progress=not args.no_progress, command=command, labels={"sft": SFT_LABEL},
                   intro=[f"Base config `{args.config}`; student start `{cfg.model.name_or_path}`; teacher "
                          f"`{cfg.teacher.name_or_path}`; seeds {args.seeds}."])


def compare_command(args: argparse.Namespace) -> int:
    """`csdistill compare`; its user errors (ConfigError, CompareError, ...) reach the CLI's one-line boundary."""
    print_summary(compare_from_args(args))
    return 0


def print_summary(summary: dict) -> None:
    """The table, the wall time per stage and where the report is (compare and quickstart)."""
    print()
    print(summary["table"])
    print()
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items()))
    print(f"report: {summary['report']}")


if __name__ == "__main__":  # the evaluation worker (evaluate_in_workers)
    if len(sys.argv) == 3 and sys.argv[1] == WORKER_FLAG:
        _evaluation_worker(sys.argv[2])
    else:
        sys.exit(f"usage: python -m csdistill.compare {WORKER_FLAG} SPEC.json (internal; use `csdistill compare`)")
