"""One test per algorithm of the property that defines it (penalties, weights, closed-form heads)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.datasets.tasks import TaskBatch
from harness.hparams import default_hparams
from harness.registry import ALGORITHMS


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build(name, n_envs=2, num_classes=3, input_shape=(6,), seed=0, **overrides):
    h = default_hparams(name, "SyntheticLinear")
    h.update({"backbone": "MLP", "feature_dim": 5, "mlp_width": 16, "mlp_depth": 1, **overrides})
    torch.manual_seed(seed)
    return ALGORITHMS.get(name)(input_shape, num_classes, n_envs, h)


def env_batches(n_envs, n=16, d=6, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d, generator=g), torch.randint(0, num_classes, (n,), generator=g)) for _ in range(n_envs)]


# --- IRM ---------------------------------------------------------------------------------------
def calibrated_logits():
    """Binary logits whose predicted probabilities match the label frequencies exactly, in both halves."""
    logit = math.log(3.0)  # p(y=1) = 0.75
    logits, labels = [], []
    for sign, ys in ((1, [1, 1, 1, 0]), (-1, [0, 0, 0, 1])):
        for y in ys:
            for _ in range(2):  # one copy at an even, one at an odd position
                logits.append([0.0, sign * logit])
                labels.append(y)
    return torch.tensor(logits, dtype=torch.float64), torch.tensor(labels)


def test_irm_penalty_zero_iff_optimal_scale():
    from harness.algorithms.irm import irm_penalty

    logits, y = calibrated_logits()
    assert abs(irm_penalty(logits, y).item()) < 1e-12  # calibrated: no gain from rescaling
    for s in (0.5, 2.0):  # under- / over-confident: the same scale gradient on both halves
        assert irm_penalty(s * logits, y).item() > 1e-4
    # the algorithm's penalty is the mean over environments: zero if optimal in every environment
    algo = build("IRM")
    torch.manual_seed(0)
    assert algo.update(env_batches(2))["penalty"] != 0.0


def test_irm_anneal_resets_optimizer_and_switches_weight():
    algo = build("IRM", irm_penalty_anneal_iters=2, irm_lambda=1e3)
    batches = env_batches(2)
    opts, logs = [], []
    for _ in range(3):
        logs.append(algo.update(batches))
        opts.append(algo.optimizer)
    assert opts[0] is opts[1] and opts[2] is not opts[1]  # reset exactly when the penalty switches on
    assert int(algo.update_count) == 3
    for lg, w in zip(logs, (1.0, 1.0, 1e3)):
        assert lg["loss"] == pytest.approx(lg["nll"] + w * lg["penalty"], rel=1e-5, abs=1e-6)


# --- GroupDRO ------------------------------------------------------------------------------------
def test_groupdro_weights_move_to_the_worst_environment():
    algo = build("GroupDRO", n_envs=3, groupdro_eta=0.5)
    batches = env_batches(3, seed=1)
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(algo.predict(x), y) for x, y in batches])
    q0 = algo.q.clone()
    algo.update(batches)
    expected = q0 * torch.exp(0.5 * losses)
    torch.testing.assert_close(algo.q, expected / expected.sum())
    assert algo.q.argmax() == losses.argmax() and algo.q[losses.argmax()] > 1 / 3
    assert "q" in algo.state_dict()  # travels with the checkpoint


# --- CORAL / MMD ---------------------------------------------------------------------------------
def test_coral_penalty_zero_for_identical_statistics():
    from harness.algorithms.coral import coral_penalty

    x = torch.randn(40, 5, dtype=torch.float64)
    assert coral_penalty(x, x).item() == 0.0
    assert coral_penalty(x, x[torch.randperm(40)]).item() < 1e-20  # same sample, other order
    assert coral_penalty(x, x + 0.5).item() > 0.1  # mean differs
    assert coral_penalty(x, 2 * (x - x.mean(0)) + x.mean(0)).item() > 0.1  # covariance differs
    cov = np.cov(x.numpy(), rowvar=False)
    y = torch.randn(30, 5, dtype=torch.float64)
    ref = ((x.mean(0) - y.mean(0)).square().mean().item()
           + ((cov - np.cov(y.numpy(), rowvar=False)) ** 2).mean())
    assert coral_penalty(x, y).item() == pytest.approx(ref)
    algo = build("CORAL", n_envs=1)  # one environment: no pair, no penalty
    assert algo.update(env_batches(1))["penalty"] == 0.0


def test_mmd_penalty_zero_for_identical_samples():
    from harness.algorithms.mmd import GAMMAS, mmd_penalty

    x = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randn(20, 4, dtype=torch.float64) + 1.0
    assert mmd_penalty(x, x).item() == 0.0
    assert abs(mmd_penalty(x, x[torch.randperm(30)]).item()) < 1e-12
    xn, yn = x.numpy(), y.numpy()

    def k(a, b):
        d = ((a[:, None] - b[None]) ** 2).sum(-1)
        return sum(np.exp(-g * d) for g in GAMMAS).mean()

    ref = k(xn, xn) + k(yn, yn) - 2 * k(xn, yn)
    assert ref > 0.01 and mmd_penalty(x, y).item() == pytest.approx(ref, rel=1e-8)


# --- VREx ----------------------------------------------------------------------------------------
def test_vrex_penalty_is_the_variance_of_environment_risks():
    algo = build("VREx", n_envs=3)
    batches = env_batches(3, seed=2)
    with torch.no_grad():
        risks = np.array([F.cross_entropy(algo.predict(x), y).item() for x, y in batches])
    logs = algo.update(batches)
    assert logs["penalty"] == pytest.approx(np.var(risks), rel=1e-4)
    assert logs["nll"] == pytest.approx(risks.mean(), rel=1e-5)
    assert build("VREx", n_envs=1).update(env_batches(1))["penalty"] == 0.0


# --- Mixup ---------------------------------------------------------------------------------------
def test_mixup_mixed_inputs_and_targets():
    from harness.algorithms.mixup import mix, random_pairs

    xi, xj = torch.randn(4, 3), torch.randn(4, 3)
    yi, yj = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 0])
    x, t = mix(xi, yi, xj, yj, 0.3, 3)
    torch.testing.assert_close(x, 0.3 * xi + 0.7 * xj)
    expected = np.zeros((4, 3))
    for n in range(4):
        expected[n, yi[n]] += 0.3
        expected[n, yj[n]] += 0.7
    np.testing.assert_allclose(t.numpy(), expected, atol=1e-7)
    logits = torch.randn(4, 3)  # the soft-target loss is DomainBed's lam CE(yi) + (1 - lam) CE(yj)
    torch.testing.assert_close(F.cross_entropy(logits, t),
                               0.3 * F.cross_entropy(logits, yi) + 0.7 * F.cross_entropy(logits, yj))
    # pairs form a cycle over environments, truncated to equal length
    batches = [(torch.full((n, 1), float(e)), torch.zeros(n, dtype=torch.long)) for e, n in enumerate((5, 3, 4))]
    pairs = random_pairs(batches)
    firsts = sorted(int(a[0][0, 0]) for a, _ in pairs)
    seconds = sorted(int(b[0][0, 0]) for _, b in pairs)
    assert firsts == seconds == [0, 1, 2]
    assert all(len(a[0]) == len(b[0]) and int(a[0][0, 0]) != int(b[0][0, 0]) for a, b in pairs)


# --- Fish ----------------------------------------------------------------------------------------
def test_fish_meta_step_interpolates_toward_the_inner_loop():
    algo = build("Fish", n_envs=3, meta_lr=0.1)
    before = {k: v.clone() for k, v in algo.state_dict().items() if not k.startswith("inner.") and torch.is_tensor(v)}
    algo.update(env_batches(3))
    after = algo.state_dict()
    moved = 0
    for k, old in before.items():
        inner = after["inner." + k]
        assert not torch.equal(inner, old)  # every parameter took inner steps
        torch.testing.assert_close(after[k], old + 0.1 * (inner - old))
        moved += 1
    assert moved >= 4


# --- ProtoNet ------------------------------------------------------------------------------------
def test_protonet_is_nearest_centroid():
    algo = build("ProtoNet", n_envs=1)
    sx, sy = torch.randn(20, 6), torch.arange(20) % 4
    qx = torch.randn(9, 6)
    logits = algo.adapt(sx, sy, 4)(qx)
    with torch.no_grad():
        zs, zq = algo.features(sx).numpy().astype(np.float64), algo.features(qx).numpy().astype(np.float64)
    cent = np.stack([zs[sy.numpy() == c].mean(0) for c in range(4)])
    d2 = ((zq[:, None] - cent[None]) ** 2).sum(-1)
    np.testing.assert_allclose(logits.numpy(), -d2, rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1).numpy() == d2.argmin(1)).all()


# --- R2D2 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("S,p", [(6, 10), (15, 4)])  # Woodbury (S < p) and normal equations
def test_ridge_solution_matches_numpy(S, p):
    from harness.algorithms.r2d2 import ridge_solution

    X = torch.randn(2, S, p, dtype=torch.float64)
    Y = F.one_hot(torch.randint(0, 3, (2, S)), 3).double()
    W = ridge_solution(X, Y, 0.7)
    for t in range(2):
        x, y = X[t].numpy(), Y[t].numpy()
        ref = np.linalg.solve(x.T @ x + 0.7 * np.eye(p), x.T @ y)
        np.testing.assert_allclose(W[t].numpy(), ref, rtol=1e-8, atol=1e-10)


def test_r2d2_head_is_ridge_regression_on_onehot():
    algo = build("R2D2", n_envs=1, ridge_lambda=0.5, init_scale=3.0).double()
    with torch.no_grad():
        algo.bias.fill_(0.25)
    sx, sy, qx = torch.randn(7, 6, dtype=torch.float64), torch.arange(7) % 3, torch.randn(4, 6, dtype=torch.float64)
    logits = algo.adapt(sx, sy, 3)(qx)
    with torch.no_grad():
        zs, zq = algo.features(sx).numpy(), algo.features(qx).numpy()
    lam, scale = algo.log_lambda.exp().item(), algo.log_scale.exp().item()  # 0.5, 3.0 up to float32 rounding
    assert lam == pytest.approx(0.5) and scale == pytest.approx(3.0)
    zs1, zq1 = np.c_[zs, np.ones(7)], np.c_[zq, np.ones(4)]
    W = np.linalg.solve(zs1.T @ zs1 + lam * np.eye(zs1.shape[1]), zs1.T @ np.eye(3)[sy.numpy()])
    np.testing.assert_allclose(logits.numpy(), scale * zq1 @ W + 0.25, rtol=1e-8, atol=1e-10)


# --- MetaOptNet ----------------------------------------------------------------------------------
def cs_dual_reference(Z, y, n_classes, C, eps):
    """The same dual QP solved by scipy's SLSQP."""
    from scipy.optimize import minimize

    S = len(y)
    G, Y = Z @ Z.T, np.eye(n_classes)[y]
    upper = (C * Y).ravel()

    def f(a):
        A = a.reshape(S, n_classes)
        return 0.5 * np.sum(A * (G @ A)) + 0.5 * eps * np.sum(A * A) - np.sum(A * Y)

    def jac(a):
        A = a.reshape(S, n_classes)
        return (G @ A + eps * A - Y).ravel()

    cons = {"type": "eq", "fun": lambda a: a.reshape(S, n_classes).sum(1),
            "jac": lambda a: np.kron(np.eye(S), np.ones((1, n_classes)))}
    res = minimize(f, np.zeros(S * n_classes), jac=jac, constraints=[cons], method="SLSQP",
                   bounds=[(None, u) for u in upper], options={"ftol": 1e-14, "maxiter": 1000})
    assert res.success, res.message
    return res.x.reshape(S, n_classes), res.fun


@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_metaoptnet_svm_matches_reference_qp_and_kkt(eps):
    from harness.algorithms.metaoptnet import solve_cs_dual

    rng = np.random.RandomState(0)
    S, K, d, C = 8, 3, 4, 0.1
    Z, y = rng.randn(S, d), np.arange(S) % K
    Zt = torch.tensor(Z)[None]
    Yt = F.one_hot(torch.tensor(y), K).double()[None]
    alpha, beta, info = solve_cs_dual(Zt, Yt, C, eps, max_iter=20000, tol=1e-12)
    alpha = alpha[0].numpy()
    ref, ref_fun = cs_dual_reference(Z, y, K, C, eps)
    Y = np.eye(K)[y]
    fun = 0.5 * np.sum(alpha * (Z @ Z.T @ alpha)) + 0.5 * eps * np.sum(alpha ** 2) - np.sum(alpha * Y)
    assert fun <= ref_fun + 1e-9
    np.testing.assert_allclose(Z.T @ alpha, Z.T @ ref, atol=1e-5)  # the primal W is unique
    if eps > 0:  # strictly convex dual: alpha unique too
        np.testing.assert_allclose(alpha, ref, atol=1e-5)
    # KKT: feasibility, and stationarity g_im = mu_i on free coordinates, g_im <= mu_i at the bound
    assert (alpha <= C * Y + 1e-12).all() and np.abs(alpha.sum(1)).max() < 1e-10
    g = Z @ Z.T @ alpha + eps * alpha - Y
    mu = g.max(1, keepdims=True)
    free = alpha < C * Y - 1e-9
    assert np.abs((g - mu)[free]).max() < 1e-6
    assert ((C * Y - alpha)[free] > 0).all() and free.any(1).all()


def test_metaoptnet_implicit_gradient_matches_finite_differences():
    from harness.algorithms.metaoptnet import svm_head_weights

    torch.manual_seed(0)
    zs = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    ys = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 0, 1, 1, 2, 2]])
    zq = torch.randn(2, 5, 4, dtype=torch.float64)
    proj = torch.randn(2, 5, 3, dtype=torch.float64)

    def loss(z):
        W, _ = svm_head_weights(z, ys, 3, 0.1, 0.5, max_iter=20000, tol=1e-13)
        return ((zq @ W) * proj).sum()

    (grad,) = torch.autograd.grad(loss(zs), zs)
    h, fd = 1e-6, torch.zeros_like(zs)
    with torch.no_grad():
        for idx in np.ndindex(*zs.shape):
            e = torch.zeros_like(zs)
            e[idx] = h
            fd[idx] = (loss(zs + e) - loss(zs - e)) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-4, atol=1e-6)


def test_metaoptnet_predicts_like_the_svm_it_solves():
    algo = build("MetaOptNet", n_envs=1)
    sx = torch.randn(12, 6)
    sy = torch.arange(12) % 3
    tasks = TaskBatch(sx[None], sy[None], sx[None], sy[None], 3)
    logs = algo.update(tasks)
    assert logs["svm_residual"] < algo.hparams["svm_tol"]
    logits = algo.adapt(sx, sy, 3)(torch.randn(5, 6))
    assert logits.shape == (5, 3)
    with pytest.raises(TypeError, match="adapt"):
        algo.predict(sx)


# --- MultiTask ---------------------------------------------------------------------------------
def nearly_rank_one(n=400, d=128, num_classes=2, seed=0):
    """Standardised features (as batchnorm leaves them) that all follow one direction, the shape
    MultiTask's features took on ColoredFashionMNIST (largest covariance eigenvalue ~d), and noisy labels."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 1, generator=g)
    z = s * torch.randn(1, d, generator=g).sign() + 0.05 * torch.randn(n, d, generator=g)
    z = (z - z.mean(0)) / z.std(0)
    edges = torch.linspace(-1, 1, num_classes + 1)[1:-1]
    y = torch.bucketize(s[:, 0] + 1.5 * torch.randn(n, generator=g), edges)
    return z, y


def head_loss(W, b, z, y):
    from harness.algorithms.episodic import head_logits

    return F.cross_entropy(head_logits(z, W[0], b[0]), y).item()


@pytest.mark.parametrize("num_classes", [2, 3])
def test_multitask_evaluation_head_descends_where_head_lr_cycles(num_classes):
    """The adapting head's steps are bounded by the features' curvature (multitask.stable_step), so its
    loss never rises; the same steps at the training ``head_lr`` of 0.5 do rise on these features."""
    from harness.algorithms.multitask import stable_step

    algo = build("MultiTask", num_classes=num_classes)
    z, y = nearly_rank_one(num_classes=num_classes)
    step = stable_step(z[None], num_classes)
    assert step.item() < algo.hparams["head_lr"] / 4
    losses, fixed = [], []
    for steps in range(1, 21):
        losses.append(head_loss(*algo.fit_heads(z[None], y[None], num_classes, steps, False, step), z, y))
        fixed.append(head_loss(*algo.fit_heads(z[None], y[None], num_classes, steps, False, 0.5), z, y))
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:]))
    assert any(b > a + 0.1 for a, b in zip(fixed, fixed[1:]))  # the cycle the bound removes
    algo.hparams["head_steps"] = 5  # the evaluation head: 4 x head_steps = 20 steps of the bounded size
    head = algo.fit_head(z[None], y[None], num_classes, adapting=True)
    assert F.cross_entropy(head(z[None])[0], y).item() == pytest.approx(losses[-1], abs=1e-6)


def test_multitask_evaluation_head_converges_to_logistic_regression():
    """With enough bounded steps the head is scikit-learn's unpenalised logistic regression on the same
    features; on features whose curvature allows ``head_lr`` the step is ``head_lr`` itself."""
    from sklearn.linear_model import LogisticRegression

    from harness.algorithms.multitask import stable_step

    algo = build("MultiTask", num_classes=3)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(300, 4, generator=g)
    y = torch.bucketize(z[:, 0] - z[:, 1] + torch.randn(300, generator=g), torch.tensor([-0.5, 0.5]))
    assert stable_step(z[None], 3).item() > algo.hparams["head_lr"]  # isotropic: the clamp leaves head_lr
    algo.hparams["head_steps"] = 500
    head = algo.fit_head(z[None], y[None], 3, adapting=True)
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(z.double().numpy(), y.numpy())
    ref_loss = F.cross_entropy(torch.from_numpy(ref.decision_function(z.double().numpy())), y).item()
    assert F.cross_entropy(head(z[None])[0], y).item() == pytest.approx(ref_loss, abs=1e-4)
