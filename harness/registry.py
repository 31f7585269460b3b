"""Named registries with decorator registration and entry-point plugins.

Built-in entries register with ``@register("Name")`` in their own module. To keep
``python -m harness.list`` and ``--help`` instant, a registry finds the built-in names by
reading those decorators from the package's source files (no import) and imports a module
only when one of its names is asked for. Third-party packages add entries through the
entry-point group of the registry (``harness.algorithms``, ``harness.datasets``,
``harness.backbones``, ``harness.launchers``); the entry point may name a class/function
(registered under the entry point's name) or a module whose decorators register it.
A plugin that fails to import is reported by name with its error and skipped.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from harness.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    """A name -> object table for one kind of component (algorithm, dataset, ...)."""

    def __init__(self, kind: str, group: str, package: str, prefixes: dict[str, str] | None = None):
        self.kind = kind
        # "prefix:" -> module with ``resolve_prefixed(name)``: open-ended families such as "timm:<model>"
        self.prefixes = prefixes or {}
        self.group = group
        self.package = package
        self._entries: dict[str, Any] = {}
        self._builtin_modules: dict[str, str] | None = None  # name -> module, found in source
        self._plugin_names: set[str] | None = None
        self._plugin_eps: dict[str, importlib.metadata.EntryPoint] = {}
        self.plugin_errors: dict[str, str] = {}
        self._current_plugin: str | None = None
        self._from_plugin: set[str] = set()

    # registration -----------------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@ALGORITHMS.register("ERM")`` (name defaults to ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            self._entries[key] = obj
            if self._current_plugin is not None:
                self._from_plugin.add(key)
            return obj

        return deco

    # discovery ----------------------------------------------------------------------
    def _scan_builtins(self) -> dict[str, str]:
        """Find ``@register("Name")`` decorators in the package's modules without importing them."""
        if self._builtin_modules is None:
            found: dict[str, str] = {}
            for module, origin in _module_files(self.package):
                for reg_name in _decorated_names(Path(origin).read_text(), self.kind.upper() + "S"):
                    found[reg_name] = module
            self._builtin_modules = found
        return self._builtin_modules

    def _scan_plugins(self) -> set[str]:
        if self._plugin_names is None:
            self._plugin_names = set()
            for ep in importlib.metadata.entry_points(group=self.group):
                self._plugin_eps[ep.name] = ep
                self._plugin_names.add(ep.name)
        return self._plugin_names

    def _load_plugin(self, ep_name: str) -> None:
        ep = self._plugin_eps.pop(ep_name, None)
        if ep is None:
            return
        self._current_plugin = ep_name
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must never break the rest
            msg = f"{type(e).__name__}: {e}"
            self.plugin_errors[ep_name] = msg
            print(f"warning: {self.kind} plugin '{ep_name}' ({ep.value}) failed to import, skipped: {msg}",
                  file=sys.stderr)
            return
        finally:
            self._current_plugin = None
        if not isinstance(obj, type(sys)):  # a class or function: register under the entry-point name
            self._entries.setdefault(ep_name, obj)
            self._from_plugin.add(ep_name)

    def load_plugins(self) -> None:
        """Import every plugin of this group (reporting and skipping broken ones)."""
        for ep_name in list(self._scan_plugins()):
            self._load_plugin(ep_name)

    def names(self) -> list[str]:
        """All registered names (built-in, decorated, and plugins that import)."""
        names = set(self._scan_builtins()) | set(self._entries)
        names |= {n for n in self._scan_plugins() if n not in self.plugin_errors}
        return sorted(names, key=str.lower)

    def is_plugin(self, name: str) -> bool:
        return name in self._from_plugin or (name in self._scan_plugins() and name not in self._scan_builtins())

    def get(self, name: str) -> Any:
        """The object registered as ``name``; a UserError naming the known names otherwise."""
        if name not in self._entries:
            module = self._scan_builtins().get(name)
            if module is not None:
                importlib.import_module(module)
            elif name in self._scan_plugins():
                self._load_plugin(name)
            elif any(name.startswith(p) for p in self.prefixes):
                prefix = next(p for p in self.prefixes if name.startswith(p))
                found = importlib.import_module(self.prefixes[prefix]).resolve_prefixed(name)
                if found is not None:
                    self._entries[name] = found
            else:  # the name may be registered by a plugin module under another entry-point name
                self.load_plugins()
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        known = self.names()
        same = [k for k in known if k.lower() == name.lower()]  # 'erm' means ERM before anything merely close
        close = same or difflib.get_close_matches(name, known, n=1, cutoff=0.0)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        extra = ""
        if name in self.plugin_errors:
            extra = f" (plugin failed to import: {self.plugin_errors[name]})"
        families = "".join(f", {p}<name>" for p in self.prefixes)
        return f"unknown {self.kind} '{name}'{extra}. Known: {', '.join(known)}{families}{hint}"

    def __contains__(self, name: str) -> bool:
        return name in self.names()


def _module_files(package: str) -> list[tuple[str, str]]:
    """(module name, source file) of a package and its submodules, or of a single module."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return []
    if not spec.submodule_search_locations:
        return [(package, spec.origin)]
    out = [m for d in spec.submodule_search_locations for m in _module_files_in(package, Path(d))]
    return [(m, f) for m, f in out if Path(f).exists()]


def _module_files_in(package: str, directory: Path) -> list[tuple[str, str]]:
    # recurse by path: importing a subpackage to walk it would import torch and defeat the purpose
    out = []
    for info in pkgutil.iter_modules([str(directory)]):
        name = f"{package}.{info.name}"
        if info.ispkg:
            out.append((name, str(directory / info.name / "__init__.py")))
            out.extend(_module_files_in(name, directory / info.name))
        else:
            out.append((name, str(directory / f"{info.name}.py")))
    return out


def _decorated_names(source: str, registry: str) -> list[str]:
    """Names in the ``@<registry>.register("X")`` decorators of a module's source (``registry`` the variable
    name, e.g. ``ALGORITHMS``: another registry's decorators in the same package, such as SparseShared's
    ``@SHARINGS.register``, are not this one's entries)."""
    if "register" not in source:
        return []
    names = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            continue
        for dec in node.decorator_list:
            if not isinstance(dec, ast.Call):
                continue
            fn = dec.func
            if not (isinstance(fn, ast.Attribute) and fn.attr == "register"
                    and isinstance(fn.value, ast.Name) and fn.value.id == registry):
                continue
            if dec.args and isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str):
                names.append(dec.args[0].value)
            elif not dec.args:
                names.append(node.name)
    return names


ALGORITHMS = Registry("algorithm", "harness.algorithms", "harness.algorithms")
DATASETS = Registry("dataset", "harness.datasets", "harness.datasets")
BACKBONES = Registry("backbone", "harness.backbones", "harness.backbones",
                     prefixes={"timm:": "harness.backbones.timm_backbone"})
LAUNCHERS = Registry("launcher", "harness.launchers", "harness.launchers")

REGISTRIES = {"algorithms": ALGORITHMS, "datasets": DATASETS, "backbones": BACKBONES, "launchers": LAUNCHERS}
