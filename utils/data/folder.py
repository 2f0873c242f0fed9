"""ImageFolder trees ("imagenet", "imagefolder"): their transforms, the two ways of decoding ImageNet-size images
(:data:`FOLDER_DECODERS`) and the per-batch normalisation (:class:`BatchNormalize`) their DataLoaders use.

A missing folder, an empty class folder or mismatched class lists are one-line
:class:`~utils.core.errors.UserError` messages that show the expected layout and the config key to change
(``data.root``, ``data.image_size``, ``data.decode``). Which files a split holds (hidden files are not images, folder
links back into the tree are refused) and what becomes of a file that cannot be decoded (``data.skip_bad_images``)
are :mod:`utils.data.imagefiles`'s rules. Without ``data.image_size`` the model input is the images' own size when a
sample of their headers shows one small square size (CIFAR as PNGs: 32), else 224.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate, get_worker_info

from utils.core import choices, distributed
from utils.core.errors import UserError
from utils.core.tvguard import torchvision
from utils.data.catalog import MIN_IMAGE_SIZE, DataBundle, DataSpec, register_dataset
from utils.data.imagefiles import (
    IMAGE_EXTENSIONS,
    ImageFiles,
    MarkUnreadable,
    SetAsideUnreadable,
    UnreadableImages,
    class_folders,
    header_sizes,
    image_files,
    list_samples,
    read_image,
)

T = torchvision.transforms
# transforms.v2 is a sub-package that `import torchvision` does not load; imported through the guarded module's name
# (utils.core.tvguard), since a plain `import torchvision.transforms.v2` at the top would import torchvision unguarded.
v2 = importlib.import_module("torchvision.transforms.v2")

__all__ = ["FOLDER_DECODERS", "BatchNormalize", "torchvision_io_problem"]

_LOG = logging.getLogger(__name__)

_IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# Images up to this side are treated as small, CIFAR-like images: no rescaling, pad-and-crop augmentation.
# RandomResizedCrop's 8%-100% area crops destroy objects that are only 32 pixels across.
_SMALL_IMAGE_MAX = 64
# Evaluation resizes the short side to image_size / 0.875 and centre-crops image_size (256 -> 224 for ImageNet).
_EVAL_CROP_FRACTION = 0.875
_DEFAULT_SIZE = 224  # data.image_size when the images are not all one small square size
_SIZE_SAMPLE = 64  # image headers read (spread over the eval split's classes) to choose the default size


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
    (utils/core/tvguard.py). ``import torchvision`` succeeds regardless and only calling a decoder fails, so the check
    decodes a tiny JPEG."""
    try:
        image = torchvision.io.decode_jpeg(_tiny_jpeg())
    except (RuntimeError, OSError, ImportError, AttributeError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if tuple(image.shape) != (3, 8, 8) or image.dtype != torch.uint8:
        return f"decode_jpeg returned {image.dtype} {tuple(image.shape)} for an 8x8 RGB JPEG"
    return None


def _torchvision_io_loader(path: str) -> torch.Tensor:
    """RGB uint8 ``(3, H, W)`` from torchvision.io: the format is read from the bytes (a PNG named .JPEG, as one
    ImageNet training file is, still decodes); grey and CMYK JPEGs are converted to RGB, as PIL's ``convert`` does.

    torchvision.io has no decompression-bomb guard, so PIL reads the header first (no pixels): past PIL's limit it
    raises (or warns, which :func:`~utils.data.imagefiles.read_image` turns into an error) before anything is
    decoded. A format PIL cannot identify is left to torchvision.io; if it cannot decode it either, PIL's error says
    what the file is (not an image), rather than torchvision.io's."""
    raw = np.fromfile(path, dtype=np.uint8)
    unidentified = None
    try:
        Image.open(io.BytesIO(raw.tobytes())).close()
    except UnidentifiedImageError as exc:
        unidentified = exc
    try:
        return torchvision.io.decode_image(torch.from_numpy(raw), mode=torchvision.io.ImageReadMode.RGB)
    except RuntimeError:
        if unidentified is not None:
            raise unidentified from None
        raise


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
    resize = round(image_size / _EVAL_CROP_FRACTION)
    train = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()])
    return train, v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)])


def _without_normalize(transform: Any) -> Any:
    """``transform`` (a T.Compose ending in ToTensor, Normalize) ending in PILToTensor instead: the same uint8 pixels,
    neither scaled nor normalised (:class:`BatchNormalize` does that a batch at a time)."""
    *steps, to_tensor, normalize = transform.transforms
    assert isinstance(to_tensor, T.ToTensor) and isinstance(normalize, T.Normalize) and not normalize.inplace
    return T.Compose([*steps, T.PILToTensor()])


class _FolderImages(ImageFiles):
    """An ImageFolder split at ImageNet size whose DataLoaders normalise a batch at a time.

    ``dataset[i]`` is the normalised float image, as from any torchvision dataset (``transform`` is the whole
    pipeline). :func:`build_loaders` reads :meth:`uint8_item` instead, the same pipeline stopped before scaling, and
    normalises each stacked batch once with ``normalize`` in the collate function: the same numbers, computed for a
    fraction of the cost."""

    def __init__(self, root: str, *, transform: Callable[[Any], Any], uint8_transform: Callable[[Any], Any],
                 normalize: BatchNormalize, loader: Callable[[str], Any], skip_bad_images: bool = False) -> None:
        super().__init__(root, transform=transform, loader=loader, skip_bad_images=skip_bad_images)
        self.uint8_transform = uint8_transform
        self.normalize = normalize

    def uint8_item(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        return self.uint8_transform(read_image(self.loader, path)), target


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


def _loader_view(dataset: Any) -> tuple[Any, Callable[[Any], Any] | None, UnreadableImages | None]:
    """What a DataLoader over ``dataset`` should read, its collate function (None: the default) and what it does with
    image files that cannot be decoded (None: the dataset has no such files).

    uint8 items and a normalising collate for :class:`_FolderImages`; for every
    :class:`~utils.data.imagefiles.ImageFiles`, the items of unreadable files are marked instead of raising in a
    worker and set aside by the collate function, for the DataLoader to stop at or skip
    (:mod:`utils.data.imagefiles`); the dataset itself otherwise."""
    if not isinstance(dataset, ImageFiles):
        return dataset, None, None
    items, collate = dataset, None
    if isinstance(dataset, _FolderImages):
        items, collate = _Uint8Items(dataset), _NormalizingCollate(dataset.normalize)
    unreadable = UnreadableImages(skip=dataset.skip_bad_images, where=dataset.root)
    return MarkUnreadable(items), SetAsideUnreadable(collate), unreadable


def _folder_splits(size: int, spec: DataSpec) -> tuple[Callable[[str], Any], Callable[[str], Any]]:
    """Train and eval dataset constructors (split folder -> dataset) for ``size``-square model inputs, normalised with
    ``spec.mean``/``spec.std``, decoded as ``spec.decode`` says, unreadable files handled as
    ``spec.skip_bad_images`` says."""
    if spec.decode not in FOLDER_DECODERS:
        raise UserError(f"data.decode: expected one of {', '.join(FOLDER_DECODERS)}, got {spec.decode!r}")
    train_tf, eval_tf = _folder_transforms(size, spec.mean, spec.std)
    folder = functools.partial(ImageFiles, skip_bad_images=spec.skip_bad_images)
    if size <= _SMALL_IMAGE_MAX:
        # CIFAR-like images: ToTensor + Normalize are cheap at this size, and utils/data/device.py reads these
        # pipelines as they are, so they stay plain ImageFolder pipelines.
        return functools.partial(folder, transform=train_tf), functools.partial(folder, transform=eval_tf)
    normalize = BatchNormalize(spec.mean, spec.std)
    if spec.decode == "pil":
        default = torchvision.datasets.folder.default_loader
        pipelines = [(tf, _without_normalize(tf), default) for tf in (train_tf, eval_tf)]
    else:
        loader = _tensor_loader()
        pipelines = [(T.Compose([u8, _NormalizeOne(normalize)]), u8, loader) for u8 in _tensor_transforms(size)]
    train, test = (functools.partial(_FolderImages, transform=tf, uint8_transform=u8, normalize=normalize, loader=ld,
                                     skip_bad_images=spec.skip_bad_images)
                   for tf, u8, ld in pipelines)
    return train, test


def _folder_layout(eval_splits: Sequence[str]) -> str:
    evals = " or ".join(f"<data.root>/{s}/<class>/*.jpg" for s in eval_splits)
    return f"expected layout: <data.root>/train/<class>/*.jpg and {evals} (train/ is only needed for training)"


def _load_folder(name: str, split_dir: str, make: Callable[[str], Any], layout: str) -> Any:
    try:
        return make(split_dir)
    except FileNotFoundError:
        # Diagnose from the tree itself rather than by parsing torchvision's message.
        classes = class_folders(split_dir)
        if not classes:
            raise UserError(f"{name}: no class folders in {split_dir}; {layout}. Fix: put each class's images in "
                            f"its own sub-folder") from None
        empty = [os.path.join(split_dir, c) for c in classes
                 if not image_files(os.path.join(split_dir, c), split_dir)]
        if not empty:
            raise
        raise UserError(f"{name}: class folder {', '.join(empty)} has no images ({', '.join(IMAGE_EXTENSIONS)}; "
                        f"hidden files are not images). Fix: add images or delete the folder (every class folder "
                        f"becomes a label)") from None


def _default_size(name: str, split_dir: str) -> int:
    """``data.image_size`` when it is not set: the images' own side when a sample of their headers (up to
    :data:`_SIZE_SAMPLE`, spread over the split ``split_dir``) shows one square size from
    :data:`~utils.data.catalog.MIN_IMAGE_SIZE` to :data:`_SMALL_IMAGE_MAX`, else :data:`_DEFAULT_SIZE`, with a
    warning when every image read is smaller than that (each would be scaled up: 49 times the pixels for 32x32
    images, and a model trained at their size scores near chance)."""
    try:
        classes = class_folders(split_dir)
        paths = [path for path, _ in list_samples(split_dir, {c: i for i, c in enumerate(classes)})]
    except FileNotFoundError:  # no classes, an empty class: loading the split says which
        return _DEFAULT_SIZE
    sample = paths[::max(1, len(paths) // _SIZE_SAMPLE)][:_SIZE_SAMPLE]
    sizes = set(header_sizes(sample))
    read = f"{len(sample)} of the {len(paths)} images in {split_dir} read"
    (width, height), *others = sorted(sizes) or [(0, 0)]
    if not others and width == height and MIN_IMAGE_SIZE <= width <= _SMALL_IMAGE_MAX:
        if distributed.is_main():  # under torchrun every rank reads the same headers; one says so
            print(f"note: {name}: the images are {width}x{width} pixels ({read}): data.image_size {width}, "
                  f"CIFAR-style augmentation; set data.image_size to resize them")
        return width
    if sizes and max(min(size) for size in sizes) < _DEFAULT_SIZE and distributed.is_main():
        width, height = max(sizes, key=min)
        _LOG.warning("%s: the images are at most %dx%d pixels (%s) and data.image_size is not set: each is scaled up "
                     "to %dx%d. Fix: set data.image_size (to %d to keep this)", name, width, height, read,
                     _DEFAULT_SIZE, _DEFAULT_SIZE, _DEFAULT_SIZE)
    return _DEFAULT_SIZE


def _build_folder(name: str, root: str, spec: DataSpec, *, eval_splits: Sequence[str]) -> DataBundle:
    """ImageFolder train + eval splits; ``eval_splits`` in order of preference; ``spec.decode``: one of
    :data:`FOLDER_DECODERS` (ImageNet-size images only). ``spec.download`` is ignored: there is no download source,
    "download if missing" has nothing to fetch, and the errors below explain what is missing."""
    layout = _folder_layout(eval_splits)
    fix = "Fix: point data.root at such a tree"
    if not os.path.isdir(root):
        raise UserError(f"{name}: data.root {root} does not exist; {layout}. {fix}")
    found = [s for s in eval_splits if os.path.isdir(os.path.join(root, s))]
    if not found:
        raise UserError(f"{name}: no {' or '.join(s + '/' for s in eval_splits)} folder in {root}; {layout}. {fix}")
    train_dir = os.path.join(root, "train")
    if spec.train and not os.path.isdir(train_dir):
        raise UserError(f"{name}: no train/ folder in {root}, needed for training; {layout}. {fix}, or run "
                        f"evaluation only")
    test_dir = os.path.join(root, found[0])
    size = spec.image_size if spec.image_size is not None else _default_size(name, test_dir)
    make_train, make_test = _folder_splits(size, spec)
    test = _load_folder(name, test_dir, make_test, layout)
    train_ds = None
    if spec.train:
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
def _imagenet(root: str, spec: DataSpec) -> DataBundle:
    """ImageNet as ImageFolder trees ``root/train`` and ``root/val`` (torchvision's reference-script layout)."""
    return _build_folder("imagenet", root, spec, eval_splits=("val",))


@register_dataset("imagefolder", mean=_IMAGENET_MEAN_STD[0], std=_IMAGENET_MEAN_STD[1])
def _imagefolder(root: str, spec: DataSpec) -> DataBundle:
    """Any ImageFolder tree with ``train/`` and ``val/`` or ``test/`` (``val/`` wins when both exist).

    ``image_size`` defaults to the images' own side when they are one small square size (:func:`_default_size`),
    else 224 (ImageNet-style RandomResizedCrop / resize 256 + centre crop); at 64 or less the transforms are
    CIFAR-style (pad-4 random crop + flip, images kept at their size), e.g. 32 for CIFAR as PNGs.
    """
    return _build_folder("imagefolder", root, spec, eval_splits=("val", "test"))
