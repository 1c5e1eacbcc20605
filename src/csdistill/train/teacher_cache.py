"""The teacher cache: teacher rows per training sequence, looked up by the sequence's content.

One mechanism, two ways to fill it:
  train.cache_teacher_logits=true   in memory, from the live teacher: each sequence's dense logits
                                    (n_valid, V) are kept after its first forward pass (kd mode,
                                    small data/vocab: the whole (positions × V) block is held)
  train.teacher_cache=DIR           from a cache on disk (`csdistill teacher cache`), read shard row
                                    range by row range (cache/store.ShardRows): top-k rows
                                    (losses.sparse.SparseTeacher) or the teacher's final hidden states
                                    (cache/store.HiddenRows) with its head (cache/head.StoredHead);
                                    no teacher is used
Either way a sequence's key is a digest of its unpadded input_ids and labels, so it hits whatever
batch or padding it arrives in, and the rows come back in the row-major order of `logits[valid]`.
Dense values stay in the dtype the teacher produced them in (bf16 under autocast) — exactly what
the uncached path would pass to the loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from csdistill.cache.keys import example_key, sequence_digest, sequence_keys  # noqa: F401 (importable from here)
from csdistill.cache.store import load_shard, read_manifest, store_of
from csdistill.config import ConfigError


def _cat(parts: list):
    """Stored rows, concatenated as stored: outside autocast, whose type promotion rejects the cache's
    fp16 values under a bf16 student's CPU autocast ("Unexpected floating ScalarType")."""
    with torch.autocast("cpu", enabled=False):
        return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else type(parts[0]).cat(parts)


class TeacherCache:
    """{sequence key: (block, start, stop)} over row blocks (dense (P, V) tensors or SparseTeacher)."""

    def __init__(self, source: str = "") -> None:
        self._index: dict[bytes, tuple[int, int, int]] = {}
        self._blocks: list = []
        self.source = source  # the cache folder, or "" for the in-memory cache
        self.store = "dense"  # dense (in memory) | topk | hidden (on disk)
        self.manifest: dict = {}
        self.head = None  # hidden store: cache/head.StoredHead
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._index)

    def add(self, keys: list[bytes], rows, counts: list[int]) -> None:
        """Store a block of rows: sequence keys[i] owns the next counts[i] rows."""
        block, start = len(self._blocks), 0
        self._blocks.append(rows)
        for key, count in zip(keys, counts):
            self._index[key] = (block, start, start + count)
            start += count

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def rows(self, batch: dict[str, torch.Tensor], valid: torch.Tensor, compute: Callable | None = None):
        """Teacher rows at the `valid` (B, T) positions, row-major like `logits[valid]`: (N, ...).

        `compute()` runs the live teacher on the whole batch and returns its (N, V) rows; it is
        called only when some sequence is not cached yet (then every row is stored). Without a
        `compute` (a cache on disk, no teacher) a missing sequence is an error."""
        keys = sequence_keys(batch)
        if all(key in self._index for key in keys):
            self.hits += len(keys)
            found = _cat([self._blocks[b][start:stop] for b, start, stop in (self._index[k] for k in keys)])
            return found.to(valid.device)
        if compute is None:
            missing = sum(key not in self._index for key in keys)
            raise ConfigError(f"train.teacher_cache={self.source!r} has no rows for {missing} of {len(keys)} sequences "
                              "of this batch; the cache was built from other data — re-run `csdistill teacher cache`")
        self.misses += len(keys)
        rows = compute()  # (N, V)
        self.add(keys, rows.detach().clone(), valid.sum(dim=1).tolist())
        return rows

    def check_covers(self, examples: list[dict], what: str) -> None:
        """ConfigError unless every example (and its teacher/student variants) is cached."""
        keys = [example_key(v) for ex in examples for v in (ex, ex.get("teacher"), ex.get("student")) if v]
        missing = sum(key not in self._index for key in keys)
        if missing:
            raise ConfigError(f"train.teacher_cache={self.source!r} lacks {missing} of {len(keys)} {what} sequences; "
                              "it was built from other data or settings — re-run `csdistill teacher cache` on this config")

    @classmethod
    def from_dir(cls, directory: str | Path) -> "TeacherCache":
        """Open every shard of a finished cache (checked: shapes, V, k or d, finite values; rows stay on disk)."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        cache = cls(str(directory))
        cache.manifest, cache.store = manifest, store_of(manifest)
        if cache.store == "hidden":
            from csdistill.cache.head import load_head

            cache.head = load_head(directory, manifest)
        for entry in manifest["shards"]:
            rows, digests, offsets = load_shard(directory, entry, manifest)
            cache.add([bytes(row) for row in digests], rows, (offsets[1:] - offsets[:-1]).tolist())
        return cache


TeacherLogitCache = TeacherCache  # the in-memory use's former name


def build_teacher_cache(cfg, tokenizer, vocab_size: int, data) -> TeacherCache | None:
    """The run's cache: none, in memory (train.cache_teacher_logits) or opened from
    train.teacher_cache and checked against this run's tokenizer, data, lengths, sequences and —
    when teacher.name_or_path is set — teacher."""
    if not cfg.train.teacher_cache:
        return TeacherCache() if cfg.train.cache_teacher_logits else None
    from csdistill.cache.spec import check_against_run, check_teacher

    cache = TeacherCache.from_dir(cfg.train.teacher_cache)
    check_against_run(cache.manifest, cfg, tokenizer, vocab_size, cfg.train.teacher_cache)
    if cfg.teacher.name_or_path:
        check_teacher(cache.manifest, cfg, tokenizer, cfg.train.teacher_cache)
    cache.check_covers(data.train, "training")
    cache.check_covers(data.validation, "validation")
    return cache


def cache_teacher_record(cache: TeacherCache) -> dict:
    """Which teacher a cache-trained student learned from (logged and saved with the run)."""
    teacher = cache.manifest.get("teacher", {})
    return {"teacher_cache": cache.source, "store": cache.store, **teacher}
