"""DomainBed's MNIST suites: RotatedMNIST, ColoredMNIST, and ColoredMNIST's construction on Fashion-MNIST.

Source: Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization" (DomainBed, arXiv 2007.01434),
``domainbed/datasets.py``, classes ``MultipleEnvironmentMNIST``, ``RotatedMNIST`` and ``ColoredMNIST``;
ColoredMNIST itself is Arjovsky et al.'s (IRM, arXiv 1907.02893, section 5.1), in DomainBed's three-
environment form.

Files. MNIST: torchvision's layout, ``<data_dir>/MNIST/raw/`` holding ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, plain or gzipped
(``python -m harness.download MNIST --data_dir DIR`` puts them there). Fashion-MNIST (ColoredFashionMNIST):
found exactly as RotatedFashionMNIST finds it (``<data_dir>/FashionMNIST/raw/``, then Debian's
``dataset-fashion-mnist`` under /usr/share/datasets/fashion-mnist; harness/datasets/rotated_fmnist.py).

Construction (all three): the 70,000 images of the train and test files are concatenated, shuffled once
with a fixed seed (hparam ``data_seed``, ``harness.utils.generator``), and environment i of E gets every
E-th image starting at i (``rotated_fmnist.environment_slices``). Then

- RotatedMNIST: RotatedFashionMNIST's construction on MNIST; environments 0, 15, 30, 45, 60, 75 degrees,
  each rotated once (bilinear, zero fill); 10 classes, 1 x 28 x 28.
- ColoredMNIST, environments '+90%', '+80%', '-90%' (E = 3): the binary label is ``digit < 5``, flipped
  with probability 0.25; the colour is the label flipped with probability 0.1, 0.2, 0.9 in the three
  environments (so colour and label agree 90%, 80%, 10% of the time, while the digit's shape predicts the
  label 75% of the time everywhere); the image is stacked into 2 channels (2 x 28 x 28) and the channel of
  the other colour is zeroed (channel ``colour`` keeps the digit); x = pixels / 255.
- ColoredFashionMNIST: ColoredMNIST's construction on Fashion-MNIST, label = class index < 5 (t-shirt,
  trouser, pullover, dress, coat vs sandal, shirt, sneaker, bag, ankle boot).

DomainBed draws its shuffle and Bernoulli flips from torch's global generator; here every draw has its own
seeded generator (the dataset's name, ``data_seed``, the environment), drawn over the whole environment
before ``n_per_env`` keeps its first N images, so a smaller ``n_per_env`` gives a prefix of the same data.
ColoredMNIST's environments carry ``groups = 2 * label + colour`` (4 groups), so every split records
``env{i}_{in,out}_wg_acc`` (harness/evaluation.py) and collect_results prints worst-group tables.

Defaults are DomainBed's small-image ones (RotatedFashionMNIST's ``HPARAMS``): MNIST_CNN (it takes the 2
input channels), lr 1e-3, batch 64 per domain, no weight decay, 5000 steps, a checkpoint every 100.
How episodic algorithms are trained and evaluated is RotatedFashionMNIST's (docs/rotated_fmnist.md):
class tasks within one training domain (2-way here: ``n_way`` is capped by the 2 classes), and an
evaluation head fitted by the algorithm's ``adapt`` on training-domain 'in' points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from harness.datasets.base import MultiEnvDataset, TensorEnv
from harness.datasets.rotated_fmnist import (
    RotatedFashionMNIST,
    environment_slices,
    find_idx_dir,
    load_fashion_mnist,
    load_idx_dir,
)
from harness.registry import DATASETS
from harness.utils import generator

LABEL_NOISE = 0.25  # P(label != digit < 5), every environment (IRM section 5.1; DomainBed)
COLOUR_FLIP = {"+90%": 0.1, "+80%": 0.2, "-90%": 0.9}  # P(colour != label) per environment


def find_mnist_dir(data_dir: str | None) -> Path:
    """``<data_dir>/MNIST/raw`` if it holds the four MNIST IDX files (plain or .gz), else a one-line UserError."""
    where = Path(data_dir).expanduser() / "MNIST" / "raw" if data_dir else Path("DIR/MNIST/raw")
    return find_idx_dir([where] if data_dir else [],
                        f"MNIST not found: expected {where}/train-images-idx3-ubyte[.gz] (and the other 3 IDX files, "
                        f"torchvision's layout); get it with: python -m harness.download MNIST --data_dir "
                        f"{data_dir or 'DIR'}")


def load_mnist(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """All 70,000 MNIST images (uint8 N x 28 x 28) and digits: the train file then the test file."""
    return load_idx_dir(find_mnist_dir(data_dir), "MNIST")


def colored_environments(x: torch.Tensor, classes: torch.Tensor, flips: Sequence[float], key: str,
                         hparams: dict) -> list[TensorEnv]:
    """DomainBed's ``ColoredMNIST.color_dataset`` (arXiv 2007.01434; IRM, arXiv 1907.02893) on every
    environment of ``environment_slices``: label = (class < 5) xor Bernoulli(0.25), colour = label xor
    Bernoulli(flips[i]), 2-channel uint8 images with channel ``1 - colour`` zeroed, groups 2 * label + colour."""
    data_seed, n_per_env = hparams["data_seed"], hparams["n_per_env"]
    envs = []
    for i, (p, (xi, ci)) in enumerate(zip(flips, environment_slices(x, classes, len(flips), key, data_seed))):
        g = generator(key, data_seed, "colour", i)
        n = len(ci)
        label = (ci < 5).long() ^ (torch.rand(n, generator=g) < LABEL_NOISE).long()
        colour = label ^ (torch.rand(n, generator=g) < p).long()
        if n_per_env:
            xi, label, colour = xi[: int(n_per_env)], label[: int(n_per_env)], colour[: int(n_per_env)]
        images = torch.stack([xi, xi], dim=1)  # (n, 2, 28, 28) uint8; TensorEnv divides by 255
        images[torch.arange(len(images)), 1 - colour] = 0
        envs.append(TensorEnv(images, label, groups=2 * label + colour))
    return envs


@DATASETS.register("RotatedMNIST")
class RotatedMNIST(RotatedFashionMNIST):
    """DomainBed's RotatedMNIST (arXiv 2007.01434): MNIST rotated by 0-75 degrees, one environment per angle;
    RotatedFashionMNIST's construction, hparams and defaults (MNIST_CNN, 5000 steps) on MNIST's files."""

    KEY = "RotatedMNIST"

    @staticmethod
    def load(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        return load_mnist(data_dir)


@DATASETS.register("ColoredMNIST")
class ColoredMNIST(MultiEnvDataset):
    """DomainBed's ColoredMNIST (arXiv 2007.01434; the IRM paper's task, arXiv 1907.02893): binary digit < 5
    labels with 25% noise, a colour that agrees with the label 90%, 80%, 10% of the time in '+90%', '+80%',
    '-90%'; groups (label, colour) for worst-group accuracy. Default network: DomainBed's MNIST_CNN."""

    ENVIRONMENTS = list(COLOUR_FLIP)
    INPUT_SHAPE = (2, 28, 28)
    NUM_CLASSES = 2
    METRICS = ("wg_acc",)
    N_STEPS = RotatedFashionMNIST.N_STEPS
    CHECKPOINT_FREQ = RotatedFashionMNIST.CHECKPOINT_FREQ
    HPARAMS = dict(RotatedFashionMNIST.HPARAMS)  # DomainBed's small-image defaults: MNIST_CNN, lr 1e-3, batch 64
    KEY = "ColoredMNIST"  # the seed key of the shuffle and the flips

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        x, classes = self.load(data_dir)
        self.datasets = colored_environments(x, classes, list(COLOUR_FLIP.values()), self.KEY, self.hparams)

    @staticmethod
    def load(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        return load_mnist(data_dir)


@DATASETS.register("ColoredFashionMNIST")
class ColoredFashionMNIST(ColoredMNIST):
    """ColoredMNIST's construction (DomainBed, arXiv 2007.01434; IRM, arXiv 1907.02893) on Fashion-MNIST:
    label = class index < 5; files found as RotatedFashionMNIST finds them (Debian's dataset-fashion-mnist)."""

    KEY = "ColoredFashionMNIST"

    @staticmethod
    def load(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        return load_fashion_mnist(data_dir)
