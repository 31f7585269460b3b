"""Does a sweep folder hold the sweep the command line describes? (``sweep status``, issue 33)

A job's folder is named by a hash of its arguments, so ``status`` run without one of the launch's
arguments (``--steps 200``) describes another sweep: every job "not launched". When the folder holds
finished or started runs of the same datasets and algorithms whose arguments differ from every job of
this command line, :func:`other_arguments_note` says so and names the differing arguments.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

from harness.checkpoints import RESULTS

IGNORED = ("seed",)  # derived from the others (sweep.make_jobs): a difference there is never the cause


def run_args(run_dir: Path) -> dict[str, Any] | None:
    """The training arguments a run recorded (its first record's ``args``), or None."""
    try:
        with open(run_dir / RESULTS) as f:
            args = json.loads(f.readline()).get("args")
    except (OSError, ValueError, AttributeError):
        return None
    return args if isinstance(args, dict) else None


def normal(key: str, value: Any) -> Any:
    """A comparable form: --hparams as a dict (records keep the JSON text), lists as tuples."""
    if key == "hparams" and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


FLAGS = {"hparams_seed": "hparams_seed (--n_hparams/--n_hparams_from)", "trial_seed": "trial_seed (--n_trials)",
         "test_envs": "test_envs (spec)"}


def show(key: str, value: Any) -> str:
    name = FLAGS.get(key, f"--{key}")
    return f"{name} not given" if value is None else f"{name} {value}"


def other_arguments_note(jobs: Sequence[Any], root: Path) -> str | None:
    """One or two lines naming the arguments that differ, or None when the folder holds no such runs."""
    ours = {job.output_dir.name for job in jobs}
    pairs = {(job.train_args["dataset"], job.train_args["algorithm"]) for job in jobs}
    diffs: dict[str, tuple[set, set]] = {}
    n = 0
    for results in sorted(Path(root).glob(f"*/{RESULTS}")):
        if results.parent.name in ours:
            continue
        args = run_args(results.parent)
        if not args or (args.get("dataset"), args.get("algorithm")) not in pairs:
            continue
        n += 1
        same_pair = [j for j in jobs if (j.train_args["dataset"], j.train_args["algorithm"]) ==
                     (args["dataset"], args["algorithm"])]
        closest = min(same_pair, key=lambda j: len(differing(j.train_args, args)))
        for key in differing(closest.train_args, args):
            theirs, mine = diffs.setdefault(key, (set(), set()))
            theirs.add(normal(key, args.get(key)))
            mine.add(normal(key, closest.train_args.get(key, train_defaults().get(key))))
    if not n:
        return None
    named = "; ".join(f"{', '.join(sorted(show(k, v) for v in theirs))} there, "
                      f"{', '.join(sorted(show(k, v) for v in mine))} here"
                      for k, (theirs, mine) in sorted(diffs.items()))
    return (f"note: {root} holds {n} run{'s' if n > 1 else ''} of the same datasets and algorithms under other "
            f"arguments ({named or 'arguments this command does not set'}); give the launch's arguments to "
            "describe that sweep")


def differing(train_args: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """The sweep arguments whose values differ between a job and a run's recorded arguments (an argument a
    job does not pass counts as harness.train's default, which is what its run records)."""
    defaults = train_defaults()
    keys = [*train_args, *(k for k in ("dci",) if k not in train_args)]  # make_jobs passes --dci only when set
    return [k for k in keys if k not in IGNORED
            and normal(k, train_args[k] if train_args.get(k) is not None else defaults.get(k)) != normal(k, recorded.get(k))]


@functools.lru_cache(maxsize=1)
def train_defaults() -> dict[str, Any]:
    """harness.train's defaults (no torch import)."""
    from harness.train import build_parser

    return vars(build_parser().parse_args(["--output_dir", "_"]))
