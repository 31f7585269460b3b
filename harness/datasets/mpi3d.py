"""MPI3D (Gondal et al., NeurIPS 2019): the published ``.npz`` files, read from ``data_dir``.

Files ``mpi3d_{toy,realistic,real,complex}.npz`` from github.com/rr-learning/disentanglement_dataset
hold one array ``images`` (N, 64, 64, 3) uint8, the full factor grid in C order over the
published factor sizes below (so the factor classes of image i are ``np.unravel_index(i, sizes)``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from harness.datasets.base import MultiEnvDataset
from harness.datasets.factors import FileFactorDataset, NpzMember, file_fingerprint, find_file
from harness.errors import UserError
from harness.hparams import HP, one_of
from harness.registry import DATASETS

MPI3D_FACTORS = ("object_color", "object_shape", "object_size", "camera_height", "background_color",
                 "horizontal_axis", "vertical_axis")
# Factor sizes per variant, in the published order (module-level so tests can shrink them).
MPI3D_FACTOR_SIZES: dict[str, tuple[int, ...]] = {
    "toy": (6, 6, 2, 3, 3, 40, 40),
    "realistic": (6, 6, 2, 3, 3, 40, 40),
    "real": (6, 6, 2, 3, 3, 40, 40),
    "complex": (4, 4, 2, 3, 3, 40, 40),
}
MPI3D_SOURCE = "https://github.com/rr-learning/disentanglement_dataset"


@DATASETS.register("MPI3D")
class MPI3D(FileFactorDataset, MultiEnvDataset):
    """MPI3D read from ``<data_dir>/mpi3d/mpi3d_<variant>.npz`` (never downloaded).

    ``hparams["mpi3d_variant"]``: "toy" (default), "realistic", "real" or "complex".
    Primary label: object_shape (6 classes; 4 for "complex", set on the instance).
    Environments (a shift in viewpoint): camera_height = 0 ("top"), 1 ("center"), 2 ("bottom").
    Factors (class indices as floats; MPI3D publishes no other values): object_color,
    object_shape (equal to y), object_size, camera_height, background_color, horizontal_axis,
    vertical_axis. x: uint8 (N, 3, 64, 64).

    The published files are large (toy: 1,036,800 images, 12 GiB): a member stored without
    compression is memory-mapped and only the chosen rows are read; a compressed one is streamed
    once. hparams: ``n_per_env`` (4000), ``data_seed`` (0), ``factor_correlation`` (0.0, copula
    over the seven factors, camera_height fixed per environment), ``data_cache`` (True).
    """

    HPARAMS = {**FileFactorDataset.HPARAMS, "mpi3d_variant": HP("toy", domain=one_of("toy", "realistic", "real", "complex"))}

    FAMILY = "mpi3d"
    LABEL_FACTOR = 1  # object_shape
    ENV_FACTOR = 3  # camera_height
    ENVIRONMENTS = ["top", "center", "bottom"]
    INPUT_SHAPE = (3, 64, 64)
    NUM_CLASSES = 6
    METRICS = ("disentanglement",)
    N_STEPS = 2000
    CHECKPOINT_FREQ = 200

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        variant = self.hparams["mpi3d_variant"]
        if variant not in MPI3D_FACTOR_SIZES:
            raise UserError(f"mpi3d_variant must be one of {', '.join(MPI3D_FACTOR_SIZES)}, got {variant!r}")
        self.variant = variant
        sizes = MPI3D_FACTOR_SIZES[variant]
        self.GRID = {name: np.arange(s, dtype=np.float64) for name, s in zip(MPI3D_FACTORS, sizes)}
        self.NUM_CLASSES = sizes[self.LABEL_FACTOR]
        self.FAMILY = f"mpi3d-{variant}"
        self.build_envs(hparams)

    def open_file(self):
        name = f"mpi3d_{self.variant}.npz"
        path = find_file(self.data_dir, [f"mpi3d/{name}"], "MPI3D", f"{MPI3D_SOURCE} ({name})")
        images = NpzMember(path, "images", "MPI3D")
        images.check(shape_tail=(64, 64, 3))
        sizes = self.sizes()
        expected = int(np.prod(sizes))
        if len(images) != expected:
            raise UserError(f"MPI3D: {path} holds {len(images)} images but the '{self.variant}' variant's factor "
                            f"sizes {sizes} make {expected}; is it the right variant (mpi3d_variant)?")
        classes = np.stack(np.unravel_index(np.arange(expected), sizes), 1).astype(np.int64)

        def read_rows(rows: np.ndarray) -> np.ndarray:
            return images.rows(rows).astype(np.uint8).transpose(0, 3, 1, 2)

        return classes, classes.astype(np.float64), read_rows, file_fingerprint(path)
