"""WILDS loaders on fixtures in the publishers' on-disk format; timm and transformers backbones
with real local weights (a tiny BERT built here from a config and saved with save_pretrained, so
no third-party weights package is installed); offline hub names fail fast with one line. Nothing here touches the network (conftest sets HF_HUB_OFFLINE)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch

from harness.errors import UserError
from harness.registry import BACKBONES, DATASETS

CIVIL_COLUMNS = [
    "id", "comment_text", "split", "created_date", "publication_id", "parent_id", "article_id", "rating", "funny",
    "wow", "sad", "likes", "disagree", "toxicity", "severe_toxicity", "obscene", "sexual_explicit", "identity_attack",
    "insult", "threat", "male", "female", "transgender", "other_gender", "heterosexual", "homosexual_gay_or_lesbian",
    "bisexual", "other_sexual_orientation", "christian", "jewish", "muslim", "hindu", "buddhist", "atheist",
    "other_religion", "black", "white", "asian", "latino", "other_race_or_ethnicity", "physical_disability",
    "intellectual_or_learning_disability", "psychiatric_or_mental_illness", "other_disability",
    "identity_annotator_count", "toxicity_annotator_count", "LGBTQ", "other_religions", "asian_latino_etc",
    "disability_any", "identity_any", "num_identities",
]
IDENTITIES = ["male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white"]


TINY_BERT_HIDDEN = 32


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    """A BERT-family model and its WordPiece tokenizer in a folder, as save_pretrained writes them
    (config.json, model.safetensors, vocab.txt, tokenizer files); ids laid out as BERT's ([CLS] = 101)."""
    import transformers

    path = tmp_path_factory.mktemp("tiny-bert")
    words = ["a", "the", "cat", "dog", "sat", "on", "mat", "this", "is", "not", "good", "bad", "comment", "toxic",
             "nice", "text", "##s", "##ed", "female", "male", "black", "white", "muslim", "christian"]
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=TINY_BERT_HIDDEN, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(path)
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    return path


def _png(path: Path, color: tuple[int, int, int], size: int = 8, fmt: str = "PNG") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, fmt)


def make_waterbirds(root: Path) -> Path:
    d = root / "waterbirds_v1.0"
    d.mkdir(parents=True)
    (d / "RELEASE_v1.0.txt").write_text("v1.0\n")
    rows, i = [], 0
    for split in (0, 1, 2):
        for y in (0, 1):
            for place in (0, 1):
                for _ in range(3):
                    i += 1
                    species = "001.Black_footed_Albatross" if y else "002.Laysan_Albatross"
                    fn = f"{species}/img_{i:05d}.jpg"
                    _png(d / fn, (40 * y + 10 * place, 100, 50 * place), fmt="JPEG")
                    rows.append([i, fn, y, split, place, f"/b/bamboo_forest/{i:08d}.jpg"])
    with open(d / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        w.writerows(rows)
    return d


def make_camelyon(root: Path) -> Path:
    d = root / "camelyon17_v1.0"
    d.mkdir(parents=True)
    (d / "RELEASE_v1.0.txt").write_text("v1.0\n")
    rows, slide = [], 0
    for center in range(5):
        for patient in (center * 10 + 4, center * 10 + 9):
            node = patient % 5
            for k in range(2):
                x, y = 1000 + 96 * k, 2000 + 32 * k
                tumor = k
                fn = (d / "patches" / f"patient_{patient:03}_node_{node}"
                      / f"patch_patient_{patient:03}_node_{node}_x_{x}_y_{y}.png")
                _png(fn, (200 * tumor, 30 * center, 90))
                rows.append([f"{patient:03}", node, x, y, tumor, slide, center, 0 if k == 0 else 1])
            slide += 1
    with open(d / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"])
        w.writerows([[i, *r] for i, r in enumerate(rows)])
    return d


def make_civilcomments(root: Path, n_per_split: int = 24) -> Path:
    d = root / "civilcomments_v1.0"
    d.mkdir(parents=True)
    (d / "RELEASE_v1.0.txt").write_text("v1.0\n")
    words = ["you are a wonderful person", "what a stupid idiotic take", "the council met on tuesday",
             "shut up you moron", "thanks for sharing this article", "this is garbage and so are you"]
    rows, idx = [], 0
    for split in ("train", "val", "test"):
        for j in range(n_per_split):
            toxic = j % 2
            text = words[(2 * (j // 2) + toxic) % len(words)] + f" #{j}"
            vals = {c: 0.0 for c in CIVIL_COLUMNS}
            ident = IDENTITIES[(j // 2) % len(IDENTITIES)] if j % 6 else None  # some comments mention none
            if ident:
                vals[ident] = 0.8
                vals["identity_any"] = 1.0
                vals["num_identities"] = 1
            vals.update(id=1000 + idx, comment_text=text, split=split, created_date="2016-01-01 07:36:15.185946+00",
                        publication_id=21, parent_id="" if j % 3 else 123.0, article_id=317, rating="approved",
                        toxicity=0.9 if toxic else 0.1, insult=0.6 if toxic else 0.0,
                        identity_annotator_count=4, toxicity_annotator_count=10)
            rows.append([idx] + [vals[c] for c in CIVIL_COLUMNS])
            idx += 1
    write_civilcomments_csv(d, rows)
    return d


def write_civilcomments_csv(d: Path, rows: list[list]) -> None:
    """all_data_with_identities.csv as WILDS ships it: an unnamed index column, then CIVIL_COLUMNS."""
    with open(d / "all_data_with_identities.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([""] + CIVIL_COLUMNS)
        w.writerows(rows)


# --- datasets --------------------------------------------------------------------------------
def test_waterbirds_fixture_loads_with_four_groups(tmp_path):
    make_waterbirds(tmp_path)
    ds = DATASETS.get("Waterbirds")(str(tmp_path), [1, 2], {"image_size": 16})
    assert ds.ENVIRONMENTS == ["train", "val", "test"] and len(ds) == 3 and ds.input_shape == (3, 16, 16)
    assert "wg_acc" in ds.METRICS and ds.TEST_ENV_SETS == [[1, 2]]
    for env in ds.datasets:
        assert len(env) == 12 and sorted(env.groups.unique().tolist()) == [0, 1, 2, 3]
        assert torch.equal(env.groups // 2, env.labels)  # group = 2 * y + place
        x, y = env.batch(torch.arange(5))
        assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32 and y.tolist() == env.labels[:5].tolist()
    sub = ds[0].subset(torch.tensor([0, 11]))
    assert sub.groups.tolist() == ds[0].groups[[0, 11]].tolist()


def test_camelyon17_fixture_hospitals_and_slides(tmp_path):
    make_camelyon(tmp_path)
    ds = DATASETS.get("Camelyon17")(str(tmp_path), [1, 2], {"image_size": 16})
    assert len(ds) == 5 and ds.input_shape == (3, 16, 16) and ds.TEST_ENV_SETS == [[1, 2]]
    for e, env in enumerate(ds.datasets):
        assert len(env) == 4 and sorted(env.groups.unique().tolist()) == [2 * e, 2 * e + 1]  # slides of centre e
        x, y = env.batch(torch.arange(4))
        assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 1, 0, 1]
        assert all(Path(p).is_file() for p in env.paths)


def test_civilcomments_fixture_tokenises_with_the_backbone_tokenizer(tmp_path, bert_dir):
    make_civilcomments(tmp_path)
    hp = {"backbone": "TextEncoder", "pretrained": str(bert_dir), "max_length": 16}
    ds = DATASETS.get("CivilComments")(str(tmp_path), [1, 2], hp)
    assert ds.input_shape == (2, 16) and [len(e) for e in ds.datasets] == [24, 24, 24]
    env = ds[0]
    x, y = env.batch(torch.arange(6))
    assert x.shape == (6, 2, 16) and x.dtype == torch.long
    assert (x[:, 0, 0] == 101).all() and (x[:, 1, 0] == 1).all()  # [CLS] first, mask on
    assert y.tolist() == [0, 1, 0, 1, 0, 1]
    # groups: 2 * (first identity mentioned, 8 = none) + y
    assert env.groups[0].item() == 2 * 8 + 0 and env.groups[2].item() == 2 * IDENTITIES.index("female") + 0
    assert env.groups[3].item() == 2 * IDENTITIES.index("female") + 1
    assert env.identities.shape == (24, 8) and env.identities[2, 1]


@pytest.mark.parametrize("name,folder,file", [("Waterbirds", "waterbirds_v1.0", "metadata.csv"),
                                              ("Camelyon17", "camelyon17_v1.0", "metadata.csv"),
                                              ("CivilComments", "civilcomments_v1.0", "all_data_with_identities.csv")])
def test_missing_data_is_one_line_naming_the_path(tmp_path, name, folder, file, bert_dir):
    hp = {"backbone": "TextEncoder", "pretrained": str(bert_dir)}
    with pytest.raises(UserError) as e:
        DATASETS.get(name)(str(tmp_path), [], hp)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / folder / file) in msg and "download" in msg


# --- backbones -------------------------------------------------------------------------------
def test_timm_resnet18_loads_local_weights(tmp_path):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False)
    weights = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), weights)
    torch.manual_seed(1)  # a fresh init would differ from ref
    net = BACKBONES.get("resnet18")((3, 32, 32), {"pretrained": str(weights), "feature_dim": 8})
    assert net.n_outputs == 512 and net(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert torch.equal(net.model.conv1.weight, ref.conv1.weight)
    assert torch.equal(net.model.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)
    net.train()
    assert not net.model.bn1.training  # BatchNorm frozen with pretrained weights (DomainBed)
    # a folder holding the weights works too, and project maps to feature_dim
    (tmp_path / "dir").mkdir()
    torch.save(ref.state_dict(), tmp_path / "dir" / "pytorch_model.bin")
    proj = BACKBONES.get("resnet18")((3, 32, 32), {"pretrained": str(tmp_path / "dir"), "feature_dim": 8,
                                                   "project": True})
    assert proj.n_outputs == 8 and proj(torch.randn(2, 3, 32, 32)).shape == (2, 8)
    assert torch.equal(proj.model.conv1.weight, ref.conv1.weight)


def test_timm_prefix_names_any_architecture():
    from harness.backbones.timm_backbone import resolve_prefixed

    assert resolve_prefixed("resnet18") is None
    net = resolve_prefixed("timm:resnet10t")((3, 32, 32), {"pretrained": False, "feature_dim": 8})
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, net.n_outputs)


def test_text_encoder_pools_local_bert_weights(bert_dir):
    hp = {"pretrained": str(bert_dir), "feature_dim": 8}
    net = BACKBONES.get("bert-base-uncased")((2, 12), hp)
    assert net.n_outputs == TINY_BERT_HIDDEN
    from harness.backbones.text import load_tokenizer

    enc = load_tokenizer("bert-base-uncased", hp)(["a cat", "a dog sat"], padding="max_length", max_length=12,
                                                  return_tensors="pt")
    x = torch.stack([enc["input_ids"], enc["attention_mask"]], 1)
    net.eval()
    with torch.no_grad():
        cls = net(x)
        net.pooling = "mean"
        mean = net(x)
    assert cls.shape == mean.shape == (2, TINY_BERT_HIDDEN) and not torch.allclose(cls, mean)
    from safetensors.torch import load_file

    ref = load_file(str(bert_dir / "model.safetensors"))
    key = next(k for k in ref if k.endswith("word_embeddings.weight"))
    assert torch.equal(net.model.embeddings.word_embeddings.weight, ref[key])


@pytest.mark.parametrize("name,shape", [("resnet18", (3, 32, 32)), ("distilbert-base-uncased", (2, 16)),
                                        ("vit_small_patch16_224", (3, 32, 32))])
def test_offline_hub_name_fails_fast_in_one_line(tmp_path, monkeypatch, name, shape):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    factory = BACKBONES.get(name)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        factory(shape, {"pretrained": True, "feature_dim": 8})
    assert time.perf_counter() - t0 < 5.0
    msg = str(e.value)
    assert "\n" not in msg and '"pretrained"' in msg and name in msg


# --- end to end ------------------------------------------------------------------------------
def test_train_civilcomments_with_local_bert_offline(tmp_path, cli, bert_dir):
    make_civilcomments(tmp_path / "data", n_per_split=16)
    hp = {"backbone": "TextEncoder", "pretrained": str(bert_dir), "max_length": 16, "batch_size": 4, "lr": 1e-4}
    out = tmp_path / "run"
    cli("harness.train", "--dataset", "CivilComments", "--algorithm", "ERM", "--steps", "5", "--checkpoint_freq", "5",
        "--test_envs", "1", "2", "--data_dir", str(tmp_path / "data"), "--output_dir", str(out),
        "--hparams", json.dumps(hp), env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, timeout=300)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert (out / "done").exists() and len(records) == 1
    rec = records[0]
    assert rec["protocol"] == "wilds" and rec["eval_splits"] == ["val", "test"]
    for split in ("val", "test"):
        assert 0.0 <= rec[f"{split}/acc_wg"] <= rec[f"{split}/acc_avg"] <= 1.0
    assert not any(k.startswith("env") and k.endswith("_acc") for k in rec)  # no DomainBed holdout metrics


def test_train_cli_offline_hub_backbone_is_one_line(tmp_path, cli):
    make_civilcomments(tmp_path / "data", n_per_split=4)
    proc = cli("harness.train", "--dataset", "CivilComments", "--algorithm", "ERM", "--steps", "1",
               "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "run"), check=False,
               env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "distilbert-base-uncased" in lines[0] and '"pretrained"' in lines[0]
    assert not (tmp_path / "run" / "done").exists()


def test_small_cnn_features_start_at_unit_scale():
    """SmallCNN's features must not start far below BatchNorm's eps (1e-5), or a feature norm does not
    normalise; PyTorch's default init gave variance 8e-7 on Fashion-MNIST-like inputs, He init ~0.1."""
    torch.manual_seed(0)
    net = BACKBONES.get("SmallCNN")((1, 28, 28), {"feature_dim": 128})
    with torch.no_grad():
        z = net(torch.rand(256, 1, 28, 28))
    assert 1e-2 < z.var(0).mean().item() < 10
