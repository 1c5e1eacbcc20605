"""What a teacher cache is *of*: teacher fingerprint, tokenizer hash, data files and data settings.

The caching run writes this spec into the manifest; a training run recomputes the parts it can
(tokenizer, data, lengths — it loads no teacher) and refuses a cache that differs, naming the field.
Which sequences are covered is checked separately, by sequence digest (train/teacher_cache.py).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from csdistill.cache.store import FORMATS, bytes_per_position, spec_identity  # noqa: F401 (spec_identity re-exported)
from csdistill.config import Config, ConfigError

DATA_FILES = ("train_file", "validation_file", "teacher_responses_file", "student_responses_file")
DATA_SETTINGS = ("format", "template", "max_prompt_length", "max_length", "max_train_examples", "skip_bad_records")


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the vocabulary (token → id) and the special-token ids."""
    specials = {name: getattr(tokenizer, name, None) for name in ("eos_token_id", "bos_token_id", "pad_token_id",
                                                                  "unk_token_id")}
    payload = json.dumps([sorted(tokenizer.get_vocab().items()), specials], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _file_identity(path: str) -> dict:
    from csdistill.files import file_sha256

    if not path:
        return {"path": "", "sha256": ""}
    return {"path": path, "sha256": file_sha256(path) if Path(path).is_file() else f"name:{path}"}


def data_spec(cfg: Config) -> dict:
    d = cfg.data
    return {"files": {key: _file_identity(getattr(d, key)) for key in DATA_FILES},
            "settings": {key: getattr(d, key) for key in DATA_SETTINGS}}


def teacher_fingerprint(cfg: Config, model) -> dict:
    """The teacher's name, precision, adapter, and sha256 hashes of its config and weights."""
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    config = model.config.to_json_string(use_diff=False) if hasattr(model, "config") else ""
    return {"name_or_path": cfg.teacher.name_or_path, "precision": cfg.teacher.precision,
            "adapter": cfg.teacher.adapter, "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
            "weights_sha256": weights.hexdigest()}


def build_spec(cfg: Config, tokenizer, teacher: dict, top_k: int, dtype: str, vocab_size: int,
               store: str = "topk", head: dict | None = None) -> dict:
    """The spec of a `store` cache: topk keeps `top_k`; hidden records its head (rows, d, bias, logit scale)."""
    spec = {"format": FORMATS[store], "teacher": teacher, "tokenizer_sha256": tokenizer_hash(tokenizer),
            "data": data_spec(cfg), "dtype": dtype, "vocab_size": vocab_size}
    if store == "hidden":
        spec.update(store="hidden", head=head, hidden_size=head["hidden_size"],
                    bytes_per_position=bytes_per_position(0, vocab_size, dtype, "hidden", head["hidden_size"]))
    else:
        spec.update(top_k=top_k, bytes_per_position=bytes_per_position(top_k, vocab_size, dtype))
    return spec


def check_against_run(manifest: dict, cfg: Config, tokenizer, vocab_size: int, directory: str) -> None:
    """ConfigError naming every difference between the cache and this run's tokenizer/data/lengths."""
    store = "--store hidden" if manifest.get("store") == "hidden" else f"--top-k {manifest.get('top_k')}"
    fix = (f"re-run `csdistill teacher cache --config <this run's config> {store} --out NEW_DIR` and point "
           "train.teacher_cache at it")
    where = f"train.teacher_cache={directory!r}"
    if manifest.get("tokenizer_sha256") != tokenizer_hash(tokenizer):
        raise ConfigError(f"{where} was built with a different tokenizer (vocabulary hash differs); {fix}")
    if manifest.get("vocab_size", 0) > vocab_size:
        raise ConfigError(f"{where} holds a teacher of V={manifest['vocab_size']} logits but the student has "
                          f"V={vocab_size}; the models must share a tokenizer — {fix}")
    ours, theirs = data_spec(cfg), manifest.get("data", {})
    for key in DATA_SETTINGS:
        if theirs.get("settings", {}).get(key) != ours["settings"][key]:
            raise ConfigError(f"{where} was built with data.{key}={theirs.get('settings', {}).get(key)!r} but this run "
                              f"has data.{key}={ours['settings'][key]!r}; {fix}")
    for key in DATA_FILES:
        cached, current = theirs.get("files", {}).get(key, {}), ours["files"][key]
        if cached.get("sha256") != current["sha256"]:
            what = "content differs" if cached.get("path") == current["path"] else f"cache has {cached.get('path')!r}"
            raise ConfigError(f"{where}: data.{key}={current['path']!r} does not match the cache ({what}); {fix}")


def check_teacher(manifest: dict, cfg: Config, tokenizer, directory: str) -> None:
    """ConfigError naming both teachers when cfg.teacher is not the teacher the cache was built
    from (config or weights sha256 differ); a moved copy of the same teacher passes."""
    from csdistill.models import load_teacher

    cached = manifest.get("teacher", {})
    if "weights_sha256" not in cached:  # e.g. a vLLM cache: no weights hash to compare against
        raise ConfigError(f"train.teacher_cache={directory!r} records no teacher weights ({cached.get('source', '?')}); "
                          f"it cannot be checked against teacher.name_or_path={cfg.teacher.name_or_path!r} — leave "
                          "teacher.name_or_path empty to train from it")
    ours = teacher_fingerprint(cfg, load_teacher(cfg, tokenizer))
    differs = [key for key in ("config_sha256", "weights_sha256") if ours[key] != cached.get(key)]
    if differs:
        raise ConfigError(f"teacher.name_or_path={cfg.teacher.name_or_path!r} (precision {ours['precision']}, "
                          f"{', '.join(f'{k} {ours[k][:12]}' for k in differs)}) is not the teacher "
                          f"train.teacher_cache={directory!r} was built from ({cached.get('name_or_path')!r}, precision "
                          f"{cached.get('precision')}, {', '.join(f'{k} {str(cached.get(k))[:12]}' for k in differs)}); "
                          "point teacher.name_or_path at that teacher, leave it empty, or rebuild the cache")
