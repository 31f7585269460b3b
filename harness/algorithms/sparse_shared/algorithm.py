"""SparseShared: sparse and shared feature activations (Fumero et al., NeurIPS 2023, arXiv 2304.07939)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from harness.algorithms.episodic import EpisodicAlgorithm, Head, feature_norm, head_logits
from harness.algorithms.sparse_shared.implicit import SHARING_GRAD, sparse_heads
from harness.algorithms.sparse_shared.problem import DEFAULTS, SHARING, SPARSITY, row_importance
from harness.hparams import HP, above, at_least, in_range, log_uniform, one_of, uniform
from harness.metrics.sharing import entropy, sharing_stats
from harness.registry import ALGORITHMS


@ALGORITHMS.register("SparseShared")
class SparseShared(EpisodicAlgorithm):
    """Backbone trained through per-task heads fitted with sparsity and sharing penalties.

    Each task's linear head solves ``CE(support) + alpha_t R(W_t) + beta lam_bar Phi(A(W)) + rho/2 ||W||^2``
    jointly over the batch (``problem.py``, ``solver.py``; Phi the sharing term, smallest when the tasks use the same
    features); the backbone gets the query loss gradient through the heads by implicit differentiation
    (``implicit.py``). See docs/design.md, "SparseShared as implemented".
    """

    HPARAMS = {
        "alpha": HP(DEFAULTS["alpha"], uniform(0.05, 0.7), in_range(0, 1, note=" (relative to each task's lambda_max)")),
        # the sharing weight, relative to the batch's mean lambda_max (the default form); the study (docs/study)
        # found 0.03 and more lowered DCI disentanglement on SyntheticLinear, 0.01 did not
        "beta": HP(DEFAULTS["beta"], log_uniform(-3, -0.5), at_least(0)),
        "rho": HP(DEFAULTS["rho"], domain=above(0)),
        "sparsity": HP(DEFAULTS["sparsity"], domain=one_of(*SPARSITY)),  # group: over the classes of a feature row
        # the sharing term (penalties.py): reweighted = beta lam_bar St H(pt), entropy = the paper's beta H(pt), none
        "sharing": HP(DEFAULTS["sharing"], domain=one_of(*SHARING)),
        "sharing_eps": HP(DEFAULTS["sharing_eps"], domain=in_range(0, 1, open_lo=True)),  # delta: the uniform share
        # majorise-minimise: the most linearisations of the sharing term per solve; a cap, not a setting: the
        # weights settle after ~3 at beta 0.01, 16-50 at beta 0.1 (benchmarks/bench_mm_rounds.py)
        "mm_rounds": HP(DEFAULTS["mm_rounds"], domain=at_least(1)),
        # the sharing term's Hessian in the gradient (implicit.sparse_heads)
        "sharing_grad": HP(DEFAULTS["sharing_grad"], domain=one_of(*SHARING_GRAD)),
        # the backward's linear solve: dense Cholesky or MINRES (auto: by the active set's size), MINRES's cap
        "backward": HP("auto", domain=one_of("auto", "dense", "iterative")),
        "backward_max_iter": HP(1000, domain=at_least(1)),
        "feature_norm": HP("batchnorm", domain=one_of("batchnorm", "layernorm", "none")),
        "init_scale": HP(5.0, domain=above(0)),
        "inner_max_iter": HP(DEFAULTS["max_iter"], domain=at_least(1)),
        "inner_tol": HP(DEFAULTS["tol"], domain=above(0)),
        "adapt_max_iter": HP(3000, domain=at_least(1)),  # the solver's cap in adapt (larger problems)
        "weight_decay": HP(0.0),
    }
    PLOT_LOGS = {"usage": "heatmap", "probe_sharing": "curve", "probe_features_used": "curve"}
    PLOT_AXES = {"usage": ("task", "feature")}  # usage is T tasks x d features

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        d = self.featurizer.n_outputs
        self.norm = feature_norm(hparams["feature_norm"], d)
        self.log_scale = nn.Parameter(torch.tensor(math.log(hparams["init_scale"])))
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.featurizer(x))

    def solve(self, z_support: torch.Tensor, y_support: torch.Tensor, n_classes: int, max_iter: int | None = None,
              shared: bool = True):
        """The batch's heads; ``shared=False`` solves with the sparsity penalty alone (beta = 0)."""
        h = self.hparams
        return sparse_heads(z_support, y_support, n_classes, alpha=h["alpha"], beta=h["beta"] if shared else 0.0,
                            rho=h["rho"], sparsity=h["sparsity"], sharing_eps=h["sharing_eps"], sharing=h["sharing"],
                            mm_rounds=h["mm_rounds"], sharing_grad=h["sharing_grad"], backward=h["backward"],
                            backward_max_iter=h["backward_max_iter"],
                            max_iter=max_iter or h["inner_max_iter"], tol=h["inner_tol"])

    def fit_head(self, zs: torch.Tensor, ys: torch.Tensor, n_classes: int, adapting: bool = False) -> Head:
        """Training: the batch's heads with both penalties, logits times the learned scale. A new task
        (``adapt``): solved with the sparsity penalty alone (with one task the sharing term no longer
        measures sharing) to the larger cap ``adapt_max_iter`` (a DG head of thousands of points, all
        classes, needs far more iterations than an episode)."""
        if adapting:
            W, b, _ = self.solve(zs, ys, n_classes, max_iter=self.hparams["adapt_max_iter"], shared=False)
            return lambda zq: head_logits(zq, W, b)
        W, b, self._info = self.solve(zs, ys, n_classes)
        self._info["W"] = W.detach()
        return lambda zq: self.log_scale.exp() * head_logits(zq, W, b)

    def step_logs(self, logits, tasks) -> dict[str, float]:
        info = self._info
        return {**{f"inner_{k}": float(info[k]) for k in ("iters", "newton_steps", "mm_rounds")},
                "kkt": float(info["kkt"]), "frac_zero": float(info["frac_zero"]),
                # H(p), p_j proportional to sum_t ||W_tj||_2 (report.py's "train sharing" is 1 - H / log d)
                "entropy": entropy(row_importance(info["W"], "group").sum(dim=0)),
                "scale": self.log_scale.exp().item()}

    @torch.no_grad()
    def checkpoint_logs(self, probe) -> dict[str, Any]:
        """Feature usage (T x d) on the fixed probe tasks and its sharing statistics
        (:func:`harness.metrics.sharing.sharing_stats`).

        The probe heads are solved like new tasks (sparsity alone, to ``adapt_max_iter``), so the
        statistics describe the representation, not the training beta's direct pull on the heads."""
        T, S = probe.support_y.shape
        zs = self.features(probe.support_x.flatten(0, 1)).view(T, S, -1)
        W, _, info = self.solve(zs, probe.support_y, probe.n_classes, max_iter=self.hparams["adapt_max_iter"],
                                shared=False)
        usage = row_importance(W, self.hparams["sparsity"])
        stats = {f"probe_{k}": v for k, v in sharing_stats(usage).items()}
        return {"usage": usage.cpu().tolist(), "probe_frac_zero": (W == 0).float().mean().item(), **stats,
                "probe_inner_iters": info["iters"], "probe_inner_newton_steps": info["newton_steps"],
                "probe_kkt": info["kkt"]}
