"""The built-in task suite: csdistill's offline proving ground (`csdistill data tasks`).

Writes train / validation / test (and optionally warmup) instruction JSONL generated from a seed:
three exact tasks (reverse, sort, shift; optionally add) scored by exact match, and two distribution tasks (choice,
grammar) whose true output distribution is known in closed form. Records have the fields
``instruction`` (tag + payload), ``input`` (always ""), ``response``, ``task``, plus ``answer`` on
exact tasks and ``distribution`` ({output: probability}) on held-out distribution records. For
distribution tasks ``response`` is a *sample* from the true distribution, so a teacher trained by SFT
learns the distribution itself.

Held-out splits (test, validation, warmup) hold distinct prompts, and no held-out prompt appears in
any other split. Importing this module registers every task in `csdistill.tasks.registry`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from csdistill.seeding import derive_seed
from csdistill.tasks.generators import ALPHABET, MAX_CHARS, TASK_DEFS, TaskDef, instruction_for, payload_of
from csdistill.tasks.registry import TaskSpec, register_task
from csdistill.errors import UserError, check_writable

# The default selection, in this order. `add` (LSB-first addition) is registered but left out: in a CPU
# probe (0.6M-parameter char GPT, 800 steps of 32 on 4000 train records) every default task was learnt
# (reverse 90-95%, sort and shift 100%, choice/grammar ~90% valid) while add stayed at 0% even at a double train
# share; alone it reached 60%. Ask for it with tasks=[..., "add"] when the budget allows.
SUITE_TASKS = ["reverse", "sort", "shift", "choice", "grammar"]
# Share of the train split per task (tasks not listed: 1.0); held-out splits are shared evenly.
# `add` gets a double share when selected: it needs many more examples than the others (see above).
TRAIN_WEIGHTS = {"reverse": 1.0, "sort": 1.0, "shift": 1.0, "add": 2.0, "choice": 1.0, "grammar": 1.0}
HELD_OUT_SPLITS = ("test", "validation", "warmup")  # drawn in this order, each excluding the earlier
PRESET_SIZES = {
    "tiny": {"n_train": 200, "n_validation": 25, "n_test": 25, "n_warmup": 0},  # < 1 minute end to end
    "default": {"n_train": 4000, "n_validation": 200, "n_test": 200, "n_warmup": 0},
}


def suite_alphabet() -> str:
    """Every character any suite record uses (sorted); prompt-template characters are not included."""
    return ALPHABET


# ------------------------------------------------------------------------------ scoring


def _task_def(name: str) -> TaskDef:
    if name not in TASK_DEFS:
        raise UserError(f"tasks: unknown suite task {name!r}; choose from {', '.join(TASK_DEFS)}")
    return TASK_DEFS[name]


def true_distribution(name: str, record: dict) -> dict[str, float]:
    """Closed-form {output: probability} of a distribution-task record, computed from its instruction."""
    task = _task_def(name)
    if task.distribution is None:
        raise UserError(f"task {name!r} is exact and has no output distribution; use its answer")
    return task.distribution(payload_of(task, record["instruction"]))


def check(name: str, prediction: str, record: dict) -> bool:
    """Exact tasks: stripped prediction == record['answer']. Distribution tasks: it is in the support."""
    task = _task_def(name)
    if task.kind == "exact":
        answer = record.get("answer")
        if answer is None:
            answer = task.solve(payload_of(task, record["instruction"]))
        return prediction.strip() == answer
    return true_distribution(name, record).get(prediction.strip(), 0.0) > 0.0


def _register(task: TaskDef) -> None:
    """Register `task` with named checker functions (so tracebacks and reprs say which task)."""

    def task_check(prediction: str, record: dict) -> bool:
        return check(task.name, prediction, record)

    def task_distribution(record: dict) -> dict[str, float]:
        return true_distribution(task.name, record)

    task_check.__name__ = f"check_{task.name}"
    task_distribution.__name__ = f"true_distribution_{task.name}"
    distribution = task_distribution if task.kind == "distribution" else None
    register_task(TaskSpec(task.name, task.kind, task_check, distribution, task.description))


for _task in TASK_DEFS.values():
    _register(_task)


# ------------------------------------------------------------------------------ generation


def _split_counts(total: int, weights: list[float]) -> list[int]:
    """`total` records shared in proportion to `weights` (largest remainder; ties go to earlier tasks)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _draw_prompts(task: TaskDef, n: int, rng: random.Random, exclude: set[str], distinct: bool) -> list[str]:
    """`n` instructions of `task` avoiding `exclude` (and each other when `distinct`)."""
    prompts: list[str] = []
    seen = set(exclude)
    while len(prompts) < n:
        prompt = instruction_for(task, task.sample_payload(rng))
        if prompt in seen:
            continue
        prompts.append(prompt)
        if distinct:
            seen.add(prompt)
    return prompts


def _sample(distribution: dict[str, float], rng: random.Random) -> str:
    outputs = list(distribution)
    return rng.choices(outputs, weights=[distribution[o] for o in outputs])[0]


def make_record(task: TaskDef, instruction: str, rng: random.Random, with_distribution: bool) -> dict:
    """One instruction record; distribution tasks get a response sampled from the true distribution."""
    payload = payload_of(task, instruction)
    record = {"instruction": instruction, "input": ""}
    if task.kind == "exact":
        answer = task.solve(payload)
        record.update(response=answer, task=task.name, answer=answer)
        return record
    distribution = task.distribution(payload)
    record.update(response=_sample(distribution, rng), task=task.name)
    if with_distribution:
        record["distribution"] = distribution
    return record


def _task_splits(task: TaskDef, seed: int, counts: dict[str, int]) -> dict[str, list[dict]]:
    """All splits of one task: held-out prompts first (distinct, disjoint), then train (may repeat)."""
    held_out = sum(counts[s] for s in HELD_OUT_SPLITS)
    if held_out > task.space_size // 2:
        raise UserError(f"n_test + n_validation + n_warmup gives task {task.name!r} {held_out} held-out prompts, but "
                         f"it has only {task.space_size} distinct prompts (at most half may be held out); "
                         f"lower the held-out sizes or drop the task")
    used: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split in (*HELD_OUT_SPLITS, "train"):
        rng = random.Random(derive_seed(seed, 0, 0, f"{task.name}/{split}"))
        prompts = _draw_prompts(task, counts[split], rng, used, distinct=split != "train")
        used.update(prompts)
        splits[split] = [make_record(task, p, rng, with_distribution=split != "train") for p in prompts]
    return splits


def _resolve_weights(tasks: list[str], train_weights: dict[str, float] | None) -> list[float]:
    """Train-share weight per task: TRAIN_WEIGHTS (1.0 for unlisted tasks) updated by `train_weights`."""
    weights = {**TRAIN_WEIGHTS, **(train_weights or {})}
    for name, value in weights.items():
        _task_def(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise UserError(f"train_weights[{name!r}]={value!r}: must be a number > 0 "
                             "(to leave a task out, omit it from tasks)")
    return [float(weights.get(name, 1.0)) for name in tasks]


def _validate_sizes(sizes: dict[str, int], tasks: list[str]) -> None:
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UserError(f"{key}={value!r}: must be an integer >= 0")
    if not tasks:
        raise UserError("tasks=[]: choose at least one of " + ", ".join(TASK_DEFS))
    if len(set(tasks)) != len(tasks):
        raise UserError(f"tasks={tasks!r}: each task may be listed once")
    for name in tasks:
        _task_def(name)


def make_suite(seed: int, n_train: int = 4000, n_validation: int = 200, n_test: int = 200,
               tasks: list[str] | None = None, n_warmup: int = 0,
               train_weights: dict[str, float] | None = None) -> dict[str, list[dict]]:
    """{split: records} for the chosen tasks (default SUITE_TASKS), each split shuffled.

    Sizes are totals over tasks: held-out splits are shared evenly, train in proportion to
    TRAIN_WEIGHTS updated by `train_weights` (e.g. {"add": 3}). The 'warmup' split (prompts outside all other
    splits, for a short SFT warm start of students) is present only when n_warmup > 0.
    """
    tasks = list(SUITE_TASKS if tasks is None else tasks)
    sizes = {"n_train": n_train, "n_validation": n_validation, "n_test": n_test, "n_warmup": n_warmup}
    _validate_sizes(sizes, tasks)
    weights = {"train": _resolve_weights(tasks, train_weights)}
    per_task = {split: _split_counts(sizes[f"n_{split}"], weights.get(split, [1.0] * len(tasks)))
                for split in ("train", *HELD_OUT_SPLITS)}
    suite: dict[str, list[dict]] = {split: [] for split in ("train", "validation", "test", "warmup")}
    for i, name in enumerate(tasks):
        task_splits = _task_splits(TASK_DEFS[name], seed, {s: per_task[s][i] for s in per_task})
        for split, records in task_splits.items():
            suite[split].extend(records)
    for split, records in suite.items():
        random.Random(derive_seed(seed, 0, 0, f"suite/shuffle/{split}")).shuffle(records)
    if n_warmup == 0:
        del suite["warmup"]
    return suite


# ------------------------------------------------------------------------------ files


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def suite_description(seed: int, suite: dict[str, list[dict]], tasks: list[str]) -> dict:
    """What suite.json holds: tasks (with an example each), seed, sizes, per-task counts, alphabet."""
    described = []
    for name in tasks:
        task = TASK_DEFS[name]
        example = next((r for r in suite.get("test", []) + suite["train"] if r["task"] == name), None)
        counts = {split: sum(r["task"] == name for r in records) for split, records in suite.items()}
        described.append({"name": name, "kind": task.kind, "tag": task.tag, "description": task.description,
                          "distinct_prompts": task.space_size, "counts": counts,
                          "example": None if example is None else
                          {"instruction": example["instruction"], "response": example["response"]}})
    return {"seed": seed, "sizes": {split: len(records) for split, records in suite.items()}, "tasks": described,
            "alphabet": suite_alphabet(), "max_chars": MAX_CHARS,
            "fields": ["instruction", "input", "response", "task", "answer (exact tasks)",
                       "distribution (held-out records of distribution tasks)"]}


def write_suite(out_dir: str | Path, seed: int, n_train: int = 4000, n_validation: int = 200, n_test: int = 200,
                tasks: list[str] | None = None, n_warmup: int = 0,
                train_weights: dict[str, float] | None = None) -> dict[str, Path]:
    """Write <split>.jsonl for each split plus suite.json into `out_dir`; returns {split: path}."""
    tasks = list(SUITE_TASKS if tasks is None else tasks)
    suite = make_suite(seed, n_train, n_validation, n_test, tasks, n_warmup, train_weights)
    out = check_writable(out_dir, "--out")
    paths = {}
    for split, records in suite.items():
        paths[split] = out / f"{split}.jsonl"
        _write_jsonl(paths[split], records)
    description = suite_description(seed, suite, tasks)
    description["train_weights"] = dict(zip(tasks, _resolve_weights(tasks, train_weights)))
    (out / "suite.json").write_text(json.dumps(description, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths


# ------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `csdistill data tasks`."""
    parser.add_argument("--out", required=True, help="directory for the split JSONL files and suite.json")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (same seed -> identical files)")
    parser.add_argument("--preset", choices=sorted(PRESET_SIZES), default="default",
                        help="split sizes: tiny (~200 train) or default (4000 train)")
    for split in ("train", "validation", "test", "warmup"):
        parser.add_argument(f"--n-{split}", type=int, default=None,
                            help=f"total {split} records over all tasks (overrides the preset)")
    parser.add_argument("--tasks", default=None,
                        help=f"comma-separated tasks (default {','.join(SUITE_TASKS)}; also: add)")
    parser.add_argument("--train-weights", default=None,
                        help=f"train share per task, e.g. add=3,sort=1 (defaults: {_format_weights(TRAIN_WEIGHTS)})")


def _format_weights(weights: dict[str, float]) -> str:
    return ",".join(f"{name}={value:g}" for name, value in weights.items())


def parse_train_weights(text: str | None) -> dict[str, float] | None:
    """'add=3,sort=1' -> {'add': 3.0, 'sort': 1.0}; ValueError naming --train-weights otherwise."""
    if not text:
        return None
    weights = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:  # also when '=' is missing: float('') fails
            raise UserError(f"--train-weights={text!r}: {item!r} is not task=number; write e.g. add=3") from None
    return weights


def tasks_command(args: argparse.Namespace) -> int:
    """`csdistill data tasks`: write the suite and print where it went."""
    sizes = dict(PRESET_SIZES[args.preset])
    for split in ("train", "validation", "test", "warmup"):
        value = getattr(args, f"n_{split}", None)
        if value is not None:
            sizes[f"n_{split}"] = value
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    weights = parse_train_weights(getattr(args, "train_weights", None))
    paths = write_suite(args.out, args.seed, tasks=tasks, train_weights=weights, **sizes)
    for split, path in paths.items():
        print(f"{split:10s} {sum(1 for _ in path.open()):6d} records -> {path}")
    print(f"alphabet   {suite_alphabet()!r} (add your prompt template's characters)")
    return 0
