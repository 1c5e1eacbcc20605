"""Small file helpers: one sha256 and one way to replace a file (checkpoints, caches, results, data).

Every file csdistill replaces is written to a temporary sibling (same folder, so the rename never
crosses a file system) and renamed over the target: a crash or kill leaves the old file or the new
one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks (no whole-file copy in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def jsonl_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 JSONL file, split on "\\n" only: str.splitlines() also splits on
    U+2028, U+0085, \\x0c ..., which json.dumps(ensure_ascii=False) leaves inside strings."""
    return [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]


def temp_sibling(path: str | Path) -> Path:
    """A temporary name beside `path` that no other process uses: .<name>.<pid>.tmp."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    temp = temp_sibling(path)
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """open() for replacing `path` atomically; text modes are UTF-8 (newline='' for csv writers)."""
    text = "b" not in mode
    with atomic_path(path) as temp:
        kwargs = {"encoding": "utf-8", "newline": ""} if text else {}
        with open(temp, mode, **kwargs) as handle:
            yield handle


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Replace `path` with `text` (UTF-8) atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, data: Any, **dumps_kwargs: Any) -> Path:
    """Replace `path` with `json.dumps(data, **dumps_kwargs)` and a final newline, atomically."""
    return atomic_write_text(path, json.dumps(data, **dumps_kwargs) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Replace `path` with one JSON object per line (non-ASCII kept as is), atomically."""
    with atomic_open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)
