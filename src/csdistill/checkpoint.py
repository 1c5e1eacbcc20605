"""Atomic training checkpoints: everything needed to continue a run exactly, nothing pickled.

Layout of <output_dir>/checkpoint-<step>/ (written to checkpoint-<step>.tmp, then renamed):
  model/              the student in Hugging Face format (safetensors + config + tokenizer):
                      AutoModelForCausalLM.from_pretrained(path/"model") loads it. For a LoRA student,
                      the final checkpoint holds the merged model here and every checkpoint holds
                      adapter/ (PEFT format); intermediate LoRA checkpoints have no merged copy.
  optimizer.pt        optimizer state_dict (tensors only; read with torch.load(weights_only=True))
  scheduler.json      lr-scheduler state
  trainer_state.json  step, data-order position, adaptive state, seed (shared by all processes)
  rank-<r>.json       per-process RNG states (torch, python, numpy) and replay buffer
  config.yaml         the resolved config
  manifest.json       size and sha256 of every other file, written last: a checkpoint whose files do
                      not match it is damaged (verify_checkpoint); resume=auto falls back to an older one
The final checkpoint is also reachable as <output_dir>/final (a symlink to its model/ directory).

Multi-process: every process calls save/load (FSDP/ZeRO-3 gather weights collectively); only the
main process writes the shared files. <output_dir> must be on storage all processes see.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from csdistill.errors import CheckpointError, StorageError, storage_error
from csdistill.files import file_sha256

PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{PREFIX}{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (renamed from .tmp), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """train.resume -> checkpoint dir: '' = none, 'auto' = the newest intact one in output_dir (None if
    there is none; damaged newer ones are named in a warning), else the given directory, verified."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        for path in reversed(found):
            problem = verify_checkpoint(path)
            if problem is None:
                return path
            print(f"csdistill: warning: checkpoint {path} is damaged ({problem}); trying the one before it",
                  file=sys.stderr, flush=True)
        if found:
            raise CheckpointError(f"train.resume=auto: every checkpoint in {output_dir} is damaged (see the warnings); "
                                  "restore one from a backup, or start afresh with train.overwrite=true")
        return None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise CheckpointError(f"train.resume={resume!r}: not a checkpoint directory (no trainer_state.json); "
                              f"pass a {PREFIX}<step> directory or 'auto'")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"train.resume={resume!r}: the checkpoint is damaged ({problem}); pass an intact "
                              "checkpoint (train.resume=auto picks the newest intact one)")
    return path


# --------------------------------------------------------------------------- manifest


def write_manifest(folder: Path) -> None:
    """folder/manifest.json: {relative path: {size, sha256}} of every other file in folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps({"files": entries}, indent=1))


def verify_checkpoint(path: str | Path) -> str | None:
    """None when every file of the manifest is there with its size and sha256, else the problem, naming
    the file. A checkpoint written before manifests existed is accepted unchecked if it has its state."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None if (path / "trainer_state.json").is_file() else f"no {MANIFEST} and no trainer_state.json"
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{manifest} cannot be read ({type(err).__name__})"
    for name, entry in entries.items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != entry["size"]:
            return f"{file} has {file.stat().st_size} bytes, its manifest says {entry['size']}"
        if file_sha256(file) != entry["sha256"]:
            return f"{file} does not match its sha256 in {MANIFEST}"
    return None


# --------------------------------------------------------------------------- RNG states (JSON)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state().tolist(),
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))


# --------------------------------------------------------------------------- save


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def _save_model(accelerator, model, tokenizer, target: Path, final: bool) -> None:
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP / ZeRO-3
    if not accelerator.is_main_process:
        return
    if _is_peft(unwrapped):
        unwrapped.save_pretrained(target / "adapter")
        tokenizer.save_pretrained(target / "adapter")
        if not final:
            return
        unwrapped = copy.deepcopy(unwrapped).merge_and_unload()  # keep training weights un-merged
        state_dict = None
    unwrapped.save_pretrained(target / "model", state_dict=state_dict)
    tokenizer.save_pretrained(target / "model")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save through a Python file, so that a failed write surfaces its OSError (disk full) as the
    RuntimeError's __context__ instead of only 'unexpected pos'."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def _save_error(err: BaseException, tmp: Path, output_dir: str | Path) -> StorageError | None:
    cause = err if isinstance(err, OSError) else err.__context__
    mapped = storage_error(cause, tmp) if isinstance(cause, OSError) else None
    if mapped is None:
        return None
    shutil.rmtree(tmp, ignore_errors=True)  # our own half-written checkpoint: worthless, and it holds space
    previous = list_checkpoints(output_dir)
    kept = f"the last complete checkpoint {previous[-1]} is intact" if previous else "no checkpoint was completed yet"
    return StorageError(f"saving a checkpoint failed: {mapped}; {kept} (continue with train.resume=auto)")


def save_checkpoint(output_dir: str | Path, step: int, *, accelerator, model, tokenizer, optimizer, scheduler,
                    trainer_state: dict, rank_state: dict, config_yaml: str, final: bool = False,
                    keep: int = 0) -> Path:
    """Write checkpoint-<step> atomically (tmp dir, manifest last, rename) and keep the newest `keep`
    (0 = all; never the one just written, nor the one `final` points to)."""
    target = checkpoint_path(output_dir, step)
    tmp = target.with_name(target.name + ".tmp")
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # debris of a run killed mid-save
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        _save_model(accelerator, model, tokenizer, tmp, final)
        _write_json(tmp / f"rank-{accelerator.process_index}.json", rank_state)
        if accelerator.is_main_process:
            _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
            _write_json(tmp / "scheduler.json", scheduler.state_dict())
            _write_json(tmp / "trainer_state.json", trainer_state)
            (tmp / "config.yaml").write_text(config_yaml)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_manifest(tmp)
    except (OSError, RuntimeError) as err:
        mapped = _save_error(err, tmp, output_dir)
        if mapped is None:
            raise
        raise mapped from None
    if accelerator.is_main_process:
        _commit(tmp, target)
        if final:
            link_final(output_dir, target)
        if keep > 0:
            rotate(output_dir, keep, target)
    accelerator.wait_for_everyone()
    return target


def rotate(output_dir: str | Path, keep: int, written: Path) -> None:
    """Delete this run's oldest checkpoints so that `keep` remain: the one just written always stays,
    and so does the one <output_dir>/final points to."""
    final = Path(output_dir) / "final"
    protected = {written.resolve()}
    if final.is_symlink() or final.exists():
        protected.add(final.resolve().parent)
    others = [p for p in list_checkpoints(output_dir) if p.resolve() not in protected]
    for old in others[:max(0, len(others) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def link_final(output_dir: str | Path, checkpoint: Path) -> Path:
    """<output_dir>/final -> <checkpoint>/model (relative symlink, replaced atomically): a stable path
    to the trained student for `csdistill evaluate --model` or as the next run's teacher."""
    root = Path(output_dir)
    link, tmp = root / "final", root / ".final.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(checkpoint / "model", root), tmp)
    os.replace(tmp, link)
    return link


def _commit(tmp: Path, target: Path) -> None:
    """Rename tmp -> target; an existing target (a re-save of the same step) is moved aside first."""
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


# --------------------------------------------------------------------------- load


def _read(file: Path, reader: Callable[[Path], Any]) -> Any:
    """reader(file), with any failure to parse the file (truncated, corrupt) named as a CheckpointError."""
    try:
        return reader(file)
    except Exception as err:  # safetensors, json, unicode, unpickling errors: whatever the damage looks like
        raise CheckpointError(f"checkpoint file {file} cannot be read ({type(err).__name__}: {str(err)[:120]}); "
                              f"resume from an older checkpoint (train.resume=<{PREFIX}N dir>)") from err


def _read_json(file: Path) -> Any:
    return _read(file, lambda f: json.loads(f.read_text()))


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy safetensors weights into `model` in place (strict, except for tied copies)."""
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, _read(path / "adapter" / "adapter_model.safetensors", load_file))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise CheckpointError(f"checkpoint {path}: adapter has unexpected keys {unexpected[:5]}")
        return
    files = sorted((path / "model").glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"checkpoint {path}: no model/*.safetensors to resume from")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(_read(file, load_file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {name for name in missing if _is_tied(model, name, state)}
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"checkpoint {path}: weights do not match the student "
                              f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]})")


def _is_tied(model: torch.nn.Module, name: str, loaded: dict) -> bool:
    """A parameter absent from the file is fine if it shares storage with one that was loaded."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if name not in params:
        return False
    ptr = params[name].data_ptr()
    return any(params[other].data_ptr() == ptr for other in loaded if other in params)


def load_checkpoint(path: str | Path, *, accelerator, model, optimizer, scheduler) -> tuple[dict, dict | None]:
    """Restore weights, optimizer, scheduler and RNG; return (trainer_state, this rank's state or None).
    Every file is read before anything is restored, so a damaged file changes nothing."""
    path = Path(path)
    trainer_state = _read_json(path / "trainer_state.json")
    scheduler_state = _read_json(path / "scheduler.json")
    optimizer_state = _read(path / "optimizer.pt", lambda f: torch.load(f, map_location="cpu", weights_only=True))
    rank_file = path / f"rank-{accelerator.process_index}.json"
    rank_state = _read_json(rank_file) if rank_file.is_file() else None
    if rank_state is None:
        print(f"csdistill: warning: {rank_file} is missing (saved with world_size "
              f"{trainer_state.get('world_size', '?')}): this process starts with fresh RNG states and an empty "
              "replay buffer, so the run will not match an uninterrupted one", file=sys.stderr, flush=True)
    _load_weights(accelerator.unwrap_model(model), path)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    if rank_state is not None:
        set_rng_state(rank_state["rng"])
    return trainer_state, rank_state
