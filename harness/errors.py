"""User-facing errors: one clear line and exit status 2, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """An error the user caused (bad name, bad JSON, missing data); printed as one line."""


def cli(main: Callable[..., int | None]) -> Callable[..., int | None]:
    """Wrap a command-line entry point so that a UserError ends with one line and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
