"""Evaluation: text metrics (pure), teacher-forced fidelity and calibration, the evaluate runner,
and importers for the published evaluation sets."""

from csdistill.evaluate.runner import evaluate_model

__all__ = ["evaluate_model"]
