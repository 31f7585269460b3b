"""Cross-dataset transfer of a trained representation:
``python -m harness.transfer --run RUN_DIR [RUN_DIR ...] --dataset TARGET``.

Fumero et al. (arXiv 2304.07939) claim that the features SparseShared learns from sparse, shared
task heads transfer to new tasks. This tool asks it across datasets: it takes finished runs of
``python -m harness.train`` (trained on a source dataset, e.g. Sprites), rebuilds each algorithm with
its run's hparams, loads the run's final ``checkpoint.pt`` (``harness.checkpoints``, verified against
the run's records), freezes it (eval mode, no gradients) and measures new-task accuracy on the binary
factor tasks of another dataset TARGET (e.g. Shapes) exactly as training measures ``task_acc``:
``harness.metrics.fewshot.factor_task_accuracy``, i.e. ``algorithm.adapt`` fits a head on each task's
support set and scores its query set, over seeded episodes, ``task_acc``/``task_ci95`` on the training
factor combinations and ``ood_task_acc``/``ood_task_ci95`` on the held-out ones (the split matters on
the source dataset only: on TARGET every task is new).

What is held fixed from the run, and what comes from TARGET:

- tasks: the run's ``support``, ``query`` and ``max_factors`` hparams; episodes drawn with
  ``seed_hash(seed, "eval_tasks")`` as training does, ``seed`` = ``--seed`` (the same episodes for
  every run: a paired comparison) or, by default, each run's own ``--seed``;
- images: TARGET's held-out images, the run's ``--holdout_fraction`` and ``--trial_seed`` applied
  to TARGET's environments (all of them, as training's ``task_acc`` uses every environment's
  held-out split), no augmentation;
- TARGET's own dataset hparams (``n_per_env``, ``data_seed``, ``factor_correlation``,
  ``ood_task_fraction``, ...) at TARGET's defaults; ``--target_hparams JSON`` overrides them (and
  ``support``/``query``/``max_factors``);
- CPU threads: the run's own recorded count (``--threads`` to change it), since floating-point
  reductions round differently on another count. With TARGET the run's own dataset and its dataset
  hparams, the result is then the run's last recorded ``task_acc``, to the last digit.

Input shapes: images are adapted to the source backbone's input shape (the source dataset's
``input_shape``). Channels convert 3 -> 1 by averaging the three channels and 1 -> 3 by repeating the
one; nothing else is converted: other channel counts, or another spatial size (Sprites and Shapes
are both 64x64: (1, 64, 64) and (3, 64, 64)), are a one-line error naming both shapes. The source
dataset is built (from ``--data_dir`` for published files) to know that shape, as training builds it.

Output: one table row per run on stdout (source dataset, algorithm, the hparams its random search
varies, e.g. SparseShared's alpha and beta, source ``task_acc`` from the run's last record, target
``task_acc`` +- ``task_ci95`` and ``ood_task_acc``), progress on stderr, and with ``--out`` one JSON
object per run appended to a .jsonl file as soon as the run is evaluated. Errors a user can cause
(not a finished run, a missing checkpoint, an unknown dataset, a target without factors) end in one
line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from harness.checkpoints import FinishedRun, finished_run, rebuild
from harness.errors import UserError, cli
from harness.cli import SEED_MAX, OneLineParser, device_name, int_at_least

TASK_KEYS = ("support", "query", "max_factors")  # from the run; --target_hparams may override them


def channel_adapter(source_shape: Sequence[int], target_shape: Sequence[int]) -> tuple[Callable | None, str | None]:
    """(convert, description): how a batch of TARGET images becomes the source backbone's input.

    ``(None, None)`` for equal shapes; 3 -> 1 channels by averaging, 1 -> 3 by repeating; any other
    difference is a UserError naming both shapes."""
    s, t = tuple(source_shape), tuple(target_shape)
    if s == t:
        return None, None
    if len(s) == len(t) == 3 and s[1:] == t[1:]:
        if (t[0], s[0]) == (3, 1):
            return (lambda x: x.mean(dim=-3, keepdim=True)), "3->1 channels (mean)"
        if (t[0], s[0]) == (1, 3):
            return (lambda x: x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()), "1->3 channels (repeat)"
    raise UserError(f"the target's inputs have shape {t} but the run's backbone takes {s}: only 1 <-> 3 "
                    "channels are converted, the other dimensions must be equal")


class ConvertedEnv:
    """An environment whose images are converted for the source backbone (what task samplers read of
    an ``EnvDataset``: length, ``batch``, labels and metadata)."""

    def __init__(self, env, convert: Callable):
        self.env, self.convert = env, convert
        self.factors, self.groups, self.factor_names = env.factors, env.groups, env.factor_names

    def __len__(self) -> int:
        return len(self.env)

    def __getitem__(self, i: int):
        x, y = self.env[i]
        return self.convert(x[None])[0], y

    def batch(self, indices):
        x, y = self.env.batch(indices)
        return self.convert(x), y

    @property
    def labels(self):
        return self.env.labels


class EpisodeProgress:
    """``dataset`` whose task samplers call ``report`` at most every ``every_s`` seconds (a transfer of
    SparseShared onto hard tasks takes seconds per episode)."""

    def __init__(self, dataset, n_episodes: int, report: Callable[[str], None], every_s: float = 10.0):
        self.dataset, self.n_episodes, self.report, self.every_s = dataset, n_episodes, report, every_s
        self.t0 = self.last = time.perf_counter()

    def task_sampler(self, envs, hparams: dict, seed: int, split: str = "train"):
        sampler = self.dataset.task_sampler(envs, hparams, seed, split)

        def sample(episode: int):
            now = time.perf_counter()
            if now - self.last >= self.every_s:
                self.last = now
                self.report(f"{split} tasks: episode {episode + 1}/{self.n_episodes} ({now - self.t0:.0f} s)")
            return sampler.sample(episode)

        return SimpleNamespace(sample=sample)


def frozen_algorithm(run: FinishedRun, data_dir: str | None, device: Any = "cpu") -> tuple[Any, tuple[int, ...]]:
    """(the run's algorithm with its final weights, in eval mode and without gradients, on ``device``;
    the input shape its backbone takes), rebuilt as training built it (:func:`harness.checkpoints.rebuild`)."""
    algorithm, source = rebuild(run, data_dir, device)
    return algorithm, tuple(source.input_shape)


def target_settings(run: FinishedRun, target: str, overrides: dict | None = None) -> tuple[dict, dict]:
    """(hparams for TARGET's dataset and tasks, what of them is TARGET's or the tasks'): the run's
    hparams, TARGET's own dataset hparams at their defaults, the run's task sizes, then ``overrides``."""
    from harness import hparams as hp

    own = {k: h.default for k, h in hp.dataset_space(target).items() if k not in hp.COMMON}
    tasks = {k: run.hparams[k] for k in TASK_KEYS if k in run.hparams}
    allowed = sorted({*own, *TASK_KEYS})
    unknown = sorted(set(overrides or {}) - set(allowed))
    if unknown:
        raise UserError(f"--target_hparams: {', '.join(unknown)} not settable for {target}; "
                        f"valid: {', '.join(allowed)}")
    settings = {**own, **tasks, **(overrides or {})}
    return {**run.hparams, **settings}, settings


def factor_dataset(target: str):
    """TARGET's class; a UserError unless it is a registered dataset with ground-truth factors."""
    from harness.registry import DATASETS

    cls = DATASETS.get(target)
    if "disentanglement" not in getattr(cls, "METRICS", ()):
        raise UserError(f"{target} has no ground-truth factors, hence no factor tasks to transfer to; choose a "
                        "dataset whose METRICS include \"disentanglement\" (python -m harness.list datasets)")
    return cls


def target_envs(target: str, hparams: dict, data_dir: str | None, holdout_fraction: float, trial_seed: int):
    """(TARGET dataset, its held-out split of every environment), built without augmentation."""
    from harness.loop import holdout_splits

    cls = factor_dataset(target)
    dataset = cls(data_dir, list(range(len(cls.ENVIRONMENTS))), hparams)  # all test envs: no augmentation
    return dataset, [out for _, out in holdout_splits(dataset, holdout_fraction, trial_seed)]


def transfer(run_dir: str | os.PathLike, target: str, n_episodes: int | None = None, seed: int | None = None,
             data_dir: str | None = "data", target_hparams: dict | None = None, device: Any = "cpu",
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """New-task accuracy on ``target`` of the frozen representation of the finished run ``run_dir``.

    Returns the JSON object ``--out`` writes: the run (source dataset, algorithm, step, key and all
    hparams, source ``task_acc``), the target settings, and ``task_acc``/``task_ci95`` (and
    ``ood_task_acc``/``ood_task_ci95`` where TARGET holds out factor combinations; an interval over
    one episode is None). ``progress`` receives a line every 10 s."""
    import torch

    from harness.metrics.fewshot import FACTOR_TASK_EPISODES, factor_task_accuracy
    from harness.utils import seed_hash

    run = finished_run(run_dir)
    n_episodes = FACTOR_TASK_EPISODES if n_episodes is None else n_episodes
    seed = run.args["seed"] if seed is None else seed
    hparams, settings = target_settings(run, target, target_hparams)
    dataset, envs = target_envs(target, hparams, data_dir, run.args["holdout_fraction"], run.args["trial_seed"])
    algorithm, input_shape = frozen_algorithm(run, data_dir, device)
    convert, conversion = channel_adapter(input_shape, dataset.input_shape)
    if convert is not None:
        envs = [ConvertedEnv(env, convert) for env in envs]
    tasks = dataset if progress is None else EpisodeProgress(dataset, n_episodes, progress)
    with torch.no_grad():
        metrics = factor_task_accuracy(algorithm, tasks, envs, hparams, seed=seed_hash(seed, "eval_tasks"),
                                       n_episodes=n_episodes)
    metrics = {k: None if v != v else v for k, v in metrics.items()}  # NaN is no JSON
    last = run.last
    return {"run": str(run.path), "source": run.args["dataset"], "algorithm": run.args["algorithm"],
            "step": last["step"], "key_hparams": key_hparams(run.args["algorithm"], run.hparams),
            **{f"source_{k}": last.get(k) for k in ("task_acc", "task_ci95", "ood_task_acc", "ood_task_ci95")},
            "target": target, "target_hparams": settings, "input": conversion, "seed": seed,
            "n_episodes": n_episodes, "threads": torch.get_num_threads(), **metrics, "hparams": run.hparams}


def key_hparams(algorithm: str, hparams: dict) -> dict[str, Any]:
    """The algorithm's own hparams that its random search varies (e.g. SparseShared's alpha and beta)."""
    from harness import hparams as hp

    return {k: hparams[k] for k, h in hp.algorithm_space(algorithm).items()
            if h.sample is not None and k not in hp.EPISODIC and k in hparams}


def table_row(result: dict[str, Any]) -> list[Any]:
    def acc(key: str) -> str:
        value, ci = result.get(key), result.get(key.replace("_acc", "_ci95"))
        if value is None:
            return "-"
        return f"{value:.3f}" if ci is None or ci != ci else f"{value:.3f} ± {ci:.3f}"

    hps = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in result["key_hparams"].items())
    return [Path(result["run"]).name, result["source"], result["algorithm"], hps or "-", acc("source_task_acc"),
            result["target"] + (f" ({result['input']})" if result["input"] else ""), acc("task_acc"),
            acc("ood_task_acc")]


TABLE_HEADERS = ["run", "source", "algorithm", "hparams", "source task_acc", "target", "task_acc", "ood_task_acc"]


def append_jsonl(path: Path, obj: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(obj) + "\n")
    except OSError as e:
        raise UserError(f"--out {path}: cannot write it ({e.strerror or e})") from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m harness.transfer",
        description="New-task accuracy of finished runs' frozen representations on another dataset's binary "
                    "factor tasks (cross-dataset transfer). See the module docstring of harness/transfer.py.")
    p.add_argument("--run", nargs="+", required=True, metavar="RUN_DIR",
                   help="finished run directories of python -m harness.train (with done and checkpoint.pt)")
    p.add_argument("--dataset", required=True, metavar="TARGET",
                   help="target dataset with ground-truth factors (e.g. Shapes, Sprites)")
    p.add_argument("--n_episodes", type=int_at_least(1), default=None,
                   help="episodes per task split (default: as many as training evaluates)")
    p.add_argument("--seed", type=int_at_least(0, SEED_MAX), default=None,
                   help="seed of the target episodes, the same for every run (default: each run's own --seed)")
    p.add_argument("--data_dir", default=os.environ.get("HARNESS_DATA", "data"),
                   help="root of real datasets, source and target (env HARNESS_DATA)")
    p.add_argument("--target_hparams", default=None, metavar="JSON",
                   help="overrides of the target's dataset hparams (defaults: its own) and of the run's "
                        "support/query/max_factors, e.g. '{\"n_per_env\": 1000}'")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="CPU threads (default: each run's own, as recorded, so that the numbers are computed as "
                        "the run computed its own)")
    p.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", default=None, metavar="FILE.jsonl", help="append one JSON object per run to this file")
    return p


def parse_target_hparams(text: str | None, algorithm: str, target: str) -> dict | None:
    """--target_hparams through train's checks (JSON, types, bounds), its messages naming this flag."""
    from harness import hparams as hp

    if text is None:
        return None
    return hp.parse_overrides(text, algorithm, target, flag="--target_hparams")


def main(argv: list[str] | None = None) -> None:
    def run() -> None:
        from harness.registry import DATASETS

        args = build_parser().parse_args(argv)
        runs = [finished_run(r) for r in args.run]  # every run checked before any long work
        if args.dataset not in DATASETS:
            raise UserError(DATASETS.unknown_message(args.dataset))
        factor_dataset(args.dataset)
        overrides = [parse_target_hparams(args.target_hparams, r.args["algorithm"], args.dataset) for r in runs]
        for r, over in zip(runs, overrides):
            target_settings(r, args.dataset, over)  # unknown names: before any long work

        import torch
        from tabulate import tabulate

        from harness.utils import resolve_device

        device = resolve_device(args.device)
        rows = []
        for i, (r, over) in enumerate(zip(runs, overrides), 1):
            t0 = time.perf_counter()
            torch.set_num_threads(args.threads or r.last.get("threads") or torch.get_num_threads())
            print(f"[{i}/{len(runs)}] {r.path}: {r.args['algorithm']} on {r.args['dataset']} (step {r.last['step']}) "
                  f"-> {args.dataset} ...", file=sys.stderr, flush=True)
            result = transfer(r.path, args.dataset, args.n_episodes, args.seed, args.data_dir, over, device,
                              progress=lambda line: print(f"[{i}/{len(runs)}]   {line}", file=sys.stderr, flush=True))
            print(f"[{i}/{len(runs)}] task_acc {result['task_acc']:.3f} in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
            if args.out:
                append_jsonl(Path(args.out), result)
            rows.append(table_row(result))
        print(tabulate(rows, headers=TABLE_HEADERS, disable_numparse=True))
        if args.out:
            print(f"appended {len(rows)} line(s) to {args.out}", file=sys.stderr)

    cli(run)()


if __name__ == "__main__":
    main()
