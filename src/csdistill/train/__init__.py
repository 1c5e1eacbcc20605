"""Training: one explicit loop for every mode (sft, kd, imitkd, gkd, adaptive, seqkd, paired).

    from csdistill.train import train
    result = train(cfg, callbacks=[lambda step, student, tokenizer: {"my_metric": ...}])

Metric callbacks run at every evaluation (eval.eval_every and the end) on the main process with the
unwrapped student; their dicts are merged into the metrics.jsonl row of that step.
The loop (loop.py, with accelerate/transformers) is imported on first use, so the light submodules
(schedules, replay, dataset) import without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from csdistill.train.loop import TrainResult

__all__ = ["train", "TrainResult", "MetricCallback"]


def train(cfg, callbacks=()) -> "TrainResult":
    """Run the training configured by `cfg` (a csdistill.config.Config); see loop.train."""
    from csdistill.train.loop import train as run_training

    return run_training(cfg, callbacks)


def add_arguments(parser) -> None:
    """`csdistill train`: --config FILE and dotted overrides."""
    from csdistill.config import add_config_arguments

    add_config_arguments(parser)


def train_command(args) -> int:
    """`csdistill train`: train per the resolved config."""
    from csdistill.config import load_config

    train(load_config(args.config, args.overrides))
    return 0


def __getattr__(name: str):
    if name in ("TrainResult", "MetricCallback"):
        from csdistill.train import loop

        return getattr(loop, name)
    raise AttributeError(name)
