"""Tests for harness.metrics.disentanglement (DCI and MCC).

DCI: Eastwood & Williams, ICLR 2018, as implemented in disentanglement_lib
(Locatello et al., ICML 2019, arXiv:1811.12359). MCC: nonlinear ICA
(Hyvarinen & Morioka 2016, arXiv:1605.06336; Khemakhem et al. 2020,
arXiv:1907.04809).

Most DCI checks use ``fast=True`` to keep the file well under a minute on two
cores; full mode (sklearn-default GBTs, as in disentanglement_lib) is checked
on small N, including agreement with fast mode within 0.1.
"""

import math

import numpy as np
import pytest

from harness.metrics.disentanglement import (
    DCI_NUM_TEST,
    DCI_NUM_TRAIN,
    dci,
    dci_completeness,
    dci_disentanglement,
    dci_importance_matrix,
    discretize_factors,
    mcc,
)

CARDS = (5, 6, 8, 10)  # K = 4 discrete factors
K = len(CARDS)


def _factors(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, c, n) for c in CARDS], axis=1).astype(np.float64)


@pytest.fixture(scope="module")
def factors():
    return _factors(2400)


@pytest.fixture(scope="module")
def small_factors():
    return _factors(900, seed=1)


def _assert_dci_keys(res):
    assert set(res) == {"disentanglement", "completeness", "informativeness"}
    for v in res.values():
        assert isinstance(v, float) and math.isfinite(v)


# ---------------------------------------------------------------------------
# MCC
# ---------------------------------------------------------------------------
def test_mcc_identity_and_affine_permuted(factors):
    assert mcc(factors, factors) == pytest.approx(1.0, abs=1e-6)
    perm = [2, 0, 3, 1]
    scale = np.array([3.0, -0.5, 7.0, -2.0])
    shift = np.array([1.0, -4.0, 0.3, 10.0])
    codes = factors[:, perm] * scale + shift
    assert mcc(codes, factors) == pytest.approx(1.0, abs=1e-6)


def test_mcc_random_codes_small(factors):
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((factors.shape[0], K))
    assert mcc(noise, factors) < 0.1


def test_mcc_extra_noise_codes(factors):
    rng = np.random.default_rng(2)
    n = factors.shape[0]
    codes = np.concatenate([rng.standard_normal((n, 3)), factors[:, ::-1], rng.standard_normal((n, 2))], axis=1)
    assert mcc(codes, factors) > 0.99
    # slightly noisy but monotone-linear codes are still near 1
    noisy = codes + 0.05 * rng.standard_normal(codes.shape)
    assert mcc(noisy, factors) > 0.98


def test_mcc_fewer_codes_penalised(factors):
    # d = 2 < K = 4: only 2 factors can be matched, the mean is over K.
    assert mcc(factors[:, :2], factors) == pytest.approx(2 / K, abs=1e-6)


def test_mcc_constant_columns_no_nan(factors):
    n = factors.shape[0]
    codes = np.concatenate([factors, np.full((n, 1), 3.0)], axis=1)
    f = np.concatenate([factors, np.zeros((n, 1))], axis=1)  # constant factor
    val = mcc(codes, f)
    assert math.isfinite(val)
    assert val == pytest.approx(K / (K + 1), abs=1e-6)
    assert mcc(np.ones((n, 2)), factors) == 0.0


def test_mcc_torch_input(factors):
    import torch
    t = torch.tensor(factors, dtype=torch.float32, requires_grad=True)
    assert mcc(t, torch.tensor(factors)) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------
# DCI score functions on hand-made importance matrices (exact values)
# ---------------------------------------------------------------------------
def test_dci_scores_on_known_matrices():
    eye = np.eye(K)
    assert dci_disentanglement(eye) == pytest.approx(1.0, abs=1e-6)
    assert dci_completeness(eye) == pytest.approx(1.0, abs=1e-6)
    uniform = np.ones((K, K))
    assert dci_disentanglement(uniform) == pytest.approx(0.0, abs=1e-6)
    assert dci_completeness(uniform) == pytest.approx(0.0, abs=1e-6)
    dup = np.concatenate([eye, eye], axis=0) * 0.5  # each factor split over 2 of 2K codes
    assert dci_disentanglement(dup) == pytest.approx(1.0, abs=1e-6)
    assert dci_completeness(dup) == pytest.approx(1 - math.log(2) / math.log(2 * K), abs=1e-6)
    # an all-zero matrix (nothing learned) scores 0, not NaN
    assert dci_disentanglement(np.zeros((3, 2))) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------
# DCI with gradient boosted trees
# ---------------------------------------------------------------------------
def test_dci_ground_truth_fast(factors):
    res = dci(factors, factors, fast=True)
    _assert_dci_keys(res)
    assert res["disentanglement"] > 0.9
    assert res["completeness"] > 0.9
    assert res["informativeness"] > 0.9


def test_dci_ground_truth_full_mode_small(small_factors):
    res = dci(small_factors, small_factors, fast=False)
    _assert_dci_keys(res)
    assert res["disentanglement"] > 0.9
    assert res["completeness"] > 0.9
    assert res["informativeness"] > 0.9


def test_dci_random_codes_fast(factors):
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((factors.shape[0], K))
    res = dci(noise, factors, fast=True)
    assert res["disentanglement"] < 0.2
    assert res["completeness"] < 0.2
    # chance accuracy is ~1/card on average (~0.15 here)
    assert res["informativeness"] < 0.35


def test_dci_duplicated_codes_fast(factors):
    codes = np.concatenate([factors, factors], axis=1)  # d = 2K
    res = dci(codes, factors, fast=True)
    expected_c = 1 - math.log(2) / math.log(2 * K)
    assert res["completeness"] == pytest.approx(expected_c, abs=0.05)
    assert res["disentanglement"] > 0.9
    assert res["informativeness"] > 0.9


def test_dci_code_permutation_invariance_fast(factors):
    # Invariance holds up to tie-breaking: sklearn trees visit features in a
    # seeded random order and keep the first of exactly tied splits, so a
    # column permutation can change which of two tied codes gets a split (and
    # the float summation order). Hence a tolerance rather than exact equality.
    rng = np.random.default_rng(4)
    n = factors.shape[0]
    codes = np.concatenate([factors + 0.3 * rng.standard_normal(factors.shape),
                            rng.standard_normal((n, 2))], axis=1)
    perm = rng.permutation(codes.shape[1])
    a = dci(codes, factors, fast=True)
    b = dci(codes[:, perm], factors, fast=True)
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=0.02), key


def test_dci_continuous_factors_fast():
    rng = np.random.default_rng(5)
    u = rng.uniform(size=(2400, K))  # > 20 distinct values -> 20 quantile bins
    res = dci(u, u, fast=True)
    assert res["disentanglement"] > 0.9
    assert res["completeness"] > 0.9
    assert res["informativeness"] > 0.9


@pytest.mark.parametrize("case", ["ground_truth", "noise", "duplicated", "continuous"])
def test_dci_fast_agrees_with_full(small_factors, case):
    rng = np.random.default_rng(6)
    n = small_factors.shape[0]
    f = small_factors
    if case == "ground_truth":
        codes = f
    elif case == "noise":
        codes = rng.standard_normal((n, K))
    elif case == "duplicated":
        codes = np.concatenate([f, f], axis=1)
    else:
        f = rng.uniform(size=(n, K))
        codes = f
    full = dci(codes, f, fast=False)
    fast = dci(codes, f, fast=True)
    for key in ("disentanglement", "completeness"):
        assert fast[key] == pytest.approx(full[key], abs=0.1), key
    if case != "noise":  # chance-level accuracy is noisy; compare learnable cases
        assert fast["informativeness"] == pytest.approx(full["informativeness"], abs=0.1)


def test_dci_explicit_test_set_subsampling_and_determinism(factors):
    rng = np.random.default_rng(7)
    codes = factors + 0.2 * rng.standard_normal(factors.shape)
    test_f = _factors(600, seed=8)
    test_c = test_f + 0.2 * rng.standard_normal(test_f.shape)
    kw = dict(codes_test=test_c, factors_test=test_f, n_train=1000, n_test=300, fast=True, seed=3)
    a = dci(codes, factors, **kw)
    b = dci(codes, factors, **kw)
    assert a == b
    assert a["disentanglement"] > 0.8 and a["completeness"] > 0.8
    with pytest.raises(ValueError):
        dci(codes, factors, codes_test=test_c)  # factors_test missing
    assert (DCI_NUM_TRAIN, DCI_NUM_TEST) == (10_000, 5_000)


def test_dci_single_valued_factor_is_skipped(factors):
    n = factors.shape[0]
    f = np.concatenate([factors, np.full((n, 1), 2.0)], axis=1)
    res_with = dci(factors, f, fast=True)
    res_without = dci(factors, factors, fast=True)
    for key in res_with:
        assert res_with[key] == pytest.approx(res_without[key], abs=1e-9)
    with pytest.raises(ValueError):
        dci(factors, np.zeros((n, 2)), fast=True)


def test_dci_importance_matrix_shape(small_factors):
    f = np.concatenate([small_factors, np.zeros((small_factors.shape[0], 1))], axis=1)
    codes = np.concatenate([small_factors, small_factors[:, :1]], axis=1)
    res = dci_importance_matrix(codes[:600], f[:600], codes[600:], f[600:], fast=True)
    assert res.importance_matrix.shape == (K + 1, K)  # constant factor skipped
    np.testing.assert_array_equal(res.factor_indices, np.arange(K))
    np.testing.assert_allclose(res.importance_matrix.sum(axis=0), 1.0, atol=1e-6)
    assert res.test_accuracy.shape == (K,)


def test_discretize_factors():
    rng = np.random.default_rng(9)
    cont = rng.normal(size=(2000, 1))
    disc = rng.choice([-1.5, 0.25, 7.0], size=(2000, 1))
    ftr = np.concatenate([cont, disc, np.ones((2000, 1))], axis=1)
    fte = ftr[:500] + np.array([0.01, 0.0, 0.0])
    ytr, yte, keep = discretize_factors(ftr, fte)
    counts = np.bincount(ytr[:, 0])
    assert counts.size == 20 and counts.min() >= 95 and counts.max() <= 105  # equal-frequency
    assert set(np.unique(ytr[:, 1])) == {0, 1, 2}
    np.testing.assert_array_equal(yte[:, 1], ytr[:500, 1])
    np.testing.assert_array_equal(keep, [True, True, False])
