"""Launchers run a list of jobs (``harness.train`` command lines). Each is a registry entry.

``local`` runs them one after another, ``multi`` in N worker processes (threads per worker
set so N workers share the cores; one GPU per worker when there are GPUs), ``slurm``
submits a job array through submitit (requeued on preemption: a requeued run resumes from
its checkpoint), ``dummy`` prints the commands. Plugins register more through the
``harness.launchers`` entry point: a launcher is ``f(jobs, options) -> None`` where each job
has ``.command`` (argv list) and ``.output_dir``.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Sequence

from harness.registry import LAUNCHERS


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="job", file=sys.stderr, disable=None)


def thread_env(threads: int | str) -> dict[str, str]:
    """Environment that caps a job's CPU threads (PyTorch's OpenMP/MKL pools) at ``threads``."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_job(command: Sequence[str], env: dict[str, str] | None = None,
            started: Callable[[subprocess.Popen], None] | None = None) -> int:
    """Run one job as a subprocess; its own out.txt/err.txt keep the output. Returns the exit status.
    ``started`` receives the process (the multi launcher interrupts its running jobs through it)."""
    with subprocess.Popen(list(command), env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as proc:
        if started is not None:
            started(proc)
        try:
            _, stderr = proc.communicate()
        except BaseException:  # an interrupt of the launcher: the job must not outlive it
            proc.kill()
            raise
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["(no output)"])[-1]
        if "is being run by" in last:  # another launcher's process holds its lock: not a failure
            print(f"job running elsewhere: {last.removeprefix('error: ')}", file=sys.stderr)
        else:
            print(f"job failed ({proc.returncode}): {last}", file=sys.stderr)
    return proc.returncode


@LAUNCHERS.register("dummy")
def dummy_launcher(jobs: Sequence[Any], options: dict) -> None:
    """Print the commands, run nothing."""
    for job in jobs:
        print(shlex.join(job.command))


@LAUNCHERS.register("local")
def local_launcher(jobs: Sequence[Any], options: dict) -> None:
    """Run the jobs one after another in this machine, each with as many threads as ``multi`` with one worker."""
    env = thread_env(threads_per_worker(1))
    with _progress(len(jobs), "jobs") as bar:
        for job in jobs:
            run_job(job.command, env)
            bar.update(1)


def threads_per_worker(workers: int) -> int:
    """CPU threads of each of ``workers`` parallel jobs: the cores shared out (a run pins the count it
    starts with: harness.train resumes with it under any launcher)."""
    return max(1, (os.cpu_count() or 1) // workers)


def _n_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # torch without CUDA support
        return 0


@LAUNCHERS.register("multi")
def multi_launcher(jobs: Sequence[Any], options: dict) -> None:
    """Run the jobs in ``--workers`` parallel processes without oversubscribing the cores."""
    workers = max(1, int(options.get("workers") or os.cpu_count() or 1))
    threads = threads_per_worker(workers)
    gpus = _n_gpus()
    slots: queue.Queue[int] = queue.Queue()
    for i in range(workers):
        slots.put(i)
    stop = threading.Event()  # set by an interrupt: no queued job starts after it
    running: set[subprocess.Popen] = set()
    guard = threading.Lock()

    def started(proc: subprocess.Popen) -> None:
        with guard:
            running.add(proc)
            if stop.is_set():  # started while the interrupt was being handled
                proc.send_signal(signal.SIGINT)

    def work(job) -> int | None:
        slot = slots.get()  # a worker slot pins its GPU
        try:
            if stop.is_set():
                return None
            env = thread_env(threads)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            return run_job(job.command, env, started)
        finally:
            slots.put(slot)

    pool = ThreadPoolExecutor(workers)
    try:
        with _progress(len(jobs), f"jobs ({workers} workers)") as bar:
            for _ in as_completed([pool.submit(work, job) for job in jobs]):
                bar.update(1)
    except KeyboardInterrupt:
        # Ctrl-C: stop the queue, then every running job (each saves nothing more and exits; a relaunch
        # resumes it from its checkpoint), and wait for them before the launcher itself exits.
        with guard:
            stop.set()
            for proc in running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


@LAUNCHERS.register("slurm")
def slurm_launcher(jobs: Sequence[Any], options: dict) -> None:
    """Submit the jobs as one Slurm job array through submitit, wait for them unless ``--no_wait``."""
    try:
        import submitit
    except ImportError:
        from harness.errors import UserError

        raise UserError("the slurm launcher needs submitit: pip install -e '.[slurm]'") from None
    folder = options.get("slurm_folder") or os.path.join(options["output_dir"], "_slurm", "%j")
    executor = submitit.AutoExecutor(folder=folder)
    params = {"timeout_min": int(options.get("slurm_time") or 24 * 60),
              "cpus_per_task": int(options.get("slurm_cpus") or 4),
              "mem_gb": float(options.get("slurm_mem_gb") or 16),
              "gpus_per_node": int(options.get("slurm_gpus") or 0),
              "slurm_array_parallelism": int(options.get("workers") or 64)}
    if options.get("slurm_partition"):
        params["slurm_partition"] = options["slurm_partition"]
    executor.update_parameters(**params)
    submitted = executor.map_array(RequeueableJob(), [list(job.command) for job in jobs])
    print(f"submitted {len(submitted)} jobs as Slurm array {submitted[0].job_id.split('_')[0]}" if submitted else
          "nothing to submit")
    if options.get("no_wait"):
        return
    with _progress(len(submitted), "slurm jobs") as bar:
        for job in submitted:
            try:
                job.result()
            except Exception as e:  # the run's own err.txt has the details
                print(f"slurm job {job.job_id} failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e}",
                      file=sys.stderr)
            bar.update(1)


class RequeueableJob:
    """What a Slurm array task runs; on preemption or timeout submitit requeues it, and the run resumes."""

    def __call__(self, command: list[str]) -> int:
        # Without a CPU affinity mask (Slurm's task/none) PyTorch starts one thread per core of the
        # node, not of the allocation: two 1-CPU jobs on a 2-core node each ran 2 threads, 100x slower.
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        code = run_job(command, thread_env(cpus) if cpus else None)
        if code != 0:
            raise RuntimeError(f"exit status {code}: {shlex.join(command)}")
        return code

    def checkpoint(self, command: list[str]):  # submitit calls this on SIGUSR2/timeout
        import submitit

        return submitit.helpers.DelayedSubmission(self, command)
