"""dSprites: a procedural renderer of its factor grid (``Sprites``) and the published file (``DSprites``).

dSprites (Matthey et al. 2017, github.com/deepmind/dsprites-dataset) is the full grid of
3 shapes x 6 scales x 40 orientations x 32 x-positions x 32 y-positions of a white sprite on
a black 64x64 canvas. ``render_sprites`` draws any points of that grid with anti-aliased
edges (signed-distance coverage: a pixel's grey level is the covered fraction of a 1-pixel
ramp across the edge), batch-vectorised in torch.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from harness.datasets.base import MultiEnvDataset
from harness.datasets.factors import FileFactorDataset, NpzMember, ProceduralFactorDataset, find_file
from harness.errors import UserError
from harness.registry import DATASETS

SPRITE_GRID: dict[str, np.ndarray] = {
    "shape": np.arange(3, dtype=np.float64),  # square, ellipse, heart (the file stores 1, 2, 3)
    "scale": np.linspace(0.5, 1.0, 6),
    "orientation": np.arange(40) * (2 * np.pi / 40),  # radians in [0, 2 pi)
    "posX": np.linspace(0.0, 1.0, 32),
    "posY": np.linspace(0.0, 1.0, 32),
}

IMG = 64
UNIT = 11.0  # pixels per shape unit at scale 1: the square's side is 1.9 units = 21 px (1/3 of the image)
EXTENT = 0.95 * math.sqrt(2)  # farthest shape point from its centre, in units (the square's corner)
MARGIN = EXTENT * UNIT + 1.0  # keeps every shape inside the canvas at every position
SQUARE_HALF = 0.95
ELLIPSE_AXES = (0.45, 1.2)  # semi-axes in units (x, y before rotation): an elongated upright oval
HEART_FIT = 0.62  # unit -> heart-curve coordinates
HEART_CENTRE = 0.52  # heart curve's vertical middle (tip at 0, lobes top at ~1.1)
_BATCH = 1024


def _sd_square(x, y):
    import torch

    qx, qy = x.abs() - SQUARE_HALF, y.abs() - SQUARE_HALF
    outside = torch.hypot(qx.clamp_min(0), qy.clamp_min(0))
    return outside + torch.maximum(qx, qy).clamp_max(0)


def _sd_ellipse(x, y):
    """First-order distance to the ellipse: f / |grad f| with f = |p / axes| - 1 (exact on the edge)."""
    import torch

    a, b = ELLIPSE_AXES
    qx, qy = x / a, y / b
    r = torch.hypot(qx, qy)
    grad = torch.hypot(qx / a, qy / b).clamp_min(1e-6)
    return (r - 1) * r / grad


def _sd_heart(x, y):
    """Exact signed distance to a heart (two circular lobes on a V, I. Quilez's construction)."""
    import torch

    hx = x.abs() * HEART_FIT
    hy = -y * HEART_FIT + HEART_CENTRE  # image y points down; the tip points down
    lobe = torch.hypot(hx - 0.25, hy - 0.75) - math.sqrt(2) / 4
    t = 0.5 * (hx + hy).clamp_min(0)
    d2 = torch.minimum(hx.square() + (hy - 1).square(), (hx - t).square() + (hy - t).square())
    v = d2.sqrt() * torch.sign(hx - hy)
    return torch.where(hx + hy > 1, lobe, v) / HEART_FIT


_SDF = (_sd_square, _sd_ellipse, _sd_heart)


def render_sprite_values(shape: np.ndarray, scale: np.ndarray, orientation: np.ndarray, pos_x: np.ndarray,
                         pos_y: np.ndarray) -> np.ndarray:
    """Sprites from factor values (shape index, scale, radians, posX and posY in [0, 1]) -> uint8 (N, 64, 64)."""
    import torch

    n = len(shape)
    out = np.empty((n, IMG, IMG), dtype=np.uint8)
    grid = torch.arange(IMG, dtype=torch.float32) + 0.5  # pixel centres
    shape = np.asarray(shape, dtype=np.int64)
    params = torch.from_numpy(np.stack([scale, orientation, pos_x, pos_y], 1).astype(np.float32))
    with torch.no_grad():
        for s in range(0, n, _BATCH):
            sl = slice(s, min(n, s + _BATCH))
            sc, th, px, py = (params[sl, i].view(-1, 1, 1) for i in range(4))
            cx = MARGIN + px * (IMG - 2 * MARGIN)
            cy = MARGIN + py * (IMG - 2 * MARGIN)
            dx = grid.view(1, 1, IMG) - cx
            dy = grid.view(1, IMG, 1) - cy
            pix = sc * UNIT  # pixels per unit
            cos, sin = torch.cos(th), torch.sin(th)
            x = (cos * dx + sin * dy) / pix  # rotate the canvas by -theta into the shape's frame
            y = (-sin * dx + cos * dy) / pix
            d = torch.empty(x.shape)
            kinds = torch.from_numpy(shape[sl])
            for k, sdf in enumerate(_SDF):
                sel = (kinds == k).nonzero().flatten()
                if len(sel):
                    d[sel] = sdf(x[sel], y[sel]) * pix[sel]  # distance in pixels
            cover = (0.5 - d).clamp_(0, 1)
            out[sl] = cover.mul_(255).round_().to(torch.uint8).numpy()
    return out


def render_sprites(classes: np.ndarray) -> np.ndarray:
    """dSprites grid classes (N, 5): shape, scale, orientation, posX, posY -> uint8 (N, 64, 64), 0..255."""
    classes = np.asarray(classes, dtype=np.int64)
    if classes.ndim != 2 or classes.shape[1] != 5:
        raise ValueError(f"classes must be (N, 5), got {classes.shape}")
    sizes = np.array([len(v) for v in SPRITE_GRID.values()])
    if len(classes) and ((classes < 0).any() or (classes >= sizes).any()):
        raise ValueError(f"classes out of range of the grid sizes {tuple(sizes)}")
    vals = [np.asarray(v)[classes[:, j]] for j, v in enumerate(SPRITE_GRID.values())]
    return render_sprite_values(classes[:, 0], *vals[1:])


class _SpritesSpec:
    FAMILY = "dsprites"
    GRID = SPRITE_GRID
    LABEL_FACTOR = 0  # shape
    ENV_FACTOR = 3  # posX
    ENVIRONMENTS = ["left", "middle", "right"]
    INPUT_SHAPE = (1, 64, 64)
    NUM_CLASSES = 3
    METRICS = ("disentanglement",)
    N_STEPS = 2000
    CHECKPOINT_FREQ = 200


@DATASETS.register("Sprites")
class Sprites(_SpritesSpec, ProceduralFactorDataset, MultiEnvDataset):
    """dSprites rendered procedurally (no download), deterministic in ``data_seed``.

    Primary label: shape (0 square, 1 ellipse, 2 heart); NUM_CLASSES = 3.
    Environments (a shift in position): posX class 0-10 ("left"), 11-21 ("middle"),
    22-31 ("right").
    Factors (values, float): shape (class index 0..2, equal to y), scale (0.5..1, 6 values),
    orientation (radians, 40 values k*2pi/40), posX and posY (0..1, 32 values each).
    x: uint8 (N, 1, 64, 64), white (255) shape on black with anti-aliased grey edges.

    hparams: ``n_per_env`` (4000) grid points drawn per environment with replacement;
    ``data_seed`` (0); ``factor_correlation`` (0.0) the rho of an equicorrelated Gaussian
    copula over the five factors (within each environment's posX band); ``data_cache`` (True)
    caches the rendered images under ``$HARNESS_CACHE`` or ``~/.cache/harness``.
    """

    RENDER_VERSION = 2  # 2: sprites 1/3 of the image at scale 1, slimmer ellipse

    @staticmethod
    def render(classes: np.ndarray) -> np.ndarray:
        return render_sprites(classes)[:, None]

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        self.build_envs(hparams)


DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_SOURCE = "https://github.com/deepmind/dsprites-dataset"


@DATASETS.register("DSprites")
class DSprites(_SpritesSpec, FileFactorDataset, MultiEnvDataset):
    """The published dSprites file, read from ``<data_dir>/dsprites/`` (or ``<data_dir>``).

    File: ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` from github.com/deepmind/dsprites-dataset
    (``imgs`` uint8 0/1 (737280, 64, 64); ``latents_values`` and ``latents_classes`` (737280, 6):
    color, shape, scale, orientation, posX, posY). Never downloaded.

    Same label, environments and factors as ``Sprites`` (the constant color is dropped; shape
    is the class index 0..2, the others are the file's values: orientation there is
    linspace(0, 2pi, 40)). With the complete file, environment e draws the same grid points as
    ``Sprites`` for the same ``data_seed``; x is uint8 (N, 1, 64, 64) scaled to 0/255.

    Memory and time: the published ``imgs`` is compressed, so it cannot be memory-mapped, and
    decoding it whole would take 2.8 GiB. It is streamed instead (one decompression pass of a
    few seconds, ~64 MiB at a time) keeping only the chosen rows; the latents (2 x 35 MiB) are
    loaded whole. The chosen images are cached (``data_cache``), so later runs skip the pass.
    hparams: ``n_per_env``, ``data_seed``, ``factor_correlation``, ``data_cache`` as in ``Sprites``.
    """

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        self.build_envs(hparams)

    def open_file(self):
        from harness.datasets.factors import file_fingerprint

        path = find_file(self.data_dir, [f"dsprites/{DSPRITES_FILE}", DSPRITES_FILE], "DSprites", DSPRITES_SOURCE)
        imgs = NpzMember(path, "imgs", "DSprites")
        imgs.check(shape_tail=(64, 64))
        n = len(imgs)
        lat = {}
        for key in ("latents_classes", "latents_values"):
            m = NpzMember(path, key, "DSprites")
            m.check(shape_tail=(6,), n=n)
            lat[key] = m.read_all()
        classes = lat["latents_classes"][:, 1:].astype(np.int64)
        sizes = np.array(self.sizes())
        if n and ((classes < 0).any() or (classes >= sizes).any()):
            raise UserError(f"DSprites: latents_classes of {path} fall outside the grid sizes {tuple(sizes)}")
        values = lat["latents_values"][:, 1:].astype(np.float64)

        def read_rows(rows: np.ndarray) -> np.ndarray:  # the file's 0/1 pixels -> 0/255
            return (imgs.rows(rows) != 0).astype(np.uint8)[:, None] * np.uint8(255)

        return classes, values, read_rows, file_fingerprint(path)
