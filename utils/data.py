"""Datasets and loaders: torchvision datasets and transforms behind a small name -> builder registry.

Every builder returns a :class:`DataBundle` so callers (trainer, pruner, sensitivity sweeps) never branch on the
dataset name. Everything a user can get wrong here (a missing folder, an empty class, a truncated CIFAR batch, no
internet for a download) becomes a one-line :class:`~utils.errors.UserError` that shows the expected layout and the
config key to change (``data.root``, ``data.download``, ``data.image_size``).
"""

from __future__ import annotations

import functools
import os
import pickle
import random
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from utils.distributed import shard_bounds
from utils.errors import UserError
from utils.sampling import SeededAugmentation, SeededSampler
from utils.tv import torchvision

T = torchvision.transforms
_ImageFolder = torchvision.datasets.ImageFolder
_IMG_EXTENSIONS = torchvision.datasets.folder.IMG_EXTENSIONS

__all__ = [
    "DataBundle",
    "DatasetBuilder",
    "build_datasets",
    "build_loaders",
    "dataset_names",
    "default_mean_std",
    "digits_mean_std_from_data",
    "register_dataset",
]


@dataclass(frozen=True)
class DataBundle:
    """The datasets of one experiment plus what a model needs to know about them."""

    train: Dataset | None  # None when only evaluation was asked for
    test: Dataset
    num_classes: int
    classes: list[str]
    input_size: tuple[int, int, int]  # C, H, W the models see


class DatasetBuilder(Protocol):
    """Signature every registered builder has; unused arguments are accepted so callers stay uniform."""

    def __call__(
        self,
        root: str,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        download: bool,
        image_size: int | None,
    ) -> DataBundle: ...


_BUILDERS: dict[str, DatasetBuilder] = {}
_MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}

_IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def register_dataset(
    name: str, *, mean: Sequence[float], std: Sequence[float]
) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register a builder under ``name`` together with its default normalisation.

    The mean/std live next to the builder so a new dataset is one decorated function, not an edit in two places.
    """

    def decorate(builder: DatasetBuilder) -> DatasetBuilder:
        if name in _BUILDERS:
            raise ValueError(f"dataset {name!r} registered twice")
        _BUILDERS[name] = builder
        _MEAN_STD[name] = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        return builder

    return decorate


def dataset_names() -> list[str]:
    """Sorted names accepted by :func:`build_datasets` (for ``--help`` texts and config validation)."""
    return sorted(_BUILDERS)


def _known(name: str) -> None:
    if name not in _BUILDERS:
        raise UserError(f"data.name: unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")


def default_mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std that the dataset's images are normalised with unless the config overrides them.

    Overriding matters: published checkpoints were trained with differing statistics (several CIFAR-10 ResNets
    use ImageNet's), and evaluating them with other numbers costs accuracy.
    """
    _known(name)
    return _MEAN_STD[name]


def build_datasets(
    name: str,
    root: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool = True,
    download: bool = False,
    image_size: int | None = None,
) -> DataBundle:
    """Build the train (unless ``train`` is False) and test datasets of ``name``.

    ``image_size`` is the side of the square images the model sees; ``None`` takes the dataset's own (32 for
    cifar10 and digits, 224 for the folder datasets). Only the folder datasets can change it.
    ``download`` fetches missing data where the dataset has a download source and is a no-op otherwise.
    """
    _known(name)
    if len(mean) != 3 or len(std) != 3:
        raise UserError(f"data.mean/data.std: expected 3 values each (one per RGB channel), got {list(mean)} / "
                        f"{list(std)}")
    if any(s <= 0 for s in std):
        raise UserError(f"data.std: every value must be > 0, got {list(std)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise UserError(f"data.image_size: expected an integer >= 8 (pixels), got {image_size!r}")
    return _BUILDERS[name](os.path.expanduser(str(root)), mean=tuple(mean), std=tuple(std), train=train,
                           download=download, image_size=image_size)


def _fixed_size(name: str, size: int, image_size: int | None) -> int:
    """Datasets stored at one resolution; resizing them would silently change every published number."""
    if image_size not in (None, size):
        raise UserError(f"data.image_size: {name} images are {size}x{size}; got {image_size}. "
                        f"Remove data.image_size or set it to {size}")
    return size


# --------------------------------------------------------------------------------------------------- cifar10

_CIFAR_DIR = torchvision.datasets.CIFAR10.base_folder
_CIFAR_LAYOUT = (f"expected layout: <data.root>/{_CIFAR_DIR}/{{data_batch_1..data_batch_5, test_batch, "
                 f"batches.meta}} (the 'CIFAR-10 python version' archive, extracted)")
_CIFAR_FIX = (f"fix: set data.download to true on a machine with internet, or point data.root at the folder that "
              f"holds {_CIFAR_DIR}")


class _CIFAR10Files(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10, but the files of the requested split must *exist*, not match the official MD5s.

    Why: torchvision rejects every batch whose checksum differs with "not found or corrupted", without saying which
    file or why, and it rejects re-packed or subset batches (and the small ones the tests write) that load fine.
    :func:`_cifar10` validates the decoded contents instead, which still catches truncated or garbled files and
    names them. Evaluation also no longer needs the training batches.
    """

    def _check_integrity(self) -> bool:
        return not _cifar_missing(self.root, self.train)

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = list(pickle.load(f, encoding="latin1")[self.meta["key"]])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def _cifar_files(train: bool) -> list[str]:
    split = torchvision.datasets.CIFAR10.train_list if train else torchvision.datasets.CIFAR10.test_list
    return [f for f, _md5 in split] + [torchvision.datasets.CIFAR10.meta["filename"]]


def _cifar_missing(root: str, train: bool) -> list[str]:
    """Files absent from the folder: the test split's always (every run evaluates), the training split's if asked."""
    needed = dict.fromkeys(_cifar_files(False) + (_cifar_files(True) if train else []))
    return [f for f in needed if not os.path.isfile(os.path.join(root, _CIFAR_DIR, f))]


def _cifar_file_problem(path: str) -> str | None:
    """Why one batch (or meta) file cannot be a CIFAR-10 file, or None if it looks sound; only run after a failure."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        return f"cannot be unpickled ({type(exc).__name__}: {exc})"
    if not isinstance(entry, dict):
        return f"holds a {type(entry).__name__}, not a dict"
    if path.endswith(torchvision.datasets.CIFAR10.meta["filename"]):
        names = entry.get("label_names")
        return None if isinstance(names, list) and len(names) > 0 else "has no 'label_names' list"
    data, labels = entry.get("data"), entry.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        return f"'data' is {got}, expected uint8 (N, 3072)"
    if not isinstance(labels, list) or len(labels) != len(data):
        return f"'labels' does not hold one label per image ({len(data)} images)"
    if labels and not (0 <= min(labels) and max(labels) < 10):
        return f"labels outside 0..9 (min {min(labels)}, max {max(labels)})"
    return None


def _cifar_corruption(folder: str, train: bool) -> str | None:
    """A UserError message naming the first damaged file of the split, or None when every file looks sound."""
    for name in _cifar_files(train):
        path = os.path.join(folder, name)
        problem = _cifar_file_problem(path)
        if problem is not None:
            return (f"cifar10: {path} is corrupt: {problem}. Fix: replace {_CIFAR_DIR} with a fresh copy (delete it "
                    f"and set data.download to true on a machine with internet)")
    return None


def _load_cifar_split(root: str, train: bool, transform: Callable[[Any], Any]) -> _CIFAR10Files:
    """Load one split through torchvision; on failure, find the file to blame (the happy path reads each file once)."""
    folder = os.path.join(root, _CIFAR_DIR)
    try:
        ds = _CIFAR10Files(root, train=train, transform=transform, download=False)
    except Exception:
        message = _cifar_corruption(folder, train)
        if message is None:
            raise  # no file explains the failure: a bug, keep its traceback
        raise UserError(message) from None
    targets = ds.targets
    if len(targets) == len(ds.data) > 0 and 0 <= min(targets) and max(targets) < len(ds.classes):
        return ds
    raise UserError(_cifar_corruption(folder, train) or (
        f"cifar10: the batches in {folder} are inconsistent (no images, or labels beyond the {len(ds.classes)} "
        f"names in batches.meta). Fix: replace {_CIFAR_DIR} with a fresh copy"))


@register_dataset("cifar10", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
def _cifar10(
    root: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    download: bool,
    image_size: int | None,
) -> DataBundle:
    """CIFAR-10 from torchvision's python-pickle batches with the standard pad-4 crop + flip augmentation."""
    size = _fixed_size("cifar10", 32, image_size)
    if download and _cifar_missing(root, train):
        cls = torchvision.datasets.CIFAR10
        try:
            torchvision.datasets.utils.download_and_extract_archive(
                cls.url, root, filename=cls.filename, md5=cls.tgz_md5
            )
        except (OSError, RuntimeError, tarfile.TarError, EOFError) as exc:
            raise UserError(f"cifar10: could not download {cls.url} into {root} ({type(exc).__name__}: {exc}). "
                            f"Fix: download it on a machine with internet and point data.root at it, or set "
                            f"data.download to false; {_CIFAR_LAYOUT}") from None
    missing = _cifar_missing(root, train)
    if missing:
        where = os.path.join(root, _CIFAR_DIR)
        raise UserError(f"cifar10: data not found in {where} (missing: {', '.join(missing)}); {_CIFAR_LAYOUT}; "
                        f"{_CIFAR_FIX}")
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    test = _load_cifar_split(root, False, T.Compose(normalize))
    train_ds = None
    if train:
        augment = [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()]
        train_ds = _load_cifar_split(root, True, T.Compose(augment + normalize))
    return DataBundle(train=train_ds, test=test, num_classes=len(test.classes), classes=list(test.classes),
                      input_size=(3, size, size))


# ------------------------------------------------------------------------------------------- image folders

# Images up to this side are treated as small, CIFAR-like images: no rescaling, pad-and-crop augmentation.
# RandomResizedCrop's 8%-100% area crops destroy objects that are only 32 pixels across.
_SMALL_IMAGE_MAX = 64
# Evaluation resizes the short side to image_size / 0.875 and centre-crops image_size (256 -> 224 for ImageNet).
_EVAL_CROP_FRACTION = 0.875


def _folder_transforms(
    image_size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """Train and eval transforms for a folder dataset whose model input is ``image_size`` square."""
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    if image_size <= _SMALL_IMAGE_MAX:
        # Resize is a no-op for images already at image_size (pixels stay exact); it only adapts other sizes.
        fit = [T.Resize(image_size), T.CenterCrop(image_size)]
        train = [T.Resize(image_size), T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip()]
        return T.Compose(train + normalize), T.Compose(fit + normalize)
    resize = round(image_size / _EVAL_CROP_FRACTION)
    train = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    return T.Compose(train + normalize), T.Compose([T.Resize(resize), T.CenterCrop(image_size)] + normalize)


def _folder_layout(eval_splits: Sequence[str]) -> str:
    evals = " or ".join(f"<data.root>/{s}/<class>/*.jpg" for s in eval_splits)
    return f"expected layout: <data.root>/train/<class>/*.jpg and {evals} (train/ is only needed for training)"


def _has_image(folder: str) -> bool:
    for _dirpath, _dirs, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(_IMG_EXTENSIONS) for f in files):
            return True
    return False


def _load_folder(name: str, split_dir: str, transform: Callable[[Any], Any], layout: str) -> Any:
    try:
        return _ImageFolder(split_dir, transform=transform)
    except FileNotFoundError:
        # Diagnose from the tree itself rather than by parsing torchvision's message.
        classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
        if not classes:
            raise UserError(f"{name}: no class folders in {split_dir}; {layout}. Fix: put each class's images in "
                            f"its own sub-folder") from None
        empty = [os.path.join(split_dir, c) for c in classes if not _has_image(os.path.join(split_dir, c))]
        if not empty:
            raise
        raise UserError(f"{name}: class folder {', '.join(empty)} has no images ({', '.join(_IMG_EXTENSIONS)}). "
                        f"Fix: add images or delete the folder (every class folder becomes a label)") from None


def _build_folder(
    name: str,
    root: str,
    *,
    eval_splits: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    download: bool,
    image_size: int | None,
) -> DataBundle:
    """ImageFolder train + eval splits; ``eval_splits`` in order of preference."""
    del download  # no download source: "download if missing" has nothing to fetch, the errors below explain
    size = 224 if image_size is None else image_size
    layout = _folder_layout(eval_splits)
    fix = "Fix: point data.root at such a tree"
    if not os.path.isdir(root):
        raise UserError(f"{name}: data.root {root} does not exist; {layout}. {fix}")
    found = [s for s in eval_splits if os.path.isdir(os.path.join(root, s))]
    if not found:
        raise UserError(f"{name}: no {' or '.join(s + '/' for s in eval_splits)} folder in {root}; {layout}. {fix}")
    train_dir = os.path.join(root, "train")
    if train and not os.path.isdir(train_dir):
        raise UserError(f"{name}: no train/ folder in {root}, needed for training; {layout}. {fix}, or run "
                        f"evaluation only")
    train_tf, eval_tf = _folder_transforms(size, mean, std)
    test = _load_folder(name, os.path.join(root, found[0]), eval_tf, layout)
    train_ds = None
    if train:
        train_ds = _load_folder(name, train_dir, train_tf, layout)
        if train_ds.classes != test.classes:
            only_train = sorted(set(train_ds.classes) - set(test.classes))
            only_test = sorted(set(test.classes) - set(train_ds.classes))
            raise UserError(f"{name}: class folders of train/ and {found[0]}/ differ in {root} (only in train: "
                            f"{only_train[:5]}, only in {found[0]}: {only_test[:5]}). Fix: give both splits the "
                            f"same class folders")
    return DataBundle(train=train_ds, test=test, num_classes=len(test.classes), classes=list(test.classes),
                      input_size=(3, size, size))


@register_dataset("imagenet", mean=_IMAGENET_MEAN_STD[0], std=_IMAGENET_MEAN_STD[1])
def _imagenet(
    root: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    download: bool,
    image_size: int | None,
) -> DataBundle:
    """ImageNet as ImageFolder trees ``root/train`` and ``root/val`` (torchvision's reference-script layout)."""
    return _build_folder("imagenet", root, eval_splits=("val",), mean=mean, std=std, train=train,
                         download=download, image_size=image_size)


@register_dataset("imagefolder", mean=_IMAGENET_MEAN_STD[0], std=_IMAGENET_MEAN_STD[1])
def _imagefolder(
    root: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    download: bool,
    image_size: int | None,
) -> DataBundle:
    """Any ImageFolder tree with ``train/`` and ``val/`` or ``test/`` (``val/`` wins when both exist).

    ``image_size`` defaults to 224 (ImageNet-style RandomResizedCrop / resize 256 + centre crop); at 64 or less the
    transforms are CIFAR-style (pad-4 random crop + flip, images kept at their size), e.g. 32 for CIFAR as PNGs.
    """
    return _build_folder("imagefolder", root, eval_splits=("val", "test"), mean=mean, std=std, train=train,
                         download=download, image_size=image_size)


# ---------------------------------------------------------------------------------------------------- digits

_DIGITS_SPLIT_SEED = 0  # fixed, independent of the experiment seed, so every run sees the same test images
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SCALE = 4  # 8x8 -> 32x32: the input size of the CIFAR-style models


class _TensorImages(Dataset):
    """Images decoded once into one float tensor; only the (cheap) per-sample transform runs in ``__getitem__``."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: list[str],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        self.images = images
        self.targets = targets.tolist()
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


@functools.cache
def _digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train images, train labels, test images, test labels: float (N, 3, 32, 32) in [0, 1], computed once.

    Upsampling is bilinear, not nearest: nearest turns each of the 64 samples into a flat 4x4 block whose hard edges
    are an artefact of the 8x8 sampling grid, which 3x3 convolutions would learn as features; bilinear interpolates
    the pen stroke between samples, and as a convex combination it keeps values in [0, 1].
    Callers must not modify the returned tensors in place (they are shared through the cache).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # 0..16 ink levels -> [0, 1]
    images = T.functional.resize(images, [8 * _DIGITS_SCALE, 8 * _DIGITS_SCALE],
                                 interpolation=T.InterpolationMode.BILINEAR, antialias=False)
    images = images.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=_DIGITS_TEST_FRACTION,
                                           random_state=_DIGITS_SPLIT_SEED, stratify=digits.target)
    train_idx, test_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def digits_mean_std_from_data() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of the digits training images, computed afresh (checks the hard-coded defaults)."""
    train_images = _digits_split()[0]
    mean = train_images.mean(dim=(0, 2, 3)).tolist()
    std = train_images.std(dim=(0, 2, 3), unbiased=False).tolist()
    return tuple(mean), tuple(std)


# digits_mean_std_from_data() rounded to 4 places (the three channels are copies of one grey image);
# tests/test_data.py recomputes it.
_DIGITS_MEAN = (0.3054, 0.3054, 0.3054)
_DIGITS_STD = (0.3237, 0.3237, 0.3237)


@register_dataset("digits", mean=_DIGITS_MEAN, std=_DIGITS_STD)
def _digits(
    root: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    download: bool,
    image_size: int | None,
) -> DataBundle:
    """scikit-learn's bundled 8x8 digits (1,797 images) as 3x32x32 images: the embedded, download-free demo.

    ``root`` and ``download`` are ignored (the data ships inside scikit-learn). Augmentation is a random translation
    by up to 4 pixels; no horizontal flip, which turns some digits into others or into no digit.
    """
    del root, download
    size = _fixed_size("digits", 8 * _DIGITS_SCALE, image_size)
    train_x, train_y, test_x, test_y = _digits_split()
    classes = [str(d) for d in range(10)]
    normalize = T.Normalize(mean, std)
    test = _TensorImages(test_x, test_y, classes, normalize)
    train_ds = None
    if train:
        # Padding fills 0, the background of the digits, as RandomCrop's zero padding does for CIFAR before Normalize.
        train_ds = _TensorImages(train_x, train_y, classes, T.Compose([T.RandomCrop(size, padding=4), normalize]))
    return DataBundle(train=train_ds, test=test, num_classes=10, classes=classes, input_size=(3, size, size))


# --------------------------------------------------------------------------------------------------- loaders


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in each worker from torch's per-worker seed (itself drawn from the loader's generator).

    torch seeds itself per worker, but numpy/random would otherwise start from the parent's state in every worker
    (forked copies), repeating the same "random" numbers across workers.
    """
    del worker_id
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def build_loaders(
    bundle: DataBundle,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    test_batch_size: int | None = None,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> tuple[DataLoader | None, DataLoader]:
    """Train loader (shuffled, None if ``bundle.train`` is None) and test loader (in dataset order).

    ``rank`` of ``world`` (torchrun): ``batch_size`` is the global batch, of which this rank loads its share of every
    step (:class:`~utils.sampling.SeededSampler`), and its test loader holds a contiguous part of the test set.

    Reproducibility: the training order and every sample's augmentation come from ``(seed, epoch)`` alone
    (:mod:`utils.sampling`; call ``train_loader.sampler.set_epoch(epoch)`` before each epoch), the same with any
    number of workers. The loaders have their own generators because every DataLoader iterator draws a base seed;
    without one, each pass would advance the global RNG and change the dropout of the training that follows it.
    """
    if batch_size < 1 or (test_batch_size is not None and test_batch_size < 1):
        raise UserError(f"data.batch_size/data.test_batch_size: expected positive integers (images per batch), got "
                        f"{batch_size} / {test_batch_size}")
    if workers < 0:
        raise UserError(f"data.workers: expected an integer >= 0, got {workers}")
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": pin_memory and torch.accelerator.is_available(),  # avoids a warning per epoch on CPU
        "worker_init_fn": _seed_worker if workers > 0 else None,
        "persistent_workers": workers > 0,  # no process start-up (and dataset re-pickling) every epoch
        "drop_last": False,
    }
    train_loader = None
    if bundle.train is not None:
        sampler = SeededSampler(len(bundle.train), seed, global_batch=batch_size, rank=rank, world=world)
        train_loader = DataLoader(SeededAugmentation(bundle.train), batch_size=batch_size // world, sampler=sampler,
                                  generator=_generator(seed), **common)
    test = bundle.test
    if world > 1:
        lo, hi = shard_bounds(len(test), rank, world)
        test = Subset(test, range(lo, hi))
    test_loader = DataLoader(test, batch_size=test_batch_size or batch_size, shuffle=False,
                             generator=_generator(seed), **common)
    return train_loader, test_loader
