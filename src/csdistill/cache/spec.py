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


def build_spec(cfg: Config, tokenizer, teacher: dict, top_k: int, dtype: str, vocab_size: int) -> dict:
    from csdistill.cache.store import FORMAT, bytes_per_position

    return {"format": FORMAT, "teacher": teacher, "tokenizer_sha256": tokenizer_hash(tokenizer),
            "data": data_spec(cfg), "top_k": top_k, "dtype": dtype, "vocab_size": vocab_size,
            "bytes_per_position": bytes_per_position(top_k, vocab_size, dtype)}


def spec_identity(spec: dict) -> dict:
    """The spec without data-file paths: a moved or renamed file with the same content is the same cache."""
    data = spec.get("data", {})
    files = {key: {k: v for k, v in entry.items() if k != "path"} for key, entry in data.get("files", {}).items()}
    return {**spec, "data": {**data, "files": files}}


def check_against_run(manifest: dict, cfg: Config, tokenizer, vocab_size: int, directory: str) -> None:
    """ConfigError naming every difference between the cache and this run's tokenizer/data/lengths."""
    fix = (f"re-run `csdistill teacher cache --config <this run's config> --top-k {manifest.get('top_k')} "
           "--out NEW_DIR` and point train.teacher_cache at it")
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
