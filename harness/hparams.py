"""Hyperparameter spaces: a default and a random-search distribution for every hparam.

``hparams_seed = 0`` gives the defaults; any other seed draws every hparam from its own RNG,
seeded by a hash of (algorithm, dataset, seed, hparam name), so adding an hparam (or another
algorithm) never shifts the values drawn for the others. The space of a run is the union of
the common space, the dataset's and the algorithm's (later ones override earlier ones).

Algorithms and datasets, built-in or plugins, declare their hparams on the class:
``HPARAMS = {"name": HP(default, sampler, domain)}``; an algorithm with ``EPISODIC = True`` also gets
the episodic hparams below. This module imports no torch; :func:`space` imports the classes
(hence torch) when it is called.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from harness.errors import UserError

Sampler = Callable[[np.random.RandomState], Any]


@dataclass(frozen=True)
class Domain:
    """The values an hparam accepts: a user's override outside them is a one-line error (:func:`check`)."""

    accepts: Callable[[Any], bool]
    text: str  # completes "hparam NAME must be ..."


def one_of(*options: Any) -> Domain:
    return Domain(lambda v: v in options, "one of " + " | ".join(map(str, options)))


def at_least(lo: float, note: str = "") -> Domain:
    return Domain(lambda v: v >= lo, f">= {lo}{note}")


def above(lo: float) -> Domain:
    return Domain(lambda v: v > lo, f"> {lo}")


def in_range(lo: float, hi: float, open_lo: bool = False, note: str = "") -> Domain:
    """[lo, hi], or (lo, hi] with ``open_lo``."""
    text = f"in {'(' if open_lo else '['}{lo}, {hi}]{note}"
    return Domain(lambda v: (lo < v if open_lo else lo <= v) and v <= hi, text)


@dataclass(frozen=True)
class HP:
    """One hyperparameter: its default, how random search draws it and the values it accepts."""

    default: Any
    sample: Sampler | None = None  # None: fixed at the default during random search
    domain: Domain | None = None  # None: any value of the default's type

    def draw(self, rng: np.random.RandomState) -> Any:
        return self.default if self.sample is None else _plain(self.sample(rng))


def check(name: str, value: Any, hp: HP) -> None:
    """A one-line UserError unless ``value`` is finite and in ``hp``'s domain (None passes where it is the default)."""
    if isinstance(value, float) and not math.isfinite(value):  # JSON's 1e309 parses to inf
        raise UserError(f"hparam {name} must be a finite number, got {value} (out of a float's range?)")
    if hp.domain is None or (value is None and hp.default is None):
        return
    try:
        ok = bool(hp.domain.accepts(value))
    except TypeError:
        ok = False
    if not ok:
        raise UserError(f"hparam {name} must be {hp.domain.text}, got {json.dumps(value)}")


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars, so hparams stay JSON-serialisable."""
    return v.item() if isinstance(v, np.generic) else v


def log_uniform(lo: float, hi: float) -> Sampler:
    """10 ** U(lo, hi)."""
    return lambda r: float(10 ** r.uniform(lo, hi))


def uniform(lo: float, hi: float) -> Sampler:
    """U(lo, hi)."""
    return lambda r: float(r.uniform(lo, hi))


def choice(*options: Any) -> Sampler:
    return lambda r: options[r.randint(len(options))]


def int_pow2(lo: int, hi: int) -> Sampler:
    """2 ** randint(lo, hi) inclusive."""
    return lambda r: int(2 ** r.randint(lo, hi + 1))


MAX_SIZE = 2**16  # the largest batch size or layer width an hparam may ask for
NAME = Domain(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty name")


def positive(note: str = "") -> Domain:
    """> 0."""
    return Domain(lambda v: v > 0, f"> 0{note}")


def fraction(open_hi: bool = False) -> Domain:
    """[0, 1], or [0, 1) with ``open_hi``."""
    return Domain(lambda v: 0 <= v < 1 if open_hi else 0 <= v <= 1, f"in [0, 1{')' if open_hi else ']'}")


COMMON: dict[str, HP] = {
    "lr": HP(1e-3, log_uniform(-4.5, -2.5), above(0)),
    "weight_decay": HP(0.0, log_uniform(-6, -2), at_least(0)),
    # sizes are bounded: a run checks what it will allocate before it starts (harness/train.py check_sizes)
    "batch_size": HP(32, int_pow2(3, 6), in_range(1, MAX_SIZE)),  # per training environment
    "backbone": HP("MLP", domain=NAME),
    "feature_dim": HP(64, domain=in_range(1, MAX_SIZE)),  # d, the width of the representation
    "mlp_width": HP(256, domain=in_range(1, MAX_SIZE)),  # backbone MLP
    "mlp_depth": HP(3, domain=in_range(0, 64)),
    "cnn_width": HP(32, domain=in_range(1, 4096)),  # backbone SmallCNN
    "precision": HP("fp32", domain=one_of("fp32", "bf16")),  # the backbone under bfloat16 autocast (harness/precision.py)
}

# Episodic algorithms draw tasks from the dataset's task sampler.
EPISODIC: dict[str, HP] = {
    "tasks_per_batch": HP(16, choice(8, 16, 32), in_range(1, 4096)),
    "support": HP(50, choice(20, 50, 100), in_range(1, MAX_SIZE)),
    "query": HP(50, domain=in_range(1, MAX_SIZE)),
    "n_way": HP(5, domain=in_range(2, 4096)),  # class tasks (ignored by binary factor tasks)
    "max_factors": HP(3, domain=in_range(1, 64)),  # factor tasks depend on a random subset of 1..max_factors factors
    # the head that reads the dataset's label at evaluation (harness/evaluation.py eval_predictor): "own" = the
    # algorithm's adapt, "probe" = a logistic-regression probe on its frozen features; fitted on eval_n_fit
    # training-domain 'in' points (0: all of them). docs/rotated_fmnist.md measures both.
    "eval_head": HP("own", domain=one_of("own", "probe")),
    "eval_n_fit": HP(2000, domain=at_least(0, " (0: every training-domain 'in' point)")),
}


# The hparams that only change how a checkpoint is scored, never training: harness.reevaluate may change them.
EVALUATION_ONLY = ("eval_head", "eval_n_fit")


def episodic(hparams: dict, name: str) -> Any:
    """An episodic hparam of ``hparams``, else its declared default (``EPISODIC``): partial dicts (tests, tools)
    read the same defaults as resolved runs."""
    return hparams.get(name, EPISODIC[name].default)


def space(algorithm: str, dataset: str) -> dict[str, HP]:
    """The full hparam space of (algorithm, dataset); a class that overrides an hparam without a domain
    keeps the domain of the one it overrides."""
    merged: dict[str, HP] = {}
    for part in (COMMON, dataset_space(dataset), algorithm_space(algorithm)):
        for name, hp in part.items():
            old = merged.get(name)
            merged[name] = replace(hp, domain=old.domain) if hp.domain is None and old is not None else hp
    return merged


def algorithm_space(name: str) -> dict[str, HP]:
    """The class's ``HPARAMS``, after the episodic hparams when it says ``EPISODIC = True``."""
    cls = _registered("algorithms", name)
    return {**(EPISODIC if getattr(cls, "EPISODIC", False) else {}), **getattr(cls, "HPARAMS", {})}


def dataset_space(name: str) -> dict[str, HP]:
    """The dataset class's ``HPARAMS``."""
    return dict(getattr(_registered("datasets", name), "HPARAMS", {}))


SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "log_uniform": log_uniform,  # [lo, hi]: 10 ** U(lo, hi)
    "uniform": uniform,  # [lo, hi]
    "choice": choice,  # [option, ...]
}


def parse_search(search: dict[str, Any]) -> dict[str, Sampler]:
    """Random-search ranges written as data (sweep specs' ``search`` key), e.g.
    ``{"lr": {"log_uniform": [-5, -3.5]}, "alpha": {"uniform": [0.05, 0.7]}, "n_way": {"choice": [5, 10]}}``."""
    samplers = {}
    for name, spec in search.items():
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SAMPLERS
                and isinstance(next(iter(spec.values())), list)):
            raise UserError(f"search range of {name!r} must look like {{\"log_uniform\": [lo, hi]}}, "
                            f"{{\"uniform\": [lo, hi]}} or {{\"choice\": [a, b, ...]}}; got {json.dumps(spec)}")
        kind, values = next(iter(spec.items()))
        if kind != "choice" and len(values) != 2:
            raise UserError(f"search range of {name!r}: {kind} takes [lo, hi], got {values}")
        if kind == "choice" and not values:
            raise UserError(f"search range of {name!r}: choice needs at least one option, got []")
        if kind != "choice":
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise UserError(f"search range of {name!r}: {kind} takes two finite numbers [lo, hi], "
                                f"got {json.dumps(values)}")
            if values[0] > values[1]:
                raise UserError(f"search range of {name!r}: lo {values[0]} is above hi {values[1]}")
            if kind == "log_uniform" and max(values) > 300:
                raise UserError(f"search range of {name!r}: log_uniform draws 10 ** [lo, hi]; 10 ** {max(values)} "
                                "overflows a float (keep hi <= 300)")
        samplers[name] = SAMPLERS[kind](*values)
    return samplers


def searched_hparams(algorithm: str, dataset: str, seed: int, search: dict[str, Any]) -> dict[str, Any]:
    """The values of the ``search`` hparams that exist for (algorithm, dataset), drawn for ``seed``
    with the same per-hparam RNG as :func:`random_hparams` (seed 0: no draw, the defaults stand)."""
    known = space(algorithm, dataset)
    samplers = parse_search(search)
    if seed == 0:
        return {}
    return {k: _plain(sampler(_rng(algorithm, dataset, seed, k))) for k, sampler in samplers.items() if k in known}


def _registered(kind: str, name: str) -> Any:
    """The registered class, or None for an unknown name (the caller reports those)."""
    from harness.registry import REGISTRIES

    try:
        return REGISTRIES[kind].get(name)
    except UserError:
        return None


def _rng(algorithm: str, dataset: str, seed: int, name: str) -> np.random.RandomState:
    digest = hashlib.sha256(json.dumps([algorithm, dataset, seed, name]).encode()).digest()
    return np.random.RandomState(int.from_bytes(digest[:4], "little"))


def default_hparams(algorithm: str, dataset: str) -> dict[str, Any]:
    return {k: hp.default for k, hp in space(algorithm, dataset).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> dict[str, Any]:
    """Seed 0: defaults. Otherwise one independent draw per hparam."""
    if seed == 0:
        return default_hparams(algorithm, dataset)
    return {k: hp.draw(_rng(algorithm, dataset, seed, k)) for k, hp in space(algorithm, dataset).items()}


def parse_overrides(overrides: str | dict | None, algorithm: str, dataset: str,
                    flag: str = "--hparams") -> dict[str, Any]:
    """--hparams (a JSON object, or a dict) checked once: known names, each value of its default's type,
    finite and in its domain. A one-line UserError otherwise, naming the option ``flag``."""
    if overrides is None:
        return {}
    if isinstance(overrides, str):
        def no_constant(name: str):
            raise UserError(f"{flag}: {name} is not a number JSON allows (give a finite value)")

        try:
            overrides = json.loads(overrides, parse_constant=no_constant)
        except json.JSONDecodeError as e:
            raise UserError(f"{flag} is not valid JSON ({e.msg} at char {e.pos}): {overrides!r}") from None
        except RecursionError:
            raise UserError(f"{flag} is nested too deeply") from None
    if not isinstance(overrides, dict):
        raise UserError(f"{flag} must be a JSON object, got {type(overrides).__name__}")
    declared = space(algorithm, dataset)
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise UserError(f"unknown hparam(s) {', '.join(unknown)} for {algorithm} on {dataset}. "
                        f"Valid: {', '.join(sorted(declared))}")
    for name, value in overrides.items():
        default = declared[name].default
        if not _same_type(name, value, default):
            raise UserError(f"hparam {name} must be a {type(default).__name__} like its default {default!r}, "
                            f"got {json.dumps(value)}")
        check(name, value, declared[name])
    return overrides


def _same_type(name: str, value: Any, default: Any) -> bool:
    """Whether an override has its default's JSON type (an int passes for a float; ``pretrained`` also takes a name)."""
    if isinstance(default, bool):
        return isinstance(value, bool) or (name == "pretrained" and isinstance(value, str))
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def resolve(algorithm: str, dataset: str, hparams_seed: int = 0, overrides: str | dict | None = None) -> dict[str, Any]:
    """Sampled (or default) hparams with user overrides (a JSON object or dict, see :func:`parse_overrides`)
    merged on top."""
    return {**random_hparams(algorithm, dataset, hparams_seed), **parse_overrides(overrides, algorithm, dataset)}
