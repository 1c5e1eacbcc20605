"""Evaluation tasks declared as data: each has a name, a kind and its scorer.

Records in an evaluation JSONL may carry ``"task": "<name>"``; the evaluation runner looks the
name up here to score generations (exact match, or the distributional fidelity/diversity scores).
"""

from csdistill.tasks.registry import TaskSpec, get_task, register_task, task_names
import csdistill.tasks.suite  # noqa: E402,F401  registers the built-in tasks (registry.py imports no task module)

__all__ = ["TaskSpec", "get_task", "register_task", "task_names"]
