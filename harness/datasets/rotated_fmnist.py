"""Rotated Fashion-MNIST: DomainBed's RotatedMNIST construction applied to Fashion-MNIST.

Files (Fashion-MNIST's IDX files, as Zalando distributes them and torchvision stores them),
looked for, in order, in

    <data_dir>/FashionMNIST/raw/          (torchvision's layout; python -m harness.download FashionMNIST)
    /usr/share/datasets/fashion-mnist/    (Debian's package: apt-get install dataset-fashion-mnist)
    /usr/share/fashion-mnist/

(the environment variable ``HARNESS_FMNIST_DIRS``, a list like ``PATH``, replaces the two
system folders), each holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, plain or gzipped (``.gz``).

Construction (DomainBed's ``MultipleEnvironmentMNIST`` / ``RotatedMNIST``): the 70,000
images of the train and test files are concatenated, shuffled with a fixed seed, and
environment i (angle 0, 15, 30, 45, 60, 75 degrees) gets every 6th image starting at i,
rotated once at construction (bilinear, zero fill). Images stay in memory as uint8; the
hparam ``n_per_env`` keeps only the first N images of every environment (fast tests).

Domain-generalisation protocol (DomainBed's; docs/rotated_fmnist.md has the measured table):

- Splits. ``--test_envs`` are held out entirely. ``harness.loop.holdout_splits`` splits every
  environment into 'in' (80%) and 'out' (20%, ``--holdout_fraction``) with ``--trial_seed``;
  training reads only the training domains' 'in' splits, model selection by training-domain
  validation reads their 'out' splits, the held-out domain is only evaluated.
- Backbone. DomainBed's ``MNIST_CNN`` (harness/backbones/domainbed_mnist.py, 128 features) by
  default; lr 1e-3, batch 64 per domain, no weight decay, no augmentation, as DomainBed's RotatedMNIST.
- Non-episodic algorithms (ERM, CORAL, IRM, ...): a step is one minibatch of ``batch_size``
  images from each training domain's 'in' split; evaluated with their own classifier, trained
  on all of it.
- Episodic algorithms (SparseShared, ProtoNet, MultiTask, R2D2, MetaOptNet): a step is a batch of
  ``tasks_per_batch`` tasks from ``harness.datasets.tasks.ClassTaskSampler`` over the training
  domains' 'in' splits. Each task picks ONE training domain uniformly at random, ``n_way`` (5) of
  its 10 classes at random, and ``support // n_way`` support plus ``query // n_way`` query images
  per class from that domain (with replacement); labels are renumbered 0..n_way-1. Tasks are
  classes within a domain, never mixed across domains, never from a held-out domain.
- The episodic evaluation head. Episodic algorithms have no 10-class classifier, so at every
  checkpoint ``harness.evaluation.eval_predictor`` fits one on frozen features with the algorithm's
  own ``adapt`` (SparseShared: its sparse solver with the sparsity penalty only; ProtoNet: class
  means; MultiTask: unrolled gradient descent; hparam ``eval_head``) on ``eval_n_fit = 2000``
  points drawn uniformly, without replacement, from the union of the training domains' 'in'
  splits (all 10 classes, not stratified by class or domain; the same indices at every checkpoint
  of a run, seeded by ``--seed``). That head then scores every split, held-out domain included. The full data has
  ~46,700 training-domain 'in' points, so the head sees ~4% of them; what fitting it on all of
  them changes is measured in docs/rotated_fmnist.md (benchmarks/refit_head.py).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Sequence

import torch

from harness.datasets.base import MultiEnvDataset, TensorEnv
from harness.errors import UserError
from harness.hparams import HP, at_least, int_pow2, log_uniform
from harness.registry import DATASETS
from harness.utils import generator

FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/share/fashion-mnist")
IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}  # IDX is big-endian


def read_idx(path: str | Path) -> torch.Tensor:
    """An IDX file (LeCun's MNIST format; gzipped if the name ends in .gz) as a tensor.

    Header: two zero bytes, a dtype byte (0x08 = uint8), the number of dims, then each dim as
    a big-endian uint32 (magic 2051 = images, 2049 = labels for uint8 3-d / 1-d data).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    import numpy as np

    dtype = np.dtype(IDX_DTYPES[data[2]])
    n = int(np.prod(dims, dtype=np.int64))
    body = memoryview(data)[4 + 4 * ndim :]
    if len(body) != n * dtype.itemsize:
        raise UserError(f"{path}: IDX header says shape {dims} ({n * dtype.itemsize} bytes) but the file holds {len(body)}")
    t = torch.from_numpy(np.frombuffer(body, dtype=dtype).astype(dtype.newbyteorder("=")))
    return t.reshape(dims)


def find_fmnist_dir(data_dir: str | None) -> Path:
    """The first directory holding all four Fashion-MNIST IDX files (plain or .gz)."""
    system = os.environ.get("HARNESS_FMNIST_DIRS")  # os.pathsep-separated; replaces SYSTEM_DIRS when set
    system_dirs = [d for d in system.split(os.pathsep) if d] if system is not None else list(SYSTEM_DIRS)
    candidates = ([Path(data_dir).expanduser() / "FashionMNIST" / "raw"] if data_dir else []) + \
                 [Path(d) for d in system_dirs]
    return find_idx_dir(candidates, f"Fashion-MNIST not found: expected {candidates[0]}/train-images-idx3-ubyte[.gz] "
                        f"(and the other 3 IDX files) or {SYSTEM_DIRS[0]}; get it with: apt-get install "
                        f"dataset-fashion-mnist, or python -m harness.download FashionMNIST --data_dir {data_dir or 'DIR'}")


def find_idx_dir(candidates: Sequence[Path], missing: str) -> Path:
    """The first of ``candidates`` holding the four MNIST-format IDX files (``FMNIST_FILES``, plain or .gz);
    none: a one-line UserError ``missing``. MNIST and Fashion-MNIST use the same four file names."""
    for d in candidates:
        if all(_idx_path(d, f) is not None for f in FMNIST_FILES.values()):
            return d
    raise UserError(missing)


def _idx_path(d: Path, name: str) -> Path | None:
    for cand in (d / name, d / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def load_idx_dir(d: Path, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (uint8 N x 28 x 28) and labels of an MNIST-format folder ``d``: the train file then the
    test file (70,000 for MNIST and Fashion-MNIST), as DomainBed's ``MultipleEnvironmentMNIST`` concatenates them."""
    arrays = {k: read_idx(_idx_path(d, f)) for k, f in FMNIST_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.dim() != 3 or y.dim() != 1 or len(x) != len(y):
            raise UserError(f"{what} files in {d} disagree: {split} images {tuple(x.shape)}, labels {tuple(y.shape)}")
    x = torch.cat([arrays["train_images"], arrays["test_images"]])
    y = torch.cat([arrays["train_labels"], arrays["test_labels"]]).long()
    return x, y


def load_fashion_mnist(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """All 70,000 images (uint8 N x 28 x 28) and labels: the train file then the test file."""
    return load_idx_dir(find_fmnist_dir(data_dir), "Fashion-MNIST")


def environment_slices(x: torch.Tensor, y: torch.Tensor, n_envs: int, key: str,
                       data_seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """DomainBed's ``MultipleEnvironmentMNIST`` split (arXiv 2007.01434): shuffle all images once with a fixed
    seed (``generator(key, data_seed)``), then environment i takes every ``n_envs``-th image starting at i."""
    perm = torch.randperm(len(x), generator=generator(key, data_seed))
    x, y = x[perm], y[perm]
    return [(x[i::n_envs], y[i::n_envs]) for i in range(n_envs)]


def rotated_environments(x: torch.Tensor, y: torch.Tensor, angles: Sequence[float], key: str,
                         hparams: dict) -> list[TensorEnv]:
    """DomainBed's RotatedMNIST construction: one environment per angle (``environment_slices``), its first
    ``n_per_env`` images (all when unset) rotated once (bilinear, zero fill), kept as uint8."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import rotate

    n_per_env = hparams["n_per_env"]
    envs = []
    for angle, (xi, yi) in zip(angles, environment_slices(x, y, len(angles), key, hparams["data_seed"])):
        if n_per_env:
            xi, yi = xi[: int(n_per_env)], yi[: int(n_per_env)]
        xi = rotate(xi.unsqueeze(1), float(angle), interpolation=InterpolationMode.BILINEAR, fill=[0.0])
        envs.append(TensorEnv(xi.contiguous(), yi))
    return envs


@DATASETS.register("RotatedFashionMNIST")
class RotatedFashionMNIST(MultiEnvDataset):
    """Fashion-MNIST rotated by 0-75 degrees, one environment per angle (DomainBed's RotatedMNIST protocol,
    Gulrajani & Lopez-Paz, arXiv 2007.01434; the module docstring describes how training tasks are drawn
    for episodic algorithms and how their evaluation head is fitted). Default network: DomainBed's MNIST_CNN."""

    ENVIRONMENTS = ["0", "15", "30", "45", "60", "75"]
    ANGLES = (0, 15, 30, 45, 60, 75)
    INPUT_SHAPE = (1, 28, 28)
    NUM_CLASSES = 10
    N_STEPS = 5000
    CHECKPOINT_FREQ = 100
    # DomainBed's small-image settings (RotatedMNIST): lr 1e-3, batch 64 per env, no weight decay, and its
    # network MNIST_CNN (harness/backbones/domainbed_mnist.py; 128 features). docs/rotated_fmnist.md
    HPARAMS = {"backbone": HP("MNIST_CNN"), "feature_dim": HP(128), "lr": HP(1e-3, log_uniform(-4.5, -3.5)),
               "batch_size": HP(64, int_pow2(3, 9)), "weight_decay": HP(0.0),
               "n_per_env": HP(None, domain=at_least(1)), "data_seed": HP(0, domain=at_least(0))}

    KEY = "RotatedFashionMNIST"  # the seed key of the shuffle (subclasses on other files set their own)

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        x, y = self.load(data_dir)
        self.datasets = rotated_environments(x, y, self.ANGLES, self.KEY, self.hparams)

    @staticmethod
    def load(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The 70,000 images (uint8 N x 28 x 28) and class labels the environments are made of."""
        return load_fashion_mnist(data_dir)
