"""Model-selection methods, as DomainBed defines them (Gulrajani & Lopez-Paz, "In Search of Lost
Domain Generalization", arXiv 2007.01434, Sec. 3 and ``domainbed/model_selection.py``).

A method sees every checkpoint record of one (dataset, algorithm, trial_seed) — one row per
checkpoint of a DataFrame built by ``harness.records.records_frame`` — and a test
environment ``t`` (``None`` for runs without test environments). Like DomainBed it

1. gives each hparams draw (``hparams_seed``) a score and a chosen checkpoint (``run_choice``),
2. keeps the draw with the best score (``select``),

and returns a :class:`Choice`: the chosen checkpoint record, or ``None`` with the reason. The
metrics reported for the choice (test accuracy, worst-group accuracy, DCI, ...) are read from
that record by ``collect_results``.

Runs without test environments (e.g. disentanglement runs, ``test_envs == []``) are scored
at their final checkpoint; methods that need a test environment return "no test env".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pandas is imported by the caller; importing it here only for types
    import pandas as pd


@dataclass(frozen=True)
class Choice:
    """The selected checkpoint (``record``) and its validation score, or ``None`` and why."""

    record: Optional["pd.Series"] = None
    val: Optional[float] = None
    reason: str = ""


def env_indices(records: "pd.DataFrame") -> list[int]:
    """Indices i with an ``env{i}_out_acc`` column that holds values."""
    cols = [c for c in records.columns if c.startswith("env") and c.endswith("_out_acc")
            and records[c].notna().any()]
    return sorted(int(c[3:-len("_out_acc")]) for c in cols)


def test_records(records: "pd.DataFrame", test_env: int | None) -> "pd.DataFrame":
    """Records of runs whose only test environment is ``test_env`` (no test env when None)."""
    want = () if test_env is None else (test_env,)
    return records[records["test_envs"].map(tuple) == want]


def no_runs(test_env: int | None) -> Choice:
    return Choice(reason=f"missing runs: test_envs {[] if test_env is None else [test_env]}")


def final_checkpoints(records: "pd.DataFrame") -> "pd.DataFrame":
    """The last checkpoint of each run."""
    return records.sort_values("step").groupby("run", sort=False).tail(1)


def mean_out(records: "pd.DataFrame", envs: list[int], suffix: str = "acc") -> "pd.Series":
    """Mean over ``envs`` of ``env{i}_out_{suffix}`` per record (NaN where one is missing)."""
    cols = [f"env{i}_out_{suffix}" for i in envs]
    if any(c not in records.columns for c in cols):
        return records["step"] * float("nan")
    return records[cols].mean(axis=1, skipna=False)


class SelectionMethod:
    """Base class: pick the hparams draw whose chosen checkpoint has the highest score."""

    name = ""  # short name used on the command line
    title = ""  # what the tables say
    protocol = "domainbed"  # the runs it selects among: DomainBed's holdout or a benchmark's official splits
    needs_test_env = False
    needs_wg = False

    @classmethod
    def run_choice(cls, records: "pd.DataFrame", test_env: int | None) -> Choice:
        """Score and checkpoint for the records of one hparams draw."""
        raise NotImplementedError

    @classmethod
    def select(cls, records: "pd.DataFrame", test_env: int | None) -> Choice:
        """DomainBed's ``sweep_acc``: the best hparams draw (draws that cannot be scored are skipped)."""
        if cls.needs_test_env and test_env is None:
            return Choice(reason="no test env")
        choices = [cls.run_choice(group, test_env) for _, group in records.groupby("hparams_seed")]
        scored = [c for c in choices if c.record is not None]
        if not scored:
            reasons = sorted({c.reason for c in choices}) or [no_runs(test_env).reason]
            return Choice(reason="; ".join(reasons))
        return max(scored, key=lambda c: c.val)  # first maximum: lowest hparams_seed on ties

    @staticmethod
    def best(records: "pd.DataFrame", scores: "pd.Series", what: str) -> Choice:
        """The record with the highest score (first one on ties), or why there is none."""
        scores = scores.dropna()
        if scores.empty:
            return Choice(reason=f"no {what} in the records")
        i = scores.idxmax()
        return Choice(record=records.loc[i], val=float(scores[i]))


class TrainingDomainValidation(SelectionMethod):
    """Training-domain validation (DomainBed's ``IIDAccuracySelectionMethod``).

    Each training environment holds out a random ``out`` split; the checkpoint and hparams
    maximising the mean ``env{i}_out_acc`` over training environments are chosen, and the
    test environment's ``env{t}_in_acc`` is reported (arXiv 2007.01434, Sec. 3.1).
    """

    name, title = "training_domain", "training-domain validation"
    suffix, what = "acc", "training-env out accuracy"  # the validation score: mean env{i}_out_{suffix}

    @classmethod
    def run_choice(cls, records, test_env):
        records = test_records(records, test_env)
        if records.empty:
            return no_runs(test_env)
        if test_env is None:
            records = final_checkpoints(records)
        val_envs = [i for i in env_indices(records) if i != test_env]
        return cls.best(records, mean_out(records, val_envs, cls.suffix), cls.what)


class LeaveOneDomainOut(SelectionMethod):
    """Leave-one-domain-out cross-validation (DomainBed's ``LeaveOneOutSelectionMethod``).

    For test environment t and every other environment v, a run with ``test_envs = [t, v]``
    trains without v; the score of a (hparams, step) is the mean over v of those runs'
    ``env{v}_in_acc``, and the run with ``test_envs = [t]`` at that step gives the reported
    ``env{t}_in_acc`` (arXiv 2007.01434, Sec. 3.2). Without those extra runs it cannot be
    computed: the reason names the missing ``test_envs``.
    """

    name, title = "leave_one_out", "leave-one-domain-out cross-validation"
    needs_test_env = True

    @classmethod
    def run_choice(cls, records, test_env):
        test = test_records(records, test_env)
        if test.empty:
            return no_runs(test_env)
        others = [v for v in env_indices(test) if v != test_env]
        missing = [sorted((test_env, v)) for v in others if cls._held_out(records, test_env, v).empty]
        if missing:
            return Choice(reason="missing runs: test_envs " + ", ".join(map(str, missing)))
        val = sum(cls._held_out(records, test_env, v).set_index("step")[f"env{v}_in_acc"] for v in others)
        scores = test["step"].map(val / len(others))
        return cls.best(test, scores, "leave-one-out accuracy at a common step")

    @staticmethod
    def _held_out(records, test_env, v):
        runs = records[records["test_envs"].map(lambda t: sorted(t) == sorted((test_env, v)))]
        return runs.drop_duplicates("step", keep="last")


class OracleSelection(SelectionMethod):
    """Test-domain validation, the oracle (DomainBed's ``OracleSelectionMethod``).

    Hparams are chosen by the test environment's ``out`` accuracy at the last checkpoint
    (no early stopping), and its ``in`` accuracy is reported (arXiv 2007.01434, Sec. 3.3).
    """

    name, title = "oracle", "test-domain validation (oracle)"
    needs_test_env = True

    @classmethod
    def run_choice(cls, records, test_env):
        records = final_checkpoints(test_records(records, test_env))
        if records.empty:
            return no_runs(test_env)
        return cls.best(records, records.get(f"env{test_env}_out_acc", records["step"] * float("nan")),
                        f"env{test_env}_out_acc")


class WorstGroupValidation(TrainingDomainValidation):
    """Worst-group validation for subpopulation shift (Sagawa et al., arXiv 1911.08731; the
    selection rule DomainBed-style benchmarks such as Idrissi et al., arXiv 2110.14503, use).

    Like training-domain validation, but the score is the mean ``env{i}_out_wg_acc`` over
    training environments; the test environment's worst-group and average accuracy are
    reported. Only for datasets whose records have ``*_wg_acc``.
    """

    name, title = "worst_group", "worst-group validation"
    suffix, what = "wg_acc", "worst-group out accuracy"
    needs_wg = True


class LastCheckpoint(SelectionMethod):
    """No early stopping: the last checkpoint of each run, hparams chosen by training-domain
    validation at that checkpoint (the "last step" variant of arXiv 2007.01434's protocols)."""

    name, title = "last", "last checkpoint"

    @classmethod
    def run_choice(cls, records, test_env):
        records = final_checkpoints(test_records(records, test_env))
        if records.empty:
            return no_runs(test_env)
        val_envs = [i for i in env_indices(records) if i != test_env]
        return cls.best(records, mean_out(records, val_envs), "training-env out accuracy")


class OfficialValidation(SelectionMethod):
    """WILDS' model selection (Koh et al., "WILDS", arXiv 2012.07421, Sec. 5 and App. D): the checkpoint,
    then the hparams draw, with the best score on the official OOD validation split, the record's
    ``select_on`` (Waterbirds and CivilComments ``val/acc_wg``, Camelyon17 ``val/acc_avg``). Only for
    runs of a dataset with official splits; the official metrics of every split of that checkpoint are reported.
    """

    name, title = "wilds", "WILDS: best OOD validation score"
    protocol = "wilds"

    @classmethod
    def run_choice(cls, records, test_env):
        keys = records["select_on"].dropna().unique() if "select_on" in records.columns else []
        if len(keys) != 1 or keys[0] not in records.columns:
            return Choice(reason="no select_on score in the records")
        return cls.best(records, records[keys[0]], keys[0])


METHODS: dict[str, type[SelectionMethod]] = {
    m.name: m for m in (TrainingDomainValidation, LeaveOneDomainOut, OracleSelection,
                        WorstGroupValidation, LastCheckpoint, OfficialValidation)
}
ALIASES = {cls.__name__: name for name, cls in METHODS.items()} | {"iid": "training_domain", "loo": "leave_one_out"}


def get_method(name: str) -> type[SelectionMethod]:
    """A method by its short name (``training_domain``), class name or alias (``iid``, ``loo``)."""
    from harness.errors import UserError

    key = ALIASES.get(name, name)
    if key not in METHODS:
        raise UserError(f"unknown selection method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[key]
