"""The algorithm protocol.

An algorithm is a ``torch.nn.Module`` built as ``Algo(input_shape, num_classes, num_domains,
hparams)``. Training calls ``update(batch)``, which takes its own optimizer step and returns
a dict of floats to log. ``EPISODIC`` says what ``batch`` is:

- ``False``: a list with one ``(x, y)`` minibatch per training environment (DomainBed);
- ``True``: a ``harness.datasets.tasks.TaskBatch`` of T tasks (support/query sets).

``predict(x)`` gives logits over the dataset's classes, ``features(x)`` the representation
in R^d, and ``adapt(support_x, support_y)`` fits a head for a new task on frozen features
and returns a predictor ``x -> logits`` (default: a multinomial logistic-regression probe).
``checkpoint_logs(probe)`` adds values to each checkpoint record; a class attribute
``PLOT_LOGS = {"key": "curve" | "heatmap"}`` names the logged values ``harness.plots`` should draw
(a scalar per checkpoint as a training curve, a matrix as a heatmap of each run's last checkpoint);
``PLOT_AXES = {"key": ("rows", "columns")}`` names a heatmap's axes (e.g. ``("task", "feature")``).
Hparams: ``HPARAMS = {"name": HP(default, sampler, domain)}`` on the class.
Episodic algorithms are evaluated on the dataset's label through ``adapt`` on the training
split. Optimizers stored as attributes are saved in ``state_dict()`` (via
``get_extra_state``), so ``state_dict`` alone is enough to resume a run. Two rules keep
resume exact: create every optimizer in ``__init__`` under a fixed attribute name, and draw
randomness in ``update`` from torch's global RNG (the trainer seeds it every step).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from harness.backbones import build_backbone


class Algorithm(nn.Module):
    EPISODIC: bool = False
    HPARAMS: dict = {}  # name -> harness.hparams.HP; the engine adds the episodic ones when EPISODIC

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: dict):
        super().__init__()
        self.input_shape, self.num_classes, self.num_domains = tuple(input_shape), num_classes, num_domains
        self.hparams = hparams
        self.featurizer = build_backbone(hparams["backbone"], self.input_shape, hparams)
        if not self.EPISODIC:  # episodic algorithms fit their heads per task
            self.classifier = nn.Linear(self.featurizer.n_outputs, num_classes)

    # --- to implement ---------------------------------------------------------------
    def update(self, batch: Any) -> dict[str, float]:
        raise NotImplementedError

    # --- defaults ---------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.featurizer(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.EPISODIC:
            raise TypeError(f"{type(self).__name__} is episodic: predict through adapt(support_x, support_y)(x)")
        return self.classifier(self.features(x))

    @torch.no_grad()
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, num_classes: int | None = None):
        """A linear probe on frozen features (L-BFGS on multinomial logistic loss + small L2)."""
        with eval_mode(self):
            z = self.features(support_x)
        head = fit_linear_probe(z, support_y, num_classes or int(support_y.max()) + 1)
        return lambda x: head(self.features(x))

    def checkpoint_logs(self, probe: Any) -> dict[str, Any]:
        """Extra values for the checkpoint record, computed on a fixed probe batch (the step-0 batch)."""
        return {}

    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- resumable state: optimizers travel inside state_dict ------------------------
    def get_extra_state(self) -> dict:
        return {name: opt.state_dict() for name, opt in vars(self).items()
                if isinstance(opt, torch.optim.Optimizer)}

    def set_extra_state(self, state: dict) -> None:
        for name, opt_state in state.items():
            getattr(self, name).load_state_dict(opt_state)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block (frozen normalisation statistics), its former mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def fit_linear_probe(z: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-3,
                     max_iter: int = 100) -> nn.Linear:
    """Multinomial logistic regression on fixed features, solved with L-BFGS."""
    mean, std = z.mean(0), z.std(0).clamp_min(1e-6)
    head = nn.Linear(z.shape[1], num_classes).to(z.device, z.dtype)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    zn = (z - mean) / std
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(zn), y) + l2 * head.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    # fold the standardisation into the head so it applies to raw features
    with torch.no_grad():
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    return head.requires_grad_(False)
