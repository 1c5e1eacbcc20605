"""The output folder of a training run: one run per folder, one process writing it, nothing lost.

Rules (README, "Rerunning into an existing folder"):
- A folder that holds an earlier run (a checkpoint, `final`, or logged metrics) is used only when
  told how: `train.resume=auto` (or a checkpoint inside it) continues that run — refused when the
  settings that shape the run differ from the checkpoint's (`config_changes`) — and
  `train.overwrite=true` starts afresh after moving the earlier run's files into
  `<output_dir>/replaced-<time>/` (nothing is deleted). Otherwise the run stops with one line.
- `<output_dir>/csdistill.lock` (JSON: pid, host, start time) marks the folder as taken while a run
  writes it; a second run refuses. A lock whose process is gone (same host, dead pid) is stale and
  taken over with a warning; a lock from another host is never taken over (its pid means nothing here).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path

from csdistill.checkpoint import PREFIX, list_checkpoints
from csdistill.errors import OutputDirError

LOCK = "csdistill.lock"
REPLACED = "replaced-"
# What a run writes into its folder (moved aside together by train.overwrite); eval/ is the default
# `csdistill evaluate` output of the run's model, so it goes with the run.
RUN_FILES = ("final", ".final.tmp", "metrics.jsonl", "metrics.csv", "metrics.jsonl.tmp", "metrics.csv.tmp",
             "config.yaml", "tensorboard", "eval")
# Settings that never change what a run computes: a resumed run may change them freely.
FREE_KEYS = {"train.resume", "train.overwrite", "train.output_dir", "train.progress", "train.tensorboard",
             "train.num_threads", "train.save_every", "train.keep_checkpoints", "train.log_every"}


def warn(text: str) -> None:
    print(f"csdistill: warning: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- an earlier run


def earlier_run(root: Path) -> list[str]:
    """Names in `root` that show an earlier run: its checkpoints, `final`, a non-empty metrics.jsonl."""
    found = [p.name for p in list_checkpoints(root)]
    if (root / "final").is_symlink() or (root / "final").exists():
        found.append("final")
    metrics = root / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    return found


def _run_entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir()
                  if p.name.startswith(PREFIX) or p.name.startswith("paused-at-") or p.name in RUN_FILES)


def move_aside(root: Path) -> Path:
    """Move the earlier run's files into <root>/replaced-<time>/ (same file system: renames only)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target, n = root / f"{REPLACED}{stamp}", 1
    while target.exists():
        n += 1
        target = root / f"{REPLACED}{stamp}-{n}"
    target.mkdir()
    for entry in _run_entries(root):
        os.replace(entry, target / entry.name)
    return target


def _describe(found: list[str]) -> str:
    checkpoints = [name for name in found if name.startswith(PREFIX)]
    parts = [f"{len(checkpoints)} checkpoint(s) up to {checkpoints[-1]}"] if checkpoints else []
    return ", ".join(parts + [name for name in found if not name.startswith(PREFIX)])


def check_earlier_run(root: Path, resume: str, overwrite: bool) -> Path | None:
    """Apply the folder rules before anything is written; returns where an overwritten run was moved."""
    found = earlier_run(root)
    if not found:
        return None
    continuing = resume == "auto" or (bool(resume) and Path(resume).resolve().parent == root.resolve())
    if continuing:
        return None
    if overwrite:
        moved = move_aside(root)
        warn(f"train.overwrite=true: moved the earlier run in {root} ({_describe(found)}) to {moved}")
        return moved
    resumed_elsewhere = f" (train.resume={resume!r} is a checkpoint of another folder)" if resume else ""
    raise OutputDirError(
        f"train.output_dir={str(root)!r} holds an earlier run ({_describe(found)}){resumed_elsewhere}; "
        "continue it with train.resume=auto, start afresh with train.overwrite=true (the earlier run is moved "
        f"to {root / (REPLACED + '<time>')}, nothing is deleted), or choose another train.output_dir")


# --------------------------------------------------------------------------- the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:  # a killed child not yet reaped by its parent is a zombie: dead for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """<output_dir>/csdistill.lock, created exclusively (O_EXCL); release() removes it."""

    def __init__(self, path: Path):
        self.path = path
        self.held = False

    @classmethod
    def acquire(cls, root: Path) -> RunLock:
        lock = cls(root / LOCK)
        for _ in range(3):  # a stale lock is moved away, then the exclusive create is retried
            if lock._try_create():
                return lock
            lock._take_over_if_stale()
        raise OutputDirError(f"could not lock {lock.path}; another run keeps taking it")

    def _try_create(self) -> bool:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds")}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        self.held = True
        return True

    def _take_over_if_stale(self) -> None:
        try:
            info = json.loads(self.path.read_text())
            pid, host = int(info["pid"]), str(info["host"])
        except FileNotFoundError:
            return  # released meanwhile: retry
        except (OSError, ValueError, KeyError, TypeError):
            info, pid, host = {}, None, socket.gethostname()  # torn by a crash while it was written
        if pid is not None and (host != socket.gethostname() or _alive(pid)):
            raise OutputDirError(
                f"train.output_dir={str(self.path.parent)!r} is in use by another run (pid {pid} on {host}, "
                f"started {info.get('started', '?')}); wait for it, use another train.output_dir, or delete "
                f"{self.path} if that run is gone")
        stale = self.path.with_name(f"{LOCK}.stale-{os.getpid()}")
        try:
            os.replace(self.path, stale)
        except FileNotFoundError:
            return
        stale.unlink(missing_ok=True)
        warn(f"took over the stale lock {self.path} of a run that is gone (pid {pid})")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


# --------------------------------------------------------------------------- resuming the same run


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' for every setting that shapes the run and differs (FREE_KEYS and the
    eval section, which only `csdistill evaluate` reads, excepted; eval.eval_every counts)."""
    old, new = _flatten(saved), _flatten(current)
    changes = []
    for key, value in new.items():
        if key in FREE_KEYS or (key.startswith("eval.") and key != "eval.eval_every"):
            continue
        if key in old and old[key] != value:
            changes.append(f"{key}: {old[key]!r} -> {value!r}")
    return changes
