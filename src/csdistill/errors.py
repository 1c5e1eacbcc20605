"""User errors: what the CLI prints as one line (`csdistill: error: ...`, exit 2) instead of a traceback.

A user error says what is wrong, where (key, file:line, folder) and how to fix it. Two kinds count:
- a :class:`UserError` (its subclasses: ``config.ConfigError``, ``data.DataError``, ``OutputDirError``,
  ``CheckpointError``), raised anywhere;
- a ``ValueError`` raised by a ``raise`` statement in csdistill's own code: by the project's rule
  (docs/style: "user errors raise a ValueError/ConfigError naming the field, the value and the fix")
  those are messages for the user. A ``ValueError`` raised elsewhere (torch, transformers, a failed
  unpacking inside csdistill) is a bug and keeps its traceback.
Storage failures (disk full, not writable) become one line naming the path (:func:`storage_error`).
Full tracebacks: ``csdistill --debug ...`` or ``CSDISTILL_DEBUG=1``.
"""

from __future__ import annotations

import errno
import linecache
import os
from pathlib import Path

DEBUG_ENV = "CSDISTILL_DEBUG"
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


class UserError(ValueError):
    """A mistake the user can fix: the message names what, where and the fix."""


class OutputDirError(UserError):
    """train.output_dir cannot be used as asked: an earlier run is there, another run holds it, ..."""


class CheckpointError(UserError):
    """A checkpoint is damaged or does not fit this run: names the checkpoint and the file."""


class StorageError(UserError):
    """Disk full or not writable: names the path."""


def _raised_by_own_raise_statement(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    if not str(Path(filename).resolve()).startswith(_PACKAGE_DIR + os.sep):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise ")


def is_user_error(err: BaseException) -> bool:
    """True for the errors the CLI reports in one line (see the module docstring)."""
    if isinstance(err, UserError):
        return True
    return isinstance(err, ValueError) and _raised_by_own_raise_statement(err)


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
