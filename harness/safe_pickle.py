"""Unpickling that cannot run code: mini-imagenet-cache's pickles (``harness.download`` checks an archive's,
the MiniImageNet dataset reads them)."""

from __future__ import annotations

import pickle


class ForeignPickle(Exception):
    """A pickle names a global outside the mini-imagenet-cache format."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only what mini-imagenet-cache files hold: numpy arrays and dtypes, dicts, lists, strings,
    numbers. Any other global (``os.system``, ``builtins.eval``, a class) is refused before it is looked up,
    so a crafted file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles store bytes as _codecs.encode(text, "latin1")
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise ForeignPickle(f"{module}.{name}")
        return super().find_class(module, name)
