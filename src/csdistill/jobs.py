"""Training runs as pinned `csdistill train` subprocesses, reused when their settings did not change.

A Job is one run: the dotted overrides of its config (written to <config_dir>/<name>.yaml), its output
folder and the stamp that marks it finished. `run_jobs` runs a list of them, a few at a time, each on its
own CPU cores (`core_slots`). Used by `csdistill compare` and the quickstart's teacher and warm start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from csdistill.config import load_config, to_yaml
from csdistill.errors import UserError
from csdistill.files import atomic_write_text

STAMP = "stamp.json"  # written into a run folder after the run succeeded: {"settings_hash": ...}


class CompareError(UserError):
    """A run failed (names it, its log and the log's tail) or a folder is not ours to replace."""


@dataclass
class Job:
    """One `csdistill train` subprocess: its config, folder and CPU cores."""

    name: str
    overrides: list[str]
    out: Path
    config_dir: Path
    steps: int
    after: tuple[Job, ...] = ()  # stages whose output this one reads: their stamps are part of its stamp
    inputs: str = ""  # fingerprint of input files (see inputs_fingerprint)
    cores: list[int] = field(default_factory=list)
    process: subprocess.Popen | None = None
    log: object = None

    @property
    def config_path(self) -> Path:
        return self.config_dir / f"{self.name}.yaml"

    @property
    def model_path(self) -> Path:
        return self.out / "final"

    def stamp(self) -> str:
        """Hash of the settings this run chose (evaluation settings, thread count and progress bar excluded:
        they do not change the weights), of its input files and of the stamps of the stages it reads."""
        settings = sorted(o for o in self.overrides if not o.startswith(("train.num_threads=", "train.progress=", "eval.")))
        material = [settings, self.inputs, [job.stamp() for job in self.after]]
        return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:12]

    def _stamp_on_disk(self) -> str | None:
        for name in (STAMP, "quickstart_stamp.json"):  # the second: runs of the quickstart before compare existed
            try:
                return json.loads((self.out / name).read_text()).get("settings_hash")
            except (OSError, ValueError):
                continue
        return None

    def done(self) -> bool:
        """Finished earlier with the same settings (the stamp is written only after success)."""
        return (self.model_path / "config.json").is_file() and self._stamp_on_disk() == self.stamp()

    def steps_done(self) -> int:
        metrics = self.out / "metrics.jsonl"
        lines = metrics.read_text().strip().splitlines() if metrics.is_file() else []
        try:
            return int(json.loads(lines[-1])["step"]) if lines else 0
        except (ValueError, KeyError):
            return 0

    def clear(self) -> None:
        """Make room for a fresh run: a finished run with other settings is kept beside it as <out>.<its stamp>;
        an interrupted one (compare's train.log, no stamp) is removed; anything else is not ours to touch."""
        if not self.out.exists():
            return
        old = self._stamp_on_disk()
        if old is not None:
            keep = self.out.with_name(f"{self.out.name}.{old}")
            if keep.exists():
                shutil.rmtree(keep)  # an older copy of the very same settings: this one is equal or newer
            self.out.rename(keep)
            print(f"[compare] {self.name}: settings changed; the earlier run is kept in {keep}")
        elif (self.out / "train.log").is_file() or not any(self.out.iterdir()):
            shutil.rmtree(self.out)
        else:
            raise CompareError(f"{self.out} exists but was not written by compare/quickstart; move it away or "
                               "choose another --out")

    def start(self) -> None:
        overrides = [*self.overrides, *([f"train.num_threads={len(self.cores)}"] if self.cores else [])]
        cfg = load_config(None, overrides)  # validated here: a bad setting fails before any process starts
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(to_yaml(cfg))
        self.clear()
        self.out.mkdir(parents=True)
        self.log = (self.out / "train.log").open("w")
        self.process = pinned_process(["-m", "csdistill.cli", "train", "--config", str(self.config_path)],
                                      self.cores, self.log)

    def finish(self) -> None:
        """After the process exited: raise with the log's tail on failure, else write the stamp."""
        self.log.close()
        if self.process.returncode != 0:
            tail = "\n".join((self.out / "train.log").read_text(errors="replace").splitlines()[-15:])
            raise CompareError(f"run {self.name!r} failed (exit {self.process.returncode}); "
                               f"log: {self.out / 'train.log'}; config: {self.config_path}\n{tail}")
        atomic_write_text(self.out / STAMP, json.dumps({"settings_hash": self.stamp()}))


def pinned_process(args: list[str], cores: list[int], log) -> subprocess.Popen:
    """`python <args>` offline, one thread per core, pinned to `cores` (all when empty), output to `log`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(max(1, len(cores)))}
    pinned = set(cores)

    def in_child() -> None:
        _die_with_parent()
        if pinned and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, pinned)

    return subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=in_child)


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when compare dies (even by SIGKILL), so no orphaned run keeps writing
    into a folder that the rerun clears and redoes. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def core_slots(jobs: int = 0, gpu: bool | None = None) -> list[list[int]]:
    """Where runs go: on a GPU one after another (all cores); on CPU `jobs` at once (0 = one per core),
    the cores split evenly between them, each run pinned to its share."""
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    cores = available_cores()
    width = 1 if gpu else max(1, min(jobs or len(cores), len(cores)))
    return [cores[k::width] for k in range(width)]


def run_jobs(jobs: list[Job], slots: list[list[int]], desc: str, progress: bool = True) -> float:
    """Run `jobs`, at most len(slots) at once, each on the cores of a free slot; one progress bar over
    all their steps (with ETA). Finished jobs with unchanged settings are skipped. Returns seconds."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    todo = [job for job in jobs if not job.done()]
    for job in jobs:
        if job not in todo:
            print(f"[compare] {job.name}: finished earlier with the same settings, reusing {job.model_path}")
    if not todo:
        return 0.0
    bar = tqdm(total=sum(j.steps for j in todo), desc=desc, unit="step", dynamic_ncols=True, disable=not progress)
    running: dict[int, Job] = {}
    pending = list(todo)
    try:
        while pending or running:
            for slot in range(len(slots)):
                if slot not in running and pending:
                    job = pending.pop(0)
                    job.cores = slots[slot]
                    job.start()
                    running[slot] = job
            time.sleep(0.5)
            for slot, job in list(running.items()):
                if job.process.poll() is not None:
                    job.finish()
                    del running[slot]
            bar.n = sum(j.steps if j.process and j.process.poll() is not None else j.steps_done() for j in todo)
            bar.refresh()
    except BaseException:
        for job in running.values():
            job.process.kill()
        raise
    finally:
        bar.close()
    return time.perf_counter() - t0


