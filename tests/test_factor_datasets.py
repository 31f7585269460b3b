"""Factor datasets: the dSprites / 3DShapes renderers, their datasets, and the loaders of the
publishers' files (tiny fixtures written here in the exact on-disk formats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.datasets import factors as F
from harness.datasets import mpi3d as M
from harness.datasets import shapes as SH
from harness.datasets import sprites as SP
from harness.errors import UserError
from harness.registry import DATASETS


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def rank(v):  # average ranks (ties share the mean rank)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        _, inv = np.unique(v, return_inverse=True)
        sums = np.bincount(inv, weights=r)
        return (sums / np.bincount(inv))[inv]

    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def sprite(shape=0, scale=5, orient=0, px=16, py=16):
    return SP.render_sprites(np.array([[shape, scale, orient, px, py]]))[0]


def scene(*c):
    return SH.render_shapes(np.array([c]))[0].astype(int)


# ---------------------------------------------------------------------------------------
# renderers
# ---------------------------------------------------------------------------------------
def test_registry_names():
    for name in ("Sprites", "DSprites", "Shapes", "Shapes3D", "MPI3D"):
        assert name in DATASETS.names()
    assert DATASETS.get("Sprites") is SP.Sprites and DATASETS.get("MPI3D") is M.MPI3D


def test_render_sprites_look():
    imgs = [sprite(s) for s in range(3)]
    assert imgs[0].dtype == np.uint8 and imgs[0].shape == (64, 64)
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(imgs[i].astype(int) - imgs[j]).sum() > 255 * 20, "shapes must differ"
    sq = imgs[0]
    grey = (sq > 0) & (sq < 255)
    assert grey.sum() > 0 and (sq == 255).sum() > 0, "anti-aliased edges with a white interior"
    # size at scale 1: about 1/4..1/3 of the image side
    cols = np.flatnonzero((sq > 127).any(0))
    assert 64 / 4.5 <= cols[-1] - cols[0] + 1 <= 64 / 2.8
    # the heart is wider at the top (two lobes) than at the bottom (the tip)
    heart = imgs[2] > 127
    rows = np.flatnonzero(heart.any(1))
    top, bottom = heart[rows[0] + 2].sum(), heart[rows[-1] - 2].sum()
    assert top > bottom + 3
    # rotating moves pixels, except for symmetric cases (square by 90 degrees = 10 of 40 steps)
    assert np.abs(sprite(0, orient=5).astype(int) - sq).sum() > 255 * 10
    assert np.abs(sprite(0, orient=10).astype(int) - sq).max() <= 2


def test_sprites_scale_and_position():
    for s in range(3):
        areas = [sprite(s, scale=k).astype(float).sum() for k in range(6)]
        assert all(b > a for a, b in zip(areas, areas[1:])), f"area must grow with scale (shape {s})"

    def centroid(img):
        w = img.astype(float)
        yy, xx = np.mgrid[:64, :64]
        return (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()

    xs = [centroid(sprite(1, px=p))[0] for p in (0, 10, 20, 31)]
    ys = [centroid(sprite(1, py=p))[1] for p in (0, 10, 20, 31)]
    assert all(b > a + 5 for a, b in zip(xs, xs[1:])) and all(b > a + 5 for a, b in zip(ys, ys[1:]))
    # every shape stays inside the canvas at the extreme positions and every orientation
    c = np.array([[s, 5, o, p, q] for s in range(3) for o in range(0, 40, 3) for p in (0, 31) for q in (0, 31)])
    imgs = SP.render_sprites(c)
    border = np.concatenate([imgs[:, 0], imgs[:, -1], imgs[:, :, 0], imgs[:, :, -1]], 1)
    assert border.max() == 0


def test_render_shapes_regions_and_factors():
    base = (2, 5, 8, 4, 0, 7)  # floor hue, wall hue, object hue, scale, shape, orientation
    img = scene(*base)
    assert img.shape == (64, 64, 3)
    wall_px, floor_px, obj_px = (2, 2), (62, 2), (48, 32)  # (row, col)
    vary = {0: floor_px, 1: wall_px, 2: obj_px}
    for factor, region in vary.items():
        c = list(base)
        c[factor] = (c[factor] + 5) % 10
        other = scene(*c)
        for f2, r2 in vary.items():
            changed = np.abs(other[r2] - img[r2]).sum() > 30
            assert changed == (f2 == factor), f"hue {factor} must change only its region ({f2})"
    shapes = [scene(*base[:4], s, base[5]) for s in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(shapes[i] - shapes[j]).sum() > 255 * 30
    # a bigger object covers more pixels that differ from the empty room's wall/floor colour
    def object_area(scale):
        a = scene(*base[:3], scale, 2, base[5])
        b = scene(*base[:2], (base[2] + 5) % 10, scale, 2, base[5])
        return (np.abs(a - b).sum(-1) > 30).sum()

    areas = [object_area(k) for k in range(8)]
    assert all(b > a for a, b in zip(areas, areas[1:]))
    # orientation turns the view (and the cube)
    assert np.abs(scene(*base[:5], 0) - scene(*base[:5], 14)).sum() > 255 * 100
    grey = (img > 0) & (img < 255)
    assert grey.any()


# ---------------------------------------------------------------------------------------
# procedural datasets
# ---------------------------------------------------------------------------------------
HP = {"n_per_env": 120, "data_cache": False}


@pytest.mark.parametrize("cls", [SP.Sprites, SH.Shapes])
def test_procedural_dataset_contract(cls):
    d = cls(None, [0], HP)
    again = cls(None, [0], HP)
    other = cls(None, [0], {**HP, "data_seed": 1})
    assert len(d) == 3 == len(cls.ENVIRONMENTS) and all(env.factors is not None for env in d.datasets)
    band_sizes = d.sizes()[d.ENV_FACTOR]
    grid_vals = list(d.GRID.values())[d.ENV_FACTOR]
    for e, env in enumerate(d.datasets):
        assert env.x.dtype == torch.uint8 and tuple(env.x.shape) == (120,) + cls.INPUT_SHAPE
        assert torch.equal(env.x, again[e].x) and torch.equal(env.factors, again[e].factors)
        assert not torch.equal(env.x, other[e].x)
        assert env.y.dtype == torch.long and 0 <= env.y.min() and env.y.max() < cls.NUM_CLASSES
        assert env.factors.dtype == torch.float32 and env.factors.shape == (120, len(env.factor_names))
        assert torch.equal(env.factors[:, d.LABEL_FACTOR].long(), env.y)
        cls_idx = np.abs(env.factors[:, d.ENV_FACTOR].numpy()[:, None] - grid_vals[None]).argmin(1)
        lo, hi = F.band_range(band_sizes, e)
        assert cls_idx.min() >= lo and cls_idx.max() <= hi
    assert not torch.equal(d[0].x, d[1].x)
    # the images are the renderer's pictures of the stored factors
    x, _ = d[1].batch(torch.arange(5))
    assert x.dtype == torch.float32 and x.max() <= 1


def test_sprite_bands():
    assert [F.band_range(32, e) for e in range(3)] == [(0, 10), (11, 21), (22, 31)]
    assert [F.band_range(15, e) for e in range(3)] == [(0, 4), (5, 9), (10, 14)]


def test_correlated_factors():
    sizes = (3, 6, 40, 32, 32)
    for rho, lo, hi in ((0.8, 0.5, 1.0), (0.0, -0.05, 0.05)):
        c = F.sample_factor_classes(sizes, 6000, np.random.default_rng(0), rho)
        rs = [spearman(c[:, i], c[:, j]) for i in range(5) for j in range(i + 1, 5)]
        assert lo < min(rs) and max(rs) < hi, (rho, rs)
        for j, s in enumerate(sizes):
            assert c[:, j].min() == 0 and c[:, j].max() == s - 1
    d = SP.Sprites(None, [], {**HP, "n_per_env": 400, "factor_correlation": 0.8})
    f = d[1].factors.numpy()
    assert spearman(f[:, 1], f[:, 2]) > 0.5 and spearman(f[:, 2], f[:, 4]) > 0.5
    with pytest.raises(UserError):
        SP.Sprites(None, [], {**HP, "factor_correlation": -0.5})


def test_cache_reuse_and_corruption(tmp_path, monkeypatch):
    hp = {"n_per_env": 100}
    first = SP.Sprites(None, [], hp)
    files = sorted((tmp_path / "cache").glob("sprites-*.npz"))
    assert len(files) == 3

    def boom(classes):
        raise AssertionError("must load from the cache")

    monkeypatch.setattr(SP.Sprites, "render", staticmethod(boom))
    second = SP.Sprites(None, [], hp)
    assert all(torch.equal(a.x, b.x) for a, b in zip(first.datasets, second.datasets))
    monkeypatch.undo()
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    files[0].write_bytes(b"not an npz")
    files[1].write_bytes(files[1].read_bytes()[:1000])  # truncated
    third = SP.Sprites(None, [], hp)
    assert all(torch.equal(a.x, b.x) for a, b in zip(first.datasets, third.datasets))
    assert np.load(files[0])["x"].shape == (100, 1, 64, 64)  # rewritten whole
    # a different content (another seed) is a different file
    SP.Sprites(None, [], {**hp, "data_seed": 3})
    assert len(list((tmp_path / "cache").glob("sprites-*.npz"))) == 6


# ---------------------------------------------------------------------------------------
# published files: fixtures in the exact formats
# ---------------------------------------------------------------------------------------
def sprite_grid_classes(rng, n):
    sizes = (3, 6, 40, 32, 32)
    return np.stack([rng.integers(0, s, n) for s in sizes], 1)


def write_dsprites(path: Path, classes: np.ndarray, compressed=False):
    """The published layout: imgs 0/1 uint8, latents (color, shape, scale, orientation, posX, posY)."""
    n = len(classes)
    lc = np.concatenate([np.zeros((n, 1), np.int64), classes], 1).astype(np.int64)
    vals = np.stack([np.ones(n), classes[:, 0] + 1.0, np.linspace(0.5, 1, 6)[classes[:, 1]],
                     np.linspace(0, 2 * np.pi, 40)[classes[:, 2]], np.linspace(0, 1, 32)[classes[:, 3]],
                     np.linspace(0, 1, 32)[classes[:, 4]]], 1)
    imgs = (SP.render_sprites(classes) > 127).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if compressed else np.savez
    save(path, imgs=imgs, latents_values=vals, latents_classes=lc,
         metadata=np.array({"date": "April 2017", "description": "fixture"}, dtype=object))
    return imgs, vals


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("subdir", ["dsprites", ""])
def test_dsprites_loader(tmp_path, compressed, subdir, monkeypatch):
    monkeypatch.setattr(F.NpzMember, "CHUNK_BYTES", 64 * 64 * 7)  # stream in many small chunks
    classes = sprite_grid_classes(np.random.default_rng(1), 240)
    path = tmp_path / subdir / SP.DSPRITES_FILE
    imgs, vals = write_dsprites(path, classes, compressed)
    d = SP.DSprites(str(tmp_path), [], {"n_per_env": 30})
    for e, env in enumerate(d.datasets):
        assert env.x.shape == (30, 1, 64, 64) and env.x.dtype == torch.uint8
        assert set(env.x.unique().tolist()) <= {0, 255}
        assert torch.equal(env.factors[:, 0].long(), env.y)
        assert env.factor_names == ("shape", "scale", "orientation", "posX", "posY")
        # each sample is a file row: its factors are the file's values and its image that row's image
        for i in range(30):
            row = np.flatnonzero(np.all(np.isclose(vals[:, 2:], env.factors[i, 1:].numpy()[None], atol=1e-5), 1)
                                 & (classes[:, 0] == int(env.y[i])))
            assert len(row) >= 1
            assert any(np.array_equal(imgs[r] * 255, env.x[i, 0].numpy()) for r in row)
        lo, hi = F.band_range(32, e)
        pos_cls = np.rint(env.factors[:, 3].numpy() * 31)
        assert pos_cls.min() >= lo and pos_cls.max() <= hi
    d2 = SP.DSprites(str(tmp_path), [], {"n_per_env": 30})
    assert all(torch.equal(a.x, b.x) for a, b in zip(d.datasets, d2.datasets))


def test_dsprites_complete_grid_matches_sprites(tmp_path, monkeypatch):
    """On a complete (here shrunken) grid, the loader draws the renderer's grid points, correlated or not."""
    small = {"shape": np.arange(3.0), "scale": np.linspace(0.5, 1, 2), "orientation": np.array([0.0, 1.0]),
             "posX": np.linspace(0, 1, 6), "posY": np.linspace(0, 1, 2)}
    monkeypatch.setattr(SP._SpritesSpec, "GRID", small)
    sizes = (3, 2, 2, 6, 2)
    classes = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), 1)  # publisher's C order
    n = len(classes)
    lc = np.concatenate([np.zeros((n, 1), np.int64), classes], 1)
    vals = np.concatenate([np.ones((n, 1)), np.stack([v[classes[:, j]] for j, v in enumerate(small.values())], 1)], 1)
    path = tmp_path / "dsprites" / SP.DSPRITES_FILE
    path.parent.mkdir()
    imgs = np.zeros((n, 64, 64), np.uint8)
    np.savez(path, imgs=imgs, latents_values=vals, latents_classes=lc)
    for rho in (0.0, 0.7):
        d = SP.DSprites(str(tmp_path), [], {"n_per_env": 40, "factor_correlation": rho})
        for e, env in enumerate(d.datasets):
            want = F.sample_factor_classes(sizes, 40, F.env_rng("dsprites", 0, e), rho, {3: F.band_range(6, e)})
            assert torch.equal(env.y, torch.from_numpy(want[:, 0]))
            assert np.allclose(env.factors[:, 3].numpy(), small["posX"][want[:, 3]])


def test_dsprites_correlation_needs_complete_grid(tmp_path):
    write_dsprites(tmp_path / "dsprites" / SP.DSPRITES_FILE, sprite_grid_classes(np.random.default_rng(0), 50))
    with pytest.raises(UserError, match="complete factor grid"):
        SP.DSprites(str(tmp_path), [], {"n_per_env": 10, "factor_correlation": 0.5})


def write_3dshapes(path: Path, classes: np.ndarray, images=True, labels=True):
    import h5py

    grid = list(SH.SHAPES_GRID.values())
    lab = np.stack([grid[j][classes[:, j]] for j in range(6)], 1).astype(np.float64)
    img = SH.render_shapes(classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if images:
            f.create_dataset("images", data=img, dtype=np.uint8, chunks=(1, 64, 64, 3))
        if labels:
            f.create_dataset("labels", data=lab, dtype=np.float64)
    return img, lab


def test_shapes3d_loader(tmp_path):
    rng = np.random.default_rng(2)
    classes = np.stack([rng.integers(0, s, 200) for s in (10, 10, 10, 8, 4, 15)], 1)
    img, lab = write_3dshapes(tmp_path / "3dshapes" / "3dshapes.h5", classes)
    d = SH.Shapes3D(str(tmp_path), [], {"n_per_env": 25})
    for e, env in enumerate(d.datasets):
        assert env.x.shape == (25, 3, 64, 64) and env.x.dtype == torch.uint8
        assert torch.equal(env.factors[:, 4].long(), env.y)
        for i in range(25):
            row = np.flatnonzero(np.all(np.isclose(lab, env.factors[i].numpy()[None], atol=1e-4), 1))
            assert len(row) >= 1
            assert np.array_equal(img[row[0]].transpose(2, 0, 1), env.x[i].numpy())
        o = np.abs(env.factors[:, 5].numpy()[:, None] - SH.SHAPES_GRID["orientation"][None]).argmin(1)
        lo, hi = F.band_range(15, e)
        assert o.min() >= lo and o.max() <= hi
    # also accepted directly in data_dir
    (tmp_path / "3dshapes" / "3dshapes.h5").rename(tmp_path / "3dshapes.h5")
    d2 = SH.Shapes3D(str(tmp_path), [], {"n_per_env": 25})
    assert all(torch.equal(a.x, b.x) for a, b in zip(d.datasets, d2.datasets))


@pytest.mark.parametrize("compressed", [False, True])
def test_mpi3d_loader(tmp_path, monkeypatch, compressed):
    sizes = (2, 3, 1, 3, 1, 2, 4)  # 144 images
    monkeypatch.setitem(M.MPI3D_FACTOR_SIZES, "toy", sizes)
    n = int(np.prod(sizes))
    images = np.zeros((n, 64, 64, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # the image's own index, to check the row mapping
    images[:, 5, 5, :] = np.arange(n)[:, None] % 7
    (tmp_path / "mpi3d").mkdir()
    (np.savez_compressed if compressed else np.savez)(tmp_path / "mpi3d" / "mpi3d_toy.npz", images=images)
    d = M.MPI3D(str(tmp_path), [], {"n_per_env": 20})
    assert d.num_classes == 3 and d.NUM_CLASSES == 3
    for e, env in enumerate(d.datasets):
        assert env.x.shape == (20, 3, 64, 64) and env.x.dtype == torch.uint8
        classes = env.factors.long().numpy()
        idx = np.ravel_multi_index(tuple(classes.T), sizes)
        assert np.array_equal(env.x[:, 0, 0, 0].numpy(), idx)
        assert np.array_equal(env.x[:, 1, 5, 5].numpy(), idx % 7)
        assert torch.equal(env.y, env.factors[:, 1].long())
        assert (classes[:, 3] == e).all()
    assert d[0].factor_names == M.MPI3D_FACTORS
    with pytest.raises(UserError, match="complex"):  # the complex file has the wrong image count
        monkeypatch.setitem(M.MPI3D_FACTOR_SIZES, "complex", (2, 2, 1, 3, 1, 2, 4))
        np.savez(tmp_path / "mpi3d" / "mpi3d_complex.npz", images=images)
        M.MPI3D(str(tmp_path), [], {"mpi3d_variant": "complex"})
    with pytest.raises(UserError, match="mpi3d_variant"):
        M.MPI3D(str(tmp_path), [], {"mpi3d_variant": "fake"})


def test_npz_member_rows(tmp_path, monkeypatch):
    a = np.arange(50 * 6, dtype=np.int32).reshape(50, 2, 3)
    for save in (np.savez, np.savez_compressed):
        save(tmp_path / "x.npz", a=a, b=np.zeros(3))
        monkeypatch.setattr(F.NpzMember, "CHUNK_BYTES", 24 * 3)
        m = F.NpzMember(tmp_path / "x.npz", "a", "T")
        assert m.shape == (50, 2, 3) and m.stored == (save is np.savez)
        rows = np.array([49, 0, 7, 7, 31, 0])
        assert np.array_equal(m.rows(rows), a[rows])


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, expected", [
    (SP.DSprites, "dsprites/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"),
    (SH.Shapes3D, "3dshapes/3dshapes.h5"),
    (M.MPI3D, "mpi3d/mpi3d_toy.npz"),
])
def test_missing_file(tmp_path, cls, expected):
    with pytest.raises(UserError) as err:
        cls(str(tmp_path), [], {})
    msg = str(err.value)
    assert str(tmp_path / expected) in msg and "\n" not in msg
    assert {"DSprites": "github.com/deepmind/dsprites-dataset", "Shapes3D": "storage.googleapis.com/3d-shapes",
            "MPI3D": "github.com/rr-learning/disentanglement_dataset"}[cls.__name__] in msg
    with pytest.raises(UserError):
        cls(None, [], {})


def test_malformed_files(tmp_path):
    p = tmp_path / "dsprites" / SP.DSPRITES_FILE
    p.parent.mkdir()
    cases = [
        lambda: np.savez(p, latents_values=np.zeros((2, 6)), latents_classes=np.zeros((2, 6), np.int64)),
        lambda: np.savez(p, imgs=np.zeros((2, 32, 32), np.uint8), latents_values=np.zeros((2, 6)),
                         latents_classes=np.zeros((2, 6), np.int64)),
        lambda: np.savez(p, imgs=np.zeros((2, 64, 64), np.uint8), latents_values=np.zeros((3, 6)),
                         latents_classes=np.zeros((2, 6), np.int64)),
        lambda: p.write_bytes(b"garbage, not a zip archive"),
    ]
    for make in cases:
        make()
        with pytest.raises(UserError) as err:
            SP.DSprites(str(tmp_path), [], {"n_per_env": 2})
        assert "\n" not in str(err.value)
    rng = np.random.default_rng(0)
    classes = np.stack([rng.integers(0, s, 5) for s in (10, 10, 10, 8, 4, 15)], 1)
    write_3dshapes(tmp_path / "3dshapes" / "3dshapes.h5", classes, labels=False)
    with pytest.raises(UserError, match="labels"):
        SH.Shapes3D(str(tmp_path), [], {"n_per_env": 2})
    (tmp_path / "3dshapes" / "3dshapes.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError):
        SH.Shapes3D(str(tmp_path), [], {"n_per_env": 2})
    (tmp_path / "mpi3d").mkdir()
    np.savez(tmp_path / "mpi3d" / "mpi3d_toy.npz", imgs=np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(UserError, match="images"):
        M.MPI3D(str(tmp_path), [], {})
    np.savez(tmp_path / "mpi3d" / "mpi3d_toy.npz", images=np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(UserError, match="toy"):
        M.MPI3D(str(tmp_path), [], {})
    with pytest.raises(UserError, match="n_per_env"):
        SP.Sprites(None, [], {"n_per_env": 0})


# --- factor tasks: held-out combinations --------------------------------------------------
def _task_subsets(sampler, steps: int, monkeypatch) -> set[tuple[int, ...]]:
    """The factor subsets the sampler's tasks were drawn on over ``steps`` batches."""
    from harness.datasets.tasks import FactorTaskSampler

    seen, draw = set(), FactorTaskSampler._subset

    def recording(self, g):
        subset = draw(self, g)
        seen.add(tuple(sorted(subset.tolist())))
        return subset

    with monkeypatch.context() as m:
        m.setattr(FactorTaskSampler, "_subset", recording)
        for step in range(steps):
            sampler.sample(step)
    return seen


def test_heldout_factor_combinations_split_train_and_ood_tasks(monkeypatch):
    from harness.datasets.synthetic import SyntheticLinear
    from harness.datasets.tasks import FactorTaskSampler, heldout_combinations

    hp = {"n_factors": 6, "n_per_env": 300, "data_seed": 0, "tasks_per_batch": 8, "support": 10, "query": 10,
          "max_factors": 3, "ood_task_fraction": 0.3}
    ds = SyntheticLinear(None, [], hp)
    held = heldout_combinations(6, 3, 0.3, 0)
    assert len(held) == round(0.3 * (15 + 20)) and all(len(c) >= 2 for c in held)
    assert held == heldout_combinations(6, 3, 0.3, 0) != heldout_combinations(6, 3, 0.3, 1)
    train = _task_subsets(FactorTaskSampler(ds.datasets, hp, seed=1, split="train"), 40, monkeypatch)
    ood = _task_subsets(FactorTaskSampler(ds.datasets, hp, seed=1, split="ood"), 40, monkeypatch)
    assert train and not (train & held), "a training task used a held-out combination"
    assert {(i,) for i in range(6)} <= train  # every single factor is still trained on
    assert ood <= held and len(ood) > len(held) // 2
    batch = FactorTaskSampler(ds.datasets, hp, seed=1, split="ood").sample(3)
    assert batch.support_x.shape[:2] == (8, 10) and set(batch.query_y.unique().tolist()) == {0, 1}
    with pytest.raises(ValueError, match="no held-out"):
        FactorTaskSampler(ds.datasets, {**hp, "ood_task_fraction": 0.0}, seed=1, split="ood")
    from harness.errors import UserError

    with pytest.raises(UserError, match=r"must be in \[0, 1\)"):
        FactorTaskSampler(ds.datasets, {**hp, "ood_task_fraction": 1.0}, seed=1)
