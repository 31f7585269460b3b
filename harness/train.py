"""One run: ``python -m harness.train --dataset D --algorithm A --output_dir DIR``.

Writes ``results.jsonl`` (one record per checkpoint), ``checkpoint.pt`` (atomic, resume
state), ``out.txt``/``err.txt`` and ``done`` last. Re-running with the same arguments resumes
from the last checkpoint and yields the same records as an uninterrupted run: every random
draw is a pure function of (seed, step), so nothing but the model and optimizer state needs
saving.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

RESULTS, CHECKPOINT, DONE = "results.jsonl", "checkpoint.pt", "done"
# Arguments that do not change what a run computes (paths, device): excluded from its identity.
NON_IDENTITY_ARGS = ("output_dir", "data_dir", "device", "eval_batch_size")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.train",
        description="Train one algorithm on one dataset and write results.jsonl, checkpoint.pt and done "
                    "into --output_dir. Re-run the same command to resume after a crash.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="SyntheticLinear", help="dataset name (python -m harness.list)")
    p.add_argument("--algorithm", default="ERM", help="algorithm name (python -m harness.list)")
    p.add_argument("--output_dir", required=True, help="directory of this run")
    p.add_argument("--data_dir", default=os.environ.get("HARNESS_DATA", "data"),
                   help="root of real datasets (env HARNESS_DATA)")
    p.add_argument("--hparams", default=None, help='JSON object of hparam overrides, e.g. \'{"lr": 1e-4}\'; '
                   '\'{"precision": "bf16"}\' runs the backbone under bfloat16 autocast')
    p.add_argument("--hparams_seed", type=int, default=0, help="0: default hparams; N: random-search draw N")
    p.add_argument("--trial_seed", type=int, default=0, help="seed of the data splits (a 'trial')")
    p.add_argument("--seed", type=int, default=0, help="seed of everything else (init, batches, tasks)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the dataset's)")
    p.add_argument("--checkpoint_freq", type=int, default=None, help="evaluate and checkpoint every N steps")
    p.add_argument("--test_envs", type=int, nargs="*", default=[], help="indices of held-out environments")
    p.add_argument("--holdout_fraction", type=float, default=0.2, help="fraction of each environment held out ('out' split)")
    p.add_argument("--dci_freq", type=int, default=5,
                   help="compute the costly metrics (DCI/MCC, task and few-shot accuracy) every N checkpoints "
                        "(and always at the end); a full DCI fit on a few thousand points takes seconds")
    p.add_argument("--dci", choices=("full", "fast"), default="full",
                   help="DCI on datasets with factors: full = disentanglement_lib's (GBT of 100 trees, up to "
                        "10,000 train / 5,000 test held-out points); fast = 30 trees on at most 2,000 / 1,000 "
                        "(about 3x cheaper; scores within ~0.1 of full)")
    p.add_argument("--eval_batch_size", type=int, default=512)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p


def main(argv: list[str] | None = None) -> None:
    from harness.errors import cli

    cli(lambda: run(build_parser().parse_args(argv)))()


def run(args: argparse.Namespace) -> Path:
    """Train (or resume) the run described by ``args``; returns its output directory."""
    import torch

    from harness import hparams as hp
    from harness.errors import UserError
    from harness.precision import check_precision
    from harness.registry import ALGORITHMS, DATASETS
    from harness.utils import resolve_device, seed_hash

    out = Path(args.output_dir)
    if (out / DONE).exists():
        print(f"{out} is already done (remove {out / DONE} to run again)")
        return out
    dataset_cls, algorithm_cls = DATASETS.get(args.dataset), ALGORITHMS.get(args.algorithm)
    hparams = hp.resolve(args.algorithm, args.dataset, args.hparams_seed, args.hparams)
    out.mkdir(parents=True, exist_ok=True)
    from harness.lock import RunLock

    with RunLock(out), Tee(out / "out.txt", "stdout"), Tee(out / "err.txt", "stderr"):
        device = resolve_device(args.device)
        check_precision(device, hparams["precision"])
        torch.manual_seed(seed_hash(args.seed, "init"))
        dataset = dataset_cls(args.data_dir, args.test_envs, hparams)
        bad = [i for i in args.test_envs if not 0 <= i < len(dataset)]
        if bad:
            raise UserError(f"--test_envs {bad} out of range: {args.dataset} has environments "
                            + ", ".join(f"{i}={n}" for i, n in enumerate(dataset.ENVIRONMENTS)))
        steps = args.steps or dataset.N_STEPS
        freq = args.checkpoint_freq or dataset.CHECKPOINT_FREQ
        splits = holdout_splits(dataset, args.holdout_fraction, args.trial_seed)
        train_envs = [splits[i][0] for i in range(len(dataset)) if i not in args.test_envs]
        algorithm = algorithm_cls(dataset.input_shape, dataset.num_classes, len(train_envs), hparams).to(device)

        identity = {k: v for k, v in vars(args).items() if k not in NON_IDENTITY_ARGS}
        start = resume(out, identity, algorithm)
        next_batch = batch_source(algorithm, dataset, train_envs, hparams, args.seed)
        print(f"{args.algorithm} on {args.dataset} | test envs {args.test_envs} | device {device} | "
              f"precision {hparams['precision']} | "
              f"threads {torch.get_num_threads()} | steps {start}->{steps} | hparams {json.dumps(hparams)}")
        train_loop(args, identity, hparams, algorithm, dataset, splits, train_envs, next_batch,
                   start, steps, freq, device, out)
        (out / DONE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    return out


def train_loop(args, identity, hparams, algorithm, dataset, splits, train_envs, next_batch: Callable[[int], Any],
               start: int, steps: int, freq: int, device, out: Path) -> None:
    import torch
    from tqdm import tqdm

    from harness.utils import atomic_write_bytes, seed_hash

    stats: dict[str, list[float]] = {}
    min_env = min(len(e) for e in train_envs)
    n_checkpoints = start // freq
    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not sys.stderr.isatty(),
               file=sys.__stderr__, dynamic_ncols=True)
    for step in range(start, steps):
        torch.manual_seed(seed_hash(args.seed, "step", step))
        batch = to_device(next_batch(step), device)
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
        if (step + 1) % freq == 0 or step + 1 == steps:
            n_checkpoints += 1
            with_dci = n_checkpoints % args.dci_freq == 0 or step + 1 == steps
            record = {"step": step + 1, "epoch": (step + 1) * hparams.get("batch_size", 1) / min_env,
                      "args": identity, "hparams": hparams,
                      **{k: sum(v) / len(v) for k, v in stats.items()}, "mem_gb": peak_memory_gb(device)}
            try:
                record.update(evaluate(algorithm, dataset, splits, train_envs, args, with_dci, next_batch(0)))
            except FloatingPointError as e:
                raise diverged("the model", step + 1, e, hparams) from None
            append_record(out / RESULTS, record)
            atomic_write_bytes(out / CHECKPOINT, checkpoint_bytes(step + 1, identity, algorithm))
            print(summary_line(record))
            stats = {}
    bar.close()


def diverged(what: str, step: int, detail: Any, hparams: dict):
    """The one-line error for a run whose numbers stopped being finite."""
    from harness.errors import UserError

    return UserError(f"{what} diverged at step {step} ({detail}); try a smaller lr "
                     f"(--hparams '{{\"lr\": {hparams.get('lr', 1e-3) / 10:g}}}')")


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


def to_device(batch: Any, device) -> Any:
    if hasattr(batch, "to"):
        return batch.to(device)
    return [tuple(t.to(device) for t in item) for item in batch]


# --- evaluation ---------------------------------------------------------------------------
def evaluate(algorithm, dataset, splits, train_envs, args, with_dci: bool, probe: Any) -> dict[str, Any]:
    """Accuracy (and worst-group accuracy, DCI/MCC, algorithm logs) on every split."""
    import torch

    algorithm.eval()
    try:
        with torch.no_grad():
            predict = eval_predictor(algorithm, train_envs, args)
            metrics: dict[str, float] = {}
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


def eval_predictor(algorithm, train_envs, args, n_fit: int = 2000):
    """How to predict the dataset's label: the algorithm's own head, or (episodic) a head fitted by ``adapt``."""
    import torch

    from harness.datasets.tasks import ConcatEnv
    from harness.utils import generator

    if not algorithm.EPISODIC:
        return algorithm.predict
    pool = ConcatEnv(train_envs)
    idx = torch.randperm(len(pool), generator=generator(args.seed, "adapt"))[:n_fit]
    x, y = pool.batch(idx)
    device = algorithm.device()
    return algorithm.adapt(x.to(device), y.to(device), num_classes=None)


def split_metrics(predict, split, prefix: str, batch_size: int, device) -> dict[str, float]:
    import torch

    correct = []
    for start in range(0, len(split), batch_size):
        x, y = split.batch(torch.arange(start, min(start + batch_size, len(split))))
        correct.append((predict(x.to(device)).argmax(1).cpu() == y).float())
    if not correct:
        return {}
    correct = torch.cat(correct)
    out = {f"{prefix}_acc": correct.mean().item()}
    if split.groups is not None:
        groups = split.groups
        out[f"{prefix}_wg_acc"] = min(correct[groups == g].mean().item() for g in groups.unique())
    return out


def disentanglement_metrics(algorithm, splits, args) -> dict[str, float]:
    """DCI and MCC of the features on the held-out ('out') splits of all environments.

    ``--dci full`` uses up to DCI_NUM_TRAIN + DCI_NUM_TEST (10,000 + 5,000) held-out points,
    ``fast`` up to FAST_MAX_TRAIN + half as many (2,000 + 1,000)."""
    import torch

    from harness.datasets.tasks import ConcatEnv
    from harness.metrics.disentanglement import DCI_NUM_TEST, DCI_NUM_TRAIN, FAST_MAX_TRAIN, dci, mcc
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
            "dci_informativeness": d["informativeness"], "mcc": mcc(codes, factors)}


# --- persistence --------------------------------------------------------------------------
def checkpoint_bytes(step: int, identity: dict, algorithm) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"step": step, "args": json.dumps(identity, sort_keys=True), "model": algorithm.state_dict()}, buf)
    return buf.getvalue()


def resume(out: Path, identity: dict, algorithm) -> int:
    """Load ``checkpoint.pt`` if present; drop records written after it. Returns the step to start at."""
    import torch

    from harness.errors import UserError

    path = out / CHECKPOINT
    if not path.exists():
        if (out / RESULTS).exists():
            (out / RESULTS).unlink()  # records without a checkpoint are from a run that died early
        return 0
    state = torch.load(path, map_location=algorithm.device(), weights_only=True)
    if state["args"] != json.dumps(identity, sort_keys=True):
        raise UserError(f"{out} holds a run with other arguments ({state['args']}); "
                        "use another --output_dir or delete that one")
    algorithm.load_state_dict(state["model"])
    keep = [r for r in read_records(out / RESULTS) if r["step"] <= state["step"]]
    from harness.utils import atomic_write_text

    atomic_write_text(out / RESULTS, "".join(json.dumps(r) + "\n" for r in keep))
    print(f"resuming from step {state['step']} ({len(keep)} records kept)")
    return int(state["step"])


def read_records(path: Path) -> list[dict]:
    """Records of a results.jsonl; a truncated last line (a kill mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_record(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def peak_memory_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def summary_line(record: dict) -> str:
    keys = [k for k in record if k not in ("args", "hparams") and not isinstance(record[k], (list, dict))]
    return " | ".join(f"{k} {record[k]:.4g}" if isinstance(record[k], float) else f"{k} {record[k]}" for k in keys)


class Tee:
    """Copy sys.stdout or sys.stderr into a file (appending) for the duration of a ``with``."""

    def __init__(self, path: Path, stream: str):
        self.path, self.stream = path, stream

    def __enter__(self):
        self.file = open(self.path, "a")
        self.orig = getattr(sys, self.stream)
        setattr(sys, self.stream, self)
        return self

    def write(self, s: str) -> int:
        self.orig.write(s)
        self.file.write(s)
        self.file.flush()
        return len(s)

    def flush(self) -> None:
        self.orig.flush()
        self.file.flush()

    def isatty(self) -> bool:
        return self.orig.isatty()

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and self.stream == "stderr":  # the error goes to err.txt too
            from harness.errors import UserError

            if isinstance(exc, UserError):
                self.file.write(f"error: {exc}\n")
            else:
                import traceback

                self.file.write("".join(traceback.format_exception(exc_type, exc, tb)))
        setattr(sys, self.stream, self.orig)
        self.file.close()


if __name__ == "__main__":
    main()
