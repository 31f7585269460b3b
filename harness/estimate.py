"""What ``sweep launch`` says before it asks: the jobs per algorithm and dataset and an estimate of the
wall time they take, from each job's steps and a cost per step on this device.

The cost per step (wall seconds per step, checkpoint evaluations included) of an (algorithm, dataset) is

- *measured*: the mean over the finished runs of that pair in the sweep's folder of their last
  ``progress.json`` speed (harness/progress.py) - what this device did;
- else *declared*: :data:`DECLARED`, measured once on a CPU (its comment says where and with which command);
- else unknown: the pair is listed without an estimate (run one job, then launch again).

Jobs run ``workers`` at a time (``multi`` and ``slurm``; ``local``: one), so the wall time is the summed
job time over the parallel slots: an estimate, and the output says so.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from harness.sweep_check import run_args

# Wall seconds per step (checkpoint evaluations included) on a CPU, measured on a shared 2-core machine
# (load average about 5) with 2 threads per job, 2026-12-06: the speed a run's out.txt reports at 90% of
#   python -m harness.sweep launch --algorithms SparseShared ERM --skip_confirmation   (the quick start)
#   python -m harness.sweep launch --datasets Shapes --algorithms SparseShared ERM --steps 100 \
#       --checkpoint_freq 25 --dci_freq 2 --dci fast --skip_confirmation
# A device's own finished runs (measured_costs) take precedence.
DECLARED: dict[str, dict[str, float]] = {
    "SyntheticLinear": {"ERM": 0.18, "SparseShared": 0.057},
}


def declared_costs() -> dict[str, dict[str, float]]:
    """dataset -> algorithm -> seconds per step on a CPU (:data:`DECLARED`)."""
    return DECLARED


def measured_costs(root: Path) -> dict[tuple[str, str], float]:
    """(dataset, algorithm) -> mean seconds per step of the finished runs below ``root`` that recorded a speed."""
    from harness.progress import read_progress

    rates: dict[tuple[str, str], list[float]] = {}
    for done in Path(root).glob("*/done"):
        record = read_progress(done.parent)
        args = first_args(done.parent)
        if record and record.get("rate") and args:
            rates.setdefault((args["dataset"], args["algorithm"]), []).append(1.0 / float(record["rate"]))
    return {key: sum(v) / len(v) for key, v in rates.items()}


def first_args(run_dir: Path) -> dict[str, Any] | None:
    """The ``args`` of a run's first record, if they name its dataset and algorithm (else None)."""
    args = run_args(run_dir)
    return args if args and "dataset" in args and "algorithm" in args else None


def job_steps(train_args: dict[str, Any]) -> int:
    """A job's steps: its ``--steps``, else its dataset's ``N_STEPS``."""
    if train_args.get("steps"):
        return int(train_args["steps"])
    from harness.registry import DATASETS

    return int(DATASETS.get(train_args["dataset"]).N_STEPS)


def parallel_slots(options: dict[str, Any]) -> int:
    """How many jobs run at a time under the sweep's launcher."""
    import os

    launcher = options.get("launcher")
    if launcher == "multi":
        return max(1, int(options.get("workers") or os.cpu_count() or 1))
    if launcher == "slurm":
        return max(1, int(options.get("workers") or 64))
    return 1


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def estimate_lines(jobs: Sequence[Any], options: dict[str, Any]) -> list[str]:
    """The lines printed before the confirmation: one per (algorithm, dataset) with its jobs, steps and
    cost per step, then the estimated wall time."""
    measured = measured_costs(Path(options["output_dir"]))
    declared = declared_costs()
    groups: Counter = Counter()
    for job in jobs:
        a = job.train_args
        groups[(a["algorithm"], a["dataset"], job_steps(a))] += 1
    lines, total, unknown = [], 0.0, []
    for (algorithm, dataset, steps), n in sorted(groups.items()):
        cost, source = measured.get((dataset, algorithm)), "measured in this folder"
        if cost is None:
            cost, source = declared.get(dataset, {}).get(algorithm), "declared: a CPU, harness/estimate.py"
        head = f"  {algorithm} on {dataset}: {n} job{'s' if n > 1 else ''} x {steps} steps"
        if cost is None:
            unknown.append(f"{algorithm} on {dataset}")
            lines.append(f"{head}, cost per step unknown on this device")
            continue
        seconds = n * steps * cost
        total += seconds
        lines.append(f"{head} x {cost:.3g} s/step ({source}) = {hms(seconds)} of job time")
    slots = min(parallel_slots(options), len(jobs)) or 1
    wall = total / slots
    text = (f"estimated wall time: {hms(wall)} (h:mm:ss; an ESTIMATE: job time over {slots} parallel "
            f"slot{'s' if slots > 1 else ''}, from each job's steps and its cost per step")
    text += f"; without {', '.join(unknown)})" if unknown else ")"
    if unknown and not total:
        text = (f"estimated wall time: unknown (no measured or declared cost per step for {', '.join(unknown)}; "
                "launch one job, then the others: launch reads the finished jobs' speed)")
    return lines + [text]
