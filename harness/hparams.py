"""Hyperparameter spaces: a default and a random-search distribution for every hparam.

``hparams_seed = 0`` gives the defaults; any other seed draws every hparam from its own RNG,
seeded by a hash of (algorithm, dataset, seed, hparam name), so adding an hparam (or another
algorithm) never shifts the values drawn for the others. The space of a run is the union of
the common space, the dataset's and the algorithm's (later ones override earlier ones).

Adding an algorithm: add its entry to ``ALGORITHM_SPACES`` (or, for a plugin, give the
class a ``HPARAMS = {"name": HP(default, sampler)}`` attribute). This module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from harness.errors import UserError

Sampler = Callable[[np.random.RandomState], Any]


@dataclass(frozen=True)
class HP:
    """One hyperparameter: its default and how random search draws it."""

    default: Any
    sample: Sampler | None = None  # None: fixed at the default during random search

    def draw(self, rng: np.random.RandomState) -> Any:
        return self.default if self.sample is None else _plain(self.sample(rng))


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars, so hparams stay JSON-serialisable."""
    return v.item() if isinstance(v, np.generic) else v


def log_uniform(lo: float, hi: float) -> Sampler:
    """10 ** U(lo, hi)."""
    return lambda r: float(10 ** r.uniform(lo, hi))


def choice(*options: Any) -> Sampler:
    return lambda r: options[r.randint(len(options))]


def int_pow2(lo: int, hi: int) -> Sampler:
    """2 ** randint(lo, hi) inclusive."""
    return lambda r: int(2 ** r.randint(lo, hi + 1))


COMMON: dict[str, HP] = {
    "lr": HP(1e-3, log_uniform(-4.5, -2.5)),
    "weight_decay": HP(0.0, log_uniform(-6, -2)),
    "batch_size": HP(32, int_pow2(3, 6)),  # per training environment
    "backbone": HP("MLP"),
    "feature_dim": HP(64),  # d, the width of the representation
    "nonlinear_classifier": HP(False),
}

# Episodic algorithms draw tasks from the dataset's task sampler.
EPISODIC: dict[str, HP] = {
    "tasks_per_batch": HP(16, choice(8, 16, 32)),
    "support": HP(50, choice(20, 50, 100)),
    "query": HP(50),
    "n_way": HP(5),  # class tasks (ignored by binary factor tasks)
    "max_factors": HP(3),  # factor tasks depend on a random subset of 1..max_factors factors
}

DATASET_SPACES: dict[str, dict[str, HP]] = {
    "SyntheticLinear": {"backbone": HP("MLP"), "feature_dim": HP(10), "batch_size": HP(64, int_pow2(5, 7))},
    "Sprites": {"backbone": HP("SmallCNN"), "feature_dim": HP(32), "batch_size": HP(32, int_pow2(3, 6))},
}

ALGORITHM_SPACES: dict[str, dict[str, HP]] = {
    "ERM": {},
}


def space(algorithm: str, dataset: str) -> dict[str, HP]:
    """The full hparam space of (algorithm, dataset)."""
    return {**COMMON, **_space_of(dataset, DATASET_SPACES, "datasets"),
            **_space_of(algorithm, ALGORITHM_SPACES, "algorithms")}


def _space_of(name: str, table: dict[str, dict[str, HP]], kind: str) -> dict[str, HP]:
    if name in table:
        return table[name]
    from harness.registry import REGISTRIES  # plugins declare theirs on the class

    try:
        obj = REGISTRIES[kind].get(name)
    except UserError:
        return {}
    return dict(getattr(obj, "HPARAMS", {}))


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


def resolve(algorithm: str, dataset: str, hparams_seed: int = 0, overrides: str | dict | None = None) -> dict[str, Any]:
    """Sampled (or default) hparams with user overrides (a JSON object or dict) merged on top."""
    hparams = random_hparams(algorithm, dataset, hparams_seed)
    if overrides:
        if isinstance(overrides, str):
            try:
                overrides = json.loads(overrides)
            except json.JSONDecodeError as e:
                raise UserError(f"--hparams is not valid JSON ({e.msg} at char {e.pos}): {overrides!r}") from None
        if not isinstance(overrides, dict):
            raise UserError(f"--hparams must be a JSON object, got {type(overrides).__name__}")
        unknown = sorted(set(overrides) - set(hparams))
        if unknown:
            raise UserError(f"unknown hparam(s) {', '.join(unknown)} for {algorithm} on {dataset}. "
                            f"Valid: {', '.join(sorted(hparams))}")
        hparams.update(overrides)
    return hparams
