"""Evaluation: text metrics (pure), teacher-forced fidelity and calibration, the evaluate runner,
and importers for the published evaluation sets."""

__all__ = ["evaluate_model"]


def __getattr__(name: str):
    """`evaluate_model` on first use: importing one evaluate module (results, metrics) loads no model code."""
    if name == "evaluate_model":
        from csdistill.evaluate.runner import evaluate_model

        return evaluate_model
    raise AttributeError(f"module 'csdistill.evaluate' has no attribute {name!r}")
