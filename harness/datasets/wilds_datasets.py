"""WILDS datasets: Waterbirds, Camelyon17, CivilComments, read from the files WILDS v1.0 unpacks.

Layout read (what ``wilds.get_dataset(NAME, root_dir=DIR, download=True)`` leaves)::

    <data_dir>/waterbirds_v1.0/{RELEASE_v1.0.txt, metadata.csv, <img_filename>...}
        metadata.csv: img_id,img_filename,y,split,place,place_filename   (split 0/1/2 = train/val/test)
    <data_dir>/camelyon17_v1.0/{RELEASE_v1.0.txt, metadata.csv, patches/...}
        metadata.csv: <index>,patient,node,x_coord,y_coord,tumor,slide,center,split
        patches/patient_{patient:03}_node_{node}/patch_patient_{patient:03}_node_{node}_x_{x}_y_{y}.png
    <data_dir>/civilcomments_v1.0/{RELEASE_v1.0.txt, all_data_with_identities.csv}
        all_data_with_identities.csv: <index>,id,comment_text,split (train/val/test),..., toxicity, the
        identity columns (male, female, LGBTQ, christian, muslim, other_religions, black, white,
        identity_any, ...) and toxicity subtypes, as fractions of raters in [0, 1]

The files are read directly with pandas and PIL, not through the ``wilds`` package: importing
``wilds`` starts a thread that asks PyPI for its latest version (network at import), its
CivilComments loader writes integers into the string ``split`` column, which pandas >= 3
rejects, and its ``eval`` needs ``torch_scatter``. The metrics are WILDS' own, computed here
and tested against ``wilds``' ``eval`` on the same predictions (tests/test_wilds_protocol.py).

Protocol: WILDS' (docs/design.md, "Evaluation protocols"). Training sees WILDS' ``train`` split
only; the evaluation splits are WILDS' official ones, whole, in WILDS' row order (no random
holdout); the metrics are named and computed as ``wilds``' ``eval`` computes them; models are
selected on the OOD validation split (``SELECT_ON``).

- **Waterbirds**: environments = splits ``train``, ``val``, ``test`` (held out: ``[1, 2]``).
  Reported: ``adj_acc_avg`` (group accuracies weighted by WILDS' fixed training-group counts) and
  ``acc_wg`` over the four (label, background) groups; selection on ``val/acc_wg``.
- **CivilComments**: environments = splits ``train``, ``val``, ``test``. Reported: ``acc_avg`` and
  ``acc_wg``, the minimum over WILDS' 16 overlapping groups (identity k mentioned, label);
  comments without an identity count in ``acc_avg`` only. Selection on ``val/acc_wg``.
- **Camelyon17**: environments = hospitals 0..4 (the training domains are 0, 3, 4; held out:
  ``[1, 2]``). Splits: ``train`` (rows of hospitals 0, 3, 4 whose ``split`` is 0), ``id_val``
  (their rows whose ``split`` is 1: never trained on), ``val`` (hospital 1), ``test`` (hospital 2).
  Reported: ``acc_avg`` and ``acc_wg`` (worst slide); selection on ``val/acc_avg``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from harness.datasets.base import EnvDataset, MultiEnvDataset, OfficialSplits
from harness.datasets.domainbed_images import IMAGENET_MEAN, IMAGENET_STD, ImageListEnv
from harness.errors import UserError
from harness.hparams import HP, in_range, int_pow2, log_uniform, one_of
from harness.registry import DATASETS
from harness.utils import dataset_path

VERSION = "1.0"


def wilds_root(cls_name: str, wilds_name: str, data_dir: str | None, required: str) -> Path:
    """``<data_dir>/<wilds_name>_v1.0`` holding ``required``; else a one-line UserError saying how to get it."""
    how = _how_to_get(cls_name, wilds_name, data_dir)
    folder = f"{wilds_name}_v{VERSION}"
    if not data_dir:
        raise UserError(f"{cls_name} reads <data_dir>/{folder}/{required} but no --data_dir was given; {how}")
    root = Path(data_dir).expanduser() / folder
    if not (root / required).is_file():
        raise UserError(f"{cls_name} not found: expected {root / required} (the WILDS v{VERSION} layout); {how}")
    return root


def _how_to_get(cls_name: str, wilds_name: str, data_dir: str | None) -> str:
    target = data_dir or "DIR"
    try:
        from harness.download import NAMES  # the harness downloader, where it knows this dataset
    except Exception:  # noqa: BLE001 - only decides which instruction to print
        NAMES = []
    if cls_name in NAMES:
        return f"get it with: python -m harness.download {cls_name} --data_dir {target}"
    return (f"get it with WILDS' downloader: pip install wilds && python -c \"import wilds; "
            f"wilds.get_dataset('{wilds_name}', root_dir='{target}', download=True)\" "
            f"(or unpack the archive from https://wilds.stanford.edu/downloads into {target})")


def _long(column) -> torch.Tensor:
    """A pandas column as a (writable) int64 tensor; a UserError when it holds non-integers."""
    try:
        return torch.tensor(column.to_numpy(dtype="int64"))
    except (ValueError, TypeError) as e:
        raise UserError(f"column '{column.name}' must hold integers: {e}") from None


def read_csv(path: Path, **kwargs):
    import pandas as pd

    try:
        return pd.read_csv(path, **kwargs)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0]}") from None


def require_columns(df, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(map(str, df.columns))})")


def image_transforms(augment: bool, size: int, resize_crop: bool):
    """WILDS/GroupDRO transforms: eval resizes (to size*256/224 then centre-crops with ``resize_crop``),
    training augmentation is ``RandomResizedCrop(size, scale=(0.7, 1))`` and a horizontal flip."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if augment:
        return T.Compose([T.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.75, 4 / 3)),
                          T.RandomHorizontalFlip(), *norm])
    if resize_crop:
        big = int(size * 256 / 224)
        return T.Compose([T.Resize((big, big)), T.CenterCrop(size), *norm])
    return T.Compose([T.Resize((size, size)), *norm])


class GroupedImageEnv(ImageListEnv):
    """Image files with labels and group ids (decoded lazily, as DomainBed's image datasets)."""

    def __init__(self, paths: Sequence[str], y: torch.Tensor, groups: torch.Tensor, transform: Callable,
                 augmented: bool = False):
        super().__init__(paths, y, transform, augmented)
        self.groups = torch.as_tensor(groups).long()

    def subset(self, indices: torch.Tensor) -> "GroupedImageEnv":
        indices = torch.as_tensor(indices, dtype=torch.long)
        return GroupedImageEnv([self.paths[int(i)] for i in indices], self.y[indices], self.groups[indices],
                               self.transform, self.augmented)


# The image datasets: an ImageNet-pretrained ResNet-50 with DomainBed's Adam settings, BatchNorm frozen as
# DomainBed does; "pretrained": true (hub), false, or a local weight file or folder
RESNET50_HPARAMS = {"backbone": HP("resnet50"), "pretrained": HP(True), "project": HP(False), "freeze_bn": HP(True),
                    "lr": HP(5e-5, log_uniform(-5, -3.5)), "data_augmentation": HP(False)}


class WildsDataset(MultiEnvDataset):
    """Common declarations of the WILDS datasets: WILDS' official splits and metrics."""

    METRICS = ("wg_acc",)
    TEST_ENV_SETS = [[1, 2]]
    WILDS_NAME = ""
    REQUIRED = "metadata.csv"  # the file whose presence says the dataset is there

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        official = self.TEST_ENV_SETS[0]
        if self.test_envs and sorted(self.test_envs) != official:
            names = ", ".join(self.ENVIRONMENTS[i] for i in official)
            raise UserError(f"{type(self).__name__} follows WILDS' official splits: its held-out environments are "
                            f"--test_envs {' '.join(map(str, official))} ({names}), got {self.test_envs}")
        self.test_envs = list(official)

    @classmethod
    def root(cls, data_dir: str | None) -> Path:
        """``<data_dir>/<WILDS_NAME>_v1.0`` (checked by ``sweep launch`` before any job starts)."""
        return wilds_root(cls.__name__, cls.WILDS_NAME, data_dir, cls.REQUIRED)

    def official_splits(self) -> OfficialSplits:
        """Environments are WILDS' splits: train on ``train``, evaluate ``val`` and ``test`` whole."""
        return OfficialSplits([self.datasets[0]], {"val": self.datasets[1], "test": self.datasets[2]})


def group_accuracies(correct: torch.Tensor, g: torch.Tensor, n_groups: int) -> tuple[list[float], torch.Tensor]:
    """(accuracy, count) per group 0..n_groups-1, as ``wilds.common.utils.avg_over_groups`` computes them:
    in float32, and 0 for an empty group (a scatter-mean over no elements)."""
    counts = torch.bincount(g, minlength=n_groups)[:n_groups].float()
    sums = torch.zeros(n_groups).index_add_(0, g, correct.float())
    return (sums / counts.clamp(min=1)).tolist(), counts


def mean_accuracy(correct: torch.Tensor) -> float:
    """WILDS' ``acc_avg``: the float32 mean of the 0/1 correctness vector."""
    return correct.float().mean().item()


def worst(accs: list[float], counts: torch.Tensor) -> float:
    """WILDS' ``acc_wg`` of ``standard_group_eval``: the minimum over groups that have members."""
    return min(a for a, n in zip(accs, counts.tolist()) if n > 0)


@DATASETS.register("Waterbirds")
class Waterbirds(WildsDataset):
    """Waterbirds (Sagawa et al., ICLR 2020; WILDS v1.0): is the bird a landbird (0) or a waterbird (1)?

    Birds from CUB pasted on land or water backgrounds (Places); in training, 95% of birds stand
    on the background of their type. Groups = 2 * y + place: 0 landbird/land, 1 landbird/water,
    2 waterbird/land, 3 waterbird/water. Environments: WILDS' splits train, val, test.
    """

    HPARAMS = {**RESNET50_HPARAMS, "weight_decay": HP(1e-4, log_uniform(-6, -2)), "batch_size": HP(32, int_pow2(3, 6)),
               "image_size": HP(224, domain=in_range(8, 4096))}

    ENVIRONMENTS = ["train", "val", "test"]
    WILDS_NAME = "waterbirds"
    OFFICIAL_METRICS = ("adj_acc_avg", "acc_wg")
    SELECT_ON = "val/acc_wg"
    # WILDS' adj_acc_avg weights each (label, background) group by its size in the full training split
    # (3498, 184, 56, 1057, fixed in wilds' waterbirds_dataset.py); groups = 2 * y + place
    TRAIN_GROUP_COUNTS = (3498, 184, 56, 1057)
    NUM_CLASSES = 2
    N_STEPS = 5000
    CHECKPOINT_FREQ = 500

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        root = self.root(data_dir)
        df = read_csv(root / "metadata.csv")
        require_columns(df, ["img_filename", "y", "split", "place"], root / "metadata.csv")
        size = int(self.hparams["image_size"])
        self.INPUT_SHAPE = (3, size, size)
        augment = bool(self.hparams["data_augmentation"])
        eval_tf, train_tf = image_transforms(False, size, True), image_transforms(True, size, True)
        y = _long(df["y"])
        groups = 2 * y + _long(df["place"])
        split = _long(df["split"])
        paths = [str(dataset_path(root, f, root / "metadata.csv")) for f in df["img_filename"].astype(str)]
        for e in range(len(self.ENVIRONMENTS)):
            idx = (split == e).nonzero().flatten()
            if len(idx) == 0:
                raise UserError(f"{root / 'metadata.csv'} has no rows of split {e} ({self.ENVIRONMENTS[e]})")
            aug = augment and e not in self.test_envs
            self.datasets.append(GroupedImageEnv([paths[int(i)] for i in idx], y[idx], groups[idx],
                                                 train_tf if aug else eval_tf, augmented=aug))

    def split_metrics(self, split: str, y_pred: torch.Tensor, env: EnvDataset) -> dict[str, float]:
        accs, counts = group_accuracies(y_pred.cpu() == env.y, env.groups, 4)
        adjusted = sum(a * n for a, n in zip(accs, self.TRAIN_GROUP_COUNTS)) / sum(self.TRAIN_GROUP_COUNTS)
        return {"adj_acc_avg": adjusted, "acc_wg": worst(accs, counts)}


@DATASETS.register("Camelyon17")
class Camelyon17(WildsDataset):
    """Camelyon17-WILDS (Bandi et al. 2018; Koh et al., ICML 2021): does the centre of a 96x96
    lymph-node patch hold tumour tissue? One environment per hospital (centre 0..4); groups are slides.
    """

    HPARAMS = {**RESNET50_HPARAMS, "weight_decay": HP(0.0, log_uniform(-6, -2)), "batch_size": HP(32, int_pow2(3, 5)),
               "image_size": HP(96, domain=in_range(8, 4096))}

    ENVIRONMENTS = ["hospital0", "hospital1", "hospital2", "hospital3", "hospital4"]
    WILDS_NAME = "camelyon17"
    OFFICIAL_METRICS = ("acc_avg", "acc_wg")
    SELECT_ON = "val/acc_avg"
    NUM_CLASSES = 2
    N_STEPS = 5000
    CHECKPOINT_FREQ = 500

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        root = self.root(data_dir)
        df = read_csv(root / "metadata.csv", index_col=0)
        cols = ["patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"]
        require_columns(df, cols, root / "metadata.csv")
        size = int(self.hparams["image_size"])
        self.INPUT_SHAPE = (3, size, size)
        augment = bool(self.hparams["data_augmentation"])
        eval_tf, train_tf = image_transforms(False, size, False), image_transforms(True, size, False)
        paths = [str(root / "patches" / f"patient_{p:03}_node_{n}" / f"patch_patient_{p:03}_node_{n}_x_{x}_y_{yy}.png")
                 for p, n, x, yy in zip(df["patient"].astype(int), df["node"].astype(int),
                                        df["x_coord"].astype(int), df["y_coord"].astype(int))]
        y = _long(df["tumor"])
        slide = _long(df["slide"])
        center = _long(df["center"])
        split = _long(df["split"])
        self.n_slides = int(slide.max()) + 1 if len(slide) else 0

        def env(mask: torch.Tensor, augmented: bool = False) -> GroupedImageEnv:
            idx = mask.nonzero().flatten()  # WILDS' row order
            return GroupedImageEnv([paths[int(i)] for i in idx], y[idx], slide[idx],
                                   train_tf if augmented else eval_tf, augmented=augmented)

        for e in range(len(self.ENVIRONMENTS)):
            if not (center == e).any():
                raise UserError(f"{root / 'metadata.csv'} has no patches of centre {e}")
            self.datasets.append(env(center == e, augment and e not in self.test_envs))
        train_centres = ~((center == 1) | (center == 2))
        self._official = OfficialSplits(
            [env((center == e) & (split == 0), augment) for e in range(5) if e not in (1, 2)],
            {"id_val": env(train_centres & (split == 1)), "val": env(center == 1), "test": env(center == 2)})
        for name, part in [("train", e) for e in self._official.train_envs] + list(self._official.eval_splits.items()):
            if len(part) == 0:
                raise UserError(f"{root / 'metadata.csv'} has no rows of WILDS' split '{name}' (the 'split' "
                                "column is 0 for train and 1 for id_val rows of centres 0, 3 and 4)")

    def official_splits(self) -> OfficialSplits:
        """WILDS' splits: train and id_val (the ``split`` column) of hospitals 0, 3, 4; val = 1; test = 2."""
        return self._official

    def split_metrics(self, split: str, y_pred: torch.Tensor, env: EnvDataset) -> dict[str, float]:
        correct = y_pred.cpu() == env.y
        accs, counts = group_accuracies(correct, env.groups, self.n_slides)  # WILDS' eval grouper: slides
        return {"acc_avg": mean_accuracy(correct), "acc_wg": worst(accs, counts)}


# --- text -------------------------------------------------------------------------------------
IDENTITIES = ["male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white"]


class TextEnv(EnvDataset):
    """Comments with labels and groups; ``batch`` tokenises (padded to ``max_length``) into
    a LongTensor (N, 2, max_length) of token ids and attention masks.

    Tokenising per batch keeps memory flat on the 450k comments of CivilComments (stored ids
    would take gigabytes) and costs little next to the encoder's forward pass.
    ``identities`` (N, 8) holds the identity indicators (>= 0.5) for WILDS' overlapping groups.
    """

    def __init__(self, texts: Sequence[str], y: torch.Tensor, groups: torch.Tensor, identities: torch.Tensor,
                 tokenizer, max_length: int):
        self.texts = list(texts)
        self.y = torch.as_tensor(y).long()
        self.groups = torch.as_tensor(groups).long()
        self.identities = identities
        self.tokenizer, self.max_length = tokenizer, max_length

    def __len__(self) -> int:
        return len(self.texts)

    def encode(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).long()

    def __getitem__(self, i: int):
        return self.encode([self.texts[int(i)]])[0], self.y[int(i)]

    def batch(self, indices: torch.Tensor):
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        if len(idx) == 0:
            return torch.zeros(0, 2, self.max_length, dtype=torch.long), self.y[:0]
        return self.encode([self.texts[int(i)] for i in idx]), self.y[idx]

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    def subset(self, indices: torch.Tensor) -> "TextEnv":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TextEnv([self.texts[int(i)] for i in idx], self.y[idx], self.groups[idx], self.identities[idx],
                       self.tokenizer, self.max_length)


@DATASETS.register("CivilComments")
class CivilComments(WildsDataset):
    """CivilComments-WILDS (Borkan et al. 2019; Koh et al., ICML 2021): is a comment toxic?

    y = 1[toxicity >= 0.5]. Identities (>= 0.5): male, female, LGBTQ, christian, muslim,
    other_religions, black, white, in WILDS' order. WILDS' groups (identity k mentioned) x label
    overlap; ``acc_wg`` is the minimum over those 16 (``split_metrics``). ``groups`` is a partition
    for group-aware training: ``2 * k + y`` with k the first identity the comment mentions, or k = 8
    (groups 16, 17) for comments that mention none. Environments: WILDS' splits train, val, test. Text is tokenised with the tokenizer of the chosen text
    backbone (``backbone`` + ``pretrained``), truncated/padded to ``max_length`` tokens.
    """

    # WILDS' settings: DistilBERT, lr 1e-5, weight decay 0.01, batch 16, 300 tokens
    HPARAMS = {"backbone": HP("distilbert-base-uncased"), "pretrained": HP(True), "project": HP(False),
               "pooling": HP("cls", domain=one_of("cls", "mean")), "max_length": HP(300, domain=in_range(8, 4096)), "lr": HP(1e-5, log_uniform(-5.5, -4.5)),
               "weight_decay": HP(0.01, log_uniform(-4, -1)), "batch_size": HP(16, int_pow2(3, 5))}

    ENVIRONMENTS = ["train", "val", "test"]
    WILDS_NAME = "civilcomments"
    OFFICIAL_METRICS = ("acc_avg", "acc_wg")
    SELECT_ON = "val/acc_wg"
    NUM_CLASSES = 2
    N_STEPS = 10000
    CHECKPOINT_FREQ = 1000
    CSV = REQUIRED = "all_data_with_identities.csv"

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        root = self.root(data_dir)
        import numpy as np

        from harness.backbones.text import load_tokenizer

        max_length = int(self.hparams["max_length"])
        self.INPUT_SHAPE = (2, max_length)
        # token ids and masks come from the tokenizer of the backbone the algorithm builds
        tokenizer = load_tokenizer(self.hparams["backbone"], hparams)
        df = read_csv(root / self.CSV, index_col=0, usecols=None)
        require_columns(df, ["comment_text", "split", "toxicity", *IDENTITIES], root / self.CSV)
        y = torch.as_tensor((df["toxicity"].to_numpy(dtype=float) >= 0.5).astype(np.int64))
        ident = torch.as_tensor((df[IDENTITIES].fillna(0).to_numpy(dtype=float) >= 0.5))
        first = torch.where(ident.any(1), ident.float().argmax(1), torch.full_like(y, len(IDENTITIES)))
        groups = 2 * first + y
        split = df["split"].astype(str).to_numpy()
        texts = df["comment_text"].fillna("").astype(str).tolist()
        for name in self.ENVIRONMENTS:
            idx = torch.as_tensor(np.flatnonzero(split == name))
            if len(idx) == 0:
                raise UserError(f"{root / self.CSV} has no rows of split '{name}' (splits found: "
                                f"{', '.join(sorted(set(split)))})")
            self.datasets.append(TextEnv([texts[int(i)] for i in idx], y[idx], groups[idx], ident[idx],
                                         tokenizer, max_length))


    def split_metrics(self, split: str, y_pred: torch.Tensor, env: EnvDataset) -> dict[str, float]:
        """WILDS' CivilComments ``eval``: ``acc_avg`` over every comment; ``acc_wg`` the minimum over the 16
        groups (identity k mentioned, label), each group's accuracy as WILDS computes it (0 when empty)."""
        correct = y_pred.cpu() == env.y
        accs = []
        for k in range(env.identities.shape[1]):
            g = 2 * env.identities[:, k].long() + env.y  # (identity, label); WILDS keeps identity 1: 2 and 3
            acc, _ = group_accuracies(correct, g, 4)
            accs += [acc[2], acc[3]]
        return {"acc_avg": mean_accuracy(correct), "acc_wg": min(accs)}


__all__ = ["Waterbirds", "Camelyon17", "CivilComments"]
