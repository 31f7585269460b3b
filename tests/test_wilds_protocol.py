"""WILDS' protocol held against the ``wilds`` package itself, on fixtures in WILDS' exact layout.

Every metric the harness reports for an official split must equal what ``wilds``' own ``eval`` computes
on the same predictions: first on many fixed prediction vectors (the metric code alone), then end to end
on predictions that ``harness.predict`` writes for runs of each paper_* WILDS sweep spec, read back as
WILDS' ``examples/evaluate.py`` reads them. The fixtures are large enough to tell groups apart: every
Waterbirds group in every split with unequal sizes; CivilComments comments naming several identities,
with NaNs and values of exactly 0.5; Camelyon17 50 slides over 5 centres with train and id_val rows.

``wilds`` is used offline: its import-time PyPI check is disabled by hiding ``outdated`` (wilds then skips
it), and the one ``torch_scatter`` function its metrics call (``scatter`` with ``reduce="mean"``, 0 for an
empty group) is provided here. Its CivilComments loader needs ``future.infer_string`` off under pandas 3.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import random
import sys
import types
from pathlib import Path

import pytest
import torch

from harness.registry import DATASETS
from test_wilds_and_backbones import (  # noqa: F401 (bert_dir: a fixture)
    CIVIL_COLUMNS,
    IDENTITIES,
    _png,
    bert_dir,
    write_civilcomments_csv,
)

IMAGE_HP = {"backbone": "SmallCNN", "pretrained": False, "image_size": 16, "batch_size": 8}
SPECS = {"Waterbirds": "paper_waterbirds", "Camelyon17": "paper_camelyon17", "CivilComments": "paper_civilcomments"}
WILDS_NAMES = {"Waterbirds": "waterbirds", "Camelyon17": "camelyon17", "CivilComments": "civilcomments"}


# --- fixtures in WILDS' layout ------------------------------------------------------------------
def make_waterbirds(root: Path) -> None:
    """Every (label, place) group in every split, unequal sizes, rows of the splits interleaved."""
    d = root / "waterbirds_v1.0"
    d.mkdir(parents=True)
    (d / "RELEASE_v1.0.txt").write_text("v1.0\n")
    sizes = {0: (12, 3, 2, 7), 1: (5, 4, 3, 6), 2: (6, 5, 4, 3)}  # split -> rows of groups 2 * y + place
    rows = [(split, g) for split, counts in sizes.items() for g, n in enumerate(counts) for _ in range(n)]
    random.Random(0).shuffle(rows)
    with open(d / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        for i, (split, g) in enumerate(rows, 1):
            y, place = divmod(g, 2)
            fn = f"{'001.Black_footed_Albatross' if y else '002.Laysan_Albatross'}/img_{i:05d}.jpg"
            _png(d / fn, (40 * y + 10 * place + i % 7, 100, 50 * place), fmt="JPEG")
            w.writerow([i, fn, y, split, place, f"/b/bamboo_forest/{i:08d}.jpg"])


def make_camelyon(root: Path) -> None:
    """50 slides over 5 centres (10 each), 3 patches per slide; the ``split`` column marks id_val rows
    (1) of centres 0, 3, 4; rows shuffled."""
    d = root / "camelyon17_v1.0"
    d.mkdir(parents=True)
    (d / "RELEASE_v1.0.txt").write_text("v1.0\n")
    rng, rows = random.Random(1), []
    for slide in range(50):
        center = slide // 10
        patient, node = 10 * center + (slide % 10) // 2, slide % 2
        for k in range(3):
            x, y = 512 + 96 * k, 1024 + 96 * slide
            tumor = rng.random() < 0.5
            fn = d / "patches" / f"patient_{patient:03}_node_{node}" / f"patch_patient_{patient:03}_node_{node}_x_{x}_y_{y}.png"
            _png(fn, (200 * tumor + k, 30 * center, 90 + slide))
            split = int(center not in (1, 2) and rng.random() < 0.3)
            rows.append([f"{patient:03}", node, x, y, int(tumor), slide, center, split])
    rng.shuffle(rows)
    with open(d / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"])
        w.writerows([[i, *r] for i, r in enumerate(rows)])


def make_civilcomments(root: Path, n_per_split: int = 96) -> None:
    """Comments that name several identities (some none), identity and toxicity values of exactly 0.5,
    NaN identities; every (identity, label) group present in val and test."""
    d = root / "civilcomments_v1.0"
    d.mkdir(parents=True)
    (d / "RELEASE_v1.0.txt").write_text("v1.0\n")
    rng, rows, idx = random.Random(2), [], 0
    words = ["the cat sat on the mat", "this is not good", "a nice comment", "bad toxic text", "the dog is nice"]
    for split in ("train", "val", "test"):
        for j in range(n_per_split):
            vals = {c: 0.0 for c in CIVIL_COLUMNS}
            for ident in IDENTITIES:
                vals[ident] = rng.choice([0.0, 0.0, 0.0, 0.2, 0.5, 0.8, 1.0, float("nan")])
            vals.update(id=1000 + idx, comment_text=f"{rng.choice(words)} #{j}", split=split,
                        toxicity=rng.choice([0.0, 0.3, 0.5, 0.7, 1.0]), created_date="2016-01-01 07:36:15.185946+00",
                        publication_id=21, article_id=317, rating="approved", identity_annotator_count=4,
                        toxicity_annotator_count=10)
            rows.append([idx] + [vals[c] for c in CIVIL_COLUMNS])
            idx += 1
    write_civilcomments_csv(d, rows)


MAKERS = {"Waterbirds": make_waterbirds, "Camelyon17": make_camelyon, "CivilComments": make_civilcomments}


def hparams_for(name: str, bert: Path) -> dict:
    if name == "CivilComments":
        return {"backbone": "TextEncoder", "pretrained": str(bert), "max_length": 16, "batch_size": 8}
    return dict(IMAGE_HP)


# --- the wilds package, offline ------------------------------------------------------------------
def scatter(src: torch.Tensor, index: torch.Tensor, dim_size: int, reduce: str = "mean") -> torch.Tensor:
    """torch_scatter.scatter along dim 0 with reduce='mean' (what wilds' avg_over_groups calls): the mean
    of each group's elements, 0 for a group without any."""
    assert reduce == "mean"
    sums = torch.zeros(dim_size, dtype=src.dtype).index_add_(0, index, src)
    counts = torch.zeros(dim_size, dtype=src.dtype).index_add_(0, index, torch.ones_like(src))
    return sums / counts.clamp(min=1)


@pytest.fixture(scope="module")
def wilds():
    saved = {name: sys.modules.get(name, None) for name in ("torch_scatter", "outdated")}
    sys.modules["torch_scatter"] = types.SimpleNamespace(scatter=scatter)
    sys.modules["outdated"] = None  # wilds (and ogb) then skip their PyPI version check: no network
    import wilds

    yield wilds
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def wilds_dataset(wilds, name: str, root: Path):
    import pandas as pd

    options = pd.option_context("future.infer_string", False) if name == "CivilComments" else contextlib.nullcontext()
    with options:
        return wilds.get_dataset(WILDS_NAMES[name], root_dir=str(root), download=False)


def wilds_eval(wilds_ds, split: str, y_pred: torch.Tensor) -> dict[str, float]:
    """As wilds' examples/evaluate.py evaluates a prediction file of one split."""
    subset = wilds_ds.get_subset(split)
    results, _ = wilds_ds.eval(y_pred, subset.y_array, subset.metadata_array)
    return {k: float(v) for k, v in results.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wilds-data")
    for make in MAKERS.values():
        make(root)
    return root


# --- the metric code on fixed predictions --------------------------------------------------------
@pytest.mark.parametrize("name", list(MAKERS))
def test_official_metrics_equal_wilds_eval_on_the_same_predictions(name, data, wilds, bert_dir):
    ds = DATASETS.get(name)(str(data), [1, 2], hparams_for(name, bert_dir))
    reference = wilds_dataset(wilds, name, data)
    official = ds.official_splits()
    train = reference.get_subset("train")
    assert all(len(e) for e in official.train_envs) and sum(len(e) for e in official.train_envs) == len(train)
    assert torch.equal(torch.cat([e.y for e in official.train_envs]).sort().values, train.y_array.sort().values)
    checked = 0
    for split, env in official.eval_splits.items():
        subset = reference.get_subset(split)
        assert torch.equal(env.y, subset.y_array)  # the whole split, in WILDS' row order
        gen = torch.Generator().manual_seed(0)
        vectors = [torch.zeros_like(env.y), torch.ones_like(env.y), env.y.clone(), 1 - env.y]
        vectors += [torch.randint(0, 2, env.y.shape, generator=gen) for _ in range(20)]
        vectors += [torch.where(torch.rand(env.y.shape, generator=gen) < 0.8, env.y, 1 - env.y) for _ in range(10)]
        for y_pred in vectors:
            ours, theirs = ds.split_metrics(split, y_pred, env), wilds_eval(reference, split, y_pred)
            assert set(ours) == set(ds.OFFICIAL_METRICS)
            for metric in ds.OFFICIAL_METRICS:
                assert ours[metric] == theirs[metric], (split, metric)  # to the last bit
            checked += 1
    assert checked == 34 * len(official.eval_splits)


def test_camelyon17_trains_on_wilds_train_rows_only(data, wilds):
    ds = DATASETS.get("Camelyon17")(str(data), [1, 2], IMAGE_HP)
    official = ds.official_splits()
    assert list(official.eval_splits) == ["id_val", "val", "test"]
    reference = wilds_dataset(wilds, "Camelyon17", data)
    rows = {split: [str(data / "camelyon17_v1.0" / reference._input_array[i]) for i in reference.get_subset(split).indices]
            for split in ("train", "id_val", "val", "test")}
    train = [p for env in official.train_envs for p in env.paths]
    assert sorted(train) == sorted(rows["train"]) and len(official.train_envs) == 3  # hospitals 0, 3, 4
    assert not set(train) & set(rows["id_val"]) and rows["id_val"]
    for split, env in official.eval_splits.items():
        assert env.paths == rows[split]  # whole split, WILDS' order


def test_other_test_envs_are_refused_in_one_line(data, cli, tmp_path):
    proc = cli("harness.train", "--dataset", "Waterbirds", "--test_envs", "2", "--data_dir", str(data),
               "--output_dir", str(tmp_path / "run"), "--hparams", json.dumps(IMAGE_HP), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "official splits" in proc.stderr and "--test_envs 1 2" in proc.stderr


# --- end to end: spec -> runs -> predict -> wilds eval; spec -> table ----------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", list(MAKERS))
def test_spec_runs_predict_and_table_agree_with_wilds(name, data, wilds, bert_dir, cli, tmp_path):
    out = tmp_path / "sweep"
    cli("harness.sweep", "launch", "--sweep", SPECS[name], "--algorithms", "ERM", "--n_hparams", "3", "--n_trials", "1",
        "--steps", "4", "--checkpoint_freq", "2", "--data_dir", str(data), "--output_dir", str(out),
        "--hparams", json.dumps(hparams_for(name, bert_dir)), "--skip_confirmation",
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, timeout=600)
    runs = sorted(p.parent for p in out.glob("*/done"))
    assert len(runs) == 2
    reference = wilds_dataset(wilds, name, data)
    from harness.checkpoints import finished_run

    best_val = []
    for run in runs:
        chosen = finished_run(run).best()
        assert (run / "best.pt").is_file() and chosen["select_on"] == DATASETS.get(name).SELECT_ON
        for split in chosen["eval_splits"]:
            csv_path = tmp_path / f"{WILDS_NAMES[name]}_split:{split}_seed:0_epoch:best_pred.csv"
            proc = cli("harness.predict", "--run", str(run), "--split", split, "--out", str(csv_path),
                       "--data_dir", str(data), env={"HF_HUB_OFFLINE": "1"})
            assert "DIFFERS" not in proc.stdout
            lines = csv_path.read_text().splitlines()
            y_pred = torch.tensor([ast.literal_eval(line) for line in lines if line.strip()])
            assert len(y_pred) == len(reference.get_subset(split))
            theirs = wilds_eval(reference, split, y_pred)
            for metric in chosen["official_metrics"]:
                assert chosen[f"{split}/{metric}"] == theirs[metric], (run, split, metric)
        best_val.append(chosen)
    selected = max(best_val, key=lambda r: r[r["select_on"]])  # the draw collect_results must pick

    proc = cli("harness.collect_results", "--input_dir", str(out), "--no_plots", "--format", "csv")
    import io

    import pandas as pd

    cells = pd.read_csv(io.StringIO(proc.stdout))
    assert set(cells["selection"]) == {"wilds"} and set(cells["algorithm"]) == {"ERM"}
    expected = {f"{s}/{m}" for s in selected["eval_splits"] for m in selected["official_metrics"]}
    assert set(cells["metric"]) == expected
    for _, cell in cells.iterrows():
        assert cell["mean"] == pytest.approx(100 * selected[cell["metric"]], abs=1e-3)
    text = cli("harness.collect_results", "--input_dir", str(out), "--no_plots").stdout
    assert "official metrics" in text and all(m in text for m in selected["official_metrics"])


def test_predict_on_a_domainbed_dataset_writes_a_whole_environment(cli, tmp_path):
    """Elsewhere --split names an environment (by name or index): every example of it, in its order, from the
    last checkpoint; the accuracy those predictions give equals nothing recorded (DomainBed records 80/20
    splits), so the check is the row count, the labels' range and the refusal of unknown names."""
    run = tmp_path / "run"
    cli("harness.train", "--dataset", "SyntheticLinear", "--algorithm", "ERM", "--steps", "2", "--checkpoint_freq", "2",
        "--hparams", json.dumps({"n_per_env": 50}), "--output_dir", str(run))
    by_name, by_index = tmp_path / "a.csv", tmp_path / "b.csv"
    cli("harness.predict", "--run", str(run), "--split", "shift25", "--out", str(by_name))
    cli("harness.predict", "--run", str(run), "--split", "1", "--out", str(by_index))
    lines = by_name.read_text().splitlines()
    assert len(lines) == 50 and set(lines) <= {"0", "1"} and by_index.read_text() == by_name.read_text()
    proc = cli("harness.predict", "--run", str(run), "--split", "shift99", "--out", str(by_name), check=False)
    assert proc.returncode == 2 and "0=shift0" in proc.stderr and proc.stderr.count("\n") == 1
    proc = cli("harness.predict", "--run", str(run), "--split", "1", "--checkpoint", "best", "--out", str(by_name),
               check=False)
    assert proc.returncode == 2 and "no best.pt" in proc.stderr
