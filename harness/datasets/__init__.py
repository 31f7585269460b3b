"""Datasets: one family per file, registered with ``@DATASETS.register("Name")``."""

from harness.registry import DATASETS

__all__ = ["DATASETS"]
