import json

import pytest

from harness import hparams as hp
from harness.errors import UserError


def test_seed_zero_is_defaults():
    assert hp.random_hparams("ERM", "SyntheticLinear", 0) == hp.default_hparams("ERM", "SyntheticLinear")


def test_random_draws_are_deterministic_and_vary_with_seed():
    a = hp.random_hparams("ERM", "Sprites", 3)
    assert a == hp.random_hparams("ERM", "Sprites", 3)
    draws = {json.dumps(hp.random_hparams("ERM", "Sprites", s), sort_keys=True) for s in range(1, 6)}
    assert len(draws) == 5
    assert all(10**-4.5 <= hp.random_hparams("ERM", "Sprites", s)["lr"] <= 10**-2.5 for s in range(1, 20))


def test_adding_an_hparam_never_shifts_the_others(monkeypatch):
    before = hp.random_hparams("ERM", "SyntheticLinear", 7)
    from harness.algorithms.erm import ERM

    monkeypatch.setattr(ERM, "HPARAMS", {"aaa_new": hp.HP(1.0, hp.log_uniform(-3, 0))})
    after = hp.random_hparams("ERM", "SyntheticLinear", 7)
    assert "aaa_new" in after
    assert {k: after[k] for k in before} == before


def test_overrides_merge_and_unknown_key_names_valid_keys():
    h = hp.resolve("ERM", "SyntheticLinear", 0, '{"lr": 0.5}')
    assert h["lr"] == 0.5 and h["batch_size"] == hp.default_hparams("ERM", "SyntheticLinear")["batch_size"]
    with pytest.raises(UserError, match="unknown hparam.*lrr.*Valid: .*lr"):
        hp.resolve("ERM", "SyntheticLinear", 0, '{"lrr": 0.5}')
    with pytest.raises(UserError, match="not valid JSON"):
        hp.resolve("ERM", "SyntheticLinear", 0, "{lr: 1}")


def test_every_algorithm_and_dataset_declares_its_hparams_on_its_class():
    """Every registered algorithm and dataset resolves its hparams from its class's HPARAMS (plus the
    episodic hparams for EPISODIC algorithms); harness/hparams.py holds no per-name table."""
    from harness.registry import ALGORITHMS, DATASETS

    tables = [k for k, v in vars(hp).items() if k.isupper() and isinstance(v, dict) and k not in ("COMMON", "EPISODIC")
              and all(isinstance(t, dict) for t in v.values()) and v]
    assert not tables, f"per-name hparam tables left in harness/hparams.py: {tables}"
    for name in ALGORITHMS.names():
        cls = ALGORITHMS.get(name)
        assert hp.algorithm_space(name) == {**(hp.EPISODIC if cls.EPISODIC else {}), **cls.HPARAMS}, name
        assert all(isinstance(v, hp.HP) for v in hp.algorithm_space(name).values()), name
    for name in DATASETS.names():
        cls = DATASETS.get(name)
        assert hp.dataset_space(name) == cls.HPARAMS, name
        assert all(isinstance(v, hp.HP) for v in hp.dataset_space(name).values()), name
        assert hp.space("ERM", name) == {**hp.COMMON, **cls.HPARAMS}, name


def test_episodic_hparams_come_from_the_class_flag():
    from harness.algorithms.multitask import MultiTask

    assert MultiTask.EPISODIC and set(hp.EPISODIC) <= set(hp.default_hparams("MultiTask", "Sprites"))
    assert not set(hp.EPISODIC) & set(hp.default_hparams("ERM", "Sprites"))
    assert hp.default_hparams("ERM", "MPI3D")["mpi3d_variant"] == "toy"
    assert "mpi3d_variant" not in hp.default_hparams("ERM", "Shapes3D")
