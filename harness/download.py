"""Get a real dataset into the layout its loader reads: ``python -m harness.download NAME --data_dir DIR``.

With network access it fetches the archives DomainBed's ``scripts/download.py`` uses; with
``--archive FILE`` (repeatable) it unpacks local archives (zip, tar, tar.gz/tgz/tar.bz2/tar.xz)
instead and never touches the network. Either way it rearranges the result into::

    PACS            DIR/PACS/{art_painting,cartoon,photo,sketch}/<class>/<img>
                    (archive: PACS.zip, Google Drive id 1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd; holds kfold/)
    VLCS            DIR/VLCS/{Caltech101,LabelMe,SUN09,VOC2007}/<class>/<img>
                    (archive: VLCS.tar.gz, Google Drive id 1skwblH1_okBwxWxmRsp9_qi15hyPpxg8)
    OfficeHome      DIR/office_home/{Art,Clipart,Product,Real World}/<class>/<img>
                    (archive: office_home.zip, Google Drive id 1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC; holds
                    OfficeHomeDataset_10072016/; a "Real_World" or "Real" folder is renamed "Real World")
    TerraIncognita  DIR/terra_incognita/location_{100,38,43,46}/<class>/<img>
                    (archives: eccv_18_all_images_sm.tar.gz and caltech_camera_traps.json.zip from LILA;
                    reorganised as DomainBed does: images of locations 38, 46, 100, 43 and classes bird,
                    bobcat, cat, coyote, dog, empty, opossum, rabbit, raccoon, squirrel, by the
                    annotations json. An archive already in the location_*/<class> layout is also accepted.)
    DomainNet       DIR/domain_net/{clipart,infograph,painting,quickdraw,real,sketch}/<class>/<img>
                    (archives: the six <domain>.zip of csr.bu.edu/ftp/visda/2019/multi-source; pass each
                    with --archive. DomainBed's removal of its listed duplicate files is not done.)
    FashionMNIST    DIR/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
                    (network: torchvision's FashionMNIST download; archive: any zip/tar holding the 4 files)
    MNIST           DIR/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]  (RotatedMNIST, ColoredMNIST)
                    (network: torchvision's MNIST download; archive: any zip/tar holding the 4 files)
    MiniImageNet    DIR/miniImageNet/ with images/ + {train,val,test}.csv, or mini-imagenet-cache-*.pkl
                    (--archive only: no stable public URL)
    CIFARFS         DIR/cifar100/ with data/<class>/*.png and splits/bertinetto/*.txt (--archive only)

An existing target folder is left alone (the command says so); remove it to redo. Unpacking
happens in a staging folder under DIR that is removed afterwards, so an interrupted run leaves
no half-made dataset behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import Callable

from harness.errors import UserError, cli

GDRIVE = "https://drive.google.com/uc?id="
URLS: dict[str, list[str]] = {
    "PACS": [GDRIVE + "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"],
    "VLCS": [GDRIVE + "1skwblH1_okBwxWxmRsp9_qi15hyPpxg8"],
    "OfficeHome": [GDRIVE + "1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"],
    "DomainNet": [
        "http://csr.bu.edu/ftp/visda/2019/multi-source/groundtruth/clipart.zip",
        "http://csr.bu.edu/ftp/visda/2019/multi-source/infograph.zip",
        "http://csr.bu.edu/ftp/visda/2019/multi-source/groundtruth/painting.zip",
        "http://csr.bu.edu/ftp/visda/2019/multi-source/quickdraw.zip",
        "http://csr.bu.edu/ftp/visda/2019/multi-source/real.zip",
        "http://csr.bu.edu/ftp/visda/2019/multi-source/sketch.zip",
    ],
    "TerraIncognita": [
        "https://lilablobssc.blob.core.windows.net/caltechcameratraps/eccv_18_all_images_sm.tar.gz",
        "https://lilablobssc.blob.core.windows.net/caltechcameratraps/labels/caltech_camera_traps.json.zip",
    ],
}
ARCHIVE_NAMES = {"PACS": ["PACS.zip"], "VLCS": ["VLCS.tar.gz"], "OfficeHome": ["office_home.zip"]}

DOMAINS = {
    "PACS": ("PACS", ["art_painting", "cartoon", "photo", "sketch"]),
    "VLCS": ("VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"]),
    "OfficeHome": ("office_home", ["Art", "Clipart", "Product", "Real World"]),
    "TerraIncognita": ("terra_incognita", ["location_100", "location_38", "location_43", "location_46"]),
    "DomainNet": ("domain_net", ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]),
}
ALIASES = {"Real World": ("Real_World", "Real")}
TERRA_LOCATIONS = ["38", "46", "100", "43"]
TERRA_CATEGORIES = ["bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel"]
FMNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
NAMES = [*DOMAINS, "FashionMNIST", "MNIST", "MiniImageNet", "CIFARFS"]
NAME_ALIASES = {"RotatedFashionMNIST": "FashionMNIST", "ColoredFashionMNIST": "FashionMNIST",
                "RotatedMNIST": "MNIST", "ColoredMNIST": "MNIST", "CIFAR-FS": "CIFARFS", "miniImageNet": "MiniImageNet"}


# --- archives -----------------------------------------------------------------------------
def extract(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar archive into ``dest``, refusing members that would land outside it."""
    archive = Path(archive)
    if not archive.is_file():
        raise UserError(f"archive not found: {archive}")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise UserError(f"{archive}: member {member!r} would be written outside the target folder")
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() or m.isdir()]  # links are never needed here
            for m in members:
                if not (root / m.name).resolve().is_relative_to(root):
                    raise UserError(f"{archive}: member {m.name!r} would be written outside the target folder")
            tf.extractall(dest, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    else:
        raise UserError(f"{archive} is neither a zip nor a tar archive")


def _dirs_below(top: Path, max_depth: int = 4):
    """``top`` and its sub-folders, breadth first, down to ``max_depth`` levels."""
    level = [top]
    for _ in range(max_depth + 1):
        nxt = []
        for d in level:
            yield d
            try:
                nxt += sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
            except OSError:
                pass
        level = nxt


def find_root(top: Path, test: Callable[[Path], bool], what: str) -> Path:
    for d in _dirs_below(top):
        if test(d):
            return d
    raise UserError(f"the archive does not contain {what}")


def _domain_dir(parent: Path, domain: str) -> Path | None:
    for cand in (domain, *ALIASES.get(domain, ())):
        if (parent / cand).is_dir():
            return parent / cand
    return None


def _move_into_place(src: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(target))


# --- network --------------------------------------------------------------------------------
def fetch(url: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` (Google Drive links through gdown, others through urllib)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} -> {dest}", flush=True)
    if url.startswith(GDRIVE):
        try:
            import gdown
        except ImportError:
            raise UserError(f"downloading {url} needs gdown (pip install gdown); or download it yourself and "
                            f"pass it with --archive FILE") from None
        if gdown.download(url, str(dest), quiet=False) is None:
            raise UserError(f"download of {url} failed; download it yourself and pass it with --archive FILE")
        return dest
    import urllib.request

    try:
        tmp = dest.with_name(dest.name + ".part")
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, length=1 << 20)
        os.replace(tmp, dest)
    except OSError as e:
        raise UserError(f"download of {url} failed ({e}); download it yourself and pass it with --archive FILE") from None
    return dest


# --- per dataset ----------------------------------------------------------------------------
def install_domain_folders(name: str, staging: Path, data_dir: Path) -> Path:
    """Move the domain folders found in ``staging`` into ``data_dir/<dirname>/<domain>``."""
    dirname, domains = DOMAINS[name]
    target = data_dir / dirname
    found: dict[str, Path] = {}
    for d in _dirs_below(staging, 5):  # domains may come from several archives (DomainNet)
        for dom in domains:
            if dom not in found:
                hit = _domain_dir(d, dom)
                if hit is not None and any(p.is_dir() for p in hit.iterdir()):
                    found[dom] = hit
    missing = [d for d in domains if d not in found]
    if missing:
        raise UserError(f"{name}: the archive(s) lack the domain folder(s) {', '.join(missing)} "
                        f"(expected <domain>/<class>/<image> for {', '.join(domains)})")
    tmp = data_dir / f".{dirname}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    for dom, src in found.items():
        shutil.move(str(src), str(tmp / dom))
    _move_into_place(tmp, target)
    return target


def inside(base: Path, name: object, top: Path) -> Path | None:
    """``base / name`` when it resolves (symlinks followed) inside ``top``; None for an absolute path,
    ``..`` escapes, a link out of the archive or a name that is not a string. Paths read from a
    metadata file must never reach files outside the unpacked archive."""
    if not isinstance(name, str) or not name or "\x00" in name or Path(name).is_absolute():
        return None
    try:
        path = (base / name).resolve()
        path.relative_to(top.resolve())
    except (ValueError, OSError, RuntimeError):
        return None
    return path


def reorganise_terra(staging: Path, data_dir: Path) -> Path:
    """DomainBed's TerraIncognita reorganisation: ``location_<L>/<category>/<file>`` from images + annotations."""
    jsons = [p for p in staging.rglob("*.json") if p.is_file()]
    annotations = None
    for p in jsons:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data):
            annotations = data
            break
    if annotations is None:
        raise UserError("TerraIncognita: no annotations json (with images, annotations, categories) in the archives; "
                        "pass caltech_camera_traps.json.zip with --archive too")
    images_dir = find_root(staging, lambda d: d.name == "eccv_18_all_images_sm", "eccv_18_all_images_sm/") \
        if any(staging.rglob("eccv_18_all_images_sm")) else None
    try:
        category = {c["id"]: c["name"] for c in annotations["categories"]}
        by_image: dict = {}
        for a in annotations["annotations"]:
            by_image.setdefault(a["image_id"], []).append(category.get(a["category_id"]))
        images = [i for i in annotations["images"] if isinstance(i, dict) and "id" in i]
    except (KeyError, TypeError) as e:
        raise UserError(f"TerraIncognita: the annotations json is malformed ({type(e).__name__}: {e})") from None
    target = data_dir / "terra_incognita"
    tmp = data_dir / f".terra_incognita.{uuid.uuid4().hex[:8]}"
    n = 0
    for image in images:
        loc = str(image.get("location"))
        if loc not in TERRA_LOCATIONS:
            continue
        src = None
        for base in ([images_dir] if images_dir else []) + [staging]:
            cand = inside(base, image.get("file_name"), staging)
            if cand is not None and cand.is_file():
                src = cand
                break
        if src is None:
            continue
        cats = by_image.get(image["id"], []) if isinstance(image["id"], (str, int)) else []
        for cat in sorted({c for c in cats if c in TERRA_CATEGORIES}):
            dst = tmp / f"location_{loc}" / cat / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            n += 1
    if n == 0:
        raise UserError("TerraIncognita: no image of locations 38, 46, 100, 43 in the selected categories was found "
                        "in the archives (pass eccv_18_all_images_sm.tar.gz and caltech_camera_traps.json.zip)")
    missing = [f"location_{loc}" for loc in TERRA_LOCATIONS if not (tmp / f"location_{loc}").is_dir()]
    if missing:
        shutil.rmtree(tmp)
        raise UserError(f"TerraIncognita: no images for {', '.join(missing)} in the archives")
    _move_into_place(tmp, target)
    return target


def install_fmnist(staging: Path, data_dir: Path, name: str = "FashionMNIST") -> Path:
    """The four IDX files of Fashion-MNIST (or MNIST, same file names) into DIR/<name>/raw (torchvision's layout)."""
    def has_all(d: Path) -> bool:
        return all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in FMNIST_FILES)

    what = {"FashionMNIST": "Fashion-MNIST", "MNIST": "MNIST"}[name]
    src = find_root(staging, has_all, f"the four {what} IDX files (" + ", ".join(FMNIST_FILES) + ")")
    target = data_dir / name / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for f in FMNIST_FILES:
        for cand in (src / f, src / f"{f}.gz"):
            if cand.is_file():
                shutil.move(str(cand), str(target / cand.name))
    return target


def install_miniimagenet(staging: Path, data_dir: Path) -> Path:
    def ok(d: Path) -> bool:
        csv_layout = (d / "images").is_dir() and all((d / f"{s}.csv").is_file() for s in ("train", "val", "test"))
        pkl_layout = all((d / f"mini-imagenet-cache-{s}.pkl").is_file() for s in ("train", "val", "test"))
        return csv_layout or pkl_layout

    src = find_root(staging, ok, "miniImageNet (images/ with train.csv, val.csv, test.csv; or "
                                 "mini-imagenet-cache-{train,val,test}.pkl)")
    for split in ("train", "val", "test"):
        pkl = src / f"mini-imagenet-cache-{split}.pkl"
        if pkl.is_file():
            check_pickle(pkl)
    target = data_dir / "miniImageNet"
    _move_into_place(src, target)
    return target


def check_pickle(path: Path) -> None:
    """Refuse a pickle that names anything but the mini-imagenet-cache format's types (it could run code)."""
    from harness.safe_pickle import ForeignPickle, SafeUnpickler

    try:
        with open(path, "rb") as f:
            SafeUnpickler(f, encoding="latin1").load()
    except ForeignPickle as e:
        raise UserError(f"MiniImageNet: {path.name} in the archive refers to {e}, which a mini-imagenet-cache "
                        "pickle never does; refusing to install it (pickles can run code)") from None
    except Exception as e:
        raise UserError(f"MiniImageNet: {path.name} in the archive cannot be read: {type(e).__name__}: {e}") from None


def install_cifarfs(staging: Path, data_dir: Path) -> Path:
    def ok(d: Path) -> bool:
        return (d / "data").is_dir() and all((d / "splits" / "bertinetto" / f"{s}.txt").is_file()
                                             for s in ("train", "val", "test"))

    src = find_root(staging, ok, "CIFAR-FS (data/<class>/*.png and splits/bertinetto/{train,val,test}.txt)")
    target = data_dir / "cifar100"
    _move_into_place(src, target)
    return target


def target_of(name: str, data_dir: Path) -> Path:
    if name in DOMAINS:
        return data_dir / DOMAINS[name][0]
    return data_dir / {"FashionMNIST": "FashionMNIST/raw", "MNIST": "MNIST/raw", "MiniImageNet": "miniImageNet", "CIFARFS": "cifar100"}[name]


def download(name: str, data_dir: str | Path, archives: list[str] | None = None) -> Path:
    """Fetch (or unpack ``archives``) and install dataset ``name`` under ``data_dir``; returns its folder."""
    name = NAME_ALIASES.get(name, name)
    if name not in NAMES:
        import difflib

        close = difflib.get_close_matches(name, NAMES, n=1)
        raise UserError(f"unknown dataset '{name}' for download. Known: {', '.join(NAMES)}"
                        + (f"; did you mean '{close[0]}'?" if close else ""))
    data_dir = Path(data_dir).expanduser()
    target = target_of(name, data_dir)
    if target.exists() and any(target.iterdir()):
        print(f"{target} already exists; nothing to do (remove it to download again)")
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = data_dir / f".staging-{name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        if not archives:
            if name in ("FashionMNIST", "MNIST"):
                return _torchvision_fmnist(data_dir, name)
            if name not in URLS:
                raise UserError(f"{name} has no public download URL; get its files and pass them with --archive FILE")
            names = ARCHIVE_NAMES.get(name) or [u.rsplit("/", 1)[-1] for u in URLS[name]]
            archives = [str(fetch(u, staging / "_archives" / n)) for u, n in zip(URLS[name], names)]
        for i, a in enumerate(archives):
            print(f"unpacking {a}", flush=True)
            extract(Path(a), staging / f"a{i}")
        if name == "TerraIncognita" and not _has_location_layout(staging):
            out = reorganise_terra(staging, data_dir)
        elif name in DOMAINS:
            out = install_domain_folders(name, staging, data_dir)
        elif name in ("FashionMNIST", "MNIST"):
            out = install_fmnist(staging, data_dir, name)
        elif name == "MiniImageNet":
            out = install_miniimagenet(staging, data_dir)
        else:
            out = install_cifarfs(staging, data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{name} is ready in {out}")
    return out


def _has_location_layout(staging: Path) -> bool:
    return any(all((d / f"location_{loc}").is_dir() for loc in TERRA_LOCATIONS) for d in _dirs_below(staging, 5))


def _torchvision_fmnist(data_dir: Path, name: str = "FashionMNIST") -> Path:
    """torchvision's download of FashionMNIST or MNIST into DIR/<name>/raw."""
    try:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, name)
        cls(str(data_dir), train=True, download=True)
        cls(str(data_dir), train=False, download=True)
    except Exception as e:  # no network, mirror down
        debian = "install Debian's dataset-fashion-mnist or " if name == "FashionMNIST" else ""
        raise UserError(f"{name} download failed ({type(e).__name__}: {e}); {debian}pass the IDX files in an "
                        f"archive with --archive FILE") from None
    return data_dir / name / "raw"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.download",
                                description="Download (or unpack local archives of) a real dataset into the layout "
                                            "harness reads. Supported: " + ", ".join(NAMES) + ".",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("name", help="dataset: " + ", ".join(NAMES))
    p.add_argument("--data_dir", default=os.environ.get("HARNESS_DATA", "data"), help="root of real datasets (env HARNESS_DATA)")
    p.add_argument("--archive", action="append", default=None, metavar="FILE",
                   help="unpack this local zip/tar instead of downloading (repeat for several, e.g. DomainNet's six zips)")
    return p


def main(argv: list[str] | None = None) -> None:
    cli(lambda: download(*_args(build_parser().parse_args(argv))))()


def _args(a: argparse.Namespace):
    return a.name, a.data_dir, a.archive


if __name__ == "__main__":
    main()
