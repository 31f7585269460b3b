"""The SparseShared inner problem (Fumero et al., NeurIPS 2023, arXiv 2304.07939), one batch of T tasks::

    min_{W,b}  sum_t mean_i CE(Z_t W_t + b_t ; Y_t) + rho/2 ||W||^2
               + sum_t alpha_t R(W_t) + beta * lam_bar * Phi(A(W))

``R`` is the entrywise l1 norm or the row-wise L2,1 norm (group over classes); ``alpha_t = alpha *
lambda_max_t``, relative to the smallest penalty that makes ``W_t = 0`` optimal; ``lam_bar`` the
batch's mean ``lambda_max_t``. ``A_tj`` is row j's share of ``R(W_t)``, ``A_j = sum_t A_tj``,
``S = sum_j A_j`` and

    Phi(A) = sum_j At_j log(St / At_j),   At_j = A_j + delta S / d,   St = (1 + delta) S,

``St`` times the entropy of the importances mixed with a share ``delta`` (``sharing_eps``) of the
uniform distribution. Phi is concave and 1-homogeneous: on the sparsity term's scale, and its
derivative ``w_j = -log pt_j + delta/d sum_k (-log pt_k) > 0`` is a per-feature penalty weight
(never a reward for growth), at most about ``log(d / delta)`` for an unused feature.

:class:`InnerProblem` holds a batch in the solvers' layout, built once per step and shared by the
forward solve (``solver.py``) and the implicit backward (``implicit.py``). A head is the augmented
matrix ``U = [W; b]`` (T, d+1, K), its last row the bias (no penalty, no ridge), paired with the
features plus a row of ones. Scores and residuals are (T, K, n), classes before samples: PyTorch's
CPU softmax over a last dimension of a few classes is ~7x slower than over dimension 1 here.
Binary tasks use one logit (K = 1) and the logistic loss; otherwise K = n_classes and softmax.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from harness.algorithms.episodic import require_finite
from harness.algorithms.sparse_shared.penalties import SHARINGS, SPARSITIES, SharingTerm, SparsityNorm
from harness.linalg import top_eigenvalue_bound

GAUGE = 0.5  # curvature added along the constant-bias direction of softmax heads (CE is flat there)
SPARSITY = tuple(SPARSITIES)
SHARING = tuple(SHARINGS)
# The inner problem's and its solver's defaults, declared once: SparseShared's hparams, sparse_heads and
# solve take them from here
DEFAULTS = {"alpha": 0.3, "beta": 0.01, "rho": 1e-3, "sparsity": "l1", "sharing": "reweighted", "sharing_eps": 0.1,
            "mm_rounds": 50, "sharing_grad": "last_solve", "max_iter": 200, "tol": 1e-4}


def head_dims(n_classes: int) -> tuple[bool, int]:
    """``(binary, K)``: binary heads have a single logit column."""
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    return n_classes == 2, (1 if n_classes == 2 else n_classes)


def norm_of(sparsity: "str | SparsityNorm") -> SparsityNorm:
    return sparsity if isinstance(sparsity, SparsityNorm) else SPARSITIES.get_or_fail(sparsity, "sparsity")


def row_importance(W: torch.Tensor, sparsity: "str | SparsityNorm") -> torch.Tensor:
    """A_tj, row j's share of R(W_t): its l1 norm (l1) or l2 norm (group), (T, d)."""
    return norm_of(sparsity).importance(W)


def sharing_weights(W: torch.Tensor, sparsity: "str | SparsityNorm", delta: float,
                    sharing: "str | SharingTerm" = "reweighted") -> tuple[torch.Tensor, torch.Tensor]:
    """(w, pt), both (d,): w_j = df/dA_j of the sharing term f at the heads W and the mixed importance
    distribution pt (uniform for all-zero heads)."""
    term = sharing if isinstance(sharing, SharingTerm) else SHARINGS.get_or_fail(sharing, "sharing")
    return term.weights(row_importance(W.detach(), sparsity).sum(dim=0), delta)


def _targets(Y: torch.Tensor, K: int, binary: bool, dtype) -> torch.Tensor:
    """(T, n, K): y in {0, 1} for binary heads, one-hot otherwise."""
    return Y.to(dtype).unsqueeze(-1) if binary else F.one_hot(Y.long(), K).to(dtype)


@torch.no_grad()
def lambda_max(Z: torch.Tensor, Y: torch.Tensor, n_classes: int, sparsity: "str | SparsityNorm" = "l1") -> torch.Tensor:
    """Smallest per-task penalty making W_t = 0 optimal (at W = 0's optimal intercept), (T,); 32 ulps
    of head-room so that alpha = 1 gives exact zeros despite round-off."""
    binary, K = head_dims(n_classes)
    Yt = _targets(Y.to(Z.device), K, binary, Z.dtype)
    G = torch.bmm(Z.detach().transpose(1, 2), Yt.mean(dim=1, keepdim=True) - Yt) / Z.shape[1]  # (T, d, K)
    return norm_of(sparsity).dual_max(G) * (1.0 + 32 * torch.finfo(Z.dtype).eps)


class InnerProblem(NamedTuple):
    """One batch's inner problem; the penalty ``pen`` of a convex solve is (T, d+1, 1), zero on the bias row."""

    Zat: torch.Tensor  # (T, d+1, n) features with a row of ones
    Za_n: torch.Tensor  # (T, n, d+1) the same, transposed and divided by n (the gradient's product)
    Yk: torch.Tensor  # (T, K, n) targets
    binary: bool
    sparsity: SparsityNorm  # R, the sparsity norm (penalties.SPARSITIES)
    rho: float
    ridge: torch.Tensor  # (1, d+1, K) rho on W rows, 0 on the bias row
    alpha_t: torch.Tensor  # (T, d+1, 1) alpha * lambda_max_t on W rows, 0 on the bias row
    sharing: float  # the sharing term's weight, e.g. beta * lam_bar (0: none)
    delta: float  # sharing_eps
    term: SharingTerm  # f, the sharing term (penalties.SHARINGS)

    @staticmethod
    def build(Z: torch.Tensor, Y: torch.Tensor, n_classes: int, alpha: float = DEFAULTS["alpha"],
              beta: float = DEFAULTS["beta"], rho: float = DEFAULTS["rho"], sparsity: str = DEFAULTS["sparsity"],
              sharing_eps: float = DEFAULTS["sharing_eps"], lam: Optional[torch.Tensor] = None,
              sharing: str = DEFAULTS["sharing"]) -> "InnerProblem":
        """From (T, n, d) support features and (T, n) labels; ``lam`` fixes lambda_max (computed when None)."""
        norm, term = SPARSITIES.get_or_fail(sparsity, "sparsity"), SHARINGS.get_or_fail(sharing, "sharing")
        if Z.dim() != 3:
            raise ValueError(f"Z must be (T, n, d), got {tuple(Z.shape)}")
        Z = Z.detach()
        require_finite(Z)
        T, n, d = Z.shape
        binary, K = head_dims(n_classes)
        Y = Y.to(Z.device)
        lam = lambda_max(Z, Y, n_classes, norm) if lam is None else lam.detach().to(Z).reshape(T)
        Zat = torch.cat([Z.transpose(1, 2), Z.new_ones(T, 1, n)], dim=1).contiguous()
        alpha_t = torch.cat([(alpha * lam).view(T, 1, 1).expand(T, d, 1), Z.new_zeros(T, 1, 1)], dim=1)
        # per-row constants are stored at full width: broadcasting along the last dimension is 3-6x slower
        ridge = torch.cat([Z.new_full((1, d, K), float(rho)), Z.new_zeros(1, 1, K)], dim=1)
        Yk = _targets(Y, K, binary, Z.dtype).transpose(1, 2).contiguous()
        return InnerProblem(Zat, Zat.transpose(1, 2) / n, Yk, binary, norm, float(rho), ridge, alpha_t,
                            term.scale(beta, lam), float(sharing_eps), term)

    @property
    def d(self) -> int:
        return self.Zat.shape[1] - 1

    def with_sharing(self, w: torch.Tensor) -> torch.Tensor:
        """The penalty of the sharing term linearised with weights w (d,): alpha_t + scale w_j on W rows (held at
        0 or more where a term that is not concave would make it negative)."""
        pen = self.alpha_t + self.sharing * torch.cat([w, w.new_zeros(1)]).view(1, -1, 1)
        return pen if self.term.concave else pen.clamp_min(0)

    def initial_heads(self) -> torch.Tensor:
        """U with W = 0 and the optimal intercept for it (log class frequency, or logit of the positive rate)."""
        T, K = self.Yk.shape[:2]
        freq = self.Yk.mean(dim=2)
        tiny = torch.finfo(freq.dtype).tiny ** 0.5
        if self.binary:
            f = freq.clamp(tiny, 1 - torch.finfo(freq.dtype).eps)
            b = torch.log(f) - torch.log1p(-f)
        else:
            b = torch.log(freq.clamp_min(tiny))
        return torch.cat([self.Zat.new_zeros(T, self.d, K), b.unsqueeze(1)], dim=1)

    def scores(self, U: torch.Tensor) -> torch.Tensor:
        """(T, K, n) logits."""
        return torch.bmm(U.transpose(1, 2), self.Zat)

    def probs(self, S: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(S) if self.binary else torch.softmax(S, dim=1)

    def grad(self, U: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """Gradient of mean CE + rho/2 ||W||^2 from the residual R = probs - targets, (T, d+1, K)."""
        # R (Za / n) and a transposed add: faster than Zat R^T, whose output rows are K long (40 vs 47 us at
        # T=16 n=50 d=64 K=5)
        return (U * self.ridge).add_(torch.bmm(R, self.Za_n).transpose(1, 2))

    def smooth_grad(self, U: torch.Tensor) -> torch.Tensor:
        return self.grad(U, self.probs(self.scores(U)) - self.Yk)

    def objective(self, U: torch.Tensor, pen: torch.Tensor, S: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-task convex objective (T,): CE + rho/2 ||W_t||^2 + sum_j pen_tj A_tj (S: U's scores, if known)."""
        S, W = self.scores(U) if S is None else S, U[:, :-1]
        if self.binary:
            ce = (F.softplus(S) - self.Yk * S).sum(dim=(1, 2)) / S.shape[2]
        else:
            ce = (torch.log_softmax(S, dim=1) * self.Yk).sum(dim=(1, 2)) / -S.shape[2]
        penalty = (pen[:, :-1, 0] * self.sparsity.importance(W)).sum(1)
        return ce + 0.5 * self.rho * (W * W).sum(dim=(1, 2)) + penalty

    def prox_step(self, U: torch.Tensor, pen: torch.Tensor, eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prox(U - eta g), the per-task KKT residual ||(U - that) / eta||) of the convex problem with penalty
        ``pen``, g the smooth gradient."""
        Up = self.sparsity.prox(U - eta * self.smooth_grad(U), eta * pen)
        return Up, ((U - Up) / eta).square().sum((1, 2)).sqrt()

    def lipschitz(self) -> torch.Tensor:
        """Per-task Lipschitz bound of the smooth gradient, (T,)."""
        Za, n = self.Zat, self.Zat.shape[2]
        G = torch.bmm(Za.transpose(1, 2), Za) if n <= Za.shape[1] else torch.bmm(Za, Za.transpose(1, 2))
        # the ones row keeps tr G >= n > 0; head-room for the round-off of the squarings
        lam = top_eigenvalue_bound(G) * (1.0 + 1e3 * torch.finfo(G.dtype).eps)
        return (0.25 if self.binary else 0.5) * lam / n + self.rho

    def jp(self, P: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        """The (symmetric) Jacobian of probs at probabilities P applied to scores S, per sample."""
        if self.binary:
            return P * (1 - P) * S
        PS = P * S
        return PS - P * PS.sum(dim=1, keepdim=True)

    def hessian(self, U: torch.Tensor, P: torch.Tensor, A: "ActiveSet", pen: torch.Tensor) -> torch.Tensor:
        """Hessian of the convex objective on the compressed active set at U (probabilities P), (T, m, m).

        Identity on padding slots; softmax heads get ``GAUGE`` curvature along the constant-bias
        direction, so the matrix is positive definite."""
        T, d1, n = self.Zat.shape
        K, m, dtype = U.shape[2], A.m, U.dtype
        vf, wf = A.valid.to(dtype), A.is_w.to(dtype)
        Zg = A.rows(self.Zat, A.j_idx) * vf.unsqueeze(2)  # (T, m, n)
        if self.binary:  # Z diag(p (1 - p)) Z^T: the general form below, in one product (2x faster)
            H = torch.bmm(Zg * (P * (1 - P) / n), Zg.transpose(1, 2))
        else:  # Z (diag(p_k) [k = l] - p_k p_l) Z^T, both products in one call
            ZP = Zg * A.rows(P, A.k_idx)
            both = torch.bmm(ZP / n, torch.cat([Zg, ZP], dim=1).transpose(1, 2))
            same_class = F.one_hot(A.k_idx, K).to(dtype)
            H = both[:, :, :m] * torch.bmm(same_class, same_class.transpose(1, 2)) - both[:, :, m:]
        diag = self.rho * wf + (1 - vf)
        curvature = self.norm_curvature(U, pen)
        if curvature is not None:  # g_j (I - u_j u_j^T) on the slots of row j
            g, u = curvature
            g, u = g[:, :, 0].gather(1, A.j_idx) * wf, A.gather(u)
            same_row = (A.j_idx.unsqueeze(2) == A.j_idx.unsqueeze(1)).to(dtype)
            H, diag = H - same_row * (g.unsqueeze(2) * u.unsqueeze(2) * u.unsqueeze(1)), diag + g
        H = H + torch.diag_embed(diag)
        if not self.binary:
            isb = ((A.j_idx == d1 - 1) & A.valid).to(dtype)
            H = H + (GAUGE / K) * isb.unsqueeze(2) * isb.unsqueeze(1)
        return H

    def hvp(self, U: torch.Tensor, P: torch.Tensor, M: torch.Tensor, pen: torch.Tensor, full_sharing: bool = False):
        """V -> H V on the active set (mask M, (T, d+1, K)), matrix-free; the same H as :meth:`hessian`,
        plus :meth:`sharing_hessian` with ``full_sharing``."""
        curvature = self.norm_curvature(U, pen)
        sharing = self.sharing_hessian(U) if full_sharing else None

        def apply(V: torch.Tensor) -> torch.Tensor:
            V = V * M
            out = self.grad(V, self.jp(P, self.scores(V)))
            if curvature is not None:
                g, u = curvature
                out += g * (V - u * (u * V).sum(dim=2, keepdim=True))
            if sharing is not None:
                out += sharing(V)
            if not self.binary:  # the gauge along the constant-bias direction
                out[:, -1:] += (GAUGE / V.shape[2]) * V[:, -1:].sum(dim=2, keepdim=True)
            return out * M

        return apply

    def sharing_hessian(self, U: torch.Tensor):
        """V -> ``scale J^T Hess(f) J V``, the sharing term's Hessian (zero on the bias row), J = dA/dW (signs for
        l1, unit rows for group; the row norms' own curvature is in the convex Hessian through the per-row
        penalty)."""
        q = F.pad(self.sparsity.importance_grad(U[:, :-1]), (0, 0, 0, 1))  # zero on the bias row
        A = (q * U).sum(dim=(0, 2))[:-1]  # (d,)
        hess = self.term.hessian(A, self.delta)

        def apply(V: torch.Tensor) -> torch.Tensor:
            h = hess((q * V).sum(dim=(0, 2))[:-1])
            return self.sharing * q * torch.cat([h, h.new_zeros(1)]).view(1, -1, 1)

        return apply

    def row_blocks(self, U: torch.Tensor, P: torch.Tensor, pen: torch.Tensor) -> torch.Tensor:
        """H's K x K block on each row of U (T, d+1, K, K), as if the whole row were active: preconditioners."""
        T, d1, n = self.Zat.shape
        K = U.shape[2]
        Zsq, Pn = self.Zat.square(), P.transpose(1, 2)  # (T, d+1, n), (T, n, K)
        PP = (Pn.unsqueeze(3) * Pn.unsqueeze(2)).reshape(T, n, K * K)
        B = (torch.diag_embed(torch.bmm(Zsq, Pn)) - torch.bmm(Zsq, PP).view(T, d1, K, K)) / n
        eye = torch.eye(K, dtype=U.dtype, device=U.device)
        extra = torch.cat([self.rho * eye.expand(T, d1 - 1, K, K),
                           torch.full((T, 1, K, K), 0.0 if self.binary else GAUGE / K).to(U)], dim=1)
        curvature = self.norm_curvature(U, pen)
        if curvature is not None:
            g, u = curvature
            extra += g.unsqueeze(3) * (eye - u.unsqueeze(3) * u.unsqueeze(2))
        return B + extra

    def norm_curvature(self, U: torch.Tensor, pen: torch.Tensor):
        """The sparsity norm's own Hessian ``(g, u)`` on the rows of U (bias row 0), or None (``SparsityNorm.curvature``)."""
        if not self.sparsity.curved:
            return None
        return self.sparsity.curvature(torch.cat([U[:, :-1], torch.zeros_like(U[:, -1:])], dim=1), pen)


class ActiveSet(NamedTuple):
    """The active entries of U (non-zero W entries for l1, non-zero rows for group, every bias entry),
    compressed per task to its first ``m`` slots (m the largest count over tasks, the rest padding)."""

    idx: torch.Tensor  # (T, m) flat indices into the (d+1) * K augmented head
    valid: torch.Tensor  # (T, m) the slot holds an active entry
    j_idx: torch.Tensor  # (T, m) row of each slot (d: the bias row)
    k_idx: torch.Tensor  # (T, m) column of each slot
    is_w: torch.Tensor  # (T, m) valid and penalised (not a bias entry)

    @staticmethod
    def of(M: torch.Tensor) -> "ActiveSet":
        T, d1, K = M.shape
        N = d1 * K
        Mf = M.reshape(T, N)
        # active entries first, in order, then inactive ones as padding: the m smallest of position + N * inactive
        key = torch.arange(N, device=M.device) + N * ~Mf
        key = torch.topk(key, int(Mf.sum(dim=1).max()), dim=1, largest=False).values
        valid = key < N
        idx = torch.where(valid, key, key - N)
        j_idx = idx // K
        return ActiveSet(idx, valid, j_idx, idx - j_idx * K, (j_idx < d1 - 1) & valid)

    @property
    def m(self) -> int:
        return self.idx.shape[1]

    def rows(self, X: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(T, r, n) -> (T, m, n): row index[t, s] of X[t] in slot s."""
        T, r, n = X.shape
        flat = index + r * torch.arange(T, device=X.device).unsqueeze(1)
        return X.reshape(T * r, n).index_select(0, flat.flatten()).view(T, -1, n)

    def gather(self, X: torch.Tensor) -> torch.Tensor:
        """(T, d+1, K) -> (T, m), zero on padding."""
        return X.reshape(X.shape[0], -1).gather(1, self.idx) * self.valid.to(X.dtype)

    def scatter(self, v: torch.Tensor, shape) -> torch.Tensor:
        """(T, m) -> (T, d+1, K), zero off the active set."""
        out = v.new_zeros(v.shape[0], shape[1] * shape[2])
        return out.scatter_(1, self.idx, v * self.valid.to(v.dtype)).view(shape)


def active_mask(U: torch.Tensor, sparsity: "str | SparsityNorm") -> torch.Tensor:
    """(T, d+1, K) bool mask of U's active entries (the bias row always active)."""
    M = norm_of(sparsity).active(U)
    M[:, -1] = True
    return M
