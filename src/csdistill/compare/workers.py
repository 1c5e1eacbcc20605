"""Evaluating a comparison's models: in this process, or in pinned worker processes on CPU.

The worker protocol: `evaluate_in_workers` writes one spec per worker to <out>/worker-<k>.json
({"teacher", "sets", "cfgs": {decode: dotted overrides}, "out", "command", "stamps", "models": [{"name", "label",
"seed", "path"}]}) and starts `python -m csdistill.compare --evaluate-worker SPEC` (launch_worker); each
worker evaluates its models into the shared eval folders and prints "[worker] done <folder>" per model
to its log <out>/worker-<k>.log. Every finished (model, decoding) leaves its results.json and stamp
(plan.EVAL_STAMP), which is all the parent reads back.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from csdistill.compare.plan import Row, base_overrides, evaluation_stamp, mark_evaluated, saved_results, sets_fingerprint
from csdistill.config import Config, load_config
from csdistill.jobs import CompareError, available_cores, pinned_process

WORKER_FLAG = "--evaluate-worker"
Model = tuple[Row, "int | None", Path]  # (row, seed, model folder)


def evaluation_stamps(models: list[Model], teacher: str, sets: dict | list, cfgs: dict[str, Config]) -> dict[str, str]:
    """{"<decode>/<folder>": stamp} of every (model, decoding): what a finished evaluation must match."""
    sets_id = sets_fingerprint(sets)
    return {f"{d}/{row.folder(seed)}": evaluation_stamp(path, teacher, sets_id, cfg)
            for row, seed, path in models for d, cfg in cfgs.items()}


def missing_evaluations(models: list[Model], stamps: dict[str, str], decodes, out: Path) -> list[Model]:
    """The models that lack a finished evaluation (same stamp) for at least one decoding; reads files only."""
    return [(row, seed, path) for row, seed, path in models
            if any(saved_results(out / d / row.folder(seed), stamps[f"{d}/{row.folder(seed)}"]) is None for d in decodes)]


def evaluate_rows(rows: list[Row], teacher_path: str, sets: dict | list, cfgs: dict[str, Config], out: Path,
                  threads: int, progress: bool, command: str, slots: list[list[int]] | None = None) -> None:
    """Fill every row's results: {decode: one results dict per model}, read from eval/<decode>/<folder>/.

    What is missing (missing_evaluations) is evaluated first: with several CPU core groups `slots` (and
    no GPU) in that many pinned workers (evaluate_in_workers), else here; nothing starts when nothing is
    missing. Within an evaluation, finished sets on disk are reused as well (evaluate_model)."""
    import torch

    models = [(row, seed, path) for row in rows for seed, path in row.models.items()]
    stamps = evaluation_stamps(models, teacher_path, sets, cfgs)
    missing = missing_evaluations(models, stamps, cfgs, out)
    if missing and slots and len(slots) > 1 and not torch.cuda.is_available():
        evaluate_in_workers(missing, teacher_path, sets, cfgs, out, slots, command, progress, stamps)
        missing = missing_evaluations(models, stamps, cfgs, out)
    if missing:
        evaluate_here(missing, teacher_path, sets, cfgs, out, threads, progress, command, stamps)
    for row, seed, path in models:
        for decode in cfgs:
            result = saved_results(out / decode / row.folder(seed), stamps[f"{decode}/{row.folder(seed)}"])
            assert result is not None, f"{row.folder(seed)} ({decode}) evaluated but not saved"
            row.results.setdefault(decode, []).append(result)


def evaluate_here(models: list[Model], teacher_path: str, sets: dict | list, cfgs: dict[str, Config], out: Path,
                  threads: int, progress: bool, command: str, stamps: dict[str, str]) -> None:
    """Evaluate `models` with each decoding's config in this process (the teacher loaded once); each
    finished (model, decoding) gets its stamp from `stamps` (evaluation_stamps). One teacher-forced pass
    per model serves all its decodings."""
    import torch
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from csdistill.evaluate.runner import evaluate_model, resolve_model_dir
    from csdistill.models import load_model, load_tokenizer

    hf_logging.disable_progress_bar()  # one bar over the models instead of one per weight file
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_model(teacher_path).eval().to(device)
    for row, seed, path in tqdm(models, desc="evaluate", unit="model", disable=not progress):
        same = str(path) == str(teacher_path)
        model = teacher if same else load_model(str(path)).eval().to(device)
        tokenizer = load_tokenizer(str(path), fallback=teacher_path)
        _, train_cfg = resolve_model_dir(str(path))  # the config saved beside the model: labels the run
        teacher_forced: dict = {}  # this model's teacher-forced passes, shared by its decodings
        for decode, cfg in cfgs.items():
            folder = out / decode / row.folder(seed)
            evaluate_model(model, tokenizer, sets, cfg, teacher=teacher, out_dir=folder, progress=False,
                           command=command, model_name=str(path), teacher_name=teacher_path, label=row.label,
                           train_cfg=train_cfg, teacher_forced=teacher_forced)
            mark_evaluated(folder, stamps[f"{decode}/{row.folder(seed)}"])
        del model


def launch_worker(spec_path: Path, cores: list[int], log):
    """Start one evaluation worker process on `cores` (the protocol in the module docstring)."""
    return pinned_process(["-m", "csdistill.compare", WORKER_FLAG, str(spec_path)], cores, log)


def evaluate_in_workers(models: list[Model], teacher_path: str, sets: dict | list, cfgs: dict[str, Config], out: Path,
                        slots: list[list[int]], command: str, progress: bool, stamps: dict[str, str]) -> float:
    """Evaluate `models` in len(slots) processes at once, each pinned to one slot's cores with one thread
    per core, the models dealt out in turn. Decoding small batches scales better over processes than over
    threads. Returns seconds."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    named = {k: str(v) if isinstance(v, Path) else v for k, v in sets.items()} if isinstance(sets, dict) else None
    spec_common = {"teacher": str(teacher_path), "sets": named if named is not None else [str(s) for s in sets],
                   "cfgs": {d: base_overrides(cfg) for d, cfg in cfgs.items()}, "out": str(out), "command": command,
                   "stamps": stamps}
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
        workers.append((launch_worker(spec_path, cores, log), log, log_path))
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


def evaluation_worker(spec_path: str) -> None:
    """One worker of evaluate_in_workers: evaluate its models into the shared folders."""
    spec = json.loads(Path(spec_path).read_text())
    cfgs = {d: load_config(None, overrides) for d, overrides in spec["cfgs"].items()}
    for m in spec["models"]:
        row = Row(m["name"], m["label"], {m["seed"]: Path(m["path"])})
        evaluate_here([(row, m["seed"], Path(m["path"]))], spec["teacher"], spec["sets"], cfgs, Path(spec["out"]),
                      len(available_cores()), False, spec["command"], spec["stamps"])
        print(f"[worker] done {row.folder(m['seed'])}", flush=True)


def worker_main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == WORKER_FLAG:
        evaluation_worker(argv[1])
    else:
        sys.exit(f"usage: python -m csdistill.compare {WORKER_FLAG} SPEC.json (internal; use `csdistill compare`)")
