"""3DShapes: a procedural 2.5D renderer of its factor grid (``Shapes``) and the published file (``Shapes3D``).

3DShapes (Burgess & Kim 2018, storage.googleapis.com/3d-shapes/3dshapes.h5) is the full grid of
floor hue 10 x wall hue 10 x object hue 10 x scale 8 x shape 4 x orientation 15 of a room
corner with one object. ``render_shapes`` draws a stylised version of any grid point: a floor
and two walls meeting in a corner (the camera's orientation moves the corner and tilts the
floor lines), a soft shadow, and one shaded object (cube, cylinder, sphere, capsule) whose
cube faces turn with the orientation. Edges are anti-aliased by signed-distance coverage;
everything is batch-vectorised in torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from harness.datasets.base import MultiEnvDataset
from harness.datasets.factors import FileFactorDataset, ProceduralFactorDataset, find_file, read_sorted
from harness.errors import UserError
from harness.registry import DATASETS

SHAPES_GRID: dict[str, np.ndarray] = {
    "floor_hue": np.linspace(0.0, 0.9, 10),
    "wall_hue": np.linspace(0.0, 0.9, 10),
    "object_hue": np.linspace(0.0, 0.9, 10),
    "scale": np.linspace(0.75, 1.25, 8),
    "shape": np.arange(4, dtype=np.float64),  # cube, cylinder, sphere, capsule
    "orientation": np.linspace(-30.0, 30.0, 15),  # degrees
}

IMG = 64
HORIZON = 34.0  # y of the floor line at the corner
BASE_Y = 55.0  # y where the object stands
SIZE = 15.0  # object width in pixels at scale 1
SATURATION, VALUE = 0.85, 1.0
_BATCH = 256


def hsv_to_rgb(h: np.ndarray, s: float = SATURATION, v: float = VALUE) -> np.ndarray:
    """Hue in [0, 1) -> (N, 3) RGB in [0, 1]."""
    h = np.asarray(h, dtype=np.float64)[:, None]
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _cover(d):
    """Pixel coverage of a shape from its signed distance in pixels (1-pixel anti-aliasing ramp)."""
    return (0.5 - d).clamp(0, 1)


def _sd_box(x, y, cx, cy, hx, hy):
    import torch

    qx, qy = (x - cx).abs() - hx, (y - cy).abs() - hy
    return torch.hypot(qx.clamp_min(0), qy.clamp_min(0)) + torch.maximum(qx, qy).clamp_max(0)


def _sd_ellipse(x, y, cx, cy, a, b):
    import torch

    qx, qy = (x - cx) / a, (y - cy) / b
    r = torch.hypot(qx, qy)
    return (r - 1) * r / torch.hypot(qx / a, qy / b).clamp_min(1e-6)


def _sd_convex(x, y, verts):
    """Signed distance (exact inside, a lower bound outside) to a convex polygon of (vx, vy) vertices."""
    import torch

    cx = sum(v[0] for v in verts) / len(verts)
    cy = sum(v[1] for v in verts) / len(verts)
    d = None
    for (ax, ay), (bx, by) in zip(verts, verts[1:] + verts[:1]):
        nx, ny = by - ay, ax - bx
        norm = torch.hypot(nx, ny).clamp_min(1e-6)
        side = torch.sign(nx * (cx - ax) + ny * (cy - ay))  # the centroid lies on the negative side
        di = -side * (nx * (x - ax) + ny * (y - ay)) / norm
        d = di if d is None else torch.maximum(d, di)
    return d


def _sd_segment(x, y, ax, ay, bx, by, r):
    import torch

    px, py, ux, uy = x - ax, y - ay, bx - ax, by - ay
    h = ((px * ux + py * uy) / (ux * ux + uy * uy)).clamp(0, 1)
    return torch.hypot(px - h * ux, py - h * uy) - r


def _object_layers(kind: int, x, y, xo, w, t):
    """Layers of one object kind, back to front: (coverage, shade, highlight); a layer's colour is
    ``object_rgb * shade + highlight`` (highlight: white added)."""
    import torch

    if kind == 0:  # cube: side, front and top faces; the orientation turns it
        phi = torch.deg2rad(30 + 20 * t)
        fw, sw, depth = w * torch.cos(phi), 0.8 * w * torch.sin(phi), 0.3 * w
        x0 = xo - (fw + sw) / 2
        xr, top = x0 + fw, BASE_Y - w
        front = _sd_box(x, y, (x0 + xr) / 2, (top + BASE_Y) / 2, fw / 2, w / 2)
        side = _sd_convex(x, y, [(xr, BASE_Y + 0 * w), (xr, top), (xr + sw, top - depth), (xr + sw, BASE_Y - depth)])
        lid = _sd_convex(x, y, [(x0, top), (xr, top), (xr + sw, top - depth), (x0 + sw, top - depth)])
        return [(_cover(side), 0.6, 0.0), (_cover(front), 0.88, 0.0), (_cover(lid), 0.85, 0.15)]
    if kind == 1:  # cylinder: body with a rounded base, lighter top cap
        r = 0.5 * w
        top = BASE_Y - 1.1 * w
        body = torch.minimum(_sd_box(x, y, xo, (top + BASE_Y) / 2, r, (BASE_Y - top) / 2),
                             _sd_ellipse(x, y, xo, BASE_Y, r, 0.3 * r))
        shade = 0.55 + 0.45 * (1 - ((x - xo + 0.3 * r) / (1.3 * r)).square()).clamp(0, 1).sqrt()
        return [(_cover(body), shade, 0.0), (_cover(_sd_ellipse(x, y, xo, top, r, 0.3 * r)), 0.85, 0.15)]
    if kind == 2:  # sphere lit from the upper left, with a specular highlight
        r = 0.58 * w
        cy = BASE_Y - r
        d = torch.hypot(x - xo, y - cy) - r
        q = (torch.hypot(x - xo + 0.35 * r, y - cy + 0.35 * r) / (1.6 * r)).clamp(0, 1)
        return [(_cover(d), 1 - 0.55 * q, 0.3 * (1 - q).pow(4))]
    # capsule: an upright pill, taller and narrower than the cylinder
    r = 0.36 * w
    d = _sd_segment(x, y, xo, BASE_Y - r, xo, BASE_Y - 1.45 * w + r, r)
    shade = 0.5 + 0.5 * (1 - ((x - xo + 0.3 * r) / (1.3 * r)).square()).clamp(0, 1).sqrt()
    return [(_cover(d), shade, 0.0)]


def _scene_maps(scale, shape, orientation):
    """Per-pixel weights (B, 4, 64, 64) of the scene given its geometry (scale, shape, degrees).

    The picture is linear in the colours: rgb = M0 * floor_rgb + M1 * wall_rgb + M2 * object_rgb
    + M3 (white), so the colours are applied afterwards for every image of one geometry.
    """
    import torch

    b = len(shape)
    shape = torch.as_tensor(np.asarray(shape, dtype=np.int64))
    w = torch.as_tensor(np.asarray(scale, dtype=np.float32)).view(-1, 1, 1) * SIZE
    t = torch.as_tensor(np.asarray(orientation, dtype=np.float32) / 30.0).view(-1, 1, 1)
    x = (torch.arange(IMG, dtype=torch.float32) + 0.5).view(1, 1, IMG).expand(b, IMG, IMG)
    y = (torch.arange(IMG, dtype=torch.float32) + 0.5).view(1, IMG, 1).expand(b, IMG, IMG)
    # room: two walls meeting at a vertical corner, floor lines falling away from it
    xc = 32 - 16 * t
    k = torch.where(x < xc, 0.30 - 0.12 * t, 0.30 + 0.12 * t)
    floor = ((y - HORIZON - k * (x - xc).abs()) / torch.sqrt(1 + k * k) + 0.5).clamp(0, 1)
    right = (x - xc + 0.5).clamp(0, 1)
    wall_shade = (0.78 + 0.22 * right) * (0.92 + 0.08 * y / IMG)
    floor_shade = 0.7 + 0.3 * ((y - HORIZON) / (IMG - HORIZON)).clamp(0, 1)
    xo = 32 + 6 * t  # the object sits mid-room; a turning camera shifts it a little
    shadow = 1 - 0.45 * floor * _cover(_sd_ellipse(x, y, xo + 2, BASE_Y, 0.75 * w, 2.2 + 0 * w))
    through, obj, white = torch.ones(b, IMG, IMG), torch.zeros(b, IMG, IMG), torch.zeros(b, IMG, IMG)
    for kind in range(4):
        idx = (shape == kind).nonzero().flatten()
        if not len(idx):
            continue
        tr, ob, wh = through[idx], obj[idx], white[idx]
        for a, s, h in _object_layers(kind, x[idx], y[idx], xo[idx], w[idx], t[idx]):
            tr, ob, wh = tr * (1 - a), ob * (1 - a) + a * s, wh * (1 - a) + a * h
        through[idx], obj[idx], white[idx] = tr, ob, wh
    bg = shadow * through
    return torch.stack([floor * floor_shade * bg, (1 - floor) * wall_shade * bg, obj, white], 1)


def render_shape_values(floor_hue, wall_hue, object_hue, scale, shape, orientation) -> np.ndarray:
    """3DShapes scenes from factor values (hues in [0, 1), scale, shape index, degrees) -> uint8 (N, 64, 64, 3).

    The geometry maps are computed once per distinct (scale, shape, orientation) in the batch
    (at most 480 on the grid), then coloured per image.
    """
    import torch

    n = len(shape)
    out = np.empty((n, IMG, IMG, 3), dtype=np.uint8)
    geom = np.stack([np.asarray(v, np.float64) for v in (scale, shape, orientation)], 1)
    uniq, inverse = np.unique(geom, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    with torch.no_grad():
        maps = torch.cat([_scene_maps(uniq[i : i + _BATCH, 0], uniq[i : i + _BATCH, 1].astype(np.int64),
                                      uniq[i : i + _BATCH, 2]) for i in range(0, len(uniq), _BATCH)]) \
            if len(uniq) else torch.zeros(0, 4, IMG, IMG)
        maps = maps.flatten(2).transpose(1, 2).contiguous()  # (G, HW, 4)
        colours = torch.from_numpy(np.stack([hsv_to_rgb(floor_hue), hsv_to_rgb(wall_hue), hsv_to_rgb(object_hue),
                                             np.ones((n, 3))], 2)).float()  # (N, 3, 4)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
        for g in range(len(uniq)):  # one small matmul per geometry: (HW, 4) @ (4, m * 3)
            idx = order[bounds[g] : bounds[g + 1]]
            if not len(idx):
                continue
            c = colours[torch.from_numpy(idx)].reshape(-1, 4).T
            img = (maps[g] @ c).clamp_(0, 1).mul_(255).add_(0.5).to(torch.uint8)  # (HW, m * 3)
            out[idx] = img.view(IMG, IMG, -1, 3).permute(2, 0, 1, 3).numpy()
    return out


def render_shapes(classes: np.ndarray) -> np.ndarray:
    """3DShapes grid classes (N, 6): floor hue, wall hue, object hue, scale, shape, orientation
    -> uint8 (N, 64, 64, 3)."""
    classes = np.asarray(classes, dtype=np.int64)
    if classes.ndim != 2 or classes.shape[1] != 6:
        raise ValueError(f"classes must be (N, 6), got {classes.shape}")
    sizes = np.array([len(v) for v in SHAPES_GRID.values()])
    if len(classes) and ((classes < 0).any() or (classes >= sizes).any()):
        raise ValueError(f"classes out of range of the grid sizes {tuple(sizes)}")
    vals = [np.asarray(v)[classes[:, j]] for j, v in enumerate(SHAPES_GRID.values())]
    return render_shape_values(*vals)


class _ShapesSpec:
    FAMILY = "3dshapes"
    GRID = SHAPES_GRID
    LABEL_FACTOR = 4  # shape
    ENV_FACTOR = 5  # orientation
    ENVIRONMENTS = ["view_left", "view_front", "view_right"]
    INPUT_SHAPE = (3, 64, 64)
    NUM_CLASSES = 4
    METRICS = ("disentanglement",)
    N_STEPS = 2000
    CHECKPOINT_FREQ = 200


@DATASETS.register("Shapes")
class Shapes(_ShapesSpec, ProceduralFactorDataset, MultiEnvDataset):
    """3DShapes rendered procedurally in a simple 2.5D style (no download), deterministic in ``data_seed``.

    Primary label: shape (0 cube, 1 cylinder, 2 sphere, 3 capsule); NUM_CLASSES = 4.
    Environments (a shift in viewpoint): orientation class 0-4 ("view_left", -30..-17 deg),
    5-9 ("view_front", -13..+13 deg), 10-14 ("view_right", 17..30 deg).
    Factors (values, float, as in the published labels): floor_hue, wall_hue, object_hue
    (0, 0.1, ..., 0.9), scale (0.75..1.25, 8 values), shape (class index 0..3, equal to y),
    orientation (-30..30 degrees, 15 values).
    x: uint8 (N, 3, 64, 64) RGB.

    hparams: ``n_per_env`` (4000), ``data_seed`` (0), ``factor_correlation`` (0.0, copula over
    the six factors within each environment's orientation band), ``data_cache`` (True).
    """

    RENDER_VERSION = 1

    @staticmethod
    def render(classes: np.ndarray) -> np.ndarray:
        return render_shapes(classes).transpose(0, 3, 1, 2)

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        self.build_envs(hparams)


SHAPES3D_FILE = "3dshapes.h5"
SHAPES3D_SOURCE = "the Google Cloud bucket 3d-shapes (https://storage.googleapis.com/3d-shapes/3dshapes.h5)"


@DATASETS.register("Shapes3D")
class Shapes3D(_ShapesSpec, FileFactorDataset, MultiEnvDataset):
    """The published 3DShapes file, read from ``<data_dir>/3dshapes/3dshapes.h5`` (or ``<data_dir>/3dshapes.h5``).

    File (storage.googleapis.com/3d-shapes/3dshapes.h5, never downloaded): ``images`` uint8
    (480000, 64, 64, 3) and ``labels`` float64 (480000, 6): floor_hue, wall_hue, object_hue,
    scale, shape, orientation. Needs h5py (imported only here).

    Same label, environments and factors as ``Shapes`` (factor values are the file's labels;
    shape is its class index 0..3). With the complete file, environment e draws the same grid
    points as ``Shapes`` for the same ``data_seed``. Only the chosen images are read (sorted
    h5 selections, in blocks); the labels (23 MiB) are read whole. Chosen images are cached
    (``data_cache``). hparams: as ``Shapes``.
    """

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        self.build_envs(hparams)

    def open_file(self):
        from harness.datasets.factors import file_fingerprint

        path = find_file(self.data_dir, [f"3dshapes/{SHAPES3D_FILE}", SHAPES3D_FILE], "Shapes3D", SHAPES3D_SOURCE)
        try:
            import h5py
        except ImportError:
            raise UserError("Shapes3D needs h5py to read 3dshapes.h5 (pip install h5py)") from None
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("images", "labels") if k not in f]
                if missing:
                    raise UserError(f"Shapes3D: {path} has no dataset {', '.join(missing)} "
                                    f"(it has: {', '.join(f.keys())})")
                ishape, lshape = f["images"].shape, f["labels"].shape
                if len(ishape) != 4 or ishape[1:] != (64, 64, 3):
                    raise UserError(f"Shapes3D: 'images' of {path} has shape {ishape}, expected (N, 64, 64, 3)")
                if lshape != (ishape[0], 6):
                    raise UserError(f"Shapes3D: 'labels' of {path} has shape {lshape}, expected ({ishape[0]}, 6)")
                labels = np.asarray(f["labels"][()], dtype=np.float64)
        except OSError as e:
            raise UserError(f"Shapes3D: {path} is not a readable HDF5 file ({e})") from None
        grid = list(SHAPES_GRID.values())
        classes = np.stack([np.abs(labels[:, j, None] - grid[j][None]).argmin(1) for j in range(6)], 1)
        err = np.abs(labels - np.stack([grid[j][classes[:, j]] for j in range(6)], 1))
        tol = np.array([np.diff(g).min() for g in grid]) / 4  # a quarter of each factor's grid step
        if len(labels) and (err > tol).any():
            raise UserError(f"Shapes3D: 'labels' of {path} hold values off the 3DShapes grid "
                            f"(factor {list(SHAPES_GRID)[int(np.argmax((err > tol).any(0)))]})")

        def read_rows(rows: np.ndarray) -> np.ndarray:
            def read(uniq: np.ndarray) -> np.ndarray:
                with h5py.File(path, "r") as f:
                    ds = f["images"]
                    parts = [ds[uniq[i : i + 1024]] for i in range(0, len(uniq), 1024)]
                return np.concatenate(parts).astype(np.uint8) if parts else np.empty((0, 64, 64, 3), np.uint8)

            return read_sorted(read, rows).transpose(0, 3, 1, 2)

        return classes.astype(np.int64), labels, read_rows, file_fingerprint(path)
