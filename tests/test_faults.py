"""Fault injection (issues 21 and 29): every bad input and every fault ends in one line with a non-zero exit or
is handled; none gives a traceback, a silently wrong result, a duplicated or deleted live run, or runs code
from a data file.

Classes of failure covered, here and in tests/test_faults_round2.py (issue 29):

- bad arguments and hparams: out of range, wrong type, non-finite (also 1e309), outside an hparam's
  domain, sizes that would not fit in memory, a run left without held-out examples, an empty --output_dir;
- corrupt files: checkpoint, results.jsonl, lock, pickles, annotation files naming paths outside the
  dataset or the archive;
- kills, signals and stops at any moment (resume is identical), Ctrl-C on the multi launcher (no queued
  job starts, the running ones stop, a relaunch resumes), racing lock takeovers, full and read-only disks;
- links: a link where a run file or a sweep job directory should be is an error, never written,
  locked or deleted through;
- results mixed or dropped in silence: a done run of other arguments, records of another run on resume,
  done without records, finished runs collect_results cannot read, truncated or wrongly typed records,
  two copies of a job and runs of different commits in one table (provenance fields on every record);
- sweeps: bad search ranges and draws found before the first job, an enormous sweep refused at once;
- tools: collect_results, report and correlate errors are one line.

Runs are small (SyntheticLinear, ERM, 20-30 steps, 300 examples per environment). Most go through
``harness.train.main`` in this process (the same code the CLI runs, without paying a torch import per
case); kills, stops and lock races use real subprocesses.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from harness import checkpoints, loop, train
from harness.lock import LOCK, RunLock, is_held, read_lock

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--dataset", "SyntheticLinear", "--algorithm", "ERM", "--steps", "20", "--checkpoint_freq", "10",
       "--dci_freq", "1000", "--dci", "fast", "--hparams", '{"n_per_env": 300}', "--threads", "1"]
VOLATILE = ("step_time", "mem_gb")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run_train(capsys, out: Path, *extra: str, base: list[str] = RUN) -> tuple[int, str]:
    """harness.train's main in this process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        train.main([*base, "--output_dir", str(out), *extra])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def one_line(code: int, err: str, *pieces: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for piece in pieces:
        assert piece in lines[0], lines[0]
    return lines[0]


def records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
            for line in (run / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted run: the reference for resumes and the source of the corrupted copies."""
    import torch

    threads = torch.get_num_threads()  # runs in this process pin theirs: give the rest of the session its own back
    out = tmp_path_factory.mktemp("faults") / "finished"
    train.main([*RUN, "--output_dir", str(out)])
    assert (out / "done").exists() and [r["step"] for r in records(out)] == [10, 20]
    yield out
    torch.set_num_threads(threads)


@pytest.fixture
def resumable(finished, tmp_path) -> Path:
    """A copy of the finished run without ``done``: re-running it goes through the whole resume path."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "done").unlink()
    return run


# --- bad inputs -----------------------------------------------------------------------------
BAD_TRAIN_INPUTS = [
    (["--steps", "0"], "--steps"), (["--steps", "-5"], "--steps"), (["--checkpoint_freq", "0"], "--checkpoint_freq"),
    (["--checkpoint_freq", "-1"], "--checkpoint_freq"), (["--holdout_fraction", "-0.5"], "--holdout_fraction"),
    (["--holdout_fraction", "1.0"], "--holdout_fraction"), (["--holdout_fraction", "0"], "--holdout_fraction"),
    (["--holdout_fraction", "nan"], "--holdout_fraction"), (["--test_envs", "0", "0"], "more than once"),
    (["--test_envs", "0", "1", "2"], "every environment"), (["--test_envs", "-1"], "--test_envs"),
    (["--dci_freq", "0"], "--dci_freq"), (["--eval_batch_size", "0"], "--eval_batch_size"),
    (["--device", "foo"], "--device"), (["--device", "cuda:99"], "cuda"), (["--seed", str(2**70)], "--seed"),
    (["--seed", "-1"], "--seed"), (["--trial_seed", "x"], "--trial_seed"), (["--threads", "0"], "--threads"),
    (["--hparams", '{"lr": NaN}'], "NaN"), (["--hparams", '{"lr": Infinity}'], "Infinity"),
    (["--hparams", '{"lr": -Infinity}'], "Infinity"), (["--hparams", '{"lr": "fast"}'], "hparam lr must be a float"),
    (["--hparams", '{"lr": 0}'], "hparam lr must be > 0"), (["--hparams", '{"batch_size": 0}'], "batch_size"),
    (["--hparams", '{"batch_size": "32"}'], "batch_size"), (["--hparams", '{"batch_size": 32.5}'], "batch_size"),
    (["--hparams", '{"batch_size": true}'], "batch_size"), (["--hparams", '{"weight_decay": -1}'], "weight_decay"),
    (["--hparams", '{"backbone": 3}'], "backbone"), (["--hparams", "[1, 2]"], "JSON object"),
    (["--hparams", "{lr: 1}"], "not valid JSON"), (["--hparams", '{"lrr": 1}'], "unknown hparam"),
    (["--hparams", '{"n_per_env": 0}'], "n_per_env"), (["--dci", "slow"], "--dci"),
]


@pytest.mark.parametrize("extra, expected", BAD_TRAIN_INPUTS)
def test_bad_train_inputs_are_one_line_and_write_nothing(capsys, tmp_path, extra, expected):
    out = tmp_path / "run"
    base = [a for a in RUN if a != "--hparams" and a != '{"n_per_env": 300}']
    one_line(*run_train(capsys, out, *extra, base=base), expected)
    assert not (out / "done").exists() and not (out / "results.jsonl").exists()


def test_output_dir_that_is_a_file_or_too_long_is_one_line(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    one_line(*run_train(capsys, f), "is a file")
    one_line(*run_train(capsys, tmp_path / ("x" * 300)), "cannot write", "File name too long")


def test_bad_input_through_the_real_cli_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.train", "--output_dir", str(tmp_path / "r"), "--steps", "0"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    one_line(proc.returncode, proc.stderr, "--steps", "must be >= 1")


def test_help_shows_no_empty_defaults(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: the dataset's) (default" not in text
    assert "(default: 0.2)" in text and "(default: the dataset's)" in text


# --- corruption -----------------------------------------------------------------------------
def _flip(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    for i in rng.sample(range(len(data) // 4, 3 * len(data) // 4), n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "checkpoint truncated": (lambda r: (r / "checkpoint.pt").write_bytes((r / "checkpoint.pt").read_bytes()[:5000]),
                             "checkpoint.pt is corrupt"),
    "checkpoint empty": (lambda r: (r / "checkpoint.pt").write_bytes(b""), "checkpoint.pt is corrupt"),
    "checkpoint garbage": (lambda r: (r / "checkpoint.pt").write_bytes(os.urandom(3000)), "checkpoint.pt is corrupt"),
    "checkpoint 64 flipped bytes": (lambda r: _flip(r / "checkpoint.pt"), "checksum mismatch"),
    "results missing": (lambda r: (r / "results.jsonl").unlink(), "results.jsonl is missing"),
    "results lose a record": (lambda r: (r / "results.jsonl").write_text(
        (r / "results.jsonl").read_text().splitlines(True)[1]), "disagrees with"),
    "results line 42": (lambda r: (r / "results.jsonl").write_text("42\n" + (r / "results.jsonl").read_text()),
                        "line 1 is not a record"),
    "results line without step": (lambda r: (r / "results.jsonl").write_text(
        '{"foo": 1}\n' + (r / "results.jsonl").read_text()), "line 1 is not a record"),
    "results string step": (lambda r: (r / "results.jsonl").write_text(
        (r / "results.jsonl").read_text().replace('"step": 10', '"step": "10"')), "line 1 is not a record"),
    "results not UTF-8": (lambda r: (r / "results.jsonl").write_bytes(b"\xff\xfe" + (r / "results.jsonl").read_bytes()),
                          "line 1 is not a record (a UTF-8 JSON object"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_stops_with_one_line_and_deletes_nothing(capsys, resumable, case):
    corrupt, expected = CORRUPTIONS[case]
    corrupt(resumable)
    before = {p.name: p.read_bytes() for p in resumable.iterdir() if p.name in ("checkpoint.pt", "results.jsonl")}
    line = one_line(*run_train(capsys, resumable), expected)
    assert "delete" in line or "restore" in line  # says what to do
    assert not (resumable / "done").exists()
    assert before == {p.name: p.read_bytes() for p in resumable.iterdir() if p.name in before}
    assert not (resumable / LOCK).exists()


def test_checkpoint_from_before_checksums_still_resumes(capsys, resumable, finished):
    path = resumable / "checkpoint.pt"
    path.write_bytes(path.read_bytes().rsplit(checkpoints.CHECKSUM_TAG, 1)[0])
    assert run_train(capsys, resumable)[0] == 0
    assert records(resumable) == records(finished)


def test_truncated_last_record_is_a_kill_mid_write_and_resumes(capsys, resumable, finished):
    path = resumable / "results.jsonl"
    path.write_text(path.read_text() + '{"step": 30, "env0_in')  # no newline: the append a kill interrupted
    assert run_train(capsys, resumable)[0] == 0
    assert records(resumable) == records(finished)


@pytest.mark.parametrize("content", [b"", b"{}", b"[1]", b'{"pid": "x", "host": 3}', b"\xff\xfe\x00",
                                     b'{"pid": 999999999, "host": "elsewhere", "heartbeat": 0}'])
def test_malformed_or_dead_lock_is_taken_over(capsys, resumable, finished, content):
    (resumable / LOCK).write_bytes(content)
    assert read_lock(resumable) is None or not is_held(resumable)
    assert run_train(capsys, resumable)[0] == 0
    assert records(resumable) == records(finished) and not (resumable / LOCK).exists()


def test_malformed_lock_does_not_break_sweep_commands(tmp_path):
    from harness import sweep

    args = ["--datasets", "SyntheticLinear", "--steps", "10", "--output_dir", str(tmp_path / "sw")]
    jobs = sweep.make_jobs(sweep.resolve_options(sweep.build_parser().parse_args(["status", *args])))
    jobs[0].output_dir.mkdir(parents=True)
    (jobs[0].output_dir / LOCK).write_bytes(b"\xff{not json")
    assert jobs[0].state == "incomplete"
    sweep.status(jobs, {"output_dir": str(tmp_path / "sw")})
    assert sweep.delete_run(jobs[0].output_dir) and not jobs[0].output_dir.exists()


def test_resume_cleans_temporaries_keeps_modes_and_rotates_err(capsys, resumable, finished):
    (resumable / ".checkpoint.pt.abc123.tmp").write_bytes(b"x" * 1000)  # a kill inside a checkpoint write
    (resumable / ".results.jsonl.def456.tmp").write_text("x")
    os.chmod(resumable / "results.jsonl", 0o644)
    (resumable / "err.txt").write_text("Traceback (most recent call last):\n  ...\nKeyboardInterrupt\n")
    assert run_train(capsys, resumable)[0] == 0
    assert not list(resumable.glob(".*.tmp"))
    assert (resumable / "results.jsonl").stat().st_mode & 0o777 == 0o644
    assert "KeyboardInterrupt" not in (resumable / "err.txt").read_text()
    assert "KeyboardInterrupt" in (resumable / "err.txt.prev").read_text()  # kept, not lost


def test_thread_count_is_pinned_by_the_checkpoint(capsys, resumable, finished):
    assert {r["threads"] for r in records(finished)} == {1}
    code, _ = run_train(capsys, resumable, "--threads", "2")
    assert code == 0 and records(resumable) == records(finished)
    headers = [l for l in (resumable / "out.txt").read_text().splitlines() if l.startswith("ERM on")]
    assert len(headers) == 2 and "| threads 1 |" in headers[-1]


def test_progress_lines_without_a_terminal(finished):
    lines = [l for l in (finished / "out.txt").read_text().splitlines() if l.startswith("progress:")]
    assert lines and all("steps/s" in l and "ETA" in l for l in lines) and len(lines) <= loop.PROGRESS_LINES


# --- kills -----------------------------------------------------------------------------------
def _spawn(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.train", *RUN, "--output_dir", str(out), *extra],
                            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(pred, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("seed", [0, 2])
def test_kill_at_a_random_moment_then_resume_is_identical(capsys, tmp_path, finished, seed):
    """SIGKILL (seed 2: SIGINT) at a seeded moment after the lock is taken, then resume: same records.
    (A probe outside the suite ran more seeds; each costs a torch import in a subprocess.)"""
    rng = random.Random(seed)
    out = tmp_path / "run"
    proc = _spawn(out)
    _wait_for(lambda: (out / LOCK).exists() or proc.poll() is not None)
    time.sleep(rng.uniform(0.0, 3.0))
    proc.send_signal(signal.SIGINT if seed == 2 else signal.SIGKILL)
    _, stderr = proc.communicate()
    if seed == 2 and proc.returncode == 130:
        # interrupted before its first step (a loaded machine), the run leaves no folder behind; after it,
        # err.txt keeps the one line
        err = (out / "err.txt").read_text() if out.exists() else stderr
        assert "Traceback" not in err and "interrupted" in err, err
    assert run_train(capsys, out)[0] == 0
    assert records(out) == records(finished)
    assert not list(out.glob(".*.tmp")) and not (out / LOCK).exists()
    assert "Traceback" not in (out / "err.txt").read_text()


# --- locks -----------------------------------------------------------------------------------
HOLDER = """
import sys, time
from harness.lock import RunLock
from harness.errors import UserError
d, go, log = sys.argv[1], sys.argv[2], sys.argv[3]
while not __import__("os").path.exists(go):
    time.sleep(0.001)
try:
    with RunLock(d, wait_s=0):
        t0 = time.time(); time.sleep(0.2); t1 = time.time()
        open(log, "a").write(f"{t0} {t1}\\n")
except UserError:
    pass
"""


def test_racing_stale_lock_takeover_has_one_holder(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    for round_ in range(5):
        d, go, log = tmp_path / f"r{round_}", tmp_path / f"go{round_}", tmp_path / f"log{round_}"
        d.mkdir()
        (d / LOCK).write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "heartbeat": 0}))
        procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(d), str(go), str(log)], env=ENV)
                 for _ in range(4)]
        time.sleep(0.5)
        go.write_text("")
        for p in procs:
            assert p.wait(30) == 0
        spans = sorted(tuple(map(float, l.split())) for l in log.read_text().splitlines())
        assert len(spans) == 1, spans  # wait_s=0: one taker, the others see a live holder
        assert not (d / LOCK).exists()


def test_stopped_run_is_live_and_never_deleted_or_run_twice(tmp_path):
    """A SIGSTOPped holder whose heartbeat is hours old: still running on this host."""
    from harness import sweep
    from harness.errors import UserError

    d = tmp_path / "run"
    d.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom harness.lock import RunLock\n"
                               "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)", str(d)],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        info = read_lock(d)
        (d / LOCK).write_text(json.dumps({**info, "heartbeat": time.time() - 3600}))
        assert is_held(d)
        with pytest.raises(UserError, match="is being run by"):
            with RunLock(d, wait_s=0.2):
                pass
        assert not sweep.delete_run(d) and (d / LOCK).exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert not is_held(d)  # killed: dead, now deletable
    assert sweep.delete_run(d) and not d.exists()


# --- data files ------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _mini_pickles(root: Path, payload=None, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    mi = root / "miniImageNet"
    mi.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for split in ("train", "val", "test"):
        data = {"image_data": rng.randint(0, 256, (12, 84, 84, 3)).astype(np.uint8),
                "class_dict": {f"n{split}{c}": list(range(c * 2, c * 2 + 2)) for c in range(6)}}
        if payload is not None and split == "val":
            data["extra"] = payload
        with open(mi / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump(data, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_mini_imagenet_pickles_load_with_the_restricted_unpickler(tmp_path, protocol):
    from harness.registry import DATASETS

    _mini_pickles(tmp_path, protocol=protocol)
    ds = DATASETS.get("MiniImageNet")(str(tmp_path), [1, 2], {})
    assert [len(e) for e in ds.datasets] == [12, 12, 12]


def test_crafted_pickle_runs_no_code(tmp_path):
    from harness.download import download
    from harness.errors import UserError
    from harness.registry import DATASETS

    marker = tmp_path / "pwned"
    _mini_pickles(tmp_path / "data", payload=_Payload(marker))
    with pytest.raises(UserError, match="posix.system|os.system"):
        DATASETS.get("MiniImageNet")(str(tmp_path / "data"), [1, 2], {})
    assert not marker.exists()
    shutil.make_archive(str(tmp_path / "mini"), "gztar", tmp_path / "data")
    with pytest.raises(UserError, match="refusing to install"):
        download("MiniImageNet", tmp_path / "installed", [str(tmp_path / "mini.tar.gz")])
    assert not marker.exists() and not (tmp_path / "installed" / "miniImageNet").exists()


def test_crafted_annotations_copy_nothing_from_outside_the_archive(tmp_path):
    import tarfile
    import zipfile

    from harness.download import download
    from harness.errors import UserError

    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    imgs = tmp_path / "src" / "eccv_18_all_images_sm"
    imgs.mkdir(parents=True)
    (imgs / "ok.jpg").write_bytes(b"fine")
    names = ["../../secret.jpg", str(secret), "../secret.jpg", "ok.jpg/../../../secret.jpg", 7, None]
    images = [{"id": f"i{k}", "file_name": n, "location": 38} for k, n in enumerate(names)]
    images.append({"id": "ok", "file_name": "ok.jpg", "location": 38})
    anns = [{"id": f"a{k}", "image_id": im["id"], "category_id": 0} for k, im in enumerate(images)]
    with tarfile.open(tmp_path / "eccv_18_all_images_sm.tar.gz", "w:gz") as tf:
        tf.add(imgs, arcname="eccv_18_all_images_sm")
    with zipfile.ZipFile(tmp_path / "ann.json.zip", "w") as zf:
        zf.writestr("ann.json", json.dumps({"images": images, "annotations": anns,
                                            "categories": [{"id": 0, "name": "bird"}]}))
    with pytest.raises(UserError, match="no images for location_"):  # only ok.jpg, at location 38
        download("TerraIncognita", tmp_path / "data", [str(tmp_path / "eccv_18_all_images_sm.tar.gz"),
                                                       str(tmp_path / "ann.json.zip")])
    copied = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert all(p.read_bytes() != b"secret" for p in copied)


# --- full disk, read-only output ----------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (the checkpoint alone is larger). Where this process cannot mount one the test is
    skipped, except under ``HARNESS_REQUIRE_TMPFS=1`` (set by ``.ci/run``), where that is a failure."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        require("mounting a small tmpfs needs root and mount(8)", "HARNESS_REQUIRE_TMPFS")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        require(f"cannot mount a tmpfs here: {proc.stderr.strip()}", "HARNESS_REQUIRE_TMPFS")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _no_debris(run: Path) -> None:
    assert not (run / LOCK).exists() and not (run / "lock.tmp").exists() and not list(run.glob(".*.tmp"))
    assert not (run / "done").exists()


def test_disk_full_and_read_only_output_are_one_line_and_resumable(capsys, small_fs, finished, tmp_path):
    run = small_fs / "run"
    one_line(*run_train(capsys, run), "cannot write", "No space left on device", "re-run the same command")
    _no_debris(run)
    assert "No space left" in (run / "err.txt").read_text()
    filler = small_fs / "filler"  # a completely full disk: not even the lock fits
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    one_line(*run_train(capsys, small_fs / "other"), "cannot write")
    _no_debris(small_fs / "other")
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    one_line(*run_train(capsys, run), "cannot write", "Read-only file system")
    one_line(*run_train(capsys, small_fs / "new"), "cannot write", "Read-only file system")
    subprocess.run(["mount", "-o", "remount,rw,size=16m", str(small_fs)], check=True)
    assert run_train(capsys, run)[0] == 0  # space again: the same command finishes the run
    assert records(run) == records(finished)


def test_delete_incomplete_rechecks_each_run_at_deletion_time(tmp_path):
    """Victims are chosen, the prompt waits, a run becomes live meanwhile: it is kept, the others go."""
    from harness import sweep

    out = tmp_path / "sw"
    args = ["--datasets", "SyntheticLinear", "--n_hparams", "2", "--steps", "10", "--output_dir", str(out)]
    jobs = sweep.make_jobs(sweep.resolve_options(sweep.build_parser().parse_args(["status", *args])))
    for job in jobs:
        job.output_dir.mkdir(parents=True)
        (job.output_dir / "results.jsonl").write_text("")
    proc = subprocess.Popen([sys.executable, "-m", "harness.sweep", "delete_incomplete", *args], env=ENV, cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prompt = ""
    while "[y/N]" not in prompt:
        ch = proc.stdout.read(1)
        assert ch, proc.stderr.read()
        prompt += ch
    assert "2 incomplete jobs" in prompt
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom harness.lock import RunLock\n"
                               "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
                               str(jobs[0].output_dir)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        stdout, stderr = proc.communicate("y\n", timeout=60)
        assert proc.returncode == 0, stderr
        assert "deleted 1" in stdout and "kept" in stderr
        assert (jobs[0].output_dir / "results.jsonl").exists() and not jobs[1].output_dir.exists()
    finally:
        holder.kill()
        holder.wait()
