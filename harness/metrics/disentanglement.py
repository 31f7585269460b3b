"""Disentanglement metrics: DCI and MCC.

DCI (Disentanglement, Completeness, Informativeness)
    Eastwood & Williams, "A framework for the quantitative evaluation of
    disentangled representations", ICLR 2018,
    https://openreview.net/forum?id=By-7dz-AZ ,
    following the gradient-boosted-trees implementation of disentanglement_lib
    (``disentanglement_lib/evaluation/metrics/dci.py``; Locatello et al.,
    "Challenging Common Assumptions in the Unsupervised Learning of
    Disentangled Representations", ICML 2019, arXiv:1811.12359).

MCC (mean correlation coefficient)
    The metric used to evaluate identifiability in nonlinear ICA
    (Hyvarinen & Morioka, "Unsupervised Feature Extraction by Time-Contrastive
    Learning and Nonlinear ICA", NeurIPS 2016, arXiv:1605.06336; Khemakhem et
    al., "Variational Autoencoders and Nonlinear ICA: A Unifying Framework",
    AISTATS 2020, arXiv:1907.04809): absolute Pearson correlations between
    factors and codes, matched one-to-one with the Hungarian algorithm.

Conventions (arrays are ``(N, d)`` codes and ``(N, K)`` factors, rows are
samples; numpy arrays or anything ``np.asarray`` accepts, e.g. torch CPU
tensors):

* DCI: one ``sklearn.ensemble.GradientBoostingClassifier`` per factor,
  predicting that factor's class from all codes. The importance matrix ``R``
  (``d x K``) holds ``abs(feature_importances_)``; informativeness is the mean
  test accuracy over factors; disentanglement and completeness are the
  entropy-based scores of disentanglement_lib (including its ``+1e-11``
  smoothing and its importance weighting).
* Factors with more than :data:`MAX_DISCRETE_VALUES` (20) distinct values are
  treated as continuous and discretised into 20 equal-frequency (quantile)
  bins, with bin edges estimated on the training split and applied to both
  splits. Discrete factors are label-encoded. A factor with a single value on
  the training split is skipped (it has nothing to predict); if every factor
  is skipped a ``ValueError`` is raised.
* Deviations from disentanglement_lib, all documented: the classifiers get
  ``random_state=seed`` (disentanglement_lib leaves it unset) so results are
  reproducible; with a single retained factor (or a single code) the entropy
  base would be 1 and the score undefined, so the corresponding per-code
  (per-factor) entropy term is taken to be 0; ``fast=True`` uses a smaller GBT
  (see :data:`FAST_GBT_PARAMS`) on at most :data:`FAST_MAX_TRAIN` points.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import scipy.stats
from scipy.optimize import linear_sum_assignment
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

__all__ = [
    "DCI_NUM_TRAIN",
    "DCI_NUM_TEST",
    "MAX_DISCRETE_VALUES",
    "NUM_BINS",
    "FAST_MAX_TRAIN",
    "FAST_GBT_PARAMS",
    "DCIImportance",
    "mcc",
    "dci",
    "dci_importance_matrix",
    "dci_disentanglement",
    "dci_completeness",
    "discretize_factors",
]

#: Default number of training points for DCI (disentanglement_lib's
#: ``dci.num_train`` in its evaluation configs).
DCI_NUM_TRAIN = 10_000
#: Default number of test points for DCI (disentanglement_lib's
#: ``dci.num_test``).
DCI_NUM_TEST = 5_000
#: Factors with more distinct values than this are treated as continuous.
MAX_DISCRETE_VALUES = 20
#: Number of equal-frequency bins used for continuous factors.
NUM_BINS = 20
#: ``fast=True``: at most this many training points are used.
FAST_MAX_TRAIN = 2_000
#: ``fast=True``: GradientBoostingClassifier settings (full mode uses the
#: sklearn defaults: 100 trees, depth 3, learning rate 0.1, no subsampling).
#: Row subsampling (``subsample<1``) was tried and rejected: with ~20 classes
#: it made boosting numerically unstable (accuracy collapsing on some factors).
FAST_GBT_PARAMS: dict[str, Any] = dict(n_estimators=30, max_depth=3, learning_rate=0.1)
#: Fraction of the data used for training when no test set is given.
TRAIN_FRACTION = 2.0 / 3.0


# --------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------
def _as_2d(x: Any, name: str) -> np.ndarray:
    """Convert to a float64 ``(N, k)`` numpy array (torch tensors are detached)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, no torch import
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (N, k), got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _check_pair(codes: np.ndarray, factors: np.ndarray, what: str) -> None:
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(
            f"{what}: codes and factors have different numbers of samples "
            f"({codes.shape[0]} vs {factors.shape[0]})"
        )


# --------------------------------------------------------------------------
# MCC
# --------------------------------------------------------------------------
def _abs_corr(factors: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``|Pearson correlation|`` matrix of shape ``(K, d)``; constant columns give 0."""
    f = factors - factors.mean(axis=0)
    c = codes - codes.mean(axis=0)
    f_const = np.ptp(factors, axis=0) == 0
    c_const = np.ptp(codes, axis=0) == 0
    fn = np.sqrt((f * f).sum(axis=0))
    cn = np.sqrt((c * c).sum(axis=0))
    fn[f_const | (fn == 0)] = 1.0
    cn[c_const | (cn == 0)] = 1.0
    corr = np.abs((f / fn).T @ (c / cn))
    corr[f_const, :] = 0.0
    corr[:, c_const] = 0.0
    corr[~np.isfinite(corr)] = 0.0
    return np.clip(corr, 0.0, 1.0)


REDUNDANCY_THRESHOLD = 0.5


def redundancy(codes: Any, factors: Any, threshold: float = REDUNDANCY_THRESHOLD) -> float:
    """How many features encode each factor: the mean over factors of the number of features whose
    ``|Pearson correlation|`` with it exceeds ``threshold``. 1 for a one-to-one code; above 1 when a factor
    is spread over copies, which DCI completeness penalises and a concave sharing term (Fumero et al.,
    arXiv 2304.07939, Sec. 3: features reused across the tasks that need them) should remove."""
    codes, factors = _as_2d(codes, "codes"), _as_2d(factors, "factors")
    _check_pair(codes, factors, "redundancy")
    return float((_abs_corr(factors, codes) > threshold).sum(axis=1).mean())


def mcc(codes: Any, factors: Any) -> float:
    """Mean correlation coefficient (MCC) between codes and ground-truth factors.

    As used in nonlinear ICA (Hyvarinen & Morioka 2016, arXiv:1605.06336;
    Khemakhem et al. 2020, arXiv:1907.04809): the ``(K, d)`` matrix of absolute
    Pearson correlations between every factor and every code is computed,
    factors are matched to *distinct* codes with the Hungarian algorithm
    (``scipy.optimize.linear_sum_assignment``, maximising total correlation),
    and the matched absolute correlations are averaged.

    Args:
        codes: ``(N, d)`` learned representation (1-D is treated as ``d=1``).
        factors: ``(N, K)`` ground-truth factors.

    Returns:
        ``sum(matched |corr|) / K`` in ``[0, 1]``. ``min(d, K)`` pairs are
        matched; dividing by ``K`` means that ``d < K`` is penalised (unmatched
        factors count as correlation 0) while extra codes (``d > K``) are
        simply left unmatched. Constant columns have correlation 0 (no NaN).
    """
    c = _as_2d(codes, "codes")
    f = _as_2d(factors, "factors")
    _check_pair(c, f, "mcc")
    corr = _abs_corr(f, c)
    rows, cols = linear_sum_assignment(corr, maximize=True)
    return float(corr[rows, cols].sum() / f.shape[1])


# --------------------------------------------------------------------------
# DCI: factor preprocessing
# --------------------------------------------------------------------------
def discretize_factors(
    factors_train: Any,
    factors_test: Any | None = None,
    *,
    max_discrete: int = MAX_DISCRETE_VALUES,
    num_bins: int = NUM_BINS,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Turn factors into integer class labels for the DCI classifiers.

    A factor with at most ``max_discrete`` distinct values (counted over train
    and test together) is label-encoded over the union of its train and test
    values. A factor with more distinct values is treated as continuous and
    discretised into ``num_bins`` equal-frequency bins whose edges are the
    training-split quantiles (tied quantiles merge bins, so fewer bins can
    result); the same edges are applied to the test split.

    Returns:
        ``(labels_train, labels_test, keep)``: integer label arrays (``labels_test``
        is ``None`` when no test factors are given) and a boolean mask over
        factors that is ``False`` for factors with a single value on the
        training split (these are skipped by :func:`dci`).
    """
    ftr = _as_2d(factors_train, "factors_train")
    fte = None if factors_test is None else _as_2d(factors_test, "factors_test")
    if fte is not None and fte.shape[1] != ftr.shape[1]:
        raise ValueError("factors_train and factors_test have different numbers of factors")
    n_factors = ftr.shape[1]
    ytr = np.zeros(ftr.shape, dtype=np.int64)
    yte = None if fte is None else np.zeros(fte.shape, dtype=np.int64)
    keep = np.ones(n_factors, dtype=bool)
    for j in range(n_factors):
        col_tr = ftr[:, j]
        col_all = col_tr if fte is None else np.concatenate([col_tr, fte[:, j]])
        values = np.unique(col_all)
        if values.size > max_discrete:
            qs = np.quantile(col_tr, np.linspace(0.0, 1.0, num_bins + 1)[1:-1])
            edges = np.unique(qs)
            ytr[:, j] = np.searchsorted(edges, col_tr, side="right")
            if fte is not None:
                yte[:, j] = np.searchsorted(edges, fte[:, j], side="right")
        else:
            ytr[:, j] = np.searchsorted(values, col_tr)
            if fte is not None:
                yte[:, j] = np.searchsorted(values, fte[:, j])
        if np.unique(ytr[:, j]).size < 2:
            keep[j] = False
    return ytr, yte, keep


# --------------------------------------------------------------------------
# DCI: importance matrix and scores
# --------------------------------------------------------------------------
class DCIImportance(NamedTuple):
    """Result of :func:`dci_importance_matrix`."""

    importance_matrix: np.ndarray  #: ``(d, K_kept)``, column j = |feature_importances_| of factor j's GBT
    train_accuracy: np.ndarray  #: ``(K_kept,)``
    test_accuracy: np.ndarray  #: ``(K_kept,)``
    factor_indices: np.ndarray  #: indices (into the input factors) of the kept factors


def _gbt(fast: bool, seed: int, regression: bool = False):
    cls = GradientBoostingRegressor if regression else GradientBoostingClassifier
    return cls(random_state=seed, **(FAST_GBT_PARAMS if fast else {}))


def dci_importance_matrix(
    codes_train: Any,
    factors_train: Any,
    codes_test: Any,
    factors_test: Any,
    *,
    fast: bool = False,
    seed: int = 0,
) -> DCIImportance:
    """DCI importance matrix via gradient boosted trees.

    Eastwood & Williams, ICLR 2018 (https://openreview.net/forum?id=By-7dz-AZ),
    as in disentanglement_lib's ``compute_importance_gbt`` (Locatello et al.,
    ICML 2019, arXiv:1811.12359): for each factor a
    ``GradientBoostingClassifier`` (sklearn defaults; ``fast=True`` uses
    :data:`FAST_GBT_PARAMS`) is fit on the training codes to predict the
    factor's class; column ``j`` of the importance matrix is the absolute
    ``feature_importances_`` of factor ``j``'s classifier. Factors are first
    passed through :func:`discretize_factors`; single-valued factors are
    skipped. No subsampling is done here (see :func:`dci`).
    """
    ctr = _as_2d(codes_train, "codes_train")
    cte = _as_2d(codes_test, "codes_test")
    if ctr.shape[1] != cte.shape[1]:
        raise ValueError("codes_train and codes_test have different numbers of codes")
    ytr, yte, keep = discretize_factors(factors_train, factors_test)
    _check_pair(ctr, ytr, "train")
    _check_pair(cte, yte, "test")
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        raise ValueError("dci: every factor is constant on the training split")
    imp = np.zeros((ctr.shape[1], idx.size), dtype=np.float64)
    acc_tr = np.zeros(idx.size)
    acc_te = np.zeros(idx.size)
    ftr, fte = _as_2d(factors_train, "factors_train"), _as_2d(factors_test, "factors_test")
    for col, j in enumerate(idx):
        if np.unique(np.concatenate([ftr[:, j], fte[:, j]])).size > MAX_DISCRETE_VALUES:
            # Continuous factor: a regressor, as Eastwood & Williams do, and R^2 (clipped at 0) as its score.
            # Classifying equal-frequency bins instead spreads importance over irrelevant codes as soon as
            # the codes carry a little noise (MCC 0.99 codes gave D 0.58 that way, 0.999 with regression).
            model = _gbt(fast, seed, regression=True).fit(ctr, ftr[:, j])
            acc_tr[col] = max(0.0, model.score(ctr, ftr[:, j]))
            acc_te[col] = max(0.0, model.score(cte, fte[:, j]))
        else:
            model = _gbt(fast, seed).fit(ctr, ytr[:, j])
            acc_tr[col] = np.mean(model.predict(ctr) == ytr[:, j])
            acc_te[col] = np.mean(model.predict(cte) == yte[:, j])
        imp[:, col] = np.abs(model.feature_importances_)
    return DCIImportance(imp, acc_tr, acc_te, idx)


def _one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """``1 - H(p)`` per column of ``p`` (columns normalised), entropy in ``base``.

    Uses disentanglement_lib's ``+1e-11`` smoothing. With ``base == 1`` the
    normalised entropy is undefined; the only distribution is trivially
    "pure", so the score is 1.
    """
    if base <= 1:
        return np.ones(p.shape[1])
    return 1.0 - scipy.stats.entropy(p + 1e-11, base=base, axis=0)


def dci_disentanglement(importance_matrix: np.ndarray) -> float:
    """DCI disentanglement from a ``(d, K)`` importance matrix.

    Eastwood & Williams, ICLR 2018; as disentanglement_lib's ``disentanglement``
    (arXiv:1811.12359): per code ``i``, ``1 - H_K(R[i, :] / R[i, :].sum())``,
    averaged with weights ``R[i, :].sum() / R.sum()`` (uniform if ``R`` is 0).
    """
    r = np.asarray(importance_matrix, dtype=np.float64)
    per_code = _one_minus_entropy(r.T, base=r.shape[1])
    if r.sum() == 0.0:
        r = np.ones_like(r)
    code_importance = r.sum(axis=1) / r.sum()
    return float(np.sum(per_code * code_importance))


def dci_completeness(importance_matrix: np.ndarray) -> float:
    """DCI completeness from a ``(d, K)`` importance matrix.

    Eastwood & Williams, ICLR 2018; as disentanglement_lib's ``completeness``
    (arXiv:1811.12359): per factor ``j``, ``1 - H_d(R[:, j] / R[:, j].sum())``,
    averaged with weights ``R[:, j].sum() / R.sum()`` -- uniform in practice,
    since each GBT's importances sum to 1.
    """
    r = np.asarray(importance_matrix, dtype=np.float64)
    per_factor = _one_minus_entropy(r, base=r.shape[0])
    if r.sum() == 0.0:
        r = np.ones_like(r)
    factor_importance = r.sum(axis=0) / r.sum()
    return float(np.sum(per_factor * factor_importance))


def _subsample(rng: np.random.Generator, n_avail: int, n: int | None, cap: int) -> np.ndarray:
    n_use = cap if n is None else int(n)
    if n_use <= 0:
        raise ValueError("n_train / n_test must be positive")
    n_use = min(n_use, n_avail)
    if n_use == n_avail:
        return np.arange(n_avail)
    return np.sort(rng.choice(n_avail, size=n_use, replace=False))


def dci(
    codes: Any,
    factors: Any,
    *,
    codes_test: Any | None = None,
    factors_test: Any | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    fast: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """DCI disentanglement, completeness and informativeness.

    Eastwood & Williams, "A framework for the quantitative evaluation of
    disentangled representations", ICLR 2018
    (https://openreview.net/forum?id=By-7dz-AZ), implemented as in
    disentanglement_lib's ``dci.py`` (Locatello et al., ICML 2019,
    arXiv:1811.12359).

    Args:
        codes: ``(N, d)`` representation (training data, or all data if no test
            set is given).
        factors: ``(N, K)`` ground-truth factors. Factors with more than 20
            distinct values are continuous: a GBT regressor predicts them;
            discrete ones are label-encoded; single-valued ones are skipped
            (see :func:`discretize_factors`).
        codes_test, factors_test: optional held-out set. If omitted, the given
            data are shuffled (seeded) and split 2/3 train : 1/3 test.
        n_train, n_test: number of train / test points, subsampled without
            replacement (seeded) if fewer than available. ``None`` means
            ``min(available, DCI_NUM_TRAIN)`` / ``min(available, DCI_NUM_TEST)``
            (10,000 / 5,000 as in disentanglement_lib). Requests larger than
            what is available use everything available.
        fast: use a smaller gradient boosting model (:data:`FAST_GBT_PARAMS`:
            30 instead of 100 trees of depth 3, learning rate 0.1) on at most
            :data:`FAST_MAX_TRAIN` (2,000) training points. Still
            GBT-importance based, so scores stay comparable with full mode
            (they agree within ~0.1 on the package's test cases) but they are
            not the reference numbers: on hard, entangled codes fast mode
            underfits, and informativeness in particular comes out lower
            (e.g. 0.43 vs 0.59 full on a 10k/5k, d=10, K=5 mixing benchmark,
            where D/C were 0.32/0.40 fast vs 0.34/0.48 full).
        seed: seeds the split, the subsampling and the classifiers'
            ``random_state``.

    Returns:
        ``{"disentanglement": D, "completeness": C, "informativeness": I}`` with
        ``I`` the mean test accuracy of the per-factor classifiers (for continuous
        factors, more than 20 distinct values, a GBT regressor is fit instead and
        its test R^2, clipped at 0, counts as its accuracy).
    """
    c = _as_2d(codes, "codes")
    f = _as_2d(factors, "factors")
    _check_pair(c, f, "dci")
    rng = np.random.default_rng(seed)
    if (codes_test is None) != (factors_test is None):
        raise ValueError("give both codes_test and factors_test, or neither")
    if codes_test is None:
        n = c.shape[0]
        n_tr = int(round(n * TRAIN_FRACTION))
        if n_tr < 2 or n - n_tr < 1:
            raise ValueError(f"dci: too few samples ({n}) to split into train/test")
        perm = rng.permutation(n)
        ctr, ftr = c[perm[:n_tr]], f[perm[:n_tr]]
        cte, fte = c[perm[n_tr:]], f[perm[n_tr:]]
    else:
        ctr, ftr = c, f
        cte = _as_2d(codes_test, "codes_test")
        fte = _as_2d(factors_test, "factors_test")
        _check_pair(cte, fte, "dci test")
    itr = _subsample(rng, ctr.shape[0], n_train, DCI_NUM_TRAIN)
    if fast and itr.size > FAST_MAX_TRAIN:
        itr = itr[np.sort(rng.choice(itr.size, size=FAST_MAX_TRAIN, replace=False))]
    ite = _subsample(rng, cte.shape[0], n_test, DCI_NUM_TEST)
    res = dci_importance_matrix(
        ctr[itr], ftr[itr], cte[ite], fte[ite], fast=fast, seed=seed
    )
    r = res.importance_matrix
    return {
        "disentanglement": dci_disentanglement(r),
        "completeness": dci_completeness(r),
        "informativeness": float(np.mean(res.test_accuracy)),
    }
