"""Task registry: how a generated response is scored against an evaluation record.

A task is data (lm-evaluation-harness style): a name, a kind and pure scoring functions.

- kind ``"exact"``: ``check(prediction, record) -> bool`` (exact match after the task's normaliser).
- kind ``"distribution"``: the true output distribution of a prompt is known in closed form;
  ``true_distribution(record) -> dict[str, float]`` gives it, ``check`` says whether an output is
  valid (in the support). Fidelity/diversity are then measured exactly from samples.
- kind ``"open"``: free text, scored by ROUGE-L against ``record["response"]`` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable
from csdistill.errors import UserError

Record = dict


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "exact" | "distribution" | "open"
    check: Callable[[str, Record], bool] | None = None
    true_distribution: Callable[[Record], dict[str, float]] | None = None
    description: str = ""


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.kind not in ("exact", "distribution", "open"):
        raise UserError(f"task {spec.name!r}: kind={spec.kind!r}; choose exact, distribution or open")
    _TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in _TASKS:
        raise UserError(f"unknown task {name!r}; registered tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def task_names() -> list[str]:
    return sorted(_TASKS)


# ----------------------------------------------------------------------- generic checkers


def normalize_text(text: str) -> str:
    """Lower-case, strip, collapse white space."""
    return " ".join(text.strip().lower().split())


def exact_check(prediction: str, record: Record) -> bool:
    """Exact match of the normalised prediction against record['answer'] (or 'response')."""
    target = record.get("answer", record.get("response", ""))
    return normalize_text(prediction) == normalize_text(str(target))


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def extract_final_number(text: str) -> float | None:
    """The number after the last '####' (GSM8K style), else the last number in the text."""
    tail = text.rsplit("####", 1)[-1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    try:
        return float(found[-1 if "####" not in text else 0].replace(",", "").rstrip("."))
    except ValueError:
        return None


def gsm8k_check(prediction: str, record: Record) -> bool:
    """Numeric match of the prediction's final answer with the record's (after '####')."""
    target = record.get("answer")
    gold = extract_final_number(str(target)) if target is not None else extract_final_number(record.get("response", ""))
    pred = extract_final_number(prediction)
    return gold is not None and pred is not None and abs(pred - gold) < 1e-6


register_task(TaskSpec("exact", "exact", exact_check, description="normalised exact match with record['answer']"))
register_task(TaskSpec("gsm8k", "exact", gsm8k_check, description="number after '####', numerically compared"))
register_task(TaskSpec("open", "open", description="free text; ROUGE-L against record['response']"))
