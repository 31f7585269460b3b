"""``python -m harness.list``: every registered name, by kind; plugins are marked."""

from __future__ import annotations

import argparse
import signal

from harness.registry import REGISTRIES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.list", description=__doc__)
    parser.add_argument("kinds", nargs="*", choices=[[], *REGISTRIES], help="only these kinds (default: all)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the listing quietly, not with a traceback
    for kind in args.kinds or REGISTRIES:
        registry = REGISTRIES[kind]
        registry.load_plugins()
        print(f"{kind}:")
        for name in registry.names():
            print(f"  {name}{'  (plugin)' if registry.is_plugin(name) else ''}")
        for name, err in registry.plugin_errors.items():
            print(f"  {name}  (plugin, failed to import: {err})")


if __name__ == "__main__":
    main()
