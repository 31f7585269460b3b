"""Evaluation of one checkpoint: accuracy (and worst-group accuracy) on every split, DCI/MCC, factor-task
and few-shot accuracy, the algorithm's checkpoint logs (docs/design.md, sections 4 and 8)."""

from __future__ import annotations

from typing import Any


def to_device(batch: Any, device) -> Any:
    if hasattr(batch, "to"):
        return batch.to(device)
    return [tuple(t.to(device) for t in item) for item in batch]


def evaluate(algorithm, dataset, splits, train_envs, args, with_dci: bool, probe: Any,
             eval_splits: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy (and worst-group accuracy, DCI/MCC, algorithm logs) on every split; with official
    ``eval_splits`` (WILDS' protocol), the dataset's official metrics of each, as ``{split}/{metric}``."""
    import torch

    algorithm.eval()
    try:
        with torch.no_grad():
            predict = eval_predictor(algorithm, train_envs, args)
            metrics: dict[str, float] = {}
            for name, env in (eval_splits or {}).items():
                y_pred, _ = predictions(predict, env, args.eval_batch_size, algorithm.device())
                metrics.update({f"{name}/{k}": v for k, v in dataset.split_metrics(name, y_pred, env).items()})
            for i, (env_in, env_out) in enumerate(splits):
                for name, split in (("in", env_in), ("out", env_out)):
                    metrics.update(split_metrics(predict, split, f"env{i}_{name}", args.eval_batch_size, algorithm.device()))
            if "disentanglement" in dataset.METRICS and with_dci:
                from harness.metrics.fewshot import factor_task_accuracy
                from harness.utils import seed_hash

                metrics.update(disentanglement_metrics(algorithm, splits, args))
                metrics.update(factor_task_accuracy(algorithm, dataset, [out for _, out in splits],
                                                    algorithm.hparams, seed=seed_hash(args.seed, "eval_tasks")))
            if "fewshot" in dataset.METRICS and with_dci:
                from harness.metrics.fewshot import fewshot_accuracy

                metrics.update(fewshot_accuracy(algorithm, dataset.fewshot_env(), seed=args.seed,
                                                **dataset.FEWSHOT))
            metrics.update(algorithm.checkpoint_logs(to_device(probe, algorithm.device())))
    finally:
        algorithm.train()
    return metrics


def probe_head(algorithm, x, y):
    """A multinomial logistic-regression probe on the frozen features ``algorithm.features(x)``, fitted on
    (x, y) whatever the algorithm's own ``adapt`` does (the base class's ``adapt``): ``x -> logits``."""
    from harness.algorithms.base import Algorithm

    return Algorithm.adapt(algorithm, x, y, num_classes=None)


def eval_predictor(algorithm, train_envs, args, n_fit: int | None = None, head: str | None = None):
    """How to predict the dataset's label: the algorithm's own head, or (episodic) a head fitted on ``n_fit``
    training-domain 'in' points (hparam ``eval_n_fit``, default 2000; 0: all of them) by the algorithm's
    ``adapt`` (hparam ``eval_head`` "own") or by :func:`probe_head` ("probe")."""
    import torch

    from harness.datasets.tasks import ConcatEnv
    from harness.hparams import EPISODIC, check, episodic
    from harness.utils import generator

    if not algorithm.EPISODIC:
        return algorithm.predict
    hparams = getattr(algorithm, "hparams", {})
    n_fit = episodic(hparams, "eval_n_fit") if n_fit is None else n_fit
    head = episodic(hparams, "eval_head") if head is None else head
    for name, value in (("eval_head", head), ("eval_n_fit", n_fit)):
        check(name, value, EPISODIC[name])
    pool = ConcatEnv(train_envs)
    idx = torch.randperm(len(pool), generator=generator(args.seed, "adapt"))[: n_fit or len(pool)]
    x, y = pool.batch(idx)
    device = algorithm.device()
    if head == "probe":
        return probe_head(algorithm, x.to(device), y.to(device))
    return algorithm.adapt(x.to(device), y.to(device), num_classes=None)


def predictions(predict, env, batch_size: int, device):
    """(predicted labels, true labels) of every example of ``env``, in its order; predicted = argmax of
    ``predict``'s logits."""
    import torch

    y_pred, y_true = [], []
    for start in range(0, len(env), batch_size):
        x, y = env.batch(torch.arange(start, min(start + batch_size, len(env))))
        y_pred.append(predict(x.to(device)).argmax(1).cpu())
        y_true.append(y)
    empty = torch.zeros(0, dtype=torch.long)
    return (torch.cat(y_pred), torch.cat(y_true)) if y_pred else (empty, empty)


def split_metrics(predict, split, prefix: str, batch_size: int, device) -> dict[str, float]:
    if len(split) == 0:
        return {}
    y_pred, y = predictions(predict, split, batch_size, device)
    correct = (y_pred == y).float()
    out = {f"{prefix}_acc": correct.mean().item()}
    if split.groups is not None:
        groups = split.groups
        out[f"{prefix}_wg_acc"] = min(correct[groups == g].mean().item() for g in groups.unique())
    return out


def disentanglement_metrics(algorithm, splits, args) -> dict[str, float]:
    """DCI, MCC and redundancy (features per factor) of the features on the held-out ('out') splits of all
    environments.

    ``--dci full`` uses up to DCI_NUM_TRAIN + DCI_NUM_TEST (10,000 + 5,000) held-out points,
    ``fast`` up to FAST_MAX_TRAIN + half as many (2,000 + 1,000)."""
    import torch

    from harness.datasets.tasks import ConcatEnv
    from harness.metrics.disentanglement import DCI_NUM_TEST, DCI_NUM_TRAIN, FAST_MAX_TRAIN, dci, mcc, redundancy
    from harness.utils import generator

    fast = args.dci == "fast"
    n_train, n_test = (FAST_MAX_TRAIN, FAST_MAX_TRAIN // 2) if fast else (DCI_NUM_TRAIN, DCI_NUM_TEST)
    pool = ConcatEnv([out for _, out in splits])
    idx = torch.randperm(len(pool), generator=generator(args.seed, "dci"))[: n_train + n_test].sort().values
    codes = []
    for start in range(0, len(idx), args.eval_batch_size):
        x, _ = pool.batch(idx[start : start + args.eval_batch_size])
        codes.append(algorithm.features(x.to(algorithm.device())).cpu())
    codes, factors = torch.cat(codes).numpy(), pool.factors[idx].numpy()
    d = dci(codes, factors, fast=fast, seed=args.seed)  # splits them 2:1 into train and test
    return {"dci_disentanglement": d["disentanglement"], "dci_completeness": d["completeness"],
            "dci_informativeness": d["informativeness"], "mcc": mcc(codes, factors),
            "redundancy": redundancy(codes, factors)}
