"""What every ``python -m harness.X`` command shares: a parser whose errors are one line, argument types
that check their range, and the check of a set of held-out environments. Imports no torch."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Callable, Sequence

from harness.errors import UserError

SEED_MAX = 2**31 - 1  # seeds reach numpy and scikit-learn, which take at most 32 bits


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``error: ...``) and exit status 2, like a UserError; help
    shows each option's default (:class:`HelpFormatter`) unless ``formatter_class`` says otherwise."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where there is a default to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.required or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def int_at_least(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (no upper bound where ``hi`` is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {value}" if hi is not None
                                             else f"must be >= {lo}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def open_fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def device_name(text: str) -> str:
    """An argparse type: auto, cpu, mps, cuda or cuda:N."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def check_test_envs(test_envs: Sequence[int], environments: Sequence[str], dataset: str,
                    what: str = "--test_envs") -> None:
    """A one-line UserError unless ``test_envs`` are distinct indices of ``environments`` that leave at least
    one environment to train on. ``what`` names the option in the message."""
    shown = list(test_envs)
    dupes = sorted({i for i in shown if shown.count(i) > 1})
    if dupes:
        raise UserError(f"{what} lists environment(s) {dupes} more than once")
    bad = [i for i in shown if not 0 <= i < len(environments)]
    if bad:
        raise UserError(f"{what} {bad} out of range: {dataset} has environments "
                        + ", ".join(f"{i}={n}" for i, n in enumerate(environments)))
    if environments and len(set(shown)) >= len(environments):
        raise UserError(f"{what} {shown} holds out every environment of {dataset}; leave at least one to train on")
