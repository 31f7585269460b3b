"""Reading a sweep's records: every finished ``*/results.jsonl`` below a directory, as a DataFrame.

Used by ``harness.collect_results`` (tables), ``harness.plots`` and ``harness.correlate``. A run
counts once it has written ``done``; a truncated or corrupt line (a kill mid-write) is skipped and
counted. Imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError

RESULTS, DONE = "results.jsonl", "done"


@dataclass
class LoadStats:
    """What was read and what was skipped, for the summary line."""

    runs: int = 0
    records: int = 0
    corrupt_lines: int = 0
    corrupt_files: int = 0
    unfinished: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"read {plural(self.records, 'record')} from {plural(self.runs, 'run')}; skipped "
                f"{plural(self.corrupt_lines, 'corrupt line')} in {plural(self.corrupt_files, 'file')}, "
                f"{plural(len(self.unfinished), 'unfinished run')}")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Checkpoint records of one file and the number of lines that are not one (truncated, corrupt)."""
    records, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and "step" in record and isinstance(record.get("args"), dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


def load_records(input_dir: Path) -> tuple[list[dict], LoadStats]:
    """Records of every finished run below ``input_dir``; each gets ``run`` (its directory)."""
    if input_dir.is_file():
        raise UserError(f"--input_dir {input_dir} is a file; give the directory that holds the runs "
                        f"(searched recursively for */{RESULTS}), e.g. {input_dir.parent.parent}")
    if not input_dir.is_dir():
        raise UserError(f"input directory {input_dir} does not exist")
    files = sorted(input_dir.rglob(RESULTS))
    if not files:
        raise UserError(f"no {RESULTS} below {input_dir}")
    stats, records = LoadStats(), []
    for path in files:
        run = path.parent.relative_to(input_dir).as_posix()
        if not (path.parent / DONE).exists():
            stats.unfinished.append(run)
            continue
        found, bad = read_jsonl(path)
        stats.corrupt_lines += bad
        stats.corrupt_files += bad > 0
        stats.runs += bool(found)
        stats.records += len(found)
        records += [{**r, "run": run} for r in found]
    if not records:
        raise UserError(f"no finished runs with records below {input_dir} ({stats.summary()})")
    return records, stats


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
