"""Issue 31's plateau study (docs/real_images.md) as one ordered queue walked by two lanes.

Each lane takes the first queued run that is not done, not held by the other lane or another process, and
expected to finish before ``--deadline``, and runs it as one 1-thread ``harness.train`` job from the commit
that made that algorithm's earlier runs (a detached worktree per commit under ``--worktrees``). A run that
would not finish in time is left for a later sitting (a sitting's machine is not kept, so a run cut off at
its end is lost), and shorter runs fill the tail. Once a kept-checkpoint SparseShared run is done, a lane makes
its probe-head twin with ``harness.reevaluate``. Finished runs are copied to docs/measured by
``benchmarks/plateau_report.sh``, and a new machine's loop starts from them (``--records``); the loop is
resumable, so start it again in each sitting:

    python benchmarks/plateau_queue.py --deadline 03:10 [--dry_run]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.launchers import thread_env
from harness.sweep import Job, build_parser, make_jobs, resolve_options

REPO = Path(__file__).resolve().parent.parent
PROBE = {"eval_head": "probe"}
SWEEPS = ("colored_fmnist_plateau", "rotated_fmnist_plateau")  # (a) and (b); each has a NAME_probe twin folder
# Commits that trained each part (each record's `commit` says which): MultiTask's bounded evaluation head
# (9d386c8), the other (a) runs (68003ea), --keep_checkpoints and harness.reevaluate (64632c0).
MULTITASK, FIRST, KEEP = "9d386c8", "68003ea", "64632c0"
# Expected minutes of one run at one thread beside one other job: the records' median seconds per step
# x 2000 steps, plus evaluation (docs/real_images.md, "Wall time"), until a run of the same algorithm, draw
# and held-out domain has finished (`expected_minutes`); (b)'s are guesses until then.
MINUTES = {("SparseShared", 1): 100, ("SparseShared", 2): 40, ("MultiTask", 2): 45, ("ProtoNet", 1): 60,
           ("ProtoNet", 2): 40, "episodic_b": 55, "short_b": 15}


@dataclass
class Entry:
    job: Job
    commit: str
    minutes: float
    probe: Job | None = None  # the probe-head twin to reevaluate from this run's kept checkpoints

    @property
    def name(self) -> str:
        a = self.job.train_args
        return f"{self.job.job_id} (draw {a['hparams_seed']}, trial {a['trial_seed']}, test {a['test_envs']})"


def sweep_jobs(args: list[str], root: Path) -> list[Job]:
    opts = resolve_options(build_parser().parse_args(["launch", *args, "--output_dir", str(root)]))
    return make_jobs(opts)


def queue(root: Path) -> list[Entry]:
    cfm, rfm = SWEEPS
    a, b = root / cfm, root / rfm
    own = json.dumps({"backbone": "SmallCNN", "n_per_env": 2000})
    probe = json.dumps({"backbone": "SmallCNN", "n_per_env": 2000, **PROBE})
    entries = []

    def job(sweep: str, algorithm: str, draw: int, trial: int, out: Path, hparams: str = own, **kw) -> Job:
        jobs = sweep_jobs(["--sweep", sweep, "--algorithms", algorithm, "--n_hparams_from", str(draw),
                           "--n_hparams", str(draw + 1), "--n_trials", str(trial + 1), "--hparams", hparams,
                           *(["--keep_checkpoints"] if kw.get("keep") else [])], out)
        return [j for j in jobs if j.train_args["trial_seed"] == trial and j.train_args["test_envs"] == kw.get(
            "test_envs", j.train_args["test_envs"])][0]

    for draw in (1, 2):  # (a): the episodic algorithms' random draws, longest first
        for trial in range(3):
            entries.append(Entry(job(cfm, "SparseShared", draw, trial, a, keep=True), KEEP,
                                 MINUTES["SparseShared", draw],
                                 job(cfm, "SparseShared", draw, trial, Path(f"{a}_probe"), probe)))
            if draw == 2:
                entries.append(Entry(job(cfm, "MultiTask", draw, trial, a), MULTITASK, MINUTES["MultiTask", 2]))
            entries.append(Entry(job(cfm, "ProtoNet", draw, trial, a), FIRST, MINUTES["ProtoNet", draw]))
    for trial in range(3):  # (b): default hparams, both held-out domains
        for test_env in (0, 5):
            entries.append(Entry(job(rfm, "SparseShared", 0, trial, b, keep=True, test_envs=[test_env]), KEEP,
                                 MINUTES["episodic_b"],
                                 job(rfm, "SparseShared", 0, trial, Path(f"{b}_probe"), probe, test_envs=[test_env])))
            for algorithm in ("MultiTask", "ProtoNet"):
                entries.append(Entry(job(rfm, algorithm, 0, trial, b, test_envs=[test_env]), KEEP,
                                     MINUTES["episodic_b"]))
            for algorithm in ("ERM", "IRM", "VREx", "GroupDRO", "CORAL"):
                entries.append(Entry(job(rfm, algorithm, 0, trial, b, test_envs=[test_env]), KEEP,
                                     MINUTES["short_b"]))
    return entries


def worktree(commit: str, where: Path) -> Path:
    path = where / commit
    if not path.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def log(msg: str) -> None:
    print(f"{dt.datetime.now():%H:%M:%S} {msg}", flush=True)


def expected_minutes(entry: Entry) -> float:
    """From the finished runs of the same algorithm, draw and held-out domain beside it, once there are any:
    their median seconds per step x steps, plus a quarter for evaluation; else the table above."""
    a = entry.job.train_args
    times = []
    for records in entry.job.output_dir.parent.glob(f"{a['dataset']}-{a['algorithm']}-*/results.jsonl"):
        if not (records.parent / "done").exists():
            continue
        recs = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
        if recs and all(recs[0]["args"][k] == a[k] for k in ("hparams_seed", "test_envs")):
            times.append(statistics.median(r["step_time"] for r in recs))
    return statistics.median(times) * a["steps"] * 1.25 / 60 if times else entry.minutes


def reevaluate(entry: Entry, where: Path) -> None:
    probe = entry.probe
    cmd = [sys.executable, "-m", "harness.reevaluate", "--run", str(entry.job.output_dir),
           "--hparams", json.dumps(PROBE), "--output_dir", str(probe.output_dir)]
    start = time.time()
    rc = subprocess.run(cmd, cwd=worktree(KEEP, where), stdout=subprocess.DEVNULL).returncode
    log(f"reevaluated {probe.job_id} from {entry.job.job_id}: exit {rc}, {time.time() - start:.0f} s")


def lane(name: str, entries: list[Entry], deadline: dt.datetime, where: Path, claimed: set, active: set, lanes: int,
         mutex) -> None:
    while True:
        with mutex:  # first a probe-head twin whose source has finished (minutes), then the next run that fits
            twin = next((e for e in entries if e.probe and f"probe {e.job.job_id}" not in claimed
                         and e.job.state == "done" and e.probe.state != "done"), None)
            if twin is not None:
                claimed.add(f"probe {twin.job.job_id}")
            pick = None
            # runs of another process (say, an earlier loop stopped without its jobs) take lanes as well
            busy = len(active) + sum(e.job.job_id not in active and e.job.state == "running" for e in entries)
            for e in entries if twin is None and busy < lanes else ():
                if e.job.job_id in claimed or e.job.state not in ("not launched", "incomplete"):
                    continue
                minutes = expected_minutes(e)
                if dt.datetime.now() + dt.timedelta(minutes=minutes) <= deadline:
                    pick = e
                    claimed.add(e.job.job_id)
                    active.add(e.job.job_id)
                    break
            # wait while the lanes are full, or a SparseShared run still going will want its probe-head twin
            wait = busy >= lanes or any(e.probe and e.job.state == "running" for e in entries)
        if twin is not None:
            reevaluate(twin, where)
            continue
        if pick is None and wait:
            time.sleep(30)
            continue
        if pick is None:
            log(f"lane {name}: nothing left that fits before {deadline:%H:%M}")
            return
        log(f"lane {name}: start {pick.name} at {pick.commit}, expected {minutes:.0f} min")
        start = time.time()
        env = {**os.environ, **thread_env(1)}
        with open(pick.job.output_dir.parent / f"{pick.job.job_id}.log", "a") as out:
            rc = subprocess.run(pick.job.command, cwd=worktree(pick.commit, where), env=env, stdout=out,
                                stderr=subprocess.STDOUT).returncode
        log(f"lane {name}: {pick.job.job_id} exit {rc} after {(time.time() - start) / 60:.1f} min")
        active.discard(pick.job.job_id)


def seed_from_records(records: Path, root: Path) -> int:
    """Copy the committed finished runs (records only) into ``root``, so that a new machine's loop finds them
    done: a sitting's machine is not kept, its records are."""
    n = 0
    for sweep in SWEEPS:
        for folder in (sweep, f"{sweep}_probe"):
            for run in sorted((records / folder).glob("*/done")):
                dst = root / folder / run.parent.name
                if not dst.exists():
                    shutil.copytree(run.parent, dst)
                    n += 1
    return n


def clock(text: str) -> dt.datetime:
    """HH:MM today, or tomorrow if that is past."""
    try:
        hh, mm = map(int, text.split(":"))
        when = dt.datetime.now().replace(hour=hh, minute=mm, second=0, microsecond=0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time of day HH:MM") from None
    return when if when >= dt.datetime.now() else when + dt.timedelta(days=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deadline", required=True, type=clock, help="HH:MM today (or tomorrow, if already past): "
                   "start no run expected to end later")
    p.add_argument("--records", type=Path, default=REPO / "docs" / "measured",
                   help="committed records of finished runs, copied into --root first (default: %(default)s)")
    p.add_argument("--root", type=Path, default=Path("results"), help="folder of the sweeps' run folders")
    p.add_argument("--worktrees", type=Path, default=Path("results/worktrees"))
    p.add_argument("--lanes", type=int, default=2)
    p.add_argument("--dry_run", action="store_true", help="print the queue and each run's state (after "
                   "copying the committed records), start nothing")
    args = p.parse_args()
    log(f"copied {seed_from_records(args.records, args.root)} committed finished runs into {args.root}")
    entries = queue(args.root.resolve())
    for e in entries:
        if args.dry_run:
            probe = f"; probe {e.probe.state}" if e.probe else ""
            print(f"{e.job.state:13} {e.job.train_args['algorithm']:12} {e.name} {expected_minutes(e):.0f} min{probe}")
    if args.dry_run:
        return
    where = args.worktrees.resolve()
    where.mkdir(parents=True, exist_ok=True)
    for commit in {e.commit for e in entries} | {KEEP}:  # before the lanes start: git locks its index
        worktree(commit, where)
    for e in entries:
        for j in (e.job, e.probe):
            if j is not None:
                j.output_dir.parent.mkdir(parents=True, exist_ok=True)
    claimed, active, mutex = set(), set(), threading.Lock()
    lanes = [threading.Thread(target=lane, args=(str(i), entries, args.deadline, where, claimed, active, args.lanes,
                                                 mutex))
             for i in range(args.lanes)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()


if __name__ == "__main__":
    main()
