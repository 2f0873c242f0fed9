"""Datasets and loaders: torchvision datasets and transforms behind a small name -> builder registry.

Every builder returns a :class:`DataBundle` so callers (trainer, pruner, sensitivity sweeps) never branch on the
dataset name. Everything a user can get wrong here (a missing folder, an empty class, a truncated CIFAR batch, no
internet for a download) becomes a one-line :class:`~utils.core.errors.UserError` that shows the expected layout and the
config key to change (``data.root``, ``data.download``, ``data.image_size``).
"""

from __future__ import annotations

import functools
import importlib
import io
import math
import os
import pickle
import random
import tarfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset, default_collate, get_worker_info

from utils.core import choices
from utils.core.distributed import shard_bounds
from utils.core.errors import UserError
from utils.core.tvguard import torchvision
from utils.data.sampling import SeededAugmentation, SeededSampler

T = torchvision.transforms
_ImageFolder = torchvision.datasets.ImageFolder
_IMG_EXTENSIONS = torchvision.datasets.folder.IMG_EXTENSIONS

__all__ = [
    "FOLDER_DECODERS",
    "MAX_AUTO_WORKERS",
    "BatchNormalize",
    "DataBundle",
    "DatasetBuilder",
    "auto_workers",
    "build_datasets",
    "build_loaders",
    "dataset_names",
    "default_mean_std",
    "digits_mean_std_from_data",
    "register_dataset",
    "torchvision_io_problem",
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
        decode: str = "pil",
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
    decode: str = "pil",
) -> DataBundle:
    """Build the train (unless ``train`` is False) and test datasets of ``name``.

    ``image_size`` is the side of the square images the model sees; ``None`` takes the dataset's own (32 for
    cifar10 and digits, 224 for the folder datasets). Only the folder datasets can change it.
    ``download`` fetches missing data where the dataset has a download source and is a no-op otherwise.
    ``decode``: how the folder datasets decode ImageNet-size images (:data:`FOLDER_DECODERS`); others ignore it.
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
                           download=download, image_size=image_size, decode=decode)


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
    decode: str = "pil",
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
    """Train and eval transforms (PIL image -> normalised float tensor) for a folder dataset whose model input is
    ``image_size`` square: what ``dataset[i]`` applies with ``data.decode`` ``"pil"``."""
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    if image_size <= _SMALL_IMAGE_MAX:
        # Resize is a no-op for images already at image_size (pixels stay exact); it only adapts other sizes.
        fit = [T.Resize(image_size), T.CenterCrop(image_size)]
        train = [T.Resize(image_size), T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip()]
        return T.Compose(train + normalize), T.Compose(fit + normalize)
    resize = round(image_size / _EVAL_CROP_FRACTION)
    train = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    return T.Compose(train + normalize), T.Compose([T.Resize(resize), T.CenterCrop(image_size)] + normalize)


# How ImageNet-size images (image_size > _SMALL_IMAGE_MAX) are decoded and resized. "pil": PIL decodes, crops and
# resizes (torchvision's reference pipeline; the default). "torchvision": torchvision.io decodes the file's bytes and
# transforms.v2 crops and resizes the uint8 tensor (the same random crops; resized pixels within 1 level of PIL's,
# tests/test_imagenet_pipeline.py), with PIL decoding instead where torchvision.io cannot load.
FOLDER_DECODERS = choices.DECODERS  # data.decode


class BatchNormalize:
    """uint8 images -> a float32 batch ``(x / 255 - mean) / std``: ToTensor + Normalize, once per batch.

    Why: in a DataLoader worker, ToTensor + Normalize per image, then stacking the float images, take about a third
    of the time per image (docs/benchmarks.md, "ImageNet input pipeline"). Here each uint8 image is converted and
    normalised straight into its slot of the batch, and inside a worker that batch lives in shared memory (as
    ``default_collate`` allocates it), so handing it to the main process copies nothing. The operations and their
    order are ToTensor's (``/ 255`` in float32) then Normalize's (``- mean``, ``/ std``), so the numbers are
    bit-identical to the per-image pipeline's.

    Takes a list of ``(3, H, W)`` images (a collate function's), or a stacked ``(N, 3, H, W)`` batch on any device
    (e.g. uint8 batches normalised on the GPU after the copy). Picklable for DataLoader workers.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:  # (3, 1, 1): broadcasts over (3, H, W) and (N, 3, H, W) alike
            self._constants[device] = (torch.tensor(self.mean, device=device).view(-1, 1, 1),
                                       torch.tensor(self.std, device=device).view(-1, 1, 1))
        return self._constants[device]

    def __call__(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        channels = len(self.mean)
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != channels:
                raise ValueError(f"expected uint8 images (N, {channels}, H, W), got {images.dtype} "
                                 f"{tuple(images.shape)}")
            mean, std = self._on(images.device)
            out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
            return torch.div(images, 255, out=out).sub_(mean).div_(std)
        shape = tuple(images[0].shape) if len(images) else ()
        for image in images:
            if image.dtype != torch.uint8 or tuple(image.shape) != shape or shape[0] != channels:
                raise ValueError(f"expected uint8 images of one shape ({channels}, H, W), got {image.dtype} "
                                 f"{tuple(image.shape)} after {shape}")
        mean, std = self._on(torch.device("cpu"))
        out = _batch_buffer((len(images), *shape))
        for slot, image in zip(out, images, strict=True):  # one image at a time: it stays in cache for all three
            torch.div(image, 255, out=slot).sub_(mean).div_(std)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "_constants": {}}  # no device tensors into worker processes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def _batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 CPU tensor; inside a DataLoader worker, in shared memory, allocated the way
    ``default_collate`` allocates its batches (torch/utils/data/_utils/collate.py). A tensor in ordinary memory would be
    copied into shared memory to reach the main process, which costs about a quarter of the worker's time per image."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    empty = torch.empty(0, dtype=torch.float32)
    try:
        storage = empty._typed_storage()._new_shared(math.prod(shape), device="cpu")
    except AttributeError:  # torch's private helper is gone: correct still, one copy slower
        return torch.empty(shape, dtype=torch.float32)
    return empty.new(storage).resize_(shape)


class _NormalizeOne:
    """:class:`BatchNormalize` for one ``(3, H, W)`` image: ``dataset[i]`` of the ``"torchvision"`` pipeline."""

    def __init__(self, normalize: BatchNormalize) -> None:
        self.normalize = normalize

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalize(image.unsqueeze(0))[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.normalize!r})"


def _tiny_jpeg() -> torch.Tensor:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(buffer, format="JPEG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


@functools.cache
def torchvision_io_problem() -> str | None:
    """None where torchvision.io decodes JPEGs, else why it cannot (one line, cached per process).

    Its compiled image extension may not load, e.g. the registry's CUDA-built torchvision next to a CPU-only torch
    (utils/tv.py). ``import torchvision`` succeeds regardless and only calling a decoder fails, so the check decodes
    a tiny JPEG."""
    try:
        image = torchvision.io.decode_jpeg(_tiny_jpeg())
    except (RuntimeError, OSError, ImportError, AttributeError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if tuple(image.shape) != (3, 8, 8) or image.dtype != torch.uint8:
        return f"decode_jpeg returned {image.dtype} {tuple(image.shape)} for an 8x8 RGB JPEG"
    return None


def _torchvision_io_loader(path: str) -> torch.Tensor:
    """RGB uint8 ``(3, H, W)`` from torchvision.io: the format is read from the bytes (a PNG named .JPEG, as one
    ImageNet training file is, still decodes); grey and CMYK JPEGs are converted to RGB, as PIL's ``convert`` does."""
    data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    return torchvision.io.decode_image(data, mode=torchvision.io.ImageReadMode.RGB)


def _pil_tensor_loader(path: str) -> torch.Tensor:
    """RGB uint8 ``(3, H, W)`` decoded by PIL (torchvision's default loader): the fallback of the tensor pipeline."""
    return T.functional.pil_to_tensor(torchvision.datasets.folder.default_loader(path))


def _tensor_loader() -> Callable[[str], torch.Tensor]:
    """torchvision.io's decoder, or PIL's with a warning where torchvision.io cannot load."""
    problem = torchvision_io_problem()
    if problem is None:
        return _torchvision_io_loader
    warnings.warn(f'data.decode "torchvision": torchvision.io cannot decode here ({problem}); PIL decodes instead, '
                  "and transforms.v2 crops and resizes as asked", stacklevel=3)
    return _pil_tensor_loader


def _tensor_transforms(image_size: int) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """Train and eval transforms for uint8 ``(3, H, W)`` tensors (no scaling): those of :func:`_folder_transforms`
    for ImageNet-size images, with transforms.v2's antialiased tensor resize instead of PIL's. The random draws are
    the same (torch's RNG, in the same order), so a seed gives the same crop and flip in both pipelines."""
    v2 = importlib.import_module("torchvision.transforms.v2")  # a sub-package `import torchvision` does not load
    resize = round(image_size / _EVAL_CROP_FRACTION)
    train = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()])
    return train, v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)])


def _without_normalize(transform: Any) -> Any:
    """``transform`` (a T.Compose ending in ToTensor, Normalize) ending in PILToTensor instead: the same uint8 pixels,
    neither scaled nor normalised (:class:`BatchNormalize` does that a batch at a time)."""
    *steps, to_tensor, normalize = transform.transforms
    assert isinstance(to_tensor, T.ToTensor) and isinstance(normalize, T.Normalize) and not normalize.inplace
    return T.Compose([*steps, T.PILToTensor()])


class _FolderImages(_ImageFolder):
    """An ImageFolder split at ImageNet size whose DataLoaders normalise a batch at a time.

    ``dataset[i]`` is the normalised float image, as from any torchvision dataset (``transform`` is the whole
    pipeline). :func:`build_loaders` reads :meth:`uint8_item` instead, the same pipeline stopped before scaling, and
    normalises each stacked batch once with ``normalize`` in the collate function: the same numbers, computed for a
    fraction of the cost."""

    def __init__(self, root: str, *, transform: Callable[[Any], Any], uint8_transform: Callable[[Any], Any],
                 normalize: BatchNormalize, loader: Callable[[str], Any]) -> None:
        super().__init__(root, transform=transform, loader=loader)
        self.uint8_transform = uint8_transform
        self.normalize = normalize

    def uint8_item(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        return self.uint8_transform(self.loader(path)), target


class _Uint8Items(Dataset):
    """The :meth:`_FolderImages.uint8_item` view of a dataset, for a DataLoader with :class:`_NormalizingCollate`."""

    def __init__(self, dataset: _FolderImages) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset.uint8_item(index)

    def __getattr__(self, name: str) -> Any:  # classes, targets, samples, ... of the wrapped dataset
        if name == "dataset":  # not yet set (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _NormalizingCollate:
    """The batch of uint8 items: images through :class:`BatchNormalize` (in the worker that loaded them), labels as
    ``default_collate`` stacks them."""

    def __init__(self, normalize: BatchNormalize) -> None:
        self.normalize = normalize

    def __call__(self, batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize([image for image, _ in batch]), default_collate([target for _, target in batch])


def _loader_view(dataset: Any) -> tuple[Any, Callable[[Any], Any] | None]:
    """What a DataLoader over ``dataset`` should read and its collate function (None: the default): uint8 items and a
    normalising collate for :class:`_FolderImages`, the dataset itself otherwise."""
    if isinstance(dataset, _FolderImages):
        return _Uint8Items(dataset), _NormalizingCollate(dataset.normalize)
    return dataset, None


def _folder_splits(
    size: int, mean: Sequence[float], std: Sequence[float], decode: str
) -> tuple[Callable[[str], Any], Callable[[str], Any]]:
    """Train and eval dataset constructors (split folder -> dataset) for ``size``-square model inputs."""
    if decode not in FOLDER_DECODERS:
        raise UserError(f"data.decode: expected one of {', '.join(FOLDER_DECODERS)}, got {decode!r}")
    train_tf, eval_tf = _folder_transforms(size, mean, std)
    if size <= _SMALL_IMAGE_MAX:
        # CIFAR-like images: ToTensor + Normalize are cheap at this size, and utils/device_data.py reads these
        # pipelines as they are, so they stay plain ImageFolders.
        return functools.partial(_ImageFolder, transform=train_tf), functools.partial(_ImageFolder, transform=eval_tf)
    normalize = BatchNormalize(mean, std)
    if decode == "pil":
        default = torchvision.datasets.folder.default_loader
        pipelines = [(tf, _without_normalize(tf), default) for tf in (train_tf, eval_tf)]
    else:
        loader = _tensor_loader()
        pipelines = [(T.Compose([u8, _NormalizeOne(normalize)]), u8, loader) for u8 in _tensor_transforms(size)]
    train, test = (functools.partial(_FolderImages, transform=tf, uint8_transform=u8, normalize=normalize, loader=ld)
                   for tf, u8, ld in pipelines)
    return train, test


def _folder_layout(eval_splits: Sequence[str]) -> str:
    evals = " or ".join(f"<data.root>/{s}/<class>/*.jpg" for s in eval_splits)
    return f"expected layout: <data.root>/train/<class>/*.jpg and {evals} (train/ is only needed for training)"


def _has_image(folder: str) -> bool:
    for _dirpath, _dirs, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(_IMG_EXTENSIONS) for f in files):
            return True
    return False


def _load_folder(name: str, split_dir: str, make: Callable[[str], Any], layout: str) -> Any:
    try:
        return make(split_dir)
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
    decode: str = "pil",
) -> DataBundle:
    """ImageFolder train + eval splits; ``eval_splits`` in order of preference; ``decode``: one of
    :data:`FOLDER_DECODERS` (ImageNet-size images only)."""
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
    make_train, make_test = _folder_splits(size, mean, std, decode)
    test = _load_folder(name, os.path.join(root, found[0]), make_test, layout)
    train_ds = None
    if train:
        train_ds = _load_folder(name, train_dir, make_train, layout)
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
    decode: str = "pil",
) -> DataBundle:
    """ImageNet as ImageFolder trees ``root/train`` and ``root/val`` (torchvision's reference-script layout)."""
    return _build_folder("imagenet", root, eval_splits=("val",), mean=mean, std=std, train=train,
                         download=download, image_size=image_size, decode=decode)


@register_dataset("imagefolder", mean=_IMAGENET_MEAN_STD[0], std=_IMAGENET_MEAN_STD[1])
def _imagefolder(
    root: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    download: bool,
    image_size: int | None,
    decode: str = "pil",
) -> DataBundle:
    """Any ImageFolder tree with ``train/`` and ``val/`` or ``test/`` (``val/`` wins when both exist).

    ``image_size`` defaults to 224 (ImageNet-style RandomResizedCrop / resize 256 + centre crop); at 64 or less the
    transforms are CIFAR-style (pad-4 random crop + flip, images kept at their size), e.g. 32 for CIFAR as PNGs.
    """
    return _build_folder("imagefolder", root, eval_splits=("val", "test"), mean=mean, std=std, train=train,
                         download=download, image_size=image_size, decode=decode)


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
    decode: str = "pil",
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


MAX_AUTO_WORKERS = 16  # past this, more workers mostly add memory (each holds the sample list) and start-up time


def auto_workers(processes: int = 1) -> int:
    """DataLoader workers for each of ``processes`` training processes on this machine (torchrun's local world size):
    the CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow) shared among
    the processes, less one core each for the training loop itself, at most :data:`MAX_AUTO_WORKERS`; 0 (load in
    the training process) when that leaves none.

    Why: an ImageNet training image takes about 2 ms of CPU to decode, crop and normalise on the shared 256-pixel
    sample, more at full size (docs/benchmarks.md), so a GPU that trains thousands of images a second needs every
    core the machine has; a fixed default of 2 starves it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(cores // max(1, processes) - 1, MAX_AUTO_WORKERS))


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
    step (:class:`~utils.data.sampling.SeededSampler`), and its test loader holds a contiguous part of the test set.

    Reproducibility: the training order and every sample's augmentation come from ``(seed, epoch)`` alone
    (:mod:`utils.data.sampling`; call ``train_loader.sampler.set_epoch(epoch)`` before each epoch), the same with any
    number of workers. The loaders have their own generators because every DataLoader iterator draws a base seed;
    without one, each pass would advance the global RNG and change the dropout of the training that follows it.

    ImageNet-size folder datasets are read as uint8 pictures and normalised a batch at a time in the workers
    (:class:`BatchNormalize`): the batches are those of ``dataset[i]``, bit for bit, at a fraction of the cost.
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
        train, train_collate = _loader_view(bundle.train)
        train_loader = DataLoader(SeededAugmentation(train), batch_size=batch_size // world, sampler=sampler,
                                  collate_fn=train_collate, generator=_generator(seed), **common)
    test, test_collate = _loader_view(bundle.test)
    if world > 1:
        lo, hi = shard_bounds(len(test), rank, world)
        test = Subset(test, range(lo, hi))
    test_loader = DataLoader(test, batch_size=test_batch_size or batch_size, shuffle=False, collate_fn=test_collate,
                             generator=_generator(seed), **common)
    return train_loader, test_loader
