"""DomainBed's image benchmarks: PACS, VLCS, OfficeHome, TerraIncognita, DomainNet.

Layout read (what DomainBed's ``scripts/download.py`` leaves, and what
``python -m harness.download NAME --data_dir DIR`` produces)::

    <data_dir>/PACS/{art_painting,cartoon,photo,sketch}/<class>/<image>
    <data_dir>/VLCS/{Caltech101,LabelMe,SUN09,VOC2007}/<class>/<image>
    <data_dir>/office_home/{Art,Clipart,Product,Real World}/<class>/<image>
    <data_dir>/terra_incognita/{location_100,location_38,location_43,location_46}/<class>/<image>
    <data_dir>/domain_net/{clipart,infograph,painting,quickdraw,real,sketch}/<class>/<image>

Environments are DomainBed's, in DomainBed's order (its sorted domain folders); every domain
must hold the same class folders, and class indices are the sorted class names (as
torchvision's ``ImageFolder``). Images are decoded lazily from the files: an environment is
a list of (path, label) and ``batch(indices)`` decodes only those images.

Transforms are DomainBed's: ``Resize((224, 224))``, ``ToTensor``, ImageNet normalisation;
training environments (not in ``test_envs``) use its augmentation instead when the hparam
``data_augmentation`` is true (default): ``RandomResizedCrop(224, scale=(0.7, 1.0))``,
``RandomHorizontalFlip``, ``ColorJitter(0.3, 0.3, 0.3, 0.3)``, ``RandomGrayscale``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import torch

from harness.datasets.base import EnvDataset, MultiEnvDataset
from harness.errors import UserError
from harness.hparams import HP, int_pow2, log_uniform
from harness.registry import DATASETS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))


def load_rgb(path: str):
    """Open an image file as RGB (PIL), the way torchvision's ``default_loader`` does."""
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def domainbed_transforms(augment: bool, size: int = 224):
    """DomainBed's evaluation transform, or its training augmentation when ``augment``."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if augment:
        return T.Compose([T.RandomResizedCrop(size, scale=(0.7, 1.0)), T.RandomHorizontalFlip(),
                          T.ColorJitter(0.3, 0.3, 0.3, 0.3), T.RandomGrayscale(), *norm])
    return T.Compose([T.Resize((size, size)), *norm])


class ImageListEnv(EnvDataset):
    """An environment over image files: ``paths[i]`` with label ``y[i]``, decoded on access.

    ``transform`` maps a PIL image to a tensor. ``batch`` decodes the asked indices with a
    few threads (PIL releases the GIL while decoding).
    """

    def __init__(self, paths: Sequence[str], y: torch.Tensor, transform: Callable, augmented: bool = False):
        assert len(paths) == len(y)
        self.paths = list(paths)
        self.y = torch.as_tensor(y).long()
        self.transform = transform
        self.augmented = augmented  # whether ``transform`` is a random augmentation

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        try:
            img = load_rgb(path)
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e}") from None
        return self.transform(img)

    def __getitem__(self, i: int):
        return self._load(int(i)), self.y[int(i)]

    def batch(self, indices: torch.Tensor):
        idx = [int(i) for i in torch.as_tensor(indices).flatten()]
        if len(idx) > 1 and _DECODE_THREADS > 1:
            with ThreadPoolExecutor(_DECODE_THREADS) as pool:
                xs = list(pool.map(self._load, idx))
        else:
            xs = [self._load(i) for i in idx]
        if not xs:
            return torch.empty(0), self.y[:0]
        return torch.stack(xs), self.y[torch.as_tensor(idx, dtype=torch.long)]

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    def subset(self, indices: torch.Tensor) -> "ImageListEnv":
        indices = torch.as_tensor(indices, dtype=torch.long)
        return ImageListEnv([self.paths[int(i)] for i in indices], self.y[indices], self.transform, self.augmented)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def scan_class_folders(domain_dir: Path, what: str) -> dict[str, list[str]]:
    """``{class: sorted image paths}`` of ``domain_dir/<class>/<image>``; UserError if it is not so."""
    classes = _subdirs(domain_dir)
    if not classes:
        raise UserError(f"{what}: {domain_dir} has no class folders (expected {domain_dir}/<class>/<image>)")
    out = {}
    for c in classes:
        files = sorted(os.path.join(domain_dir, c, e.name) for e in os.scandir(domain_dir / c)
                       if e.is_file() and _is_image(e.name))
        if not files:
            raise UserError(f"{what}: class folder {domain_dir / c} holds no images ({', '.join(IMG_EXTENSIONS)})")
        out[c] = files
    return out


def _describe_diff(a: Sequence[str], b: Sequence[str], limit: int = 5) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))

    def short(xs):
        return ", ".join(xs[:limit]) + (f" (+{len(xs) - limit} more)" if len(xs) > limit else "")

    parts = []
    if only_a:
        parts.append(f"missing {short(only_a)}")
    if only_b:
        parts.append(f"extra {short(only_b)}")
    return "; ".join(parts)


class DomainBedImageFolder(MultiEnvDataset):
    """Environments = domain folders of ``<data_dir>/<DIRNAME>``, each an ImageFolder of the same classes."""

    DIRNAME: str = ""
    DOMAINS: list[str] = []  # folder of each environment, in ENVIRONMENTS order
    DOMAIN_ALIASES: dict[str, tuple[str, ...]] = {}  # other folder names accepted for a domain
    DOWNLOAD_NAME: str = ""
    INPUT_SHAPE = (3, 224, 224)
    N_STEPS = 5000
    CHECKPOINT_FREQ = 300
    # DomainBed's image benchmarks (arXiv 2007.01434, its hparams_registry): ResNet-50, lr 5e-5, batch 32 per env
    HPARAMS = {"backbone": HP("resnet50"), "lr": HP(5e-5, log_uniform(-5, -3.5)), "batch_size": HP(32, int_pow2(3, 5)),
               "weight_decay": HP(0.0, log_uniform(-6, -2)), "data_augmentation": HP(True),
               "pretrained": HP(True), "freeze_bn": HP(True), "project": HP(False)}

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        name = type(self).__name__
        root = self.root(data_dir)
        domain_dirs = [self._domain_dir(root, d) for d in self.DOMAINS]
        per_domain = [scan_class_folders(d, name) for d in domain_dirs]
        self.classes = list(per_domain[0])
        for d, found in zip(domain_dirs[1:], per_domain[1:]):
            if list(found) != self.classes:
                raise UserError(f"{name}: class folders of {d} differ from those of {domain_dirs[0]} "
                                f"({_describe_diff(self.classes, list(found))})")
        self.NUM_CLASSES = len(self.classes)  # as DomainBed: the classes found (the class attribute: the published count)
        augment = bool(self.hparams["data_augmentation"])
        eval_tf, train_tf = domainbed_transforms(False), domainbed_transforms(True)
        for i, found in enumerate(per_domain):
            paths, ys = [], []
            for label, c in enumerate(self.classes):
                paths += found[c]
                ys += [label] * len(found[c])
            aug = augment and i not in self.test_envs
            self.datasets.append(ImageListEnv(paths, torch.tensor(ys), train_tf if aug else eval_tf, augmented=aug))

    @classmethod
    def root(cls, data_dir: str | None) -> Path:
        """``<data_dir>/<DIRNAME>``; a one-line UserError saying how to get it when absent."""
        how = f"python -m harness.download {cls.DOWNLOAD_NAME} --data_dir {data_dir or 'DIR'}"
        if not data_dir:
            raise UserError(f"{cls.__name__} reads <data_dir>/{cls.DIRNAME} but no --data_dir was given; get it with: {how}")
        root = Path(data_dir).expanduser() / cls.DIRNAME
        if not root.is_dir():
            raise UserError(f"{cls.__name__} not found: expected {root}/<domain>/<class>/<image>; get it with: {how}")
        return root

    @classmethod
    def _domain_dir(cls, root: Path, domain: str) -> Path:
        for cand in (domain, *cls.DOMAIN_ALIASES.get(domain, ())):
            if (root / cand).is_dir():
                return root / cand
        present = _subdirs(root)
        raise UserError(f"{cls.__name__}: domain folder {root / domain} is missing "
                        f"(expected {', '.join(cls.DOMAINS)}; found {', '.join(present) or 'nothing'})")


@DATASETS.register("PACS")
class PACS(DomainBedImageFolder):
    """PACS (Li et al., ICCV 2017): 7 classes, 9,991 images, domains art painting, cartoon, photo, sketch."""

    ENVIRONMENTS = ["A", "C", "P", "S"]
    DOMAINS = ["art_painting", "cartoon", "photo", "sketch"]
    DIRNAME = "PACS"
    DOWNLOAD_NAME = "PACS"
    NUM_CLASSES = 7


@DATASETS.register("VLCS")
class VLCS(DomainBedImageFolder):
    """VLCS (Fang et al., ICCV 2013): 5 classes, 10,729 images from Caltech101, LabelMe, SUN09, VOC2007."""

    ENVIRONMENTS = ["C", "L", "S", "V"]
    DOMAINS = ["Caltech101", "LabelMe", "SUN09", "VOC2007"]
    DIRNAME = "VLCS"
    DOWNLOAD_NAME = "VLCS"
    NUM_CLASSES = 5


@DATASETS.register("OfficeHome")
class OfficeHome(DomainBedImageFolder):
    """Office-Home (Venkateswara et al., CVPR 2017): 65 classes, 15,588 images; Art, Clipart, Product, Real World."""

    ENVIRONMENTS = ["A", "C", "P", "R"]
    DOMAINS = ["Art", "Clipart", "Product", "Real World"]
    DOMAIN_ALIASES = {"Real World": ("Real_World", "Real")}
    DIRNAME = "office_home"
    DOWNLOAD_NAME = "OfficeHome"
    NUM_CLASSES = 65


@DATASETS.register("TerraIncognita")
class TerraIncognita(DomainBedImageFolder):
    """Terra Incognita (Beery et al., ECCV 2018) as DomainBed: camera-trap locations 100, 38, 43, 46; 10 classes."""

    ENVIRONMENTS = ["L100", "L38", "L43", "L46"]
    DOMAINS = ["location_100", "location_38", "location_43", "location_46"]
    DIRNAME = "terra_incognita"
    DOWNLOAD_NAME = "TerraIncognita"
    NUM_CLASSES = 10


@DATASETS.register("DomainNet")
class DomainNet(DomainBedImageFolder):
    """DomainNet (Peng et al., ICCV 2019): 345 classes, ~586k images in six domains.

    DomainBed trains it longer: N_STEPS 15000, CHECKPOINT_FREQ 1000.
    """

    ENVIRONMENTS = ["clip", "info", "paint", "quick", "real", "sketch"]
    DOMAINS = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
    DIRNAME = "domain_net"
    DOWNLOAD_NAME = "DomainNet"
    NUM_CLASSES = 345
    N_STEPS = 15000
    CHECKPOINT_FREQ = 1000
