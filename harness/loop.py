"""The training loop of one run: batches per step, ``update``, evaluation and checkpoint every ``freq``
steps. ``harness.train`` builds a :class:`RunContext` and calls :func:`train_loop`."""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.checkpoints import CHECKPOINT, RESULTS, append_record, checkpoint_bytes, keep_checkpoint
from harness.evaluation import evaluate, to_device
from harness.progress import ProgressFile
from harness.provenance import provenance

PROGRESS_LINES = 10  # without a terminal: a progress line every tenth of the run


@dataclass
class RunContext:
    """What one run needs, built once by ``harness.train.train_run``: its arguments and identity (the
    arguments that define it), hparams, the algorithm on ``device``, the dataset with its (in, out)
    ``splits`` and training environments, ``next_batch`` (step -> batch), ``steps`` to train,
    checkpoint every ``freq`` steps, the output directory and the pinned CPU thread count."""

    args: argparse.Namespace
    identity: dict
    hparams: dict
    algorithm: Any
    dataset: Any
    splits: list[tuple[Any, Any]]
    train_envs: list[Any]
    next_batch: Callable[[int], Any]
    steps: int
    freq: int
    device: Any
    out: Path
    threads: int = 1
    eval_splits: dict[str, Any] | None = None  # official evaluation splits by name (WILDS' protocol)


def train_loop(ctx: RunContext, start: int = 0, record_steps: list[int] | None = None) -> None:
    """Train from step ``start`` to ``ctx.steps``; ``record_steps``: the steps of the records kept on resume."""
    import torch
    from tqdm import tqdm

    from harness.utils import atomic_write_bytes, seed_hash

    args, hparams, algorithm, out = ctx.args, ctx.hparams, ctx.algorithm, ctx.out
    steps, freq = ctx.steps, ctx.freq
    record_steps = list(record_steps or [])
    stats: dict[str, list[float]] = {}
    min_env = min(len(e) for e in ctx.train_envs)
    tty = sys.stderr.isatty()
    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not tty,
               file=sys.__stderr__, dynamic_ncols=True)
    progress = Progress(start, steps, enabled=not sys.stdout.isatty())
    protocol = protocol_fields(ctx)
    best = BestCheckpoint(out, protocol.get("select_on"), start)
    progress_file = ProgressFile(out, start, steps)  # what `sweep launch` reports (harness/progress.py)
    for step in range(start, steps):
        torch.manual_seed(seed_hash(args.seed, "step", step))
        batch = to_device(ctx.next_batch(step), ctx.device)
        t0 = time.perf_counter()
        try:
            logs = algorithm.update(batch)
        except FloatingPointError as e:  # how an algorithm's solver says its inputs are no longer finite
            raise diverged("training", step, e, hparams) from None
        stats.setdefault("step_time", []).append(time.perf_counter() - t0)
        for k, v in logs.items():
            if not math.isfinite(v):
                raise diverged(k, step, f"{k}={v}", hparams)
            stats.setdefault(k, []).append(v)
        bar.update(1)
        progress.update(step + 1)
        progress_file.update(step + 1)
        if (step + 1) % freq == 0 or step + 1 == steps:
            with_dci = factors_due(step + 1, steps, freq, args.dci_freq)
            record = {"step": step + 1, "epoch": (step + 1) * hparams.get("batch_size", 1) / min_env,
                      "args": ctx.identity, "hparams": hparams, "threads": ctx.threads, **protocol,
                      **{k: sum(v) / len(v) for k, v in stats.items()}, "mem_gb": peak_memory_gb(ctx.device),
                      **provenance(ctx.device)}
            try:
                record.update(evaluate(algorithm, ctx.dataset, ctx.splits, ctx.train_envs, args, with_dci,
                                       ctx.next_batch(0), ctx.eval_splits))
            except FloatingPointError as e:
                raise diverged("the model", step + 1, e, hparams) from None
            append_record(out / RESULTS, record)
            record_steps.append(step + 1)
            state = checkpoint_bytes(step + 1, ctx.identity, algorithm, ctx.threads, record_steps)
            best.update(record, state)  # before checkpoint.pt: a resume recomputes this step and rewrites it
            atomic_write_bytes(out / CHECKPOINT, state)
            if getattr(args, "keep_checkpoints", False):
                keep_checkpoint(out, step + 1)
            print(summary_line(record))
            stats = {}
    bar.close()


def factors_due(step: int, steps: int, freq: int, dci_freq: int) -> bool:
    """Whether the checkpoint of ``step`` computes the costly metrics (DCI/MCC, task and few-shot accuracy):
    every ``dci_freq``-th checkpoint and the last."""
    return -(-step // freq) % dci_freq == 0 or step == steps  # the checkpoint's number, 1-based


def protocol_fields(ctx: RunContext) -> dict[str, Any]:
    """What every record says of how it was evaluated: the environment names and, for a dataset with
    official splits (WILDS' protocol), the splits, the metrics and the score that selects models."""
    fields: dict[str, Any] = {"environments": list(ctx.dataset.ENVIRONMENTS)}
    if ctx.eval_splits is not None:
        fields.update(protocol="wilds", eval_splits=list(ctx.eval_splits),
                      official_metrics=list(ctx.dataset.OFFICIAL_METRICS), select_on=ctx.dataset.SELECT_ON)
    return fields


class BestCheckpoint:
    """``best.pt``: the checkpoint whose ``select_on`` score is the run's highest so far (the first on
    ties, as selection picks), what ``harness.predict`` loads. Inactive without a ``select_on``."""

    def __init__(self, out: Path, select_on: str | None, start: int):
        from harness.checkpoints import read_records

        self.out, self.key, self.score = out, select_on, -math.inf
        if select_on:
            kept = [r.get(select_on) for r in read_records(out / RESULTS) if r["step"] <= start]
            self.score = max([v for v in kept if isinstance(v, (int, float))], default=-math.inf)

    def update(self, record: dict, state: bytes) -> None:
        from harness.checkpoints import BEST
        from harness.utils import atomic_write_bytes

        value = record.get(self.key) if self.key else None
        if isinstance(value, (int, float)) and value > self.score:
            self.score = value
            atomic_write_bytes(self.out / BEST, state)


class Progress:
    """Without a terminal (a log file, a launcher): ``progress: step S/N (P%) | R steps/s | ETA`` every tenth of the run."""

    def __init__(self, start: int, steps: int, enabled: bool):
        self.start, self.steps, self.enabled = start, steps, enabled
        self.every = max(1, steps // PROGRESS_LINES)
        self.t0 = time.perf_counter()

    def update(self, done: int) -> None:
        if not self.enabled or done % self.every != 0 or done == self.steps:
            return
        rate = (done - self.start) / max(time.perf_counter() - self.t0, 1e-9)
        eta = int((self.steps - done) / rate) if rate > 0 else 0
        print(f"progress: step {done}/{self.steps} ({100 * done // self.steps}%) | {rate:.3g} steps/s | "
              f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}", flush=True)


def diverged(what: str, step: int, detail: Any, hparams: dict):
    """The one-line error for a run whose numbers stopped being finite."""
    from harness.errors import UserError

    return UserError(f"{what} diverged at step {step} ({detail}); try a smaller lr "
                     f"(--hparams '{{\"lr\": {hparams.get('lr', 1e-3) / 10:g}}}')")


def run_splits(dataset, args) -> tuple[list[tuple[Any, Any]], list[Any], dict[str, Any] | None]:
    """(in, out) per environment, the training environments, the official evaluation splits.

    DomainBed's protocol: a seeded random ``--holdout_fraction`` of every environment is its 'out'
    split; training uses the 'in' splits of the environments not in ``--test_envs``. A dataset with
    official splits (WILDS') trains on its ``train_envs`` and is evaluated on its whole evaluation
    splits; no holdout is taken from an official split."""
    from harness.errors import UserError

    official = dataset.official_splits()
    if official is not None:
        return [], official.train_envs, official.eval_splits
    splits = holdout_splits(dataset, args.holdout_fraction, args.trial_seed)
    empty = [i for i in range(len(dataset)) if i not in args.test_envs and len(splits[i][0]) == 0]
    if empty:
        raise UserError(f"--holdout_fraction {args.holdout_fraction} leaves no training examples in "
                        f"environment(s) {empty}; use a smaller fraction")
    no_out = [i for i in range(len(dataset)) if len(splits[i][1]) == 0]
    if no_out:
        raise UserError(f"--holdout_fraction {args.holdout_fraction} leaves no held-out ('out') examples in "
                        f"environment(s) {no_out} of {args.dataset}; use more examples or a larger fraction")
    return splits, [splits[i][0] for i in range(len(dataset)) if i not in args.test_envs], None


def holdout_splits(dataset, holdout_fraction: float, trial_seed: int) -> list[tuple[Any, Any]]:
    """(in, out) per environment: a seeded random ``holdout_fraction`` of each is held out (DomainBed)."""
    import torch

    from harness.utils import generator

    splits = []
    for i, env in enumerate(dataset.datasets):
        perm = torch.randperm(len(env), generator=generator(trial_seed, "holdout", i))
        n_out = int(len(env) * holdout_fraction)
        splits.append((env.subset(perm[n_out:]), env.subset(perm[:n_out])))
    return splits


def batch_source(algorithm, dataset, train_envs, hparams: dict, seed: int) -> Callable[[int], Any]:
    """step -> batch: per-environment minibatches, or a TaskBatch for episodic algorithms."""
    from harness.utils import seed_hash

    if algorithm.EPISODIC:
        return dataset.task_sampler(train_envs, hparams, seed_hash(seed, "tasks")).sample
    loaders = [InfiniteIndices(len(env), hparams["batch_size"], seed_hash(seed, "batches", i))
               for i, env in enumerate(train_envs)]
    return lambda step: [env.batch(loader(step)) for env, loader in zip(train_envs, loaders)]


class InfiniteIndices:
    """Minibatch indices as a function of the step: consecutive slices of per-epoch permutations."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int):
        import torch

        from harness.utils import generator

        if epoch != self._epoch:
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=generator(self.seed, epoch))
        return self._perm

    def __call__(self, step: int):
        import torch

        pos, parts, need = step * self.batch_size, [], self.batch_size
        while need > 0:
            epoch, offset = divmod(pos, self.n)
            take = self._permutation(epoch)[offset : offset + need]
            parts.append(take)
            pos, need = pos + len(take), need - len(take)
        return torch.cat(parts)


def peak_memory_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def summary_line(record: dict) -> str:
    keys = [k for k in record if k not in ("args", "hparams", "version", "commit", "torch", "device")
            and not isinstance(record[k], (list, dict))]
    return " | ".join(f"{k} {record[k]:.4g}" if isinstance(record[k], float) else f"{k} {record[k]}" for k in keys)
