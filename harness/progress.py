"""Per-run progress, from the run to the sweep's launcher.

A run (``harness/loop.py``) keeps ``DIR/progress.json`` current: its step, the number of steps, its
speed in steps/s since this attempt started, and the time of the update (every :data:`WRITE_EVERY_S`
seconds and at each checkpoint). ``sweep launch`` reads the files of the jobs it launched while its
launcher runs (:class:`Monitor`):

- with a terminal, one live line per running job (a tqdm bar updated in place under the job bar);
- without one (a log file, CI, nohup), a block every ``--progress_every`` seconds (default 30) on stdout
  and appended to ``OUTPUT_DIR/launch.log``: which runs are going, their step, steps/s, ETA and their
  ``out.txt``.

The file is rewritten in place as one fixed-size line (no temporary file a kill could leave behind); a
reader that catches it mid-write keeps what it read last.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

PROGRESS = "progress.json"
WRITE_EVERY_S = float(os.environ.get("HARNESS_PROGRESS_WRITE_S", 2.0))  # how often a run rewrites its file
RECORD_BYTES = 256


class ProgressFile:
    """The writer a run uses: ``update(step)`` after each step rewrites the file at most every 2 s."""

    def __init__(self, out: Path, start: int, steps: int):
        self.path, self.start, self.steps = Path(out) / PROGRESS, start, steps
        self.t0 = time.time()
        self.last = 0.0
        self.update(start, force=True)

    def update(self, step: int, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last < WRITE_EVERY_S and step != self.steps:
            return
        self.last = now
        rate = (step - self.start) / (now - self.t0) if step > self.start and now > self.t0 else None
        line = json.dumps({"step": step, "steps": self.steps, "rate": rate, "time": now, "pid": os.getpid()})
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o666)
            try:
                os.pwrite(fd, line.ljust(RECORD_BYTES - 1).encode() + b"\n", 0)
            finally:
                os.close(fd)
        except OSError:  # progress is a courtesy: a full disk fails the checkpoint with a clear line instead
            pass


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    """The run's last progress record, or None (not started, or caught mid-write)."""
    try:
        record = json.loads((Path(run_dir) / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def describe(record: dict[str, Any] | None, now: float) -> str:
    """``step 850/2000 (42%) | 3.1 steps/s | ETA 0:06:10`` (``starting`` before the first step)."""
    if record is None or not record.get("steps"):
        return "starting"
    step, steps, rate = record["step"], record["steps"], record.get("rate")
    age = now - float(record.get("time", now))
    text = f"step {step}/{steps} ({100 * step // steps}%)"
    if rate:
        text += f" | {rate:.3g} steps/s | ETA {clock((steps - step) / rate)}"
    if step == steps:
        return f"step {step}/{steps}: final evaluation ({clock(age)} so far)"
    if age > 3 * WRITE_EVERY_S + 5:
        text += f" | no step for {clock(age)} (evaluating a checkpoint?)"
    return text


class Monitor:
    """Reports the progress of ``jobs`` (each with ``.output_dir`` and ``.state``) while a launcher runs them.

    ``with Monitor(jobs, every_s, log_path): launcher(jobs, options)``."""

    def __init__(self, jobs: Sequence[Any], every_s: float = 30.0, log_path: Path | None = None,
                 stream: TextIO | None = None, live: bool | None = None):
        self.jobs, self.every_s, self.log_path = list(jobs), every_s, log_path
        self.stream = stream or sys.stdout
        self.live = sys.stderr.isatty() if live is None else live
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-monitor", daemon=True)
        self._bars: dict[Path, Any] = {}

    def __enter__(self) -> "Monitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for bar in self._bars.values():
            bar.close()

    def _run(self) -> None:
        wait = 1.0 if self.live else self.every_s
        while not self._stop.wait(wait):
            try:
                self.live_lines() if self.live else self.report()
            except Exception as e:  # never let the monitor take the launcher down
                print(f"progress monitor: {type(e).__name__}: {e}", file=sys.stderr)
                return

    def running(self) -> list[tuple[Any, dict[str, Any] | None]]:
        return [(job, read_progress(job.output_dir)) for job in self.jobs if job.state == "running"]

    def block(self, now: float | None = None) -> str:
        """The text of one report: counts, then one line per running job."""
        now = time.time() if now is None else now
        states = [job.state for job in self.jobs]
        running = self.running()
        lines = [f"progress {time.strftime('%H:%M:%S', time.localtime(now))}: {len(running)} running, "
                 f"{states.count('done')} done, {states.count('not launched') + states.count('incomplete')} "
                 f"waiting or failed, of {len(self.jobs)} launched"]
        for job, record in running:
            lines.append(f"  {job.output_dir.name}: {describe(record, now)} | {job.output_dir / 'out.txt'}")
        return "\n".join(lines)

    def report(self) -> None:
        text = self.block()
        print(text, file=self.stream, flush=True)
        if self.log_path is not None:
            try:
                with open(self.log_path, "a") as f:
                    f.write(text + "\n")
            except OSError:
                pass

    def live_lines(self) -> None:
        """One line per running job, rewritten in place (tqdm bars used as status lines under the job bar)."""
        from tqdm import tqdm

        now, seen = time.time(), set()
        for job, record in self.running():
            seen.add(job.output_dir)
            bar = self._bars.get(job.output_dir)
            if bar is None:
                used = {abs(b.pos) for b in self._bars.values()}
                position = next(i for i in range(1, len(used) + 2) if i not in used)
                bar = self._bars[job.output_dir] = tqdm(total=0, position=position, leave=False, file=sys.stderr,
                                                        dynamic_ncols=True, bar_format="{desc}")
            bar.set_description_str(f"{job.output_dir.name}: {describe(record, now)} | {job.output_dir / 'out.txt'}",
                                    refresh=True)
        for path in [p for p in self._bars if p not in seen]:  # finished or failed: its line goes away
            self._bars.pop(path).close()


def monitor_for(jobs: Sequence[Any], options: dict[str, Any]):
    """The :class:`Monitor` ``sweep launch`` wraps its launcher in (nothing to watch for ``dummy`` or
    ``--no_wait``): reports every ``options["progress_every"]`` seconds (default 30) without a terminal,
    also appended to ``OUTPUT_DIR/launch.log``."""
    from contextlib import nullcontext

    if options.get("launcher") == "dummy" or options.get("no_wait"):
        return nullcontext()
    every = max(0.2, float(options.get("progress_every") or 30))
    return Monitor(jobs, every, Path(options["output_dir"]) / "launch.log")
