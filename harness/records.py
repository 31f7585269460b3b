"""Reading a sweep's records: every finished ``*/results.jsonl`` below a directory, as a DataFrame.

Used by ``harness.collect_results`` (tables), ``harness.plots`` and ``harness.correlate``. A run
counts once it has written ``done``; a truncated or corrupt line (a kill mid-write) is skipped and
counted. Imports no torch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError

from harness.checkpoints import DONE, RESULTS, scan_records


@dataclass
class LoadStats:
    """What was read and what was skipped, for the summary line."""

    runs: int = 0
    records: int = 0
    corrupt_lines: int = 0
    corrupt_files: int = 0
    unfinished: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # finished runs without a record to read
    duplicates: int = 0  # copies of a job (same args) left out

    def summary(self) -> str:
        extra = ""
        if self.unreadable:
            shown = ", ".join(self.unreadable[:5]) + (", ..." if len(self.unreadable) > 5 else "")
            extra += f", {plural(len(self.unreadable), 'finished run')} without readable records ({shown})"
        if self.duplicates:
            extra += f", {self.duplicates} duplicate cop{'y' if self.duplicates == 1 else 'ies'} of a job"
        return (f"read {plural(self.records, 'record')} from {plural(self.runs, 'run')}; skipped "
                f"{plural(self.corrupt_lines, 'corrupt line')} in {plural(self.corrupt_files, 'file')}, "
                f"{plural(len(self.unfinished), 'unfinished run')}{extra}")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Checkpoint records of one file and the number of lines that are not one (truncated, corrupt)."""
    found = scan_records(path)
    return found.records, len(found.bad_lines)


def load_records(input_dir: Path) -> tuple[list[dict], LoadStats]:
    """Records of every finished run below ``input_dir``; each gets ``run`` (its directory). What cannot be
    read is counted in the stats and named on stderr: finished runs without records, truncated files and
    copies of one job (only the copy finished last is kept). ``keep_runs`` names the runs it keeps that mix
    commits."""
    if input_dir.is_file():
        raise UserError(f"--input_dir {input_dir} is a file; give the directory that holds the runs "
                        f"(searched recursively for */{RESULTS}), e.g. {input_dir.parent.parent}")
    if not input_dir.is_dir():
        raise UserError(f"input directory {input_dir} does not exist")
    files = sorted(input_dir.rglob(RESULTS))
    no_results = sorted(p.parent for p in input_dir.rglob(DONE) if not (p.parent / RESULTS).exists())
    if not files and not no_results:
        raise UserError(f"no {RESULTS} below {input_dir}")
    stats, runs, warnings = LoadStats(), {}, []
    stats.unreadable += [d.relative_to(input_dir).as_posix() for d in no_results]
    for path in files:
        run = path.parent.relative_to(input_dir).as_posix()
        if not (path.parent / DONE).exists():
            stats.unfinished.append(run)
            continue
        try:
            found, bad = read_jsonl(path)
        except OSError as e:  # a directory, unreadable: a finished run we cannot table
            found, bad = [], 0
            warnings.append(f"{run}: cannot read {RESULTS} ({e.strerror or e})")
        stats.corrupt_lines += bad
        stats.corrupt_files += bad > 0
        if not found:
            stats.unreadable.append(run)
            continue
        if bad:
            warnings.append(f"{run}: {plural(bad, 'line')} of {RESULTS} unreadable (truncated?); tabled from "
                            f"its readable records, the last at step {max(r['step'] for r in found)}")
        runs[run] = found
    stats.unreadable.sort()
    runs = drop_duplicate_jobs(runs, input_dir, stats, warnings)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    records = [{**r, "run": run} for run, found in runs.items() for r in found]
    stats.runs, stats.records = len(runs), len(records)
    if not records:
        raise UserError(f"no finished runs with records below {input_dir} ({stats.summary()})")
    return records, stats


def commit_of(records: list[dict]) -> str:
    """The code version a run's records name (``"unrecorded"`` before records carried one)."""
    return str(records[-1].get("commit", "unrecorded"))


def drop_duplicate_jobs(runs: dict[str, list[dict]], input_dir: Path, stats: LoadStats,
                        warnings: list[str]) -> dict[str, list[dict]]:
    """One copy per job (runs with the same ``args`` and ``hparams``): the one whose ``done`` is newest; the others are
    named in a warning and left out, so no cell counts a job twice."""
    by_job: dict[str, list[str]] = {}
    for run, found in runs.items():
        job = [found[-1]["args"], found[-1].get("hparams")]
        by_job.setdefault(json.dumps(job, sort_keys=True, default=str), []).append(run)
    keep = dict(runs)
    for copies in by_job.values():
        if len(copies) < 2:
            continue
        kept = max(copies, key=lambda r: ((input_dir / r / DONE).stat().st_mtime, r))
        named = ", ".join(f"{r} (commit {commit_of(runs[r])})" for r in copies)
        warnings.append(f"{len(copies)} copies of one job (same arguments): {named}; kept {kept} (finished "
                        "last), left out the others")
        for r in copies:
            if r != kept:
                del keep[r]
                stats.duplicates += 1
    return keep


def mixed_commits(df) -> list[str]:
    """A warning per (dataset, algorithm) of ``df`` (a ``records_frame``) whose runs were made by different
    commits, naming them: a run's commit is its last record's."""
    last = df.sort_values("step").groupby("run").tail(1)
    commit = last["commit"].fillna("unrecorded").astype(str) if "commit" in last else "unrecorded"
    out = []
    for (dataset, algorithm), group in last.assign(commit=commit).groupby(["dataset", "algorithm"], sort=True):
        commits = {c: sorted(g["run"]) for c, g in group.groupby("commit", sort=True)}
        if len(commits) > 1:
            named = "; ".join(f"commit {c}: {', '.join(r[:3])}{', ...' if len(r) > 3 else ''}"
                              for c, r in commits.items())
            out.append(f"{dataset} / {algorithm} mixes runs of different code versions ({named}); its cells "
                       "average over both")
    return out


def records_frame(records: list[dict]):
    """One row per checkpoint: the record's top-level values, ``args`` flattened (``test_envs`` as
    a tuple; an arg whose name is taken, like ``hparams``, becomes ``args.NAME``) and ``hparams.NAME``."""
    import pandas as pd

    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in ("args", "hparams")}
        for k, v in r["args"].items():
            row[f"args.{k}" if k in r else k] = v
        row.update({f"hparams.{k}": v for k, v in (r.get("hparams") or {}).items()})
        row["test_envs"] = tuple(sorted(row.get("test_envs") or ()))
        row.setdefault("trial_seed", 0)
        row.setdefault("hparams_seed", 0)
        rows.append(row)
    df = pd.DataFrame(rows)
    missing = [c for c in ("dataset", "algorithm") if c not in df.columns]
    if missing:
        raise UserError(f"records lack args {missing}; are these harness results?")
    return split_by_length(df)


def keep_runs(df, trials: list[int] | None = None, draws: list[int] | None = None):
    """The records of these trial seeds and hparam draws (``None``: every one); a ``UserError`` when none is left,
    a warning on stderr for each dataset/algorithm whose kept runs mix commits."""
    if trials is not None:
        df = df[df["trial_seed"].isin(trials)]
    if draws is not None:
        df = df[df["hparams_seed"].isin(draws)]
    if df.empty:
        raise UserError("no records left after --trials/--draws")
    for warning in mixed_commits(df):  # of the runs kept: a filter may leave one commit
        print(f"warning: {warning}", file=sys.stderr)
    return df


def split_by_length(df):
    """Runs of one dataset with different lengths (their last ``step``) get the dataset label
    ``"<dataset> (<steps> steps)"``, so that no table or plot mixes them."""
    length = df.groupby("run")["step"].transform("max") if "run" in df.columns else df["step"] * 0
    mixed = df.assign(length=length).groupby("dataset")["length"].nunique() > 1
    if mixed.any():
        relabel = df["dataset"].map(mixed)
        df = df.copy()
        df.loc[relabel, "dataset"] = [f"{d} ({n} steps)" for d, n in zip(df.loc[relabel, "dataset"], length[relabel])]
    return df
