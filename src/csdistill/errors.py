"""User errors: what the CLI prints as one line (`csdistill: error: ...`, exit 2) instead of a traceback.

A user error says what is wrong, where (key, file:line, folder) and how to fix it: it is a
:class:`UserError` (or a subclass: ``config.ConfigError``, ``data.DataError``, ``OutputDirError``,
``CheckpointError``, ``StorageError``, ...), raised where the mistake is found. ``UserError`` is a
``ValueError``, so library callers can catch either. Any other exception — a ``ValueError`` from torch,
transformers or a failed unpacking inside csdistill included — is a bug and keeps its traceback.
Storage failures (disk full, not writable) become one line naming the path (:func:`storage_error`).
Full tracebacks: ``csdistill --debug ...`` or ``CSDISTILL_DEBUG=1``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

DEBUG_ENV = "CSDISTILL_DEBUG"


class UserError(ValueError):
    """A mistake the user can fix: the message names what, where and the fix."""


class OutputDirError(UserError):
    """train.output_dir cannot be used as asked: an earlier run is there, another run holds it, ..."""


class CheckpointError(UserError):
    """A checkpoint is damaged or does not fit this run: names the checkpoint and the file."""


class StorageError(UserError):
    """Disk full or not writable: names the path."""


class NonFiniteLogitsError(UserError):
    """NaN/+inf logits: a diverged model or fp16 overflow (the training loop reports it as divergence)."""


def is_user_error(err: BaseException) -> bool:
    """True for the errors the CLI reports in one line (see the module docstring)."""
    return isinstance(err, UserError)


FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


def storage_error(err: BaseException, path: str | Path | None = None) -> StorageError | None:
    """A one-line StorageError for a disk-full / not-writable OSError (None for any other error)."""
    if not isinstance(err, OSError) or err.errno not in (*FULL, *READ_ONLY):
        return None
    where = path or err.filename or "?"
    if err.errno in FULL:
        return StorageError(f"disk full while writing {where}: free some space (or write elsewhere) and rerun")
    return StorageError(f"not writable: {where} ({err.strerror}); fix its permissions or choose another folder")


def check_writable(folder: str | Path, what: str) -> Path:
    """Create `folder` if needed and prove a file can be written there, before any work is done.

    what: the option that chose the folder (named in the error), e.g. 'train.output_dir' or '--out'."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    if existing.exists() and not existing.is_dir():
        where = "" if existing == folder else f": {str(existing)!r}"
        raise UserError(f"{what}={str(folder)!r}{where} is a file, not a folder; choose a folder (new or empty)")
    probe = folder / f".csdistill-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        mapped = storage_error(err, folder)
        if mapped is not None:
            raise StorageError(f"{what}={str(folder)!r}: {mapped}") from None
        raise UserError(f"{what}={str(folder)!r}: cannot write there ({type(err).__name__}: {err}); "
                        "choose another folder") from None
    return folder
