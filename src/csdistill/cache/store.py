"""The on-disk top-k teacher cache: safetensors shards + one JSON manifest (never pickle).

Layout of DIR:
  spec.json                   what the cache is of (written first; a resumed run must match it)
  shard-00000.safetensors     one shard per block of sequences, written atomically (temp + rename)
  manifest.json               spec + the shard list and totals (written last, merged over processes)

A shard holds P valid positions of n sequences (numpy arrays, safetensors format):
  ids (P, k) uint16 when V <= 65536 else int32   top-k token ids, by decreasing log-probability
  logprobs (P, k) float16 | float32              teacher log p at ids
  target_logprob (P,), log_tail (P,)             log p(actual next token), log(1 − Σ_topk p)
  labels (P,) uint16 | int32                     the actual next token (checked against the batch)
  digests (n, 16) uint8, offsets (n + 1,) int64  sequence key digest and its rows [offsets[i], offsets[i+1])
Bytes per position: k·(id bytes + value bytes) + 3·value bytes + id bytes (264 at k = 64, fp16).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from csdistill.config import ConfigError
from csdistill.losses.sparse import SparseTeacher
from csdistill.files import atomic_path, atomic_write_json

FORMAT = "csdistill-topk-cache/1"
VALUE_DTYPES = {"fp16": np.float16, "fp32": np.float32}
SHARD_FIELDS = ("ids", "logprobs", "target_logprob", "log_tail", "labels", "digests", "offsets")


def id_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65536 else np.int32


def bytes_per_position(k: int, vocab_size: int, dtype: str) -> int:
    id_bytes, value_bytes = np.dtype(id_dtype(vocab_size)).itemsize, np.dtype(VALUE_DTYPES[dtype]).itemsize
    return k * (id_bytes + value_bytes) + 3 * value_bytes + id_bytes


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def write_json(path: Path, data: dict) -> None:
    """Atomic: a temp file in the same folder, then rename."""
    atomic_write_json(path, data, indent=1, sort_keys=True)


def write_shard(path: Path, rows: SparseTeacher, digests: list[bytes], counts: list[int], spec: dict) -> dict:
    """Write one shard atomically; returns its manifest entry."""
    from safetensors.numpy import save_file

    ids_type, values = id_dtype(spec["vocab_size"]), VALUE_DTYPES[spec["dtype"]]
    arrays = {"ids": rows.ids.cpu().numpy().astype(ids_type),
              "logprobs": rows.logprobs.float().cpu().numpy().astype(values),
              "target_logprob": rows.target_logprob.float().cpu().numpy().astype(values),
              "log_tail": rows.log_tail.float().cpu().numpy().astype(values),
              "labels": rows.labels.cpu().numpy().astype(ids_type),
              "digests": np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 16).copy(),
              "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)}
    with atomic_path(path) as temp:
        save_file(arrays, str(temp), metadata={"format": FORMAT, "spec_hash": spec_hash(spec)})
    return {"file": path.name, "sequences": len(digests), "positions": int(sum(counts))}


def spec_hash(spec: dict) -> str:
    from csdistill.cache.spec import spec_identity

    return hashlib.sha256(json.dumps(spec_identity(spec), sort_keys=True).encode()).hexdigest()[:16]


def shard_is_complete(path: Path, spec: dict) -> bool:
    """True when `path` is a finished shard of this spec (resume skips it)."""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as handle:
            return (handle.metadata() or {}).get("spec_hash") == spec_hash(spec)
    except Exception:  # a torn or foreign file: recompute it
        return False


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        hint = (" — the caching run has not finished; re-run the same `csdistill teacher cache` command to resume"
                if (Path(directory) / "spec.json").is_file() else "; build one with `csdistill teacher cache`")
        raise ConfigError(f"train.teacher_cache={str(directory)!r}: no manifest.json there{hint}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"train.teacher_cache={str(directory)!r}: format {manifest.get('format')!r} is not "
                          f"{FORMAT!r}; rebuild the cache with this version of csdistill")
    return manifest


def load_shard(directory: Path, entry: dict, manifest: dict) -> tuple[SparseTeacher, np.ndarray, np.ndarray]:
    """(rows, digests (n, 16) uint8, offsets (n+1,)) of one shard, checked against the manifest."""
    from safetensors.numpy import load_file

    path = directory / entry["file"]
    where = f"teacher cache shard {str(path)!r}"
    try:
        arrays = load_file(str(path))
    except FileNotFoundError:
        raise ConfigError(f"{where} is missing; re-run `csdistill teacher cache` into this folder to rebuild it") from None
    except Exception as err:  # truncated / corrupt
        raise ConfigError(f"{where} is unreadable ({type(err).__name__}: {err}); it is truncated or corrupt — delete "
                          "it and re-run the same `csdistill teacher cache` command (it resumes)") from None
    _check_shard(arrays, entry, manifest, where)
    rows = SparseTeacher(torch.from_numpy(arrays["ids"].astype(np.int64)), torch.from_numpy(arrays["logprobs"]),
                         torch.from_numpy(arrays["target_logprob"]), torch.from_numpy(arrays["log_tail"]),
                         torch.from_numpy(arrays["labels"].astype(np.int64)))
    return rows, arrays["digests"], arrays["offsets"]


def _check_shard(arrays: dict, entry: dict, manifest: dict, where: str) -> None:
    missing = [name for name in SHARD_FIELDS if name not in arrays]
    if missing:
        raise ConfigError(f"{where} lacks {missing}; it is not a csdistill cache shard — rebuild the cache")
    k, positions = manifest["top_k"], entry["positions"]
    if arrays["ids"].shape != (positions, k):
        raise ConfigError(f"{where}: ids have shape {arrays['ids'].shape}, the manifest says ({positions}, k={k}); "
                          "the shard belongs to another cache — rebuild the cache")
    if int(arrays["offsets"][-1]) != positions or arrays["digests"].shape != (entry["sequences"], 16):
        raise ConfigError(f"{where}: its sequence index does not match the manifest; rebuild the cache")
    vocab = manifest["vocab_size"]
    if positions and int(max(arrays["ids"].max(), arrays["labels"].max())) >= vocab:
        raise ConfigError(f"{where}: token ids up to {int(arrays['ids'].max())} but the manifest's V={vocab}; "
                          "the shard belongs to another vocabulary — rebuild the cache")
    for name in ("logprobs", "target_logprob"):
        bad = ~np.isfinite(arrays[name].astype(np.float32))
        if bad.any():
            raise ConfigError(f"{where}: {int(bad.sum())} non-finite {name} values (NaN/inf); the teacher diverged "
                              "or overflowed — re-run the cache with teacher.precision=fp32")
    if np.isnan(arrays["log_tail"].astype(np.float32)).any():
        raise ConfigError(f"{where}: NaN in log_tail; re-run the cache with teacher.precision=fp32")
