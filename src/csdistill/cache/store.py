"""The on-disk teacher cache: safetensors shards + one JSON manifest (never pickle). Two row kinds.

Layout of DIR:
  spec.json                   what the cache is of (written first; a resumed run must match it)
  head.safetensors            hidden store only: the teacher's LM head (weight (V, d), bias (V,))
  shard-00000.safetensors     one shard per block of sequences, written atomically (temp + rename)
  manifest.json               spec + the shard list and totals (written last, merged over processes)

Every shard holds the rows of P valid positions of n sequences, plus
  labels (P,) uint16 | int32                     the actual next token (checked against the batch)
  digests (n, 16) uint8, offsets (n + 1,) int64  sequence key digest and its rows [offsets[i], offsets[i+1])
and, per store kind (spec["store"]):
  topk    ids (P, k) uint16 when V <= 65536 else int32   top-k token ids, by decreasing log-probability
          logprobs (P, k) float16 | float32              teacher log p at ids
          target_logprob (P,), log_tail (P,)             log p(actual next token), log(1 − Σ_topk p)
          bytes/position: k·(id + value bytes) + 3·value bytes + id bytes (264 at k = 64, fp16)
  hidden  hidden (P, d) bfloat16 | float32               the teacher's final hidden state (after its
                                                         final norm): logits = hidden·Wᵀ + b, exact
          bytes/position: d·(2 | 4) + id bytes

Shards are read row range by row range (`ShardRows`, positioned reads of the safetensors data,
never the whole file), so a training run's resident memory does not grow with the cache.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from csdistill.config import ConfigError
from csdistill.files import atomic_path, atomic_write_json
from csdistill.losses.sparse import SparseTeacher

FORMATS = {"topk": "csdistill-topk-cache/1", "hidden": "csdistill-hidden-cache/1"}
FORMAT = FORMATS["topk"]
VALUE_DTYPES = {"fp16": np.float16, "fp32": np.float32}  # topk log-probabilities
HIDDEN_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}  # hidden states
STORES = tuple(FORMATS)
ROW_FIELDS = {"topk": ("ids", "logprobs", "target_logprob", "log_tail", "labels"), "hidden": ("hidden", "labels")}
INDEX_FIELDS = ("digests", "offsets")
HEAD_FILE = "head.safetensors"
_CHECK_ROWS = 4096  # rows per block when a shard is checked at open (bounded memory)
_NUMPY = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "U16": np.uint16, "I32": np.int32,
          "I64": np.int64, "U8": np.uint8}


def id_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65536 else np.int32


def bytes_per_position(k: int, vocab_size: int, dtype: str, store: str = "topk", hidden_size: int = 0) -> int:
    id_bytes = np.dtype(id_dtype(vocab_size)).itemsize
    if store == "hidden":
        return hidden_size * HIDDEN_DTYPES[dtype].itemsize + id_bytes
    value_bytes = np.dtype(VALUE_DTYPES[dtype]).itemsize
    return k * (id_bytes + value_bytes) + 3 * value_bytes + id_bytes


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def write_json(path: Path, data: dict) -> None:
    """Atomic: a temp file in the same folder, then rename."""
    atomic_write_json(path, data, indent=1, sort_keys=True)


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`; anything else is one ConfigError naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what}: {str(path)!r} is not valid JSON ({err}); it is damaged — rebuild the cache "
                          "(re-run `csdistill teacher cache` into a new --out)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {str(path)!r} holds a {type(data).__name__}, not a JSON object; rebuild the cache")
    return data


def spec_identity(spec: dict) -> dict:
    """The spec without data-file paths: a moved or renamed file with the same content is the same cache."""
    data = spec.get("data", {})
    files = {key: {k: v for k, v in entry.items() if k != "path"} for key, entry in data.get("files", {}).items()}
    return {**spec, "data": {**data, "files": files}}


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec_identity(spec), sort_keys=True).encode()).hexdigest()[:16]


def store_of(spec: dict) -> str:
    return spec.get("store", "topk")


# ---------------------------------------------------------------- rows of the hidden store


@dataclass(frozen=True)
class HiddenRows:
    """The teacher at N positions, hidden form: hidden (N, d) and the next tokens labels (N,)."""

    hidden: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def __getitem__(self, index) -> "HiddenRows":
        return HiddenRows(self.hidden[index], self.labels[index])

    def to(self, device) -> "HiddenRows":
        return HiddenRows(self.hidden.to(device), self.labels.to(device))

    @staticmethod
    def cat(parts: list["HiddenRows"]) -> "HiddenRows":
        return HiddenRows(torch.cat([p.hidden for p in parts]), torch.cat([p.labels for p in parts]))


# ---------------------------------------------------------------- writing


def write_shard(path: Path, rows, digests: list[bytes], counts: list[int], spec: dict) -> dict:
    """Write one shard (rows: SparseTeacher for topk, HiddenRows for hidden) atomically; returns its
    manifest entry."""
    from safetensors.torch import save_file

    ids_type = id_dtype(spec["vocab_size"])
    arrays = {"labels": rows.labels.cpu().numpy().astype(ids_type),
              "digests": np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 16).copy(),
              "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)}
    if store_of(spec) == "hidden":
        tensors = {"hidden": rows.hidden.detach().cpu().to(HIDDEN_DTYPES[spec["dtype"]]).contiguous()}
    else:
        values = VALUE_DTYPES[spec["dtype"]]
        arrays.update(ids=rows.ids.cpu().numpy().astype(ids_type), logprobs=rows.logprobs.float().cpu().numpy().astype(values),
                      target_logprob=rows.target_logprob.float().cpu().numpy().astype(values),
                      log_tail=rows.log_tail.float().cpu().numpy().astype(values))
        tensors = {}
    tensors.update({name: _as_torch(array) for name, array in arrays.items()})
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata={"format": FORMATS[store_of(spec)], "spec_hash": spec_hash(spec)})
    return {"file": path.name, "sequences": len(digests), "positions": int(sum(counts))}


def _as_torch(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint16:  # stored as U16 (torch's uint16 is a storage-only dtype)
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.uint16)
    return torch.from_numpy(np.ascontiguousarray(array))


def shard_is_complete(path: Path, spec: dict) -> bool:
    """True when `path` is a finished shard of this spec (resume skips it)."""
    if not path.is_file():
        return False
    try:
        return _read_header(path)[1].get("spec_hash") == spec_hash(spec)
    except Exception:  # a torn or foreign file: recompute it
        return False


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / "manifest.json"
    where = f"train.teacher_cache={str(directory)!r}"
    if not path.is_file():
        hint = (" — the caching run has not finished; re-run the same `csdistill teacher cache` command to resume"
                if (Path(directory) / "spec.json").is_file() else "; build one with `csdistill teacher cache`")
        raise ConfigError(f"{where}: no manifest.json there{hint}")
    manifest = read_json(path, where)
    if manifest.get("format") not in FORMATS.values() or FORMATS[store_of(manifest)] != manifest.get("format"):
        raise ConfigError(f"{where}: format {manifest.get('format')!r} is not one of {sorted(FORMATS.values())}; "
                          "rebuild the cache with this version of csdistill")
    return manifest


# ---------------------------------------------------------------- reading, row range by row range


def _read_header(path: Path) -> tuple[dict, dict, int]:
    """({tensor name: {dtype, shape, data_offsets}}, metadata, data start) of a safetensors file."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        if size > 100 * 2**20:
            raise ValueError(f"header of {size} bytes")
        header = json.loads(handle.read(size))
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + size


class ShardRows:
    """The rows of one shard on disk; ``rows[a:b]`` reads just those rows (a seek and a read), so
    nothing of the shard stays resident. Index fields (digests, offsets: per sequence) are read at open."""

    def __init__(self, path: Path, entry: dict, manifest: dict):
        self.path, self.where, self.store = path, f"teacher cache shard {str(path)!r}", store_of(manifest)
        self.vocab = manifest["vocab_size"]
        try:
            self.header, _, self.start = _read_header(path)
            self.size = path.stat().st_size
        except FileNotFoundError:
            raise ConfigError(f"{self.where} is missing; re-run `csdistill teacher cache` into this folder to rebuild "
                              "it") from None
        except Exception as err:  # noqa: BLE001 - truncated / corrupt header
            raise self._damaged(err) from None
        self._check_layout(entry, manifest)
        self.digests, self.offsets = self._read("digests", 0, entry["sequences"]), self._read("offsets", 0, entry["sequences"] + 1)
        if int(self.offsets[-1]) != entry["positions"]:
            raise ConfigError(f"{self.where}: its sequence index does not match the manifest; rebuild the cache")
        self.positions = entry["positions"]
        for start in range(0, self.positions, _CHECK_ROWS):  # every row checked once, a block at a time
            self[start:start + _CHECK_ROWS]

    def _damaged(self, err: Exception) -> ConfigError:
        return ConfigError(f"{self.where} is unreadable ({type(err).__name__}: {err}); it is truncated or corrupt — "
                           "delete it and re-run the same `csdistill teacher cache` command (it resumes)")

    def _check_layout(self, entry: dict, manifest: dict) -> None:
        missing = [name for name in (*ROW_FIELDS[self.store], *INDEX_FIELDS) if name not in self.header]
        if missing:
            raise ConfigError(f"{self.where} lacks {missing}; it is not a csdistill {self.store} cache shard — "
                              "rebuild the cache")
        positions = entry["positions"]
        width, what = ((manifest.get("top_k"), "k") if self.store == "topk" else (manifest.get("hidden_size"), "d"))
        main = "ids" if self.store == "topk" else "hidden"
        if tuple(self.header[main]["shape"]) != (positions, width):
            raise ConfigError(f"{self.where}: {main} have shape {tuple(self.header[main]['shape'])}, the manifest says "
                              f"({positions}, {what}={width}); the shard belongs to another cache — rebuild the cache")
        if tuple(self.header["digests"]["shape"]) != (entry["sequences"], 16):
            raise ConfigError(f"{self.where}: its sequence index does not match the manifest; rebuild the cache")
        if self.start + max(int(t["data_offsets"][1]) for t in self.header.values()) > self.size:
            raise self._damaged(EOFError(f"{self.size} bytes, the header describes more"))

    def __len__(self) -> int:
        return self.positions

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of tensor `name` as a fresh numpy array."""
        info = self.header[name]
        dtype = np.dtype(_NUMPY[info["dtype"]])
        row = int(np.prod(info["shape"][1:], dtype=np.int64)) * dtype.itemsize
        offset = self.start + int(info["data_offsets"][0]) + start * row
        with open(self.path, "rb") as handle:  # opened per read: no descriptor held per shard
            handle.seek(offset)
            data = handle.read((stop - start) * row)
        if len(data) != (stop - start) * row:
            raise self._damaged(EOFError(f"short read of {name}"))
        return np.frombuffer(data, dtype=dtype).reshape(stop - start, *info["shape"][1:]).copy()

    def _tensor(self, name: str, start: int, stop: int) -> torch.Tensor:
        array = self._read(name, start, stop)
        if self.header[name]["dtype"] == "BF16":
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array.astype(np.int64) if array.dtype in (np.uint16, np.int32) else array)

    def __getitem__(self, index: slice):
        """SparseTeacher | HiddenRows of rows index.start:index.stop, checked (ids < V, finite values)."""
        start, stop, _ = index.indices(self.positions)
        fields = {name: self._tensor(name, start, stop) for name in ROW_FIELDS[self.store]}
        self._check_rows(fields)
        if self.store == "hidden":
            return HiddenRows(fields["hidden"], fields["labels"])
        return SparseTeacher(fields["ids"], fields["logprobs"], fields["target_logprob"], fields["log_tail"],
                             fields["labels"])

    def _check_rows(self, fields: dict) -> None:
        ids = [fields[name] for name in ("ids", "labels") if name in fields]
        top = max((int(t.max()) for t in ids if t.numel()), default=-1)
        if top >= self.vocab:
            raise ConfigError(f"{self.where}: token ids up to {top} but the manifest's V={self.vocab}; the shard "
                              "belongs to another vocabulary (or the manifest was edited) — rebuild the cache")
        for name in ("logprobs", "target_logprob", "hidden"):
            if name in fields and not bool(torch.isfinite(fields[name]).all()):
                bad = int((~torch.isfinite(fields[name])).sum())
                raise ConfigError(f"{self.where}: {bad} non-finite {name} values (NaN/inf); the teacher diverged or "
                                  "overflowed — re-run the cache with teacher.precision=fp32")
        if "log_tail" in fields and bool(torch.isnan(fields["log_tail"]).any()):
            raise ConfigError(f"{self.where}: NaN in log_tail; re-run the cache with teacher.precision=fp32")


def load_shard(directory: Path, entry: dict, manifest: dict) -> tuple[ShardRows, np.ndarray, np.ndarray]:
    """(rows on disk, digests (n, 16) uint8, offsets (n+1,)) of one shard, checked against the manifest."""
    rows = ShardRows(Path(directory) / entry["file"], entry, manifest)
    return rows, rows.digests, rows.offsets
