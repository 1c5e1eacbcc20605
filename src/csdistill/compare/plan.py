"""Which runs and evaluations a comparison needs, and which of them a rerun can reuse.

A training run is a `Job` (jobs.py) whose stamp hashes its settings and inputs; an evaluation of one model
with one decoding is reused when its stamp file (EVAL_STAMP) matches the model files, the teacher, the test
sets and the evaluation config, so a finished comparison is known to be finished before anything starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from csdistill.compare.specs import RunSpec
from csdistill.config import Config, config_hash, to_dict
from csdistill.files import atomic_write_text, file_sha256
from csdistill.jobs import Job

SWEEP_SEED = 100  # the lr sweep trains at its own seed, so the table's seeds stay held out from the choice
EVAL_STAMP = "compare_stamp.json"  # in eval/<decode>/<row>/ once that model's evaluation finished


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


def eval_config(cfg: Config, decode: str, generation: dict | None = None) -> Config:
    """The evaluation settings of one decoding: the base config with greedy decoding or sampling, and the
    `generation` fields given (e.g. {"batch_size": 128}). cfg itself is not changed."""
    sampled = decode == "sampled"
    gen = dataclasses.replace(cfg.generation, **(generation or {}), **({"do_sample": True} if sampled else {}))
    return dataclasses.replace(cfg, generation=gen, eval=dataclasses.replace(cfg.eval, greedy=not sampled))


def hash_path(path: str) -> str:
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
    return hashlib.sha256(json.dumps([hash_path(p) for p in paths]).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- folders and runs


@dataclass(frozen=True)
class Layout:
    """Folders of one comparison (see the package docstring); flat: run folders named <run> without _seed<k>."""

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


def training_jobs(specs: Sequence[RunSpec], seeds: Sequence[int], lrs: dict[str, float], base: Sequence[str],
                  cfg: Config, layout: Layout, root: Path, inputs: str) -> dict[tuple[RunSpec, int], Job]:
    """{(spec, seed): Job} of the table's runs (root: layout.runs, or the sweep's folder). base: cfg as dotted
    overrides (base_overrides), which each run's config is written from."""
    steps = cfg.train.max_steps or 1
    jobs = {}
    for spec in specs:
        for seed in seeds:
            name = layout.run_name(spec, seed)
            out = root / name
            jobs[spec, seed] = Job(name, [*base, *run_overrides(spec, cfg, seed, lrs[spec.name], out)], out,
                                   layout.configs if root == layout.runs else root / "configs", steps, inputs=inputs)
    return jobs


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


# --------------------------------------------------------------------------- finished evaluations


def sets_fingerprint(sets: dict | list) -> str:
    """The test sets' content: file hashes of paths, a hash of in-memory records."""
    from csdistill.evaluate.runner import stable_hash

    items = sets.items() if isinstance(sets, dict) else enumerate(sets)
    return stable_hash([[str(k), hash_path(str(v)) if isinstance(v, (str, Path)) else stable_hash(v)] for k, v in items])


def evaluation_stamp(model: Path, teacher: str, sets_id: str, cfg: Config) -> str:
    """Hash of what one model's evaluation with one decoding depends on (model and teacher files, sets, config)."""
    from csdistill.evaluate.runner import METRICS_VERSION

    material = [hash_path(str(model)), hash_path(str(teacher)), sets_id, config_hash(cfg), METRICS_VERSION]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:16]


def saved_results(folder: Path, stamp: str) -> dict | None:
    """The results.json in folder when its evaluation finished with this stamp, else None."""
    try:
        if json.loads((folder / EVAL_STAMP).read_text()).get("stamp") != stamp:
            return None
        return json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None


def mark_evaluated(folder: Path, stamp: str) -> None:
    atomic_write_text(folder / EVAL_STAMP, json.dumps({"stamp": stamp}))
