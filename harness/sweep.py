"""Many runs: ``python -m harness.sweep launch|delete_incomplete|status``.

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
only runs what had not finished. Specs under ``sweeps/NAME.json`` are data: any option
below may be given there; flags on the command line win.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError, cli

SPEC_DIRS = (Path.cwd() / "sweeps", Path(__file__).resolve().parents[1] / "sweeps")
NON_IDENTITY = ("data_dir", "output_dir", "device")
DEFAULTS: dict[str, Any] = {
    "algorithms": ["ERM"], "datasets": None, "n_hparams": 1, "n_hparams_from": 0, "n_trials": 1,
    "steps": None, "checkpoint_freq": None, "hparams": None, "grid": None, "search": None, "test_envs": None,
    "dci_freq": None, "dci": None, "holdout_fraction": 0.2, "launcher": "local", "workers": None,
}


@dataclass
class Job:
    """One ``harness.train`` run of a sweep."""

    train_args: dict[str, Any]
    root: Path
    data_dir: str | None = None
    device: str = "auto"
    command: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.command = [sys.executable, "-m", "harness.train", "--output_dir", str(self.output_dir),
                        "--device", self.device]
        if self.data_dir:
            self.command += ["--data_dir", self.data_dir]
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
        from harness.lock import is_alive, read_lock

        if (self.output_dir / "done").exists():
            return "done"
        if not self.output_dir.exists():
            return "not launched"
        return "running" if is_alive(read_lock(self.output_dir)) else "incomplete"

    def last_error(self) -> str:
        err = self.output_dir / "err.txt"
        lines = [l for l in err.read_text(errors="replace").splitlines() if l.strip()] if err.exists() else []
        return lines[-1].strip() if lines else ""


# --- building the job list ----------------------------------------------------------------
def load_spec(name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    for d in SPEC_DIRS:
        path = d / f"{name}.json"
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise UserError(f"sweep spec {path} is not valid JSON: {e}") from None
    known = sorted({p.stem for d in SPEC_DIRS if d.exists() for p in d.glob("*.json")})
    raise UserError(f"unknown sweep '{name}'. Known: {', '.join(known)}")


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


def make_jobs(opts: dict[str, Any]) -> list[Job]:
    from harness.hparams import searched_hparams
    from harness.utils import seed_hash

    jobs = []
    root = Path(opts["output_dir"])
    for trial, dataset, algorithm in itertools.product(range(opts["n_trials"]), opts["datasets"], opts["algorithms"]):
        for test_envs, hseed, point in itertools.product(
                test_env_sets(dataset, opts["test_envs"]), range(opts["n_hparams_from"], opts["n_hparams"]),
                grid_points(opts["grid"])):
            searched = searched_hparams(algorithm, dataset, hseed, opts["search"]) if opts["search"] else {}
            overrides = {**searched, **(opts["hparams"] or {}), **point} or None
            train_args = {"dataset": dataset, "algorithm": algorithm, "test_envs": list(test_envs),
                          "hparams_seed": hseed, "trial_seed": trial,
                          "seed": seed_hash(trial, dataset, algorithm, test_envs, hseed, point),
                          "steps": opts["steps"], "checkpoint_freq": opts["checkpoint_freq"],
                          "holdout_fraction": opts["holdout_fraction"], "dci_freq": opts["dci_freq"],
                          "hparams": overrides, **({"dci": opts["dci"]} if opts["dci"] else {})}
            jobs.append(Job(train_args, root, opts.get("data_dir"), opts.get("device") or "auto"))
    check_search_names(opts)
    return jobs


def check_search_names(opts: dict[str, Any]) -> None:
    """A ``search`` hparam that no (algorithm, dataset) of the sweep has is a typo."""
    from harness.hparams import space

    known = {k for a in opts["algorithms"] for d in opts["datasets"] for k in space(a, d)}
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
    opts["output_dir"] = args.output_dir or str(Path("results") / (spec_name or "sweep"))
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


def launch(jobs: list[Job], opts: dict[str, Any]) -> None:
    from harness.registry import LAUNCHERS

    launcher = LAUNCHERS.get(opts["launcher"])
    states = count_states(jobs)
    todo = states["not launched"] + states["incomplete"]
    print(f"{len(jobs)} jobs: {len(states['done'])} done, {len(states['running'])} running elsewhere (skipped), "
          f"{len(states['incomplete'])} incomplete (will resume), {len(states['not launched'])} to start")
    if not todo:
        return
    if not confirm(f"Launch {len(todo)} jobs with the '{opts['launcher']}' launcher?", opts["skip_confirmation"]):
        print("nothing launched")
        return
    Path(opts["output_dir"]).mkdir(parents=True, exist_ok=True)
    launcher(todo, opts)
    after = count_states(jobs)
    print(f"finished: {len(after['done'])}/{len(jobs)} done, {len(after['incomplete'])} incomplete")
    if after["incomplete"] and opts["launcher"] != "dummy":
        print_failures(after["incomplete"])


def print_failures(jobs: list[Job], file=sys.stderr) -> None:
    for job in jobs:
        print(f"  failed: {job.output_dir}  {job.last_error() or '(no error recorded)'}", file=file)


def status(jobs: list[Job], opts: dict[str, Any]) -> None:
    states = count_states(jobs)
    print(f"sweep in {opts['output_dir']}: {len(jobs)} jobs")
    for state, members in states.items():
        print(f"  {state:13s} {len(members)}")
    failed = [j for j in states["incomplete"] if j.last_error()]
    if failed:
        print("failed jobs (last line of err.txt):")
        print_failures(failed, sys.stdout)


def delete_incomplete(jobs: list[Job], opts: dict[str, Any]) -> None:
    victims = count_states(jobs)["incomplete"]  # "running" jobs hold a live lock: never deleted
    print(f"{len(victims)} incomplete jobs")
    if victims and confirm(f"Delete {len(victims)} incomplete job directories?", opts["skip_confirmation"]):
        for job in victims:
            shutil.rmtree(job.output_dir)
        print(f"deleted {len(victims)}")


COMMANDS = {"launch": launch, "status": status, "delete_incomplete": delete_incomplete}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=list(COMMANDS))
    p.add_argument("--sweep", help="a spec under sweeps/ (default: sweeps/default.json when no --datasets)")
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
    p.add_argument("--launcher", help="local | multi | slurm | dummy | a plugin (default: local)")
    p.add_argument("--workers", type=int, help="multi: parallel processes; slurm: array parallelism")
    p.add_argument("--skip_confirmation", action="store_true")
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
        command(jobs, opts)

    cli(_main)()


if __name__ == "__main__":
    main()
