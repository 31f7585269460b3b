"""The penalties of the SparseShared inner problem (arXiv 2304.07939) as small registered pieces.

A **sparsity norm** ``R(W_t) = sum_j A_tj`` (hparam ``sparsity``) says what a row's importance ``A_tj``
is, its prox, its dual (for lambda_max), which entries are active and its own curvature. A **sharing
term** (hparam ``sharing``) is a function ``f(A)`` of the batch's importances ``A_j = sum_t A_tj``, weighted
by ``scale`` (:meth:`SharingTerm.scale`); the solver linearises it (majorise-minimise, exact for a concave
f) into per-feature weights ``w_j = df/dA_j`` and the implicit backward with ``sharing_grad="full"`` uses its
Hessian. The forward solve (``solver.py``) and the backward (``implicit.py``) reach a penalty only through
these methods, so a new variant is one class and a decorator; tests/test_penalties.py runs the
correctness tests over every registered variant. A sharing variant (concave, so majorise-minimise
descends; tests/test_penalties.py registers this one)::

    @SHARINGS.register("sqrt")
    class SqrtSharing(SharingTerm):
        '''f(A) = sum_j sqrt(A_j + delta): smallest when the weight sits on few features.'''

        def value(self, A, delta):
            return torch.sqrt(A + delta).sum()

        def weights(self, A, delta):  # (df/dA, the distribution whose settling ends MM)
            return 0.5 / torch.sqrt(A + delta), mixed_distribution(A, delta)[0]

        def hessian(self, A, delta):
            return lambda x: -0.25 * (A + delta) ** -1.5 * x
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

Hvp = Callable[[torch.Tensor], torch.Tensor]


class Registry(dict):
    """name -> instance; ``@REGISTRY.register("name")`` on a class registers an instance of it."""

    def register(self, name: str):
        def deco(cls):
            cls.name = name
            self[name] = cls()
            return cls

        return deco

    def get_or_fail(self, name: str, what: str):
        if name not in self:
            raise ValueError(f"{what} must be one of {' | '.join(self)}, got {name!r}")
        return self[name]


SPARSITIES: Registry = Registry()
SHARINGS: Registry = Registry()


# --- sparsity norms ----------------------------------------------------------------------------
class SparsityNorm:
    """``R(W_t) = sum_j A_tj`` over the rows j of a head W_t (d, K)."""

    name = ""
    whole_rows = False  # rows are active or not as a whole (the Hessian's K x K row blocks are then exact)
    curved = False  # it has a Hessian on its support (:meth:`curvature`)

    def importance(self, W: torch.Tensor) -> torch.Tensor:
        """A_tj (T, d) of heads W (T, d, K)."""
        raise NotImplementedError

    def importance_grad(self, W: torch.Tensor) -> torch.Tensor:
        """dA_tj / dW_tj on the support (0 off it), W's shape."""
        raise NotImplementedError

    def prox(self, V: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
        """Prox of ``thr * R`` with exact zeros (thr constant along V's rows)."""
        raise NotImplementedError

    def dual_max(self, G: torch.Tensor) -> torch.Tensor:
        """(T,): the dual norm of the gradient G (T, d, K) at W = 0, i.e. the smallest penalty making W = 0 optimal."""
        raise NotImplementedError

    def active(self, W: torch.Tensor) -> torch.Tensor:
        """Bool mask of W's active entries, W's shape."""
        raise NotImplementedError

    def pattern(self, W: torch.Tensor) -> torch.Tensor:
        """What must stop changing before Newton starts (signs, or which rows are non-zero)."""
        raise NotImplementedError

    def same_side(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """Entries of a step that stay on the support's closure (the rest become zero)."""
        raise NotImplementedError

    def curvature(self, W: torch.Tensor, pen: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """``(g, u)`` if the norm's Hessian on row j is ``g_j (I - u_j u_j^T)`` (g (T, r, 1), u W's shape, 0 on
        zero rows), None if it has none on its support (l1)."""
        return None


@SPARSITIES.register("l1")
class L1(SparsityNorm):
    """Entrywise: A_tj = ||W_t[j, :]||_1."""

    def importance(self, W):
        return W.abs().sum(dim=2)

    def importance_grad(self, W):
        return torch.sign(W)

    def prox(self, V, thr):
        return V - torch.clamp(V, min=-thr, max=thr)  # soft-thresholding in 2 operations instead of 5

    def dual_max(self, G):
        return G.abs().amax(dim=(1, 2))

    def active(self, W):
        return W != 0

    def pattern(self, W):
        return torch.sign(W)

    def same_side(self, new, old):
        return new * old > 0


@SPARSITIES.register("group")
class Group(SparsityNorm):
    """Row-wise over the classes (L2,1): A_tj = ||W_t[j, :]||_2; a feature is used by a task or not."""

    whole_rows = curved = True

    def importance(self, W):
        return torch.linalg.vector_norm(W, dim=2)

    def importance_grad(self, W):
        nr = torch.linalg.vector_norm(W, dim=2, keepdim=True)
        return W / torch.where(nr > 0, nr, torch.ones_like(nr))

    def prox(self, V, thr):
        nrm = torch.linalg.vector_norm(V, dim=2, keepdim=True)
        return V * torch.clamp(1 - thr / nrm.clamp_min(torch.finfo(V.dtype).tiny), min=0)

    def dual_max(self, G):
        return torch.linalg.vector_norm(G, dim=2).amax(dim=1)

    def active(self, W):
        return (W != 0).any(dim=2, keepdim=True).expand_as(W).clone()

    def pattern(self, W):
        return W.ne(0).any(dim=2).to(W.dtype)

    def same_side(self, new, old):
        return (new * old).sum(dim=2, keepdim=True) > 0

    def curvature(self, W, pen):
        u = self.importance_grad(W)
        nr = torch.linalg.vector_norm(W, dim=2, keepdim=True)
        return torch.where(nr > 0, pen / torch.where(nr > 0, nr, torch.ones_like(nr)), 0.0), u


# --- sharing terms -----------------------------------------------------------------------------
class SharingTerm:
    """A function f of the batch's importances A (d,), weighted by :meth:`scale` in the inner objective."""

    name = ""
    concave = True  # its linearisation lies above it: majorise-minimise descends, the weights are >= 0

    def scale(self, beta: float, lam: torch.Tensor) -> float:
        """The term's weight from the hparam beta and the batch's lambda_max_t (T,): ``beta * mean lambda_max``."""
        return float(beta) * float(lam.mean())

    def value(self, A: torch.Tensor, delta: float) -> torch.Tensor:
        """f(A), differentiable (the tests differentiate it to check :meth:`weights` and :meth:`hessian`)."""
        raise NotImplementedError

    def weights(self, A: torch.Tensor, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, p), both (d,): w_j = df/dA_j at A, and the importance distribution whose settling ends MM."""
        raise NotImplementedError

    def hessian(self, A: torch.Tensor, delta: float) -> Hvp:
        """x (d,) -> Hess f(A) x."""
        raise NotImplementedError


def mixed_distribution(A: torch.Tensor, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pt, St): the importances as a distribution mixed with a share ``delta`` of the uniform one,
    ``pt_j = (A_j + delta S / d) / St``, ``St = (1 + delta) S`` (uniform when A = 0)."""
    d, S = A.shape[0], A.sum()
    pt = torch.full_like(A, 1.0 / d) if float(S.detach()) <= 0 else (A + delta * S / d) / ((1 + delta) * S)
    return pt, (1 + delta) * S


@SHARINGS.register("reweighted")
class Reweighted(SharingTerm):
    """``Phi(A) = St H(pt)`` (scale ``beta * mean lambda_max``): the entropy of the mixed importance distribution
    times the total importance, concave and 1-homogeneous, so on the sparsity term's scale and never a reward
    for larger heads (docs/design.md, "SparseShared as implemented")."""

    def value(self, A, delta):
        pt, St = mixed_distribution(A, delta)
        return St * -(pt * torch.log(pt)).sum()

    def weights(self, A, delta):
        d = A.shape[0]
        pt, _ = mixed_distribution(A, delta)
        nlog = -torch.log(pt)
        return nlog + (delta / d) * nlog.sum(), pt

    def hessian(self, A, delta):
        # Phi = St log St - sum_j At_j log At_j, At = M A, M = I + delta/d 11^T: Hess = M (11^T / St - diag(1 / At)) M
        d, S = A.shape[0], A.sum()
        v, St, mix = 1.0 / (A + delta * S / d), (1 + delta) * S, delta / d

        def apply(x: torch.Tensor) -> torch.Tensor:
            x = x + mix * x.sum()
            h = x.sum() / St - v * x
            return h + mix * h.sum()

        return apply


@SHARINGS.register("entropy")
class Entropy(SharingTerm):
    """The paper's form, ``beta * H(pt)`` (scale ``beta``, in the loss's units): the entropy of the (mixed)
    importance distribution alone. Scale-free in A (0-homogeneous) and not concave: its linearisation
    rewards (w_j < 0) the features that carry more than their share, so majorise-minimise becomes a
    fixed-point reweighting without a descent guarantee, and a row penalty the linearisation would make
    negative is held at 0 (``InnerProblem.with_sharing``) so that the convex problem keeps its prox."""

    concave = False

    def scale(self, beta, lam):
        return float(beta)

    def value(self, A, delta):
        pt, _ = mixed_distribution(A, delta)
        return -(pt * torch.log(pt)).sum()

    def weights(self, A, delta):
        # d(Phi / St)/dA_j = w_j / St - (1 + delta) H / St, with Phi's weights w
        w, pt = SHARINGS["reweighted"].weights(A, delta)
        _, St = mixed_distribution(A, delta)
        H = -(pt * torch.log(pt)).sum()
        return (w - (1 + delta) * H) / St.clamp_min(torch.finfo(A.dtype).tiny), pt

    def hessian(self, A, delta):
        # f = Phi / St: Hess f = Hess Phi / St - c (w 1^T + 1 w^T) / St^2 + 2 c^2 Phi 11^T / St^3, c = 1 + delta
        phi = SHARINGS["reweighted"]
        phi_hvp, w = phi.hessian(A, delta), phi.weights(A, delta)[0]
        _, St = mixed_distribution(A, delta)
        c, Phi = 1 + delta, phi.value(A, delta)

        def apply(x: torch.Tensor) -> torch.Tensor:
            return (phi_hvp(x) / St - c * (w * x.sum() + (w * x).sum()) / St ** 2
                    + 2 * c ** 2 * Phi * x.sum() / St ** 3)

        return apply


@SHARINGS.register("none")
class NoSharing(SharingTerm):
    """No sharing term whatever beta is: sparsity alone."""

    def scale(self, beta, lam):
        return 0.0

    def value(self, A, delta):
        return A.sum() * 0

    def weights(self, A, delta):
        return torch.zeros_like(A), mixed_distribution(A, delta)[0]

    def hessian(self, A, delta):
        return torch.zeros_like
