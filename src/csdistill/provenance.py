"""Where a student came from: the provenance file `student init` writes beside the weights, and what a
training run's config.yaml adds (teacher, loss, steps). Read by the GGUF export; written by student init."""

from __future__ import annotations

import json
from pathlib import Path

PROVENANCE_FILE = "csdistill_student.json"


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def student_provenance(folder: Path) -> dict:
    """What csdistill knows of where the student came from: csdistill_student.json (beside the weights, or in
    the student start of the training run whose checkpoint holds `folder`) and that run's config.yaml."""
    info: dict = {}
    run_config = folder.resolve().parent / "config.yaml"  # <run>/final -> checkpoint-<step>/model
    student_file = folder / PROVENANCE_FILE
    if run_config.is_file():
        config = _read_yaml(run_config)
        loss, train = config.get("loss", {}), config.get("train", {})
        info["teacher"] = config.get("teacher", {}).get("name_or_path", "")
        info["student_start"] = config.get("model", {}).get("name_or_path", "")
        info["loss"] = "sft" if train.get("mode") == "sft" else (
            f"{loss.get('name')}:{loss.get('weighting')}" if loss.get("name") == "csd" else loss.get("name", ""))
        info["training_steps"] = train.get("max_steps")
        if not student_file.is_file() and info["student_start"]:
            student_file = Path(info["student_start"]).expanduser() / PROVENANCE_FILE
    if student_file.is_file():
        student = json.loads(student_file.read_text(encoding="utf-8"))
        info["pruned_from"] = student.get("teacher", "")
        info.setdefault("teacher", info["pruned_from"])
        info["kept_layers"] = student.get("kept_layers")
        info["depth_method"] = student.get("depth_method")
        info["student_parameters"] = student.get("student_parameters")
    return {key: value for key, value in info.items() if value not in (None, "")}
