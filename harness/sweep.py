"""Many runs: ``python -m harness.sweep launch|delete_incomplete|status|reevaluate``.

A sweep is the product trials x datasets x algorithms x test-environment sets x hparam
draws (plus an optional grid of hparam overrides). A spec's ``search`` key writes random-search
ranges down as data (``{"lr": {"log_uniform": [-5, -3.5]}}``): draw N > 0 takes those hparams
from these ranges instead of the built-in ones (harness/hparams.py) and passes them explicitly. Each job's directory is named by a hash
of its training arguments *without* machine-specific paths (data_dir, output_dir, device),
so moving the data or the results never changes a job id. Job states:

  done          the run wrote ``done``
  running       a live process holds its lock (pid, host, heartbeat; see harness/lock.py)
  incomplete    started, not done, nobody running it (crashed, killed, or failed)
  not launched  no directory yet

``launch`` runs the not-launched and incomplete jobs (an incomplete run resumes from its
checkpoint) and skips done and running ones, so killing a sweep and launching it again
only runs what had not finished. ``reevaluate --from_dir SRC`` makes the jobs without training: each from
the run in SRC that trains the same model (a job whose ``--hparams`` differ from it in ``eval_head`` or
``eval_n_fit`` only), its kept checkpoints (``--keep_checkpoints``) scored again (harness/reevaluate.py).
Specs under ``sweeps/NAME.json`` are data: any option
below may be given there; flags on the command line win.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checkpoints import DONE, RESULTS, is_record
from harness.errors import UserError, cli

SPEC_DIRS = (Path.cwd() / "sweeps", Path(__file__).resolve().parents[1] / "sweeps")
DEFAULTS: dict[str, Any] = {
    "algorithms": ["ERM"], "datasets": None, "n_hparams": 1, "n_hparams_from": 0, "n_trials": 1,
    "steps": None, "checkpoint_freq": None, "hparams": None, "grid": None, "search": None, "test_envs": None,
    "dci_freq": None, "dci": None, "holdout_fraction": 0.2, "launcher": "local", "workers": None,
    "keep_checkpoints": False,
}


@dataclass
class Job:
    """One ``harness.train`` run of a sweep."""

    train_args: dict[str, Any]
    root: Path
    data_dir: str | None = None
    device: str = "auto"
    keep_checkpoints: bool = False  # harness.train --keep_checkpoints; not a training argument: no new job id
    command: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.command = [sys.executable, "-m", "harness.train", "--output_dir", str(self.output_dir),
                        "--device", self.device]
        if self.data_dir:
            self.command += ["--data_dir", self.data_dir]
        if self.keep_checkpoints:
            self.command.append("--keep_checkpoints")
        for key, value in self.train_args.items():
            if value is None:
                continue
            if key == "test_envs":
                self.command += ["--test_envs", *map(str, value)]
            elif key == "hparams":
                self.command += ["--hparams", json.dumps(value, sort_keys=True)]
            else:
                self.command += [f"--{key}", str(value)]

    @property
    def job_id(self) -> str:
        digest = hashlib.sha1(json.dumps(self.train_args, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.train_args['dataset']}-{self.train_args['algorithm']}-{digest}"

    @property
    def output_dir(self) -> Path:
        return self.root / self.job_id

    @property
    def state(self) -> str:
        from harness.lock import is_held

        if self.output_dir.is_symlink():
            raise UserError(f"sweep job directory {self.output_dir} is a symbolic link (to "
                            f"{os.readlink(self.output_dir)}); a sweep never writes or deletes through links: "
                            "remove the link")
        if (self.output_dir / DONE).exists() and has_records(self.output_dir):
            return "done"
        if not self.output_dir.exists():
            return "not launched"
        return "running" if is_held(self.output_dir) else "incomplete"

    def last_error(self) -> str:
        if (self.output_dir / DONE).exists():  # incomplete with done: its records are missing
            return "has 'done' but no records (launch runs it again)"
        err = self.output_dir / "err.txt"
        lines = [l for l in err.read_text(errors="replace").splitlines() if l.strip()] if err.exists() else []
        return lines[-1].strip() if lines else ""


def has_records(run_dir: Path) -> bool:
    """Whether ``run_dir/results.jsonl`` is a file that starts with a checkpoint record."""
    path = run_dir / RESULTS
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            first = json.loads(f.readline(1 << 24).decode())
    except (OSError, ValueError):
        return False
    return is_record(first)


# --- building the job list ----------------------------------------------------------------
def load_spec(name: str | None) -> dict[str, Any]:
    """A spec by name (``sweeps/NAME.json``) or by path (``path/to/spec.json``)."""
    if name is None:
        return {}
    candidates = [Path(name), Path(f"{name}.json")] if name.endswith(".json") or os.sep in name else []
    candidates += [d / f"{name}.json" for d in SPEC_DIRS]
    for path in candidates:
        if path.is_file():
            try:
                spec = json.loads(path.read_bytes().decode(), parse_constant=_no_constant(path))
            except UnicodeDecodeError as e:
                raise UserError(f"sweep spec {path} is not UTF-8 text (byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise UserError(f"sweep spec {path} is not valid JSON: {e}") from None
            except RecursionError:
                raise UserError(f"sweep spec {path} is nested too deeply") from None
            if not isinstance(spec, dict):
                raise UserError(f"sweep spec {path} must be a JSON object, got {type(spec).__name__}")
            return spec
    known = sorted({p.stem for d in SPEC_DIRS if d.exists() for p in d.glob("*.json")})
    raise UserError(f"unknown sweep '{name}' (neither a file nor sweeps/{Path(name).stem}.json). Known: {', '.join(known)}")


def _no_constant(path: Path):
    def reject(name: str):
        raise UserError(f"sweep spec {path}: {name} is not a number JSON allows")

    return reject


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_options(opts: dict[str, Any]) -> None:
    """One schema check of the merged options (spec and flags) before any job is planned."""
    from harness.cli import check_test_envs
    from harness.registry import ALGORITHMS, DATASETS

    def fail(key: str, what: str) -> None:
        raise UserError(f"sweep option {key!r} must be {what}, got {json.dumps(opts[key], default=str)[:80]}")

    for key in ("algorithms", "datasets"):
        v = opts[key]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            fail(key, "a non-empty list of names")
    for key, lo in (("n_hparams", 1), ("n_trials", 1), ("n_hparams_from", 0)):
        if not _is_int(opts[key]) or opts[key] < lo:
            fail(key, f"an integer >= {lo}")
    if opts["n_hparams_from"] >= opts["n_hparams"]:
        fail("n_hparams_from", f"smaller than n_hparams ({opts['n_hparams']})")
    for key in ("steps", "checkpoint_freq", "dci_freq", "workers"):
        if opts[key] is not None and (not _is_int(opts[key]) or opts[key] < 1):
            fail(key, "an integer >= 1 (or absent)")
    h = opts["holdout_fraction"]
    if not isinstance(h, (int, float)) or isinstance(h, bool) or not 0 < h < 1:
        fail("holdout_fraction", "a number strictly between 0 and 1")
    if opts["dci"] is not None and opts["dci"] not in ("full", "fast"):
        fail("dci", '"full" or "fast"')
    if not isinstance(opts["launcher"], str):
        fail("launcher", "a launcher name")
    if not isinstance(opts["keep_checkpoints"], bool):
        fail("keep_checkpoints", "true or false")
    for key in ("hparams", "search"):
        if opts[key] is not None and not isinstance(opts[key], dict):
            fail(key, "a JSON object")
    grid = opts["grid"]
    if grid is not None and (not isinstance(grid, dict) or
                             not all(isinstance(v, list) and v for v in grid.values())):
        fail("grid", 'a JSON object of non-empty lists, e.g. {"lr": [1e-3, 1e-4]}')
    for name in opts["algorithms"]:
        ALGORITHMS.get(name)  # unknown names: one line with the known ones
    for name in opts["datasets"]:
        DATASETS.get(name)
    from harness.registry import LAUNCHERS

    LAUNCHERS.get(opts["launcher"])
    te = opts["test_envs"]
    for dataset in opts["datasets"]:
        sets = te.get(dataset) if isinstance(te, dict) else te
        if te is None or (isinstance(te, dict) and dataset not in te):
            continue
        if not isinstance(sets, list) or not all(isinstance(s, list) and all(_is_int(i) for i in s) for s in sets):
            fail("test_envs", "a list of lists of environment indices (or an object of them per dataset)")
        for s in sets:
            check_test_envs(s, DATASETS.get(dataset).ENVIRONMENTS, dataset, what="sweep option 'test_envs'")
    _check_hparam_values(opts)


def _check_hparam_values(opts: dict[str, Any]) -> None:
    """hparams and grid values: known names with values of the right type, for every (algorithm, dataset)."""
    from harness import hparams as hp

    fixed = dict(opts["hparams"] or {})
    for algorithm in opts["algorithms"]:
        for dataset in opts["datasets"]:
            for point in grid_points(opts["grid"]):
                try:
                    hp.parse_overrides({**fixed, **point}, algorithm, dataset)
                except UserError as e:
                    raise UserError(f"sweep hparams/grid: {e}") from None


def check_data(opts: dict[str, Any]) -> None:
    """Datasets that read files from --data_dir and say where (a ``root`` classmethod): present before any job starts."""
    from harness.registry import DATASETS

    data_dir = opts.get("data_dir") or os.environ.get("HARNESS_DATA", "data")
    for name in opts["datasets"]:
        root = getattr(DATASETS.get(name), "root", None)
        if callable(root) and _takes_one_argument(root):
            root(data_dir)


def _takes_one_argument(f: Any) -> bool:
    import inspect

    try:
        return len(inspect.signature(f).parameters) == 1
    except (TypeError, ValueError):
        return False


def test_env_sets(dataset: str, spec_value: Any) -> list[list[int]]:
    """The test-environment sets of a dataset: the spec's, else the dataset's ``TEST_ENV_SETS``,
    else each environment held out in turn (DomainBed)."""
    if spec_value is not None:
        return spec_value[dataset] if isinstance(spec_value, dict) else spec_value
    from harness.registry import DATASETS

    cls = DATASETS.get(dataset)
    sets = getattr(cls, "TEST_ENV_SETS", None)
    return sets if sets is not None else [[i] for i in range(len(cls.ENVIRONMENTS))]


def grid_points(grid: dict[str, list] | None) -> list[dict[str, Any]]:
    if not grid:
        return [{}]
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


MAX_JOBS = 100_000  # a sweep larger than this is a typo (every command enumerates every job)


def count_jobs(opts: dict[str, Any]) -> int:
    """How many jobs ``opts`` describe, computed without enumerating them."""
    import math

    grid = math.prod(len(v) for v in (opts["grid"] or {}).values())
    per_dataset = sum(len(test_env_sets(d, opts["test_envs"])) for d in opts["datasets"])
    return (opts["n_trials"] * len(opts["algorithms"]) * per_dataset * grid
            * (opts["n_hparams"] - opts["n_hparams_from"]))


def checked_draw(algorithm: str, dataset: str, hseed: int, overrides: dict | None, cache: dict) -> None:
    """A job's hparams (search draw, fixed hparams, grid point) as harness.train will check them: a bad
    draw is found before the first job starts, not when every job has failed."""
    from harness import hparams as hp

    key = (algorithm, dataset, json.dumps(overrides, sort_keys=True, default=str))
    if key in cache:
        return
    try:
        hp.parse_overrides(json.dumps(overrides), algorithm, dataset)  # the text the job passes to --hparams
    except (UserError, ValueError) as e:  # ValueError: json.dumps of an overflowing draw
        raise UserError(f"hparams draw {hseed} of {algorithm} on {dataset} ({key[2][:120]}): {e}") from None
    cache[key] = True


def make_jobs(opts: dict[str, Any]) -> list[Job]:
    from harness.hparams import searched_hparams
    from harness.utils import seed_hash

    n = count_jobs(opts)
    if n > MAX_JOBS:
        raise UserError(f"this sweep has {n:,} jobs (n_trials x algorithms x datasets x test-env sets x hparam "
                        f"draws x grid points); at most {MAX_JOBS:,}: lower n_trials or n_hparams")
    jobs, cache, draws = [], {}, {}
    root = Path(opts["output_dir"])
    for trial, dataset, algorithm in itertools.product(range(opts["n_trials"]), opts["datasets"], opts["algorithms"]):
        for test_envs, hseed, point in itertools.product(
                test_env_sets(dataset, opts["test_envs"]), range(opts["n_hparams_from"], opts["n_hparams"]),
                grid_points(opts["grid"])):
            if (algorithm, dataset, hseed) not in draws:  # the same for every trial and test-env set
                try:
                    draws[algorithm, dataset, hseed] = (searched_hparams(algorithm, dataset, hseed, opts["search"])
                                                        if opts["search"] else {})
                except (OverflowError, ValueError, TypeError) as e:
                    raise UserError(f"search: draw {hseed} of {algorithm} on {dataset} failed ({e})") from None
            searched = draws[algorithm, dataset, hseed]
            overrides = {**searched, **(opts["hparams"] or {}), **point} or None
            if overrides:
                checked_draw(algorithm, dataset, hseed, overrides, cache)
            train_args = {"dataset": dataset, "algorithm": algorithm, "test_envs": list(test_envs),
                          "hparams_seed": hseed, "trial_seed": trial,
                          "seed": seed_hash(trial, dataset, algorithm, test_envs, hseed, point),
                          "steps": opts["steps"], "checkpoint_freq": opts["checkpoint_freq"],
                          "holdout_fraction": opts["holdout_fraction"], "dci_freq": opts["dci_freq"],
                          "hparams": overrides, **({"dci": opts["dci"]} if opts["dci"] else {})}
            jobs.append(Job(train_args, root, opts.get("data_dir"), opts.get("device") or "auto",
                            bool(opts["keep_checkpoints"])))
    check_search_names(opts)
    return jobs


def check_search_names(opts: dict[str, Any]) -> None:
    """A ``search`` hparam that no algorithm has on the sweep's datasets is a typo (a spec's ranges for
    algorithms that ``--algorithms`` leaves out are not)."""
    from harness.hparams import space
    from harness.registry import ALGORITHMS

    known = {k for a in {*opts["algorithms"], *ALGORITHMS.names()} for d in opts["datasets"] for k in space(a, d)}
    unknown = sorted(set(opts["search"] or {}) - known)
    if unknown:
        raise UserError(f"search names unknown hparam(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults < sweep spec < command-line flags. No dataset named: the embedded default sweep."""
    spec_name = args.sweep or (None if args.datasets else "default")
    spec = load_spec(spec_name)
    unknown = set(spec) - set(DEFAULTS) - {"description"}
    if unknown:
        raise UserError(f"sweep spec '{spec_name}' has unknown keys {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **{k: v for k, v in spec.items() if k in DEFAULTS}}
    opts.update({k: v for k, v in vars(args).items() if v is not None})
    if not opts["datasets"]:
        raise UserError("no datasets: name them with --datasets or give a --sweep spec that lists them")
    if isinstance(opts["datasets"], str) or isinstance(opts["algorithms"], str):
        key = "datasets" if isinstance(opts["datasets"], str) else "algorithms"
        raise UserError(f"sweep option {key!r} must be a list of names, e.g. [{json.dumps(opts[key])}]")
    stem = Path(spec_name).stem if spec_name else "sweep"
    opts["output_dir"] = args.output_dir or str(Path("results") / stem)
    check_options(opts)
    return opts


# --- commands -----------------------------------------------------------------------------
def count_states(jobs: list[Job]) -> dict[str, list[Job]]:
    states: dict[str, list[Job]] = {s: [] for s in ("done", "running", "incomplete", "not launched")}
    for job in jobs:
        states[job.state].append(job)
    return states


def confirm(question: str, skip: bool) -> bool:
    if skip:
        return True
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        print("\nno answer (stdin closed); pass --skip_confirmation to run unattended", file=sys.stderr)
        return False


def launch(jobs: list[Job], opts: dict[str, Any]) -> int:
    """Run what is not done; exit status 1 when a job it ran did not finish."""
    from harness.registry import LAUNCHERS

    launcher = LAUNCHERS.get(opts["launcher"])
    states = count_states(jobs)
    todo = states["not launched"] + states["incomplete"]
    print(f"{len(jobs)} jobs: {len(states['done'])} done, {len(states['running'])} running elsewhere (skipped), "
          f"{len(states['incomplete'])} incomplete (will resume), {len(states['not launched'])} to start")
    if not todo:
        return 0
    if opts["launcher"] != "dummy":
        check_data(opts)
    from harness.estimate import estimate_lines

    print("\n".join(estimate_lines(todo, opts)))  # jobs per algorithm and dataset, estimated wall time
    if not confirm(f"Launch {len(todo)} jobs with the '{opts['launcher']}' launcher?", opts["skip_confirmation"]):
        print("nothing launched")
        return 0
    Path(opts["output_dir"]).mkdir(parents=True, exist_ok=True)
    from harness.progress import monitor_for

    with monitor_for(todo, opts):  # per-run step, steps/s, ETA (harness/progress.py)
        launcher(todo, opts)
    if opts["launcher"] == "dummy" or opts.get("no_wait"):
        return 0
    after = {id(job): job.state for job in todo}
    failed = [job for job in todo if after[id(job)] in ("incomplete", "not launched")]
    elsewhere = [job for job in todo if after[id(job)] == "running"]
    done = sum(job.state == "done" for job in jobs)
    print(f"finished: {done}/{len(jobs)} done, {len(failed)} failed, {len(elsewhere)} running elsewhere")
    print_failures(failed)
    return 1 if failed else 0


def print_failures(jobs: list[Job], file=sys.stderr) -> None:
    for job in jobs:
        print(f"  failed: {job.output_dir}  {job.last_error() or '(no error recorded)'}", file=file)


def status(jobs: list[Job], opts: dict[str, Any]) -> None:
    states = count_states(jobs)
    print(f"sweep in {opts['output_dir']}: {len(jobs)} jobs")
    for state, members in states.items():
        print(f"  {state:13s} {len(members)}")
    if states["not launched"]:  # other arguments than the launch's? (harness/sweep_check.py)
        from harness.sweep_check import other_arguments_note

        note = other_arguments_note(jobs, Path(opts["output_dir"]))
        if note:
            print(note)
    failed = [j for j in states["incomplete"] if j.last_error()]
    if failed:
        print("failed jobs (last line of err.txt):")
        print_failures(failed, sys.stdout)


def delete_incomplete(jobs: list[Job], opts: dict[str, Any]) -> None:
    victims = count_states(jobs)["incomplete"]  # "running" jobs hold a live lock: never deleted
    print(f"{len(victims)} incomplete jobs")
    if victims and confirm(f"Delete {len(victims)} incomplete job directories?", opts["skip_confirmation"]):
        deleted = sum(delete_run(job.output_dir) for job in victims)
        print(f"deleted {deleted}" + (f" ({len(victims) - deleted} started again meanwhile: kept)"
                                      if deleted < len(victims) else ""))


def delete_run(run_dir: Path) -> bool:
    """Delete an incomplete run holding its lock, so a run that started since it was listed is kept."""
    from harness.lock import LOCK, RunLock

    if run_dir.is_symlink():  # its target is not the sweep's to delete
        print(f"  kept {run_dir}: a symbolic link (to {os.readlink(run_dir)}); remove the link yourself",
              file=sys.stderr)
        return False
    if not run_dir.exists() or ((run_dir / DONE).exists() and has_records(run_dir)):
        return False
    try:
        with RunLock(run_dir, wait_s=0.5):
            if (run_dir / DONE).exists() and has_records(run_dir):
                return False
            for entry in run_dir.iterdir():
                if entry.name != LOCK:  # a link is unlinked, never followed
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            (run_dir / LOCK).unlink(missing_ok=True)  # under the flock: a racing run sees a new file
            run_dir.rmdir()
    except UserError as e:
        print(f"  kept {run_dir}: {e}", file=sys.stderr)
        return False
    except OSError as e:
        print(f"  could not delete {run_dir}: {e.strerror or e}", file=sys.stderr)
        return False
    return True


def reevaluate(jobs: list[Job], opts: dict[str, Any]) -> int:
    """Make the jobs from runs of ``--from_dir`` that trained the same models (harness/reevaluate.py)."""
    from harness.reevaluate import reevaluate_sweep

    return reevaluate_sweep(jobs, opts)


COMMANDS = {"launch": launch, "status": status, "delete_incomplete": delete_incomplete, "reevaluate": reevaluate}


def build_parser() -> argparse.ArgumentParser:
    from harness.cli import OneLineParser

    p = OneLineParser(prog="python -m harness.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=list(COMMANDS))
    p.add_argument("--sweep", help="a spec: NAME (sweeps/NAME.json) or a path to a .json file "
                                   "(default: sweeps/default.json when no --datasets)")
    p.add_argument("--algorithms", nargs="+")
    p.add_argument("--datasets", nargs="+")
    p.add_argument("--n_hparams", type=int, help="hparam draws per (algorithm, dataset): seeds n_hparams_from..n_hparams-1 (0 = defaults)")
    p.add_argument("--n_hparams_from", type=int)
    p.add_argument("--n_trials", type=int, help="trials (data-split seeds)")
    p.add_argument("--steps", type=int)
    p.add_argument("--checkpoint_freq", type=int)
    p.add_argument("--dci_freq", type=int)
    p.add_argument("--dci", choices=("full", "fast"), help="DCI variant of every job (harness.train --dci; default full)")
    p.add_argument("--hparams", type=json.loads, help="JSON overrides applied to every job")
    p.add_argument("--output_dir", help="sweep directory (default: results/<sweep name>)")
    p.add_argument("--data_dir")
    p.add_argument("--device", help="auto | cpu | cuda (passed to every job)")
    p.add_argument("--keep_checkpoints", action="store_true", default=None,
                   help="every job keeps every checkpoint (harness.train --keep_checkpoints), for harness.reevaluate")
    p.add_argument("--from_dir", help="reevaluate: the sweep folder whose runs (trained with --keep_checkpoints) "
                                      "are scored again with the evaluation hparams of --hparams")
    p.add_argument("--launcher", help="local | multi | slurm | dummy | a plugin (default: local)")
    p.add_argument("--workers", type=int, help="multi: parallel processes; slurm: array parallelism")
    p.add_argument("--skip_confirmation", action="store_true")
    p.add_argument("--progress_every", type=float, metavar="SECONDS",
                   help="without a terminal: report each running job's progress this often (default: 30)")
    slurm = p.add_argument_group("slurm launcher (submitit)")
    slurm.add_argument("--slurm_partition")
    slurm.add_argument("--slurm_time", type=int, help="minutes per job")
    slurm.add_argument("--slurm_gpus", type=int, help="GPUs per job")
    slurm.add_argument("--slurm_cpus", type=int, help="CPUs per job")
    slurm.add_argument("--slurm_mem_gb", type=float)
    slurm.add_argument("--slurm_folder", help="submitit log folder (default: <output_dir>/_slurm/%%j)")
    slurm.add_argument("--no_wait", action="store_true", help="submit and return without waiting")
    return p


def main(argv: list[str] | None = None) -> None:
    def _main() -> None:
        args = build_parser().parse_args(argv)
        command = COMMANDS[args.command]
        opts = resolve_options(args)
        jobs = make_jobs(opts)
        return command(jobs, opts)

    code = cli(_main)()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
