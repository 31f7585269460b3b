"""Metrics: accuracy and worst-group accuracy live in ``harness.evaluation``; here DCI, MCC and few-shot."""

from harness.metrics.disentanglement import dci, mcc

__all__ = ["dci", "mcc"]
