"""`csdistill evaluate`: sampled generation metrics, teacher fidelity and calibration -> results JSON.

    csdistill evaluate --model runs/csd/final --teacher runs/teacher --sets data/dolly.jsonl --out runs/csd/eval

Per set: K sampled passes (one per seed in eval.seeds; one greedy pass with eval.greedy) scored by
ROUGE-L, BLEU, chrF, Self-BLEU, distinct-n, exact match, the distribution scores of registry tasks
and, when asked for, semantic similarity (eval.semantic) and COMET (eval.comet_model); plus one
teacher-forced pass on the reference responses (fidelity, NLL, calibration).

Layout of the output folder (resumable: a finished set, or a finished pass, is reused on rerun
when its key — model weights, records, generation and evaluation settings — matches):
    results.json                     every set, plus model, teacher, config hash, command, date, machine
    sets/<set>.json                  one finished set's results
    generations/<set>.<pass>.jsonl   {"index", "prompt", "prediction", "references", "key"} per example
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Sequence

import torch

from csdistill.config import Config, GenerationConfig, config_hash, to_dict
from csdistill.errors import UserError, check_writable
from csdistill.evaluate.scoring import (comet_scores, record_references, semantic_scores, task_scores, task_specs,
                                        text_scores)
from csdistill.evaluate.semantic import load_encoder
from csdistill.files import atomic_write_text, jsonl_lines

METRICS_VERSION = 1  # bump when a metric's definition changes: invalidates finished sets on disk


# --------------------------------------------------------------------------- sets and records


def _set_name(path: Path, taken: set[str]) -> str:
    name = path.stem
    if name in taken:
        name = f"{path.parent.name}_{path.stem}"
    if name in taken:
        raise UserError(f"--sets: two sets are both named {name!r}; rename one of the files")
    return name


def load_sets(sets: Sequence[str] | dict, max_examples: int = 0, skip_bad: bool = False,
              tokenizer=None) -> dict[str, list[dict]]:
    """{name: records} from JSONL paths (name = file stem) or a {name: records | path} dict; first max_examples."""
    from csdistill.data import load_records

    if isinstance(sets, (str, Path)):
        sets = [sets]
    items = list(sets.items()) if isinstance(sets, dict) else [(None, s) for s in sets]
    if not items:
        raise UserError("eval.sets is empty: pass evaluation JSONL files with --sets (or eval.sets=[a.jsonl])")
    out: dict[str, list[dict]] = {}
    for name, source in items:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise UserError(f"evaluation set {str(path)!r} not found; pass existing JSONL files to --sets")
            name = name or _set_name(path, set(out))
            records = load_records(path, skip_bad=skip_bad, require_response=False, tokenizer=tokenizer).records
        else:
            records = list(source)
        if not records:
            raise UserError(f"evaluation set {name!r} has no records")
        out[name] = records[:max_examples] if max_examples > 0 else records
    return out


def generation_passes(cfg: Config) -> tuple[GenerationConfig, list[tuple[str, int]]]:
    """The generation settings and [(pass tag, seed)]: one per eval.seeds, or a single greedy pass."""
    greedy = cfg.eval.greedy or not cfg.generation.do_sample
    if greedy:
        return dataclasses.replace(cfg.generation, do_sample=False), [("greedy", (cfg.eval.seeds or [0])[0])]
    if not cfg.eval.seeds:
        raise UserError("eval.seeds is empty: give at least one seed (e.g. eval.seeds=[10,20,30,40,50]) "
                         "or set eval.greedy=true")
    return cfg.generation, [(f"seed{s}", int(s)) for s in cfg.eval.seeds]


# --------------------------------------------------------------------------- keys and files


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def model_fingerprint(model) -> str | None:
    """Hash of names, shapes and ~256 strided values per parameter tensor: changes when weights change."""
    if model is None:
        return None
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu()
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def read_generations(path: Path, key: str, n: int) -> list[str] | None:
    """The saved predictions when the file is complete (n lines) and every line carries `key`."""
    if not path.is_file():
        return None
    try:
        rows = [json.loads(line) for line in jsonl_lines(path)]
    except json.JSONDecodeError:
        return None
    if len(rows) != n or any(row.get("key") != key for row in rows):
        return None
    return [row["prediction"] for row in sorted(rows, key=lambda row: row["index"])]


def write_generations(path: Path, key: str, prompts: Sequence[str], predictions: Sequence[str],
                      references: Sequence[Sequence[str]]) -> None:
    lines = [json.dumps({"index": i, "prompt": p, "prediction": y, "references": list(r), "key": key}, ensure_ascii=False)
             for i, (p, y, r) in enumerate(zip(prompts, predictions, references))]
    _write_atomic(path, "\n".join(lines) + "\n")


def read_finished_set(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return result if result.get("key") == key else None


# --------------------------------------------------------------------------- one set


def _generate_passes(model, tokenizer, name: str, prompts: list[str], references: list[list[str]], cfg: Config,
                     base_key: dict, out_dir: Path | None, progress: bool,
                     memo: dict | None = None) -> tuple[list[list[str]], list[str]]:
    """Predictions of every pass (reused from disk when complete and keyed alike) and their file names.

    The key is the prompts, not the records: two sets that ask the same prompts (e.g. one scored against
    human references, one against the teacher's answers) decode once. memo: the caller's {key: predictions}
    of passes decoded in this evaluation, shared by its sets."""
    from csdistill.generation import generate_seed_texts

    gen, passes = generation_passes(cfg)
    prompts_key = {**base_key, "prompts": stable_hash(prompts)}
    keys = [stable_hash({**prompts_key, "generation": dataclasses.asdict(gen), "seed": seed}) for _, seed in passes]
    paths = [out_dir / "generations" / f"{name}.{tag}.jsonl" if out_dir else None for tag, _ in passes]
    memo = {} if memo is None else memo
    predictions = [read_generations(path, key, len(prompts)) if path else None for path, key in zip(paths, keys)]
    for k, key in enumerate(keys):  # another set's pass: saved as this set's too, with this set's references
        if predictions[k] is None and key in memo:
            predictions[k] = memo[key]
            if paths[k]:
                write_generations(paths[k], key, prompts, predictions[k], references)
    missing = [k for k, preds in enumerate(predictions) if preds is None]
    if missing:  # every missing seed in one batched decoding; a seed draws the same alone or beside others
        texts = generate_seed_texts(model, tokenizer, prompts, gen, [passes[k][1] for k in missing],
                                    max_prompt_length=cfg.data.max_prompt_length, batch_size=gen.batch_size,
                                    progress=progress, what=f"evaluation set {name}",
                                    precision=cfg.model.precision)
        for k, preds in zip(missing, texts):
            predictions[k] = preds
            if paths[k]:
                write_generations(paths[k], keys[k], prompts, preds, references)
    memo.update(zip(keys, predictions))
    files = [f"generations/{name}.{tag}.jsonl" if path else None for (tag, _), path in zip(passes, paths)]
    predictions = [list(preds) for preds in predictions]
    return predictions, files


def _teacher_forced(model, tokenizer, records: list[dict], cfg: Config, teacher, vocab_size: int | None,
                    progress: bool, key: str | None = None, cache: dict | None = None) -> dict:
    """{"fidelity", "calibration"} on the records that have a reference response (empty if none).

    key: what the result depends on (weights, records, lengths, teacher, bins); cache: the caller's {key:
    result} (e.g. one per model, shared by its decodings), so a second decoding reuses the pass."""
    if cache is not None and key is not None and key in cache:
        return cache[key]
    from csdistill.evaluate.fidelity import teacher_forced_batches, teacher_forced_metrics

    with_response = [r for r in records if str(r.get("response") or "").strip()]
    if not with_response:
        return {}
    d = cfg.data
    batches = teacher_forced_batches(with_response, tokenizer, d.template, d.max_prompt_length, d.max_length,
                                     cfg.generation.batch_size)
    fidelity, calibration = teacher_forced_metrics(model, batches, teacher if cfg.eval.fidelity else None, vocab_size,
                                                   cfg.eval.calibration_bins, progress, cfg.model.precision)
    result = {"fidelity": fidelity, "calibration": calibration}
    if cache is not None and key is not None:
        cache[key] = result
    return result


def evaluate_set(model, tokenizer, name: str, records: list[dict], cfg: Config, *, teacher=None,
                 out_dir: Path | None = None, keys: dict | None = None, vocab_size: int | None = None,
                 progress: bool = True, encoder=None, teacher_forced: dict | None = None,
                 generations: dict | None = None) -> dict:
    """Every metric of one set; a finished set on disk with the same key is returned as is.

    keys: {"model", "teacher"} weight fingerprints (see model_fingerprint) that the resume keys include.
    encoder: the eval.semantic encoder when already loaded (else loaded here when eval.semantic is set).
    teacher_forced: the caller's cache of teacher-forced passes of this model (see _teacher_forced).
    generations: the caller's cache of this model's decoded passes (see _generate_passes).
    """
    from csdistill.data.templates import build_prompt
    from csdistill.generation import SAMPLER

    gen, passes = generation_passes(cfg)
    d = cfg.data
    keys = keys or {}
    base_key = {"model": keys.get("model"), "template": d.template,
                "max_prompt_length": d.max_prompt_length,  # what the generations depend on, with the prompts
                "decoder": {"sampler": SAMPLER, "precision": cfg.model.precision}}
    records_key = {**base_key, "records": stable_hash(records)}
    set_key = stable_hash({**records_key, "teacher": keys.get("teacher"), "generation": dataclasses.asdict(gen), "passes": passes,
                           "max_length": d.max_length, "fidelity": cfg.eval.fidelity,
                           "bins": cfg.eval.calibration_bins, "comet": cfg.eval.comet_model,
                           # only when on: sets finished before eval.semantic existed keep their key
                           **({"semantic": cfg.eval.semantic} if cfg.eval.semantic else {}),
                           "version": METRICS_VERSION})
    forced_key = stable_hash({**records_key, "teacher": keys.get("teacher"), "max_length": d.max_length,
                              "fidelity": cfg.eval.fidelity, "bins": cfg.eval.calibration_bins, "batch": cfg.generation.batch_size,
                              "vocab_size": vocab_size}) if keys.get("model") else None
    finished = read_finished_set(out_dir / "sets" / f"{name}.json", set_key) if out_dir else None
    if finished is not None:
        print(f"[evaluate] {name}: finished results found in {out_dir}, reusing them")
        return finished
    specs = task_specs(name, records)
    references = [record_references(r) for r in records]
    if not any(references) and not any(specs):
        raise UserError(f"set {name!r}: no record has a 'response' or 'references' and none names a 'task'; "
                         "nothing to score against (vicuna: import with --answers)")
    prompts = [build_prompt(r, d.template) for r in records]
    predictions, files = _generate_passes(model, tokenizer, name, prompts, references, cfg, base_key, out_dir, progress,
                                          generations)
    try:
        scores = task_scores(predictions, records, specs)
    except ValueError as err:  # a record the task cannot parse
        raise UserError(f"set {name!r}: {err}") from None
    if cfg.eval.semantic:
        scores = {**semantic_scores(predictions, references, encoder or load_encoder(cfg.eval.semantic)), **scores}
    result = {"n_examples": len(records), "passes": [tag for tag, _ in passes], "seeds": [s for _, s in passes],
              "greedy": passes[0][0] == "greedy", **text_scores(predictions, references), **scores,
              **_teacher_forced(model, tokenizer, records, cfg, teacher, vocab_size, progress, forced_key, teacher_forced)}
    if cfg.eval.comet_model:
        sources = [f"{r['instruction']}\n{r.get('input') or ''}".strip() for r in records]
        result["comet"] = comet_scores(cfg.eval.comet_model, sources, predictions, references)
    result.update(generations=[f for f in files if f], key=set_key)
    if out_dir:
        _write_atomic(out_dir / "sets" / f"{name}.json", json.dumps(result, indent=1))
    return result


# --------------------------------------------------------------------------- whole evaluation


def machine_info() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "device": device}


def run_info(cfg: Config, train_cfg: Config | None = None) -> dict:
    """What the report labels a run by: the loss it was trained with (train_cfg, else cfg) and the passes."""
    _, passes = generation_passes(cfg)
    trained = train_cfg or cfg
    return {"loss": trained.loss.name, "weighting": trained.loss.weighting, "mode": trained.train.mode,
            "seeds": [s for _, s in passes], "greedy": passes[0][0] == "greedy"}


def _model_name(model, given: str | None) -> str | None:
    if given or model is None:
        return given
    return getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)


def evaluate_model(model, tokenizer, sets: Sequence[str] | dict, cfg: Config, teacher=None,
                   out_dir: str | Path | None = None, *, progress: bool = True, command: str | None = None,
                   model_name: str | None = None, teacher_name: str | None = None, label: str | None = None,
                   vocab_size: int | None = None, train_cfg: Config | None = None,
                   teacher_forced: dict | None = None) -> dict:
    """Evaluate an in-memory model on `sets` (JSONL paths or {name: records}); returns the results dict.

    With out_dir, writes results.json, sets/<set>.json and the generations there, and reuses the
    finished sets and passes it finds (same weights, records and settings). vocab_size: the shared
    student/teacher vocabulary (None = the smaller output head). train_cfg: the config the model was
    trained with, when it differs from `cfg` (labels the run by its loss). teacher_forced: a {key: result}
    cache of teacher-forced passes the caller keeps for this model (several decodings share one pass).
    """
    loaded = load_sets(sets, cfg.eval.max_examples, cfg.data.skip_bad_records, tokenizer)
    encoder = load_encoder(cfg.eval.semantic) if cfg.eval.semantic else None  # once, and a bad value fails early
    out = Path(out_dir) if out_dir else None
    keys = {"model": model_fingerprint(model), "teacher": model_fingerprint(teacher) if cfg.eval.fidelity else None}
    results = {"model": _model_name(model, model_name), "teacher": _model_name(teacher, teacher_name),
               "config_hash": config_hash(cfg), "command": command or shlex.join(sys.argv),
               "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
               "run": run_info(cfg, train_cfg), "config": to_dict(cfg), "sets": {}}
    if label:
        results["label"] = label
    generations: dict = {}  # sets that ask the same prompts share their decodings
    for name, records in loaded.items():
        results["sets"][name] = evaluate_set(model, tokenizer, name, records, cfg, teacher=teacher, out_dir=out,
                                             keys=keys, vocab_size=vocab_size, progress=progress, encoder=encoder,
                                             teacher_forced=teacher_forced, generations=generations)
        if out:
            _write_atomic(out / "results.json", json.dumps(results, indent=1))
    return results


def summary_lines(results: dict) -> list[str]:
    """One line per set: the headline numbers."""
    lines = []
    for name, r in results["sets"].items():
        parts = [f"{name} (n={r['n_examples']})"]
        for key, label in (("rouge_l", "ROUGE-L"), ("semantic", "semantic"), ("exact_match", "EM")):
            if r.get(key):
                parts.append(f"{label} {r[key]['mean']:.2f} ± {r[key]['std']:.2f}")
        if r.get("self_bleu", {}).get("per_prompt") is not None:
            parts.append(f"Self-BLEU {r['self_bleu']['per_prompt']:.2f}")
        parts.append(f"distinct-2 {r['distinct_2']['mean']:.3f}")
        fid = r.get("fidelity") or {}
        parts += [f"{k} {fid[k]:.4f}" for k in ("forward_kl", "reverse_kl", "csd_ss", "top1_agreement", "student_nll")
                  if k in fid]
        if r.get("calibration"):
            parts.append(f"ECE {r['calibration']['ece']:.4f}")
        if r.get("distribution"):
            dist = r["distribution"]
            parts.append(f"valid {dist['valid']:.3f} TVD {dist['tvd']:.3f}")
        lines.append(" | ".join(parts))
    return lines


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from csdistill.config import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--model", default=None, help="student: checkpoint dir (HF format) or hub id; "
                                                      "default model.name_or_path")
    parser.add_argument("--teacher", default=None, help="teacher for the fidelity metrics; default teacher.name_or_path")
    parser.add_argument("--sets", nargs="+", default=None, metavar="FILE", help="evaluation JSONL files; default eval.sets")
    parser.add_argument("--out", default=None, help="output folder; default eval.output_dir or <train.output_dir>/eval")
    parser.add_argument("--label", default=None, help="row label of this run in reports")


def resolve_model_dir(path: str) -> tuple[str, Config | None]:
    """(HF model path, training config or None): a csdistill checkpoint dir maps to its model/ folder,
    and the config.yaml beside the model (if any) tells how it was trained."""
    from csdistill.config import ConfigError, load_config

    p = Path(path)
    if (p / "model" / "config.json").is_file():
        p = p / "model"
    if not p.exists():
        return path, None  # a hub id
    for candidate in (p / "config.yaml", p.parent / "config.yaml"):
        if candidate.is_file():
            try:
                return str(p), load_config(candidate)
            except ConfigError as err:
                print(f"[evaluate] ignoring {candidate}: {err}", file=sys.stderr)
    return str(p), None


def _load_models(cfg: Config, model_path: str, teacher_path: str):
    """(student, tokenizer, teacher | None, shared vocabulary size) on the best available device."""
    from csdistill.models import check_vocab, load_model, load_teacher, load_tokenizer

    cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, name_or_path=teacher_path))
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path, fallback=teacher_path)
    model = load_model(model_path, vocab_size=len(tokenizer), precision=cfg.model.precision,
                       trust_remote_code=cfg.model.trust_remote_code).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    teacher, vocab = None, None
    if teacher_path:
        teacher_tokenizer = load_tokenizer(teacher_path, fallback=cfg.model.tokenizer)
        teacher = load_teacher(cfg, teacher_tokenizer).to(device)
        vocab = check_vocab(tokenizer, teacher_tokenizer, model, teacher)  # raises on different tokenizers
    return model, tokenizer, teacher, vocab


def command_line(args: argparse.Namespace) -> str:
    """The `csdistill evaluate ...` command that reproduces this run."""
    parts = ["csdistill", "evaluate", *(args.overrides or [])]  # before --sets, which takes every word after it
    for flag in ("config", "model", "teacher", "out", "label"):
        if getattr(args, flag, None):
            parts += [f"--{flag}", str(getattr(args, flag))]
    if args.sets:
        parts += ["--sets", *args.sets]
    return shlex.join(parts)


def load_eval_config(args: argparse.Namespace) -> Config:
    """--config + overrides (+ --teacher). Evaluating without any teacher is fine (see load_inference_config)."""
    from csdistill.config import load_inference_config

    overrides = list(args.overrides or []) + ([f"teacher.name_or_path={args.teacher}"] if args.teacher else [])
    return load_inference_config(args.config, overrides)


def _evaluate_from_args(args: argparse.Namespace) -> tuple[dict, Path]:
    """(results, the folder they were written to)."""
    loaded = load_eval_config(args)
    model_path, train_cfg = resolve_model_dir(args.model or loaded.model.name_or_path)
    teacher_path = args.teacher if args.teacher is not None else loaded.teacher.name_or_path
    out = Path(args.out or loaded.eval.output_dir or Path(loaded.train.output_dir) / "eval")
    sets = list(args.sets or loaded.eval.sets)
    cfg = dataclasses.replace(loaded, model=dataclasses.replace(loaded.model, name_or_path=model_path),
                              eval=dataclasses.replace(loaded.eval, sets=sets, output_dir=str(out)))
    if not sets:
        raise UserError("no evaluation sets: pass --sets FILE [FILE ...] (or eval.sets=[a.jsonl] in the config)")
    for path in sets:
        if not Path(path).is_file():
            hint = " (dotted overrides go before --sets, which takes every word after it)" if "=" in path else ""
            raise UserError(f"evaluation set {path!r} not found; pass existing JSONL files to --sets{hint}")
    check_writable(out, "--out")  # before the work, not after it
    model, tokenizer, teacher, vocab = _load_models(cfg, model_path, teacher_path)
    results = evaluate_model(model, tokenizer, sets, cfg, teacher, out, progress=cfg.train.progress,
                             command=command_line(args), model_name=model_path, teacher_name=teacher_path or None,
                             label=args.label, vocab_size=vocab, train_cfg=train_cfg)
    return results, out


def evaluate_command(args: argparse.Namespace) -> int:
    """`csdistill evaluate`; user errors go to the CLI's one-line handler (cli.main)."""
    results, out = _evaluate_from_args(args)
    for line in summary_lines(results):
        print(line)
    print(f"wrote {out / 'results.json'}")
    return 0
