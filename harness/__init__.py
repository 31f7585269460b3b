"""A benchmark harness for representation learning under distribution shift.

Built around SparseShared (Fumero et al., NeurIPS 2023, arXiv 2304.07939); see docs/design.md.
Importing this package is cheap: torch and friends load only when a run needs them.
"""

__version__ = "0.1.0"
