"""harness.reevaluate: a run trained with --keep_checkpoints, scored again with the probe head, equals the
run trained from scratch with that head (real subprocesses: a sweep with --keep_checkpoints, its twin sweep
with ``eval_head`` "probe", then ``python -m harness.reevaluate``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_mnist_datasets import make_mnist

HPARAMS = {"backbone": "SmallCNN", "tasks_per_batch": 2, "support": 5, "query": 5}
SPEC = {"datasets": ["ColoredMNIST"], "algorithms": ["SparseShared"], "test_envs": [[2]], "n_hparams": 1,
        "n_trials": 1, "steps": 4, "checkpoint_freq": 2, "hparams": HPARAMS, "launcher": "local"}
VOLATILE = ("step_time", "mem_gb")  # wall-clock measurements of training
PROVENANCE = ("version", "commit", "torch", "device")


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """(the own-head runs, kept checkpoints; their probe-head twins trained from scratch; the data dir)."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("reevaluate")
    make_mnist(root / "data", n_train=200, n_test=40)
    spec = root / "spec.json"
    spec.write_text(json.dumps(SPEC))
    common = ("--sweep", str(spec), "--data_dir", str(root / "data"), "--skip_confirmation")
    run_cli("harness.sweep", "launch", *common, "--keep_checkpoints", "--output_dir", str(root / "own"), timeout=600)
    run_cli("harness.sweep", "launch", *common, "--hparams", json.dumps({**HPARAMS, "eval_head": "probe"}),
            "--output_dir", str(root / "twin"), timeout=600)
    own = sorted(p.parent for p in (root / "own").glob("*/done"))
    twin = sorted(p.parent for p in (root / "twin").glob("*/done"))
    return own, twin, root / "data"


def test_reevaluated_records_equal_the_twin_trained_from_scratch(sweeps, cli, tmp_path):
    own, twin, data = sweeps
    assert len(own) == len(twin) == 1
    by_trial = {records(r)[0]["args"]["trial_seed"]: r for r in twin}
    for run in own:
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002.pt", "step_000004.pt"]
        out = tmp_path / run.name
        cli("harness.reevaluate", "--run", str(run), "--hparams", '{"eval_head": "probe"}', "--output_dir", str(out),
            "--data_dir", str(data))
        got, want, source = records(out), records(by_trial[records(run)[0]["args"]["trial_seed"]]), records(run)
        assert [r["step"] for r in got] == [r["step"] for r in want] == [2, 4]
        for g, w, s in zip(got, want, source):
            assert g["reevaluated_from"] == {"run": str(run.resolve()), **{k: s[k] for k in PROVENANCE}}
            assert {k: v for k, v in g.items() if k not in (*VOLATILE, "reevaluated_from")} == \
                   {k: v for k, v in w.items() if k not in VOLATILE}
            assert all(g[k] == s[k] for k in VOLATILE)  # training's measurements are the source's
        assert (out / "done").exists() and (out / "checkpoint.pt").exists()
        # the new folder is the twin's run: harness.train with the twin's arguments finds it finished
        args = got[-1]["args"]
        again = cli("harness.train", "--dataset", args["dataset"], "--algorithm", args["algorithm"],
                    "--test_envs", "2", "--hparams", args["hparams"], "--trial_seed", str(args["trial_seed"]),
                    "--seed", str(args["seed"]), "--steps", "4", "--checkpoint_freq", "2",
                    "--data_dir", str(data), "--output_dir", str(out))
        assert "already done" in again.stdout
    heads = [(records(r)[-1], records(by_trial[records(r)[0]["args"]["trial_seed"]])[-1]) for r in own]
    accs = [k for k in heads[0][0] if k.endswith("_acc")]
    assert any(o[k] != p[k] for o, p in heads for k in accs), "the two heads agree everywhere: a vacuous check"


def test_sweep_reevaluate_makes_the_probe_sweep_from_the_own_sweep(sweeps, cli, tmp_path):
    """``harness.sweep reevaluate --from_dir OWN`` writes each probe-head job into the folder its launch would
    use (``sweep status`` then counts it done) with the twin's records; a job whose source is missing waits."""
    own, twin, data = sweeps
    spec = own[0].parent.parent / "spec.json"
    probe = json.dumps({**HPARAMS, "eval_head": "probe"})
    common = ("--sweep", str(spec), "--data_dir", str(data), "--hparams", probe, "--output_dir", str(tmp_path / "probe"))
    made = cli("harness.sweep", "reevaluate", *common, "--from_dir", str(own[0].parent))
    assert "reevaluated 1, 0 done already, 0 waiting" in made.stdout, made.stdout
    (job,) = [p.parent for p in (tmp_path / "probe").glob("*/done")]
    assert job.name == twin[0].name  # the probe-head launch's job id
    strip = lambda recs: [{k: v for k, v in r.items() if k not in (*VOLATILE, "reevaluated_from")} for r in recs]
    assert strip(records(job)) == strip(records(twin[0]))
    assert "done          1" in cli("harness.sweep", "status", *common).stdout
    again = cli("harness.sweep", "reevaluate", *common, "--from_dir", str(own[0].parent)).stdout
    assert "reevaluated 0, 1 done already, 0 waiting" in again, again
    empty = tmp_path / "empty"
    empty.mkdir()
    waiting = cli("harness.sweep", "reevaluate", *common[:-1], str(tmp_path / "probe2"), "--from_dir", str(empty)).stdout
    assert "reevaluated 0, 0 done already, 1 waiting" in waiting, waiting
    for bad, expected in ((common, "needs --from_dir"), ((*common, "--from_dir", str(tmp_path / "nowhere")), "no such folder"),
                          ((*common[:5], json.dumps(HPARAMS), *common[6:], "--from_dir", str(own[0].parent)),
                           "sets no evaluation hparam")):
        proc = cli("harness.sweep", "reevaluate", *bad, check=False)
        assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_keep_checkpoints_changes_no_job_id():
    from harness.sweep import build_parser, make_jobs, resolve_options

    spec_args = ["launch", "--datasets", "ColoredMNIST", "--algorithms", "SparseShared", "ERM", "--n_trials", "2"]
    plain = make_jobs(resolve_options(build_parser().parse_args(spec_args)))
    kept = make_jobs(resolve_options(build_parser().parse_args([*spec_args, "--keep_checkpoints"])))
    assert [j.output_dir for j in plain] == [j.output_dir for j in kept]
    assert all([a for a in k.command if a != "--keep_checkpoints"] == j.command and "--keep_checkpoints" in k.command
               for j, k in zip(plain, kept))


@pytest.mark.parametrize("hparams, expected", [
    ('{"lr": 0.1}', "lr would change training"),
    ('{"eval_head": "nearest"}', "eval_head"),
    ('{}', "names no hparam"),
])
def test_training_hparams_are_refused_in_one_line(sweeps, cli, tmp_path, hparams, expected):
    own, _, data = sweeps
    proc = cli("harness.reevaluate", "--run", str(own[0]), "--hparams", hparams, "--output_dir", str(tmp_path / "x"),
               "--data_dir", str(data), check=False)
    assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x").exists()


def test_a_run_without_kept_checkpoints_or_a_busy_output_is_one_line(sweeps, cli, tmp_path):
    own, twin, data = sweeps
    probe, other = '{"eval_head": "probe"}', '{"eval_head": "probe", "eval_n_fit": 50}'
    cases = [(twin[0], tmp_path / "new", probe, "train it with --keep_checkpoints"),  # trained without it
             (own[0], own[0], probe, "the source run's directory"),
             (own[0], twin[0], other, "holds another run")]
    for run, out, hparams, expected in cases:
        proc = cli("harness.reevaluate", "--run", str(run), "--output_dir", str(out), "--hparams", hparams,
                   "--data_dir", str(data), check=False)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    # the twin trained from scratch is the very run reevaluation makes: nothing to do
    before = (twin[0] / "results.jsonl").read_bytes()
    proc = cli("harness.reevaluate", "--run", str(own[0]), "--output_dir", str(twin[0]), "--hparams", probe,
               "--data_dir", str(data))
    assert "already done" in proc.stdout and (twin[0] / "results.jsonl").read_bytes() == before
