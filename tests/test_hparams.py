import json
import re

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
    for name in ALGORITHMS.names():  # what a run gets: each declared default (the algorithm's win over the dataset's)
        cls, defaults = ALGORITHMS.get(name), hp.default_hparams(name, "SyntheticLinear")
        assert all(defaults[k] == v.default for k, v in cls.HPARAMS.items()), name
        assert ("tasks_per_batch" in defaults) == cls.EPISODIC, name
    for name in DATASETS.names():
        cls, defaults = DATASETS.get(name), hp.default_hparams("ERM", name)
        assert all(defaults[k] == v.default for k, v in cls.HPARAMS.items()), name


def test_a_new_class_declares_its_hparams_and_domains_in_one_place():
    """A class registered with HPARAMS gets its defaults (overriding the common ones), the episodic ones only
    when EPISODIC, and its domains checked; nothing else needs editing."""
    from harness.algorithms.base import Algorithm
    from harness.algorithms.episodic import EpisodicAlgorithm
    from harness.registry import ALGORITHMS

    knobs = {"lr": hp.HP(0.123), "my_knob": hp.HP(7, domain=hp.at_least(0))}
    ALGORITHMS.register("_HparamProbe")(type("Probe", (Algorithm,), {"HPARAMS": knobs}))
    ALGORITHMS.register("_EpisodicProbe")(type("EProbe", (EpisodicAlgorithm,), {"HPARAMS": knobs}))
    plain, episodic = (hp.default_hparams(n, "SyntheticLinear") for n in ("_HparamProbe", "_EpisodicProbe"))
    assert plain["lr"] == episodic["lr"] == 0.123 and plain["my_knob"] == 7
    assert "tasks_per_batch" not in plain and episodic["tasks_per_batch"] == hp.EPISODIC["tasks_per_batch"].default
    with pytest.raises(UserError, match="my_knob"):
        hp.resolve("_HparamProbe", "SyntheticLinear", 0, {"my_knob": -1})


def test_episodic_hparams_come_from_the_class_flag():
    from harness.algorithms.multitask import MultiTask

    assert MultiTask.EPISODIC and set(hp.EPISODIC) <= set(hp.default_hparams("MultiTask", "Sprites"))
    assert not set(hp.EPISODIC) & set(hp.default_hparams("ERM", "Sprites"))
    assert hp.default_hparams("ERM", "MPI3D")["mpi3d_variant"] == "toy"
    assert "mpi3d_variant" not in hp.default_hparams("ERM", "Shapes3D")


def test_domains_reject_out_of_range_values_and_survive_overrides():
    """A dataset that overrides a common hparam (SyntheticLinear's batch_size, lr) keeps its domain; one
    that declares its own (SparseShared's alpha) gets it checked; a None default accepts None."""
    space = hp.space("SparseShared", "SyntheticLinear")
    assert space["batch_size"].default == 64 and space["batch_size"].domain is hp.COMMON["batch_size"].domain
    for name, bad, message in [("batch_size", 0, "hparam batch_size must be in [1, 65536], got 0"),
                               ("lr", 0.0, "hparam lr must be > 0, got 0.0"),
                               ("alpha", 1.5, "hparam alpha must be in [0, 1]"),
                               ("sharing_eps", 0.0, "hparam sharing_eps must be in (0, 1], got 0.0"),
                               ("sparsity", "l2", 'must be one of l1 | group, got "l2"')]:
        with pytest.raises(UserError, match=re.escape(message)):
            hp.check(name, bad, space[name])
    for name, good in [("batch_size", 1), ("alpha", 0.0), ("alpha", 1.0), ("sharing_eps", 1.0), ("sparsity", "group")]:
        hp.check(name, good, space[name])
    hp.check("n_per_env", None, hp.space("ERM", "RotatedFashionMNIST")["n_per_env"])
    with pytest.raises(UserError, match="n_per_env must be >= 1"):
        hp.check("n_per_env", 0, hp.space("ERM", "RotatedFashionMNIST")["n_per_env"])
    for seed in range(1, 30):  # random search stays inside every domain
        drawn = hp.random_hparams("SparseShared", "SyntheticLinear", seed)
        for name, value in drawn.items():
            hp.check(name, value, space[name])


def test_override_errors_name_the_option_they_came_from():
    with pytest.raises(UserError, match=r"^--target_hparams is not valid JSON"):
        hp.parse_overrides("{lr: 1}", "ERM", "SyntheticLinear", flag="--target_hparams")
    with pytest.raises(UserError, match=r"^--hparams must be a JSON object"):
        hp.parse_overrides("[1]", "ERM", "SyntheticLinear")
