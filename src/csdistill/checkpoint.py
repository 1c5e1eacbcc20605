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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

PREFIX = "checkpoint-"
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
    """train.resume -> checkpoint dir: '' = none, 'auto' = latest in output_dir (None if there is none)."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"train.resume={resume!r}: not a checkpoint directory (no trainer_state.json); "
                         f"pass a {PREFIX}<step> directory or 'auto'")
    return path


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


def save_checkpoint(output_dir: str | Path, step: int, *, accelerator, model, tokenizer, optimizer, scheduler,
                    trainer_state: dict, rank_state: dict, config_yaml: str, final: bool = False,
                    keep: int = 0) -> Path:
    """Write checkpoint-<step> atomically (tmp dir + rename) and keep the newest `keep` (0 = all)."""
    target = checkpoint_path(output_dir, step)
    tmp = target.with_name(target.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # debris of a run killed mid-save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    _save_model(accelerator, model, tokenizer, tmp, final)
    _write_json(tmp / f"rank-{accelerator.process_index}.json", rank_state)
    if accelerator.is_main_process:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        _write_json(tmp / "scheduler.json", scheduler.state_dict())
        _write_json(tmp / "trainer_state.json", trainer_state)
        (tmp / "config.yaml").write_text(config_yaml)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _commit(tmp, target)
        if final:
            link_final(output_dir, target)
        if keep > 0:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


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


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy safetensors weights into `model` in place (strict, except for tied copies)."""
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(path / "adapter" / "adapter_model.safetensors"))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"checkpoint {path}: adapter has unexpected keys {unexpected[:5]}")
        return
    files = sorted((path / "model").glob("*.safetensors"))
    if not files:
        raise ValueError(f"checkpoint {path}: no model/*.safetensors to resume from")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {name for name in missing if _is_tied(model, name, state)}
    if unexpected or set(missing) - tied:
        raise ValueError(f"checkpoint {path}: weights do not match the student "
                         f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]})")


def _is_tied(model: torch.nn.Module, name: str, loaded: dict) -> bool:
    """A parameter absent from the file is fine if it shares storage with one that was loaded."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if name not in params:
        return False
    ptr = params[name].data_ptr()
    return any(params[other].data_ptr() == ptr for other in loaded if other in params)


def load_checkpoint(path: str | Path, *, accelerator, model, optimizer, scheduler) -> tuple[dict, dict | None]:
    """Restore weights, optimizer, scheduler and RNG; return (trainer_state, this rank's state or None)."""
    path = Path(path)
    _load_weights(accelerator.unwrap_model(model), path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    rank_file = path / f"rank-{accelerator.process_index}.json"
    rank_state = json.loads(rank_file.read_text()) if rank_file.is_file() else None
    if rank_state is not None:
        set_rng_state(rank_state["rng"])
    return trainer_state, rank_state
