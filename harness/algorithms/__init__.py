"""Algorithms: one file each, registered with ``@ALGORITHMS.register("Name")``.

See ``base.Algorithm`` for the protocol and ``erm.py`` for the smallest complete example.
"""

from harness.registry import ALGORITHMS

__all__ = ["ALGORITHMS"]
