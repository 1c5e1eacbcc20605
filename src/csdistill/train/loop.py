"""The training loop, top to bottom: setup -> (window -> counts -> backward per part -> clip -> step)
-> log / evaluate / checkpoint. Every mode shares it; modes differ only in their batch source
(steps.py) and objective (objective.py)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator

from csdistill.checkpoint import load_checkpoint, resolve_resume, rng_state, save_checkpoint
from csdistill.config import Config, ConfigError, config_hash, loss_params, to_dict, to_yaml
from csdistill.models import autocast_for  # noqa: F401  (also imported from here)
from csdistill.errors import CheckpointError, NonFiniteLogitsError, OutputDirError, UserError, check_writable
from csdistill.data.train_data import load_train_data
from csdistill.train.logging import MetricsLogger
from csdistill.train.output_dir import RunLock, check_earlier_run, config_changes, warn
from csdistill.train.objective import Objective, part_loss, validation_loss, window_counts
from csdistill.train.schedules import build_scheduler, total_steps
from csdistill.train.teacher_cache import build_teacher_cache
from csdistill.train.steps import BatchSource

MetricCallback = Callable[[int, torch.nn.Module, object], dict]  # (step, student, tokenizer) -> metrics


@dataclass
class TrainResult:
    output_dir: Path
    checkpoint: Path | None  # the final checkpoint; the student is at checkpoint / "model"
    step: int
    loss: float | None  # last logged training loss
    val_loss: float | None  # last validation loss
    history: list[dict] = field(default_factory=list)  # the rows of metrics.jsonl

    @property
    def model_path(self) -> Path | None:
        return None if self.checkpoint is None else self.checkpoint / "model"


@dataclass
class Run:
    """Everything the loop touches, built once by `setup`."""

    cfg: Config
    accelerator: Accelerator
    student: torch.nn.Module  # prepared (DDP/FSDP-wrapped when distributed)
    teacher: torch.nn.Module | None
    tokenizer: object
    objective: Objective
    source: BatchSource
    validation: list[dict]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    callbacks: list[MetricCallback]
    resume_from: Path | None = None  # the verified checkpoint this run continues (train.resume)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.student)


def load_models(cfg: Config):
    """(tokenizer, student, teacher or None, shared vocab size); the vocab check runs before any step."""
    from csdistill.models import check_vocab, load_student, load_teacher, load_tokenizer

    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path, fallback=cfg.teacher.name_or_path)
    student = load_student(cfg, tokenizer)
    if cfg.train.mode == "sft" or cfg.train.teacher_cache:  # a top-k cache replaces the teacher
        return tokenizer, student, None, student.get_output_embeddings().weight.shape[0]
    teacher_tokenizer = load_tokenizer(cfg.teacher.name_or_path, fallback=cfg.model.tokenizer)
    teacher = load_teacher(cfg, teacher_tokenizer)
    teacher.requires_grad_(False).eval()  # frozen: never receives gradient
    vocab_size = check_vocab(tokenizer, teacher_tokenizer, student, teacher)
    return tokenizer, student, teacher, vocab_size


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm gains (1-D tensors), as in the reference code."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.train.lr, betas=tuple(cfg.train.adam_betas))


def _place_teacher(accelerator: Accelerator, teacher: torch.nn.Module) -> torch.nn.Module:
    """DDP/single process: a plain copy per process. ZeRO-3 shards the teacher too: it must go through
    DeepSpeed as an inference engine (see configs/accelerate/deepspeed_zero3.yaml)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1,
                  "bf16": {"enabled": teacher.dtype == torch.bfloat16}}
        engine, *_ = deepspeed.initialize(model=teacher, config=config)
        return engine.eval()
    return teacher.to(accelerator.device)


def _checked_resume(cfg: Config) -> Path | None:
    """The checkpoint train.resume names (verified; see checkpoint.resolve_resume), refused when it was
    written with settings that shape the run differently (train.resume=auto) or with a warning naming
    them (an explicit checkpoint path: the user chose it)."""
    path = resolve_resume(cfg.train.resume, cfg.train.output_dir)
    if path is None:
        return None
    import yaml

    try:
        saved = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else None
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"checkpoint file {path / 'config.yaml'} cannot be read ({type(err).__name__}); "
                              "resume from another checkpoint (train.resume=<dir>)") from None
    changes = config_changes(saved, to_dict(cfg)) if isinstance(saved, dict) else []
    if changes and cfg.train.resume == "auto":
        raise CheckpointError(
            f"train.resume=auto: {path} belongs to a run with other settings ({'; '.join(changes)}); resume with "
            "the same settings, start afresh with train.overwrite=true, or choose another train.output_dir")
    if changes:
        warn(f"train.resume={cfg.train.resume}: continuing a checkpoint saved with other settings: {'; '.join(changes)}")
    return path


def claim_output_dir(accelerator: Accelerator, cfg: Config, stack: contextlib.ExitStack) -> Path | None:
    """Before any model is loaded: the output folder is writable, locked for this run (released by
    `stack`), free of any other run (train.overwrite moves one aside) and the resume checkpoint fits.
    The main process decides; every process raises the same error."""
    error, resume_from = None, None
    if accelerator.is_main_process:
        try:
            root = check_writable(cfg.train.output_dir, "train.output_dir")
            stack.callback(RunLock.acquire(root).release)
            check_earlier_run(root, cfg.train.resume, cfg.train.overwrite)
            resume_from = _checked_resume(cfg)
        except UserError as err:
            error = err
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message, resume_from = broadcast_object_list([None if error is None else str(error), resume_from])
        if message is not None and error is None:
            error = OutputDirError(message)
    if error is not None:
        raise error
    return resume_from


def setup(cfg: Config, callbacks: list[MetricCallback], stack: contextlib.ExitStack) -> Run:
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    # cpu=True without CUDA: under torchrun (`accelerate launch`, configs/accelerate/cpu_2proc.yaml) that
    # selects multi-process CPU data parallel with gloo. Precision: autocast_for / the model dtype (the
    # shipped accelerate configs keep mixed_precision 'no', except DeepSpeed, which needs its bf16 flag).
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    resume_from = claim_output_dir(accelerator, cfg, stack)
    if accelerator.is_main_process:
        print(f"csdistill: resolved config (hash {config_hash(cfg)}):\n{to_yaml(cfg)}", flush=True)
        (Path(cfg.train.output_dir) / "config.yaml").write_text(to_yaml(cfg))
    tokenizer, student, teacher, vocab_size = load_models(cfg)
    data = load_train_data(cfg, tokenizer)
    steps = total_steps(cfg.train, len(data.train), accelerator.num_processes)
    optimizer = build_optimizer(cfg, student)
    scheduler = build_scheduler(optimizer, cfg.train, steps)  # stepped by us once per optimizer step
    student, optimizer = accelerator.prepare(student, optimizer)
    if teacher is not None:
        teacher = _place_teacher(accelerator, teacher)
    autocast = autocast_for(cfg.model.precision, accelerator.device)
    distils = cfg.train.mode != "sft"
    cache = build_teacher_cache(cfg, tokenizer, vocab_size, data)
    if cache is not None and cache.source:
        vocab_size = _cached_teacher(accelerator, cfg, cache, tokenizer, vocab_size)
    objective = Objective(cfg, _loss_fn(cfg, cache) if distils else None, loss_params(cfg.loss) if distils else {},
                          vocab_size, autocast, cache)
    source = BatchSource(cfg, data, tokenizer, accelerator.process_index, accelerator.num_processes, steps)
    return Run(cfg, accelerator, student, teacher, tokenizer, objective, source, data.validation,
               optimizer, scheduler, steps, list(callbacks), resume_from)


def _loss_fn(cfg: Config, cache=None) -> Callable:
    """The configured loss; from a top-k cache its sparse form (losses/sparse.py), refused when it has none."""
    from csdistill.losses import get_loss

    if cache is not None and cache.store == "topk":
        from csdistill.losses.sparse import get_sparse_loss

        try:
            return get_sparse_loss(cfg.loss.name, cfg.loss.sparse_tail, **loss_params(cfg.loss))
        except ValueError as err:
            raise ConfigError(f"train.teacher_cache={cfg.train.teacher_cache!r} is a top-k cache: {err}; or build a "
                              "hidden-state cache (`csdistill teacher cache --store hidden`), which serves every loss "
                              "exactly") from None
    return get_loss(cfg.loss.name, **loss_params(cfg.loss))


def _cached_teacher(accelerator: Accelerator, cfg: Config, cache, tokenizer, vocab_size: int) -> int:
    """Say (and save as teacher.json) which teacher the cache holds; the compared vocabulary size."""
    from csdistill.files import atomic_write_json
    from csdistill.train.teacher_cache import cache_teacher_record

    record = cache_teacher_record(cache)
    if accelerator.is_main_process:
        print(f"csdistill: training from teacher cache {cache.source} ({cache.store} store) of teacher "
              f"{record.get('name_or_path')!r} (weights sha256 {str(record.get('weights_sha256', '-'))[:12]})", flush=True)
        atomic_write_json(Path(cfg.train.output_dir) / "teacher.json", record, indent=1, sort_keys=True)
    if cache.store != "hidden":
        return vocab_size
    shared = min(vocab_size, cache.head.weight.shape[0])
    if len(tokenizer) > shared:
        raise ConfigError(f"train.teacher_cache={cache.source!r}: the tokenizer has {len(tokenizer)} tokens but the "
                          f"cached teacher head has {cache.head.weight.shape[0]} rows and the student {vocab_size}; "
                          "the models must share a tokenizer — rebuild the cache from this run's teacher")
    return shared


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def train_step(run: Run, step: int) -> dict:
    """One optimizer step over a window of grad_accum micro-batches; returns this process's share
    of the loss and the global token count."""
    acc = run.accelerator
    window = run.source.window(step, run.unwrapped, run.teacher, run.objective.autocast)
    counts = window_counts(acc, window)  # global valid-token counts, known before the first backward
    units = [(micro, name) for micro in window for name in micro.parts]
    loss_share = 0.0
    for i, (micro, name) in enumerate(units):
        last = i == len(units) - 1
        with contextlib.nullcontext() if last else acc.no_sync(run.student):  # all-reduce once per step
            loss = part_loss(run.objective, run.student, run.teacher, name,
                             _to_device(micro.parts[name], acc.device), counts[name].to(acc.device))
            acc.backward(loss * acc.num_processes)  # DDP averages gradients over processes; undo that
        loss_share += loss.item()
    grad_norm = acc.clip_grad_norm_(run.student.parameters(), run.cfg.train.grad_clip) if run.cfg.train.grad_clip > 0 else None
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_share, "tokens": float(counts["tokens"]), "source": window[0].source,
            "grad_norm": None if grad_norm is None else float(grad_norm)}


def evaluate(run: Run, step: int) -> dict:
    """Validation loss (all processes) and the metric callbacks (main process, unwrapped student)."""
    metrics: dict = {}
    val = validation_loss(run.objective, run.accelerator, run.unwrapped, run.teacher, run.validation,
                          run.tokenizer.pad_token_id)
    if val is not None:
        metrics["val_loss"] = val
        if run.source.adaptive is not None:  # identical on all processes: val is reduced
            run.source.adaptive.update(val)
            metrics["adaptive_threshold"] = run.source.adaptive.threshold
    if run.accelerator.is_main_process:
        for callback in run.callbacks:
            metrics.update(callback(step, run.unwrapped, run.tokenizer) or {})
    run.accelerator.wait_for_everyone()
    return metrics


def save(run: Run, step: int, final: bool) -> Path:
    trainer_state = {"step": step, "total_steps": run.total_steps, "seed": run.cfg.train.seed,
                     "world_size": run.accelerator.num_processes, "config_hash": config_hash(run.cfg),
                     "source": run.source.state_dict()}
    rank_state = {"rng": rng_state(), **run.source.rank_state_dict()}
    return save_checkpoint(run.cfg.train.output_dir, step, accelerator=run.accelerator, model=run.student,
                           tokenizer=run.tokenizer, optimizer=run.optimizer, scheduler=run.scheduler,
                           trainer_state=trainer_state, rank_state=rank_state, config_yaml=to_yaml(run.cfg),
                           final=final, keep=run.cfg.train.keep_checkpoints)


def resume(run: Run) -> tuple[int, Path | None]:
    """(first step to run, checkpoint resumed from) per train.resume."""
    path = run.resume_from
    if path is None:
        return 0, None
    trainer_state, rank_state = load_checkpoint(path, accelerator=run.accelerator, model=run.student,
                                                optimizer=run.optimizer, scheduler=run.scheduler)
    run.source.load_state_dict(trainer_state["source"])
    run.source.load_rank_state_dict(rank_state)
    step = int(trainer_state["step"])
    if run.accelerator.is_main_process:
        print(f"csdistill: resumed from {path} at step {step}", flush=True)
        if step >= run.total_steps:
            print(f"csdistill: {path} is at step {step}, the end of this run ({run.total_steps} steps): nothing left "
                  "to train; to train longer, start a new run from its model (model.name_or_path="
                  f"{path / 'model'}) in another train.output_dir", flush=True)
    return step, path


def _due(done: int, every: int, total: int) -> bool:
    return done == total or (every > 0 and done % every == 0)


def _diverged(run: Run, stats: dict) -> bool:
    """True on every process when any process's loss (or gradient norm) is not finite."""
    values = [stats["loss"], stats["grad_norm"] if stats["grad_norm"] is not None else 0.0]
    bad = torch.tensor(float(not all(math.isfinite(v) for v in values)), device=run.accelerator.device)
    if run.accelerator.num_processes > 1:
        bad = run.accelerator.reduce(bad, reduction="sum")
    return bool(bad.item() > 0)


def _divergence_error(run: Run, step: int, lr: float, checkpoint: Path | None, cause: str) -> UserError:
    kept = f"the last checkpoint {checkpoint} is kept" if checkpoint else "no checkpoint was written before it"
    clip = "" if run.cfg.train.grad_clip > 0 else " or set train.grad_clip=1.0"
    return UserError(f"training diverged at step {step + 1} ({cause}); lower train.lr (now {run.cfg.train.lr:g}, "
                     f"{lr:g} at this step){clip}; {kept}")


def train(cfg: Config, callbacks: list[MetricCallback] | tuple = ()) -> TrainResult:
    """Train the student per `cfg` (any mode); checkpoints, metrics.jsonl/csv under train.output_dir."""
    with contextlib.ExitStack() as stack:  # holds the output folder's lock until the run ends
        run = setup(cfg, list(callbacks), stack)
        return _train(run)


def _train(run: Run) -> TrainResult:
    cfg = run.cfg
    acc, t = run.accelerator, cfg.train
    start, checkpoint = resume(run)
    logger = MetricsLogger(t.output_dir, enabled=acc.is_main_process, total_steps=run.total_steps,
                           start_step=start, progress=t.progress, tensorboard=t.tensorboard)
    pending = {"loss": 0.0, "steps": 0, "tokens": 0.0, "seconds": 0.0}  # since the last log row
    last_loss = last_val = None
    t0 = time.perf_counter()
    for step in range(start, run.total_steps):
        lr = run.scheduler.get_last_lr()[0]  # the lr this step uses
        step_start = time.perf_counter()
        try:
            stats = train_step(run, step)
        except NonFiniteLogitsError as err:  # losses.checks: NaN/+inf in the student's or teacher's logits
            logger.close()
            raise _divergence_error(run, step, lr, checkpoint, str(err).split(";")[0]) from err
        if _diverged(run, stats):  # nothing is saved after a non-finite step
            logger.close()
            raise _divergence_error(run, step, lr, checkpoint, f"loss {stats['loss']}, grad norm {stats['grad_norm']}")
        done = step + 1
        for key, value in (("loss", stats["loss"]), ("steps", 1), ("tokens", stats["tokens"]),
                           ("seconds", time.perf_counter() - step_start)):  # eval/save time is not throughput
            pending[key] += value
        row: dict = {}
        if _due(done, t.log_every, run.total_steps):
            loss_sum = acc.reduce(torch.tensor(pending["loss"], device=acc.device), reduction="sum").item()
            last_loss = loss_sum / pending["steps"]
            row = {"step": done, "loss": last_loss, "lr": lr, "tokens_per_s": pending["tokens"] / max(pending["seconds"], 1e-9),
                   "elapsed": time.perf_counter() - t0, "grad_norm": stats["grad_norm"], "source": stats["source"]}
            pending = dict.fromkeys(pending, 0.0)
        if _due(done, cfg.eval.eval_every, run.total_steps):
            metrics = evaluate(run, done)
            last_val = metrics.get("val_loss", last_val)
            row = {"step": done, **row, **metrics}
        if row:
            logger.log({k: v for k, v in row.items() if v is not None})
        if _due(done, t.save_every, run.total_steps):
            checkpoint = save(run, done, final=done == run.total_steps)
        logger.advance()
    logger.close()
    return TrainResult(Path(t.output_dir), checkpoint, max(start, run.total_steps), last_loss, last_val, logger.history)
