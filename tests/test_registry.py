import subprocess
import sys

import pytest

from harness.errors import UserError
from harness.registry import ALGORITHMS, Registry


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(UserError) as e:
        ALGORITHMS.get("ERMM")
    msg = str(e.value)
    assert "unknown algorithm 'ERMM'" in msg and "ERM" in msg and "did you mean 'ERM'" in msg


def test_builtin_names_found_without_importing_torch(cli):
    proc = cli("harness.list", "algorithms", "datasets")
    assert "ERM" in proc.stdout and "SyntheticLinear" in proc.stdout
    # listing must stay instant: no torch import (benchmarks/bench_cli.py prints the wall time)
    code = "import sys, harness.list as l; l.main([]); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_decorator_registers_and_get_returns_it():
    reg = Registry("thing", "harness.nothing", "harness.errors")

    @reg.register("Widget")
    class Widget:
        pass

    assert reg.get("Widget") is Widget
    assert "Widget" in reg.names()


def test_other_registries_decorators_are_not_algorithms():
    """penalties.py registers sparsity norms and sharing terms with ``@SPARSITIES.register`` and
    ``@SHARINGS.register`` inside harness/algorithms/: the algorithm registry must not list them."""
    from harness.algorithms.sparse_shared.penalties import SHARINGS, SPARSITIES

    names = set(ALGORITHMS.names())
    assert "SparseShared" in names and not names & (set(SHARINGS) | set(SPARSITIES))
