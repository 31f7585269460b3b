"""Few-shot image benchmarks: miniImageNet and CIFAR-FS, in their common distributed layouts.

**MiniImageNet** (Vinyals et al. 2016; Ravi & Larochelle's split, 64/16/20 classes of 600
images), under ``<data_dir>/miniImageNet/``, in either layout (the first found wins):

1. images + split files (Ravi & Larochelle's csv)::

       miniImageNet/images/<filename>.jpg        e.g. n0153282900000005.jpg
       miniImageNet/{train,val,test}.csv          header "filename,label"; label = WordNet id

   Images are resized to 84x84 when read (the common preprocessing).
2. pickles (the "mini-imagenet-cache" files)::

       miniImageNet/mini-imagenet-cache-{train,val,test}.pkl
       each a dict: "image_data" uint8 (N, 84, 84, 3), "class_dict" {label: [indices]}

**CIFAR-FS** (Bertinetto et al., ICLR 2019; 64/16/20 CIFAR-100 classes of 600 images)::

       <data_dir>/cifar100/data/<class>/*.png      32x32 images
       <data_dir>/cifar100/splits/bertinetto/{train,val,test}.txt   one class name per line

Environments are the class splits ``["train", "val", "test"]``; labels inside each are
0..C-1 over the split's classes sorted by name. Only ``train`` is for training: the
constructor requires ``test_envs`` to contain 1 and 2 (``--test_envs 1 2``; the class
attribute ``TEST_ENV_SETS`` says so for sweeps), and raises a one-line error otherwise.
The accuracy train.py reports on envs 1 and 2 is meaningless (their classes are novel);
the metric is "fewshot": N-way K-shot episodes drawn from ``fewshot_env()`` (the test
split), settings in ``FEWSHOT`` (hparams ``k_shot``, 5 by default, and ``n_episodes``, 600).
Inputs are ImageNet-normalised; no augmentation.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import torch

from harness.datasets.base import EnvDataset, MultiEnvDataset, TensorEnv
from harness.datasets.domainbed_images import IMAGENET_MEAN, IMAGENET_STD, ImageListEnv, _is_image
from harness.errors import UserError
from harness.hparams import HP, at_least, int_pow2
from harness.registry import DATASETS
from harness.safe_pickle import ForeignPickle, SafeUnpickler
from harness.utils import dataset_path

SPLITS = ("train", "val", "test")


def _image_transform(size: int):
    from torchvision import transforms as T

    return T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _tensor_normalise():
    from torchvision import transforms as T

    return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)


class FewShotImageDataset(MultiEnvDataset):
    ENVIRONMENTS = list(SPLITS)
    METRICS = ("fewshot",)
    TEST_ENV_SETS = [[1, 2]]  # val and test hold novel classes: never trained on
    N_STEPS = 5000
    CHECKPOINT_FREQ = 500
    # train split only (--test_envs 1 2); k_shot, n_episodes: few-shot evaluation
    # (timm backbones train from scratch here, as few-shot benchmarks do: "pretrained": false)
    HPARAMS = {"backbone": HP("SmallCNN"), "feature_dim": HP(128), "batch_size": HP(64, int_pow2(4, 7)),
               "k_shot": HP(5, domain=at_least(1)), "n_episodes": HP(600, domain=at_least(1)), "pretrained": HP(False)}

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        name = type(self).__name__
        if not set(self.TEST_ENV_SETS[0]) <= set(self.test_envs) or 0 in self.test_envs:
            raise UserError(f"{name} trains on its 'train' class split only: pass --test_envs 1 2 "
                            f"(val and test hold novel classes, evaluated by few-shot episodes); got {self.test_envs}")
        self.FEWSHOT = {**type(self).FEWSHOT, "k_shot": int(self.hparams["k_shot"]),
                        "n_episodes": int(self.hparams["n_episodes"])}

    def fewshot_env(self) -> EnvDataset:
        return self.datasets[2]

    @classmethod
    def root(cls, data_dir: str | None) -> Path:
        """``<data_dir>/<DIRNAME>``; a one-line UserError saying how to get it when absent
        (also checked by ``sweep launch`` before any job starts)."""
        dirname, layout = cls.DIRNAME, cls.LAYOUT
        how = f"python -m harness.download {cls.__name__} --data_dir {data_dir or 'DIR'} --archive FILE"
        if not data_dir:
            raise UserError(f"{cls.__name__} reads <data_dir>/{dirname} but no --data_dir was given; "
                            f"unpack it with: {how}")
        root = Path(data_dir).expanduser() / dirname
        if not root.is_dir():
            raise UserError(f"{cls.__name__} not found: expected {root} ({layout}); unpack it with: {how}")
        return root


@DATASETS.register("MiniImageNet")
class MiniImageNet(FewShotImageDataset):
    """miniImageNet, Ravi & Larochelle's split: 64 train, 16 val, 20 test classes, 84x84 images."""

    INPUT_SHAPE = (3, 84, 84)
    NUM_CLASSES = 64
    DIRNAME = "miniImageNet"
    LAYOUT = "images/*.jpg with train.csv/val.csv/test.csv, or mini-imagenet-cache-{train,val,test}.pkl"

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        root = self.root(data_dir)
        if all((root / f"{s}.csv").is_file() for s in SPLITS) and (root / "images").is_dir():
            self.datasets = [self._from_csv(root, s) for s in SPLITS]
        elif all((root / f"mini-imagenet-cache-{s}.pkl").is_file() for s in SPLITS):
            self.datasets = [self._from_pickle(root / f"mini-imagenet-cache-{s}.pkl") for s in SPLITS]
        else:
            present = ", ".join(sorted(p.name for p in root.iterdir())[:8]) or "nothing"
            raise UserError(f"MiniImageNet: {root} has neither layout ({self.LAYOUT}); found {present}")
        self.NUM_CLASSES = int(self.datasets[0].labels.max()) + 1

    @staticmethod
    def _from_csv(root: Path, split: str) -> ImageListEnv:
        path = root / f"{split}.csv"
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or [c.strip() for c in rows[0][:2]] != ["filename", "label"]:
            raise UserError(f"MiniImageNet: {path} must start with the header 'filename,label'")
        rows = [r for r in rows[1:] if r]
        if not rows:
            raise UserError(f"MiniImageNet: {path} lists no images")
        classes = sorted({r[1] for r in rows})
        index = {c: i for i, c in enumerate(classes)}
        paths = [str(dataset_path(root / "images", r[0], path)) for r in rows]
        missing = [p for p in paths[:1] + paths[-1:] if not Path(p).is_file()]  # cheap spot check
        if missing:
            raise UserError(f"MiniImageNet: {path} lists {missing[0]}, which does not exist")
        return ImageListEnv(paths, torch.tensor([index[r[1]] for r in rows]), _image_transform(84))

    @staticmethod
    def _from_pickle(path: Path) -> TensorEnv:
        import numpy as np

        try:
            with open(path, "rb") as f:
                data = SafeUnpickler(f, encoding="latin1").load()
        except ForeignPickle as e:
            raise UserError(f"MiniImageNet: {path} refers to {e}, which a mini-imagenet-cache pickle never "
                            "does; refusing to load it (pickles can run code)") from None
        except Exception as e:  # a truncated or foreign file
            raise UserError(f"MiniImageNet: cannot read {path}: {type(e).__name__}: {e}") from None
        if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
            raise UserError(f"MiniImageNet: {path} is not a mini-imagenet-cache pickle (dict with image_data, class_dict)")
        images = np.asarray(data["image_data"])
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise UserError(f"MiniImageNet: {path} image_data must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        y = torch.full((len(images),), -1, dtype=torch.long)
        for i, c in enumerate(sorted(data["class_dict"])):
            y[torch.as_tensor(list(data["class_dict"][c]), dtype=torch.long)] = i
        if (y < 0).any():
            raise UserError(f"MiniImageNet: {path} class_dict leaves {(y < 0).sum().item()} images without a class")
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        return TensorEnv(x, y, transform=_tensor_normalise())


@DATASETS.register("CIFARFS")
class CIFARFS(FewShotImageDataset):
    """CIFAR-FS (Bertinetto et al., arXiv 1805.08136): CIFAR-100 split 64/16/20 classes, 32x32 images."""

    INPUT_SHAPE = (3, 32, 32)
    NUM_CLASSES = 64
    DIRNAME = "cifar100"
    LAYOUT = "data/<class>/*.png and splits/bertinetto/{train,val,test}.txt"

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        root = self.root(data_dir)
        tf = _image_transform(32)
        for s in SPLITS:
            split_file = root / "splits" / "bertinetto" / f"{s}.txt"
            if not split_file.is_file():
                raise UserError(f"CIFARFS: split file {split_file} is missing (layout: {root}/{self.LAYOUT})")
            classes = sorted({line.strip() for line in split_file.read_text().splitlines() if line.strip()})
            if not classes:
                raise UserError(f"CIFARFS: {split_file} lists no classes")
            paths, ys = [], []
            for label, c in enumerate(classes):
                d = root / "data" / c
                if not d.is_dir():
                    raise UserError(f"CIFARFS: class folder {d} (listed in {split_file}) is missing")
                files = sorted(str(p) for p in d.iterdir() if p.is_file() and _is_image(p.name))
                if not files:
                    raise UserError(f"CIFARFS: class folder {d} holds no images")
                paths += files
                ys += [label] * len(files)
            self.datasets.append(ImageListEnv(paths, torch.tensor(ys), tf))
        self.NUM_CLASSES = int(self.datasets[0].labels.max()) + 1
