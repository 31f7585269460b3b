"""harness.transfer: finished Sprites runs evaluated on Shapes' factor tasks (frozen representation,
3 -> 1 channels), the CLI equal to the public function, the protocol equal to training's own
``task_acc``, and the one-line errors a user can cause."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.errors import UserError
from harness.transfer import channel_adapter, transfer

ROOT = Path(__file__).resolve().parents[1]
# Tiny real runs: one checkpoint at step 20; one thread each (the cores are shared), small CNN
RUN = ["--dataset", "Sprites", "--steps", "20", "--checkpoint_freq", "20", "--dci", "fast", "--threads", "1"]
HPARAMS = {"tasks_per_batch": 2, "support": 10, "query": 10, "n_per_env": 300, "cnn_width": 8, "feature_dim": 8}
EXTRA = {"SparseShared": {"adapt_max_iter": 100}, "MultiTask": {}}  # adapt's solver cap: evaluation stays quick
TARGET_HP = {"n_per_env": 300}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """SparseShared and MultiTask on Sprites, trained side by side by ``python -m harness.train``."""
    base = tmp_path_factory.mktemp("transfer")
    procs = {alg: subprocess.Popen([sys.executable, "-m", "harness.train", *RUN, "--algorithm", alg,
                                    "--output_dir", str(base / alg), "--hparams", json.dumps({**HPARAMS, **extra})],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for alg, extra in EXTRA.items()}
    for alg, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (alg, err[-2000:])
    return {alg: base / alg for alg in EXTRA}


def last_record(run: Path) -> dict:
    return json.loads((run / "results.jsonl").read_text().splitlines()[-1])


@pytest.mark.slow
def test_cli_onto_shapes_equals_the_public_function(runs, tmp_path, cli):
    out = tmp_path / "transfer.jsonl"
    proc = cli("harness.transfer", "--run", str(runs["SparseShared"]), str(runs["MultiTask"]), "--dataset", "Shapes",
               "--n_episodes", "5", "--seed", "0", "--target_hparams", json.dumps(TARGET_HP), "--out", str(out))
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [l["algorithm"] for l in lines] == ["SparseShared", "MultiTask"]
    table = proc.stdout.splitlines()
    assert "source task_acc" in table[0] and len(table) == 4, proc.stdout  # header, rule, one row per run
    assert "alpha=0.3 beta=0.01" in table[2] and "Shapes (3->1 channels (mean))" in table[2], proc.stdout
    assert "[2/2] task_acc" in proc.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what the CLI ran with: the runs' own thread count
    try:
        for line in lines:
            assert line["source"] == "Sprites" and line["target"] == "Shapes" and line["threads"] == 1
            assert line["input"] == "3->1 channels (mean)" and line["n_episodes"] == 5
            assert line["source_task_acc"] == last_record(Path(line["run"]))["task_acc"]
            assert line["target_hparams"]["support"] == 10 and line["target_hparams"]["n_per_env"] == 300
            for key in ("task_acc", "ood_task_acc"):
                assert 0.0 <= line[key] <= 1.0, (key, line[key])
            direct = transfer(line["run"], "Shapes", n_episodes=5, seed=0, target_hparams=TARGET_HP)
            for key in ("task_acc", "task_ci95", "ood_task_acc", "ood_task_ci95"):
                assert direct[key] == pytest.approx(line[key], abs=1e-6), key
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_onto_its_own_dataset_a_run_gets_its_recorded_task_acc(runs):
    """The protocol is training's: Sprites with the run's dataset hparams and seed gives its last record."""
    run = runs["MultiTask"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = transfer(run, "Sprites", target_hparams={"n_per_env": HPARAMS["n_per_env"]})
    finally:
        torch.set_num_threads(threads)
    last = last_record(run)
    assert got["input"] is None and got["n_episodes"] == 100
    for key in ("task_acc", "task_ci95", "ood_task_acc", "ood_task_ci95"):
        assert got[key] == pytest.approx(last[key], abs=1e-6), key


def test_channels_convert_and_other_shapes_are_refused():
    rgb = torch.rand(4, 3, 8, 8)
    to_grey, what = channel_adapter((1, 8, 8), (3, 8, 8))
    assert what == "3->1 channels (mean)" and torch.allclose(to_grey(rgb), rgb.mean(1, keepdim=True))
    to_rgb, what = channel_adapter((3, 8, 8), (1, 8, 8))
    assert what == "1->3 channels (repeat)" and torch.equal(to_rgb(rgb[:, :1]), rgb[:, :1].repeat(1, 3, 1, 1))
    assert channel_adapter((3, 8, 8), (3, 8, 8)) == (None, None)
    with pytest.raises(UserError, match=r"\(3, 32, 32\).*\(1, 64, 64\)"):
        channel_adapter((1, 64, 64), (3, 32, 32))


def fake_run(path: Path, done: bool = True, checkpoint: bool = True) -> Path:
    """A run directory with the files a finished run has (contents that the early checks never read)."""
    path.mkdir(parents=True)
    record = {"step": 1, "args": {"dataset": "Sprites", "algorithm": "MultiTask", "seed": 0}, "hparams": {}}
    (path / "results.jsonl").write_text(json.dumps(record) + "\n")
    if done:
        (path / "done").write_text("now\n")
    if checkpoint:
        (path / "checkpoint.pt").write_bytes(b"x")
    return path


@pytest.mark.parametrize("case, args, message", [
    ("unfinished", ["--dataset", "Shapes"], "is not a finished run (no done file)"),
    ("no_checkpoint", ["--dataset", "Shapes"], "has no checkpoint.pt"),
    ("unknown_dataset", ["--dataset", "Shapez"], "unknown dataset 'Shapez'"),
    ("no_factors", ["--dataset", "PACS"], "PACS has no ground-truth factors"),
])
def test_user_errors_are_one_line(case, args, message, tmp_path, cli):
    run = fake_run(tmp_path / case, done=case != "unfinished", checkpoint=case != "no_checkpoint")
    proc = cli("harness.transfer", "--run", str(run), *args, check=False)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr


def test_help_imports_no_torch(cli):
    code = ("import sys, harness.transfer as t\ntry:\n    t.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    proc = cli("harness.transfer", "--help")
    assert "--target_hparams" in proc.stdout
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout.strip().endswith("False")
