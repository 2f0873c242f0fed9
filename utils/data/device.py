"""Small-image datasets held on the training device as uint8 and augmented there, per batch (``data.loader: "gpu"``).

Why: for 32x32 images and CIFAR-sized networks on a fast GPU, the torchvision path (decode, crop, flip, ToTensor and
Normalize one image at a time in Python on CPU workers, then one host-to-device copy per batch) is slower than the
model. Here a split is copied to the device once (CIFAR-10's 50,000 training images are 150 MB as uint8), and a batch
is one gather that crops and flips every image at once, then the conversion to float and the normalisation: no
workers, no per-step copies, no Python loop over images.

The semantics are those of the torchvision path (:mod:`utils.data.loaders`), checked by ``tests/test_device_data.py``:

* augmentation: ``RandomCrop(size, padding=p)`` (zero padding, offsets ``i, j`` uniform in ``0..2p`` independently per
  image) then ``RandomHorizontalFlip(prob)``, then ``ToTensor`` and ``Normalize`` with the same float operations, so an
  image with a given offset and flip is bit for bit the tensor torchvision makes; the test split is not augmented and
  equals torchvision's test tensors exactly;
* order: each epoch visits every image once, in the permutation :class:`utils.data.sampling.SeededSampler` draws for
  ``(seed, epoch)``, so both paths put the same images in the same batches; ``drop_last=False`` (a last, smaller
  batch). Only the crop offsets and flips differ from the DataLoader path's draws: that path seeds each image
  separately, which cannot be vectorised; here they come from the same per-epoch generator, after the permutation;
* reproducibility (the contract of :mod:`utils.data.sampling`): the batches of an epoch depend on ``(seed, epoch)``
  alone; ``loader.sampler.set_epoch(epoch, start)`` makes the next pass start at position ``start`` (a run resumed
  inside an epoch) without drawing anything differently, and nothing touches the global RNG (dropout stays the training
  loop's). The draws are made on the CPU, so the batches are the same on every device; one copy of the epoch's order and
  draws (``N`` indices, ``2N`` offsets, ``N`` flags) goes to the device per epoch, nothing per step.

``build_device_loaders(bundle, ...)`` makes both loaders from the :class:`~utils.data.catalog.DataBundle` that
:func:`utils.data.datasets.build_datasets` returns (so file checks, downloads and error messages stay in one place),
reading the crop padding, flip probability, mean and std from the bundle's own transforms: it refuses a pipeline it
cannot reproduce (ImageNet-style ``RandomResizedCrop``, the digits' float images) instead of training on something
else.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from utils.core.distributed import shard_bounds
from utils.core.errors import UserError
from utils.core.tvguard import torchvision
from utils.data.datasets import build_datasets, default_mean_std
from utils.data.imagefiles import BadImageError, Unreadable, UnreadableImages, read_image
from utils.data.sampling import epoch_seed, rank_positions, rank_share

T = torchvision.transforms

__all__ = [
    "Augmentation",
    "DeviceLoader",
    "EpochDraws",
    "EpochOrder",
    "LoaderSpec",
    "build_device_loaders",
    "crop_flip",
    "dataset_uint8",
    "normalize",
]

_KEY = 'data.loader "gpu"'


@dataclass(frozen=True)
class Augmentation:
    """``RandomCrop(size, padding=padding)`` (zero fill) then ``RandomHorizontalFlip(flip_p)``."""

    padding: int = 4  # pixels of zero padding on each side; crop offsets are uniform in 0..2 * padding
    flip_p: float = 0.5  # probability of a horizontal flip

    def __post_init__(self) -> None:
        if not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"padding must be an integer >= 0 (pixels), got {self.padding!r}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be a probability in [0, 1], got {self.flip_p!r}")


@dataclass(frozen=True)
class LoaderSpec:
    """What a :class:`DeviceLoader` makes of its images: batches of ``batch_size`` on ``device``, normalised with
    ``mean``/``std``, shuffled and augmented per epoch when ``train``, this rank's share under torchrun."""

    batch_size: int  # images per batch; when training, the global batch of which this rank yields its share
    mean: Sequence[float]  # per-channel normalisation on the 0..1 scale
    std: Sequence[float]
    train: bool  # shuffle per epoch and augment; False: the images in order, as they are
    seed: int = 0  # with the epoch, the whole order and every draw (utils.data.sampling.epoch_seed)
    device: torch.device | str = "cpu"  # where the images are held and the batches are made
    augmentation: Augmentation | None = Augmentation()  # training only; None: shuffle only
    channels_last: bool = False  # yield channels-last tensors
    rank: int = 0  # this process among ``world`` (training only: a test split is sharded by the caller)
    world: int = 1


@dataclass(frozen=True)
class EpochDraws:
    """What one pass yields, by position: dataset indices, crop offsets ``(row, col)`` and flip flags (CPU tensors)."""

    order: torch.Tensor  # int64 (M,)
    offsets: torch.Tensor | None  # int64 (M, 2), in 0..2 * padding; None without augmentation
    flips: torch.Tensor | None  # bool (M,); None without augmentation


class EpochOrder:
    """The ``sampler`` of a :class:`DeviceLoader`: ``set_epoch(epoch, start)`` chooses what the next pass yields.

    With ``shuffle`` the order is the permutation :class:`utils.data.sampling.SeededSampler` draws for ``(seed, epoch)``
    (the same generator, seeded with :func:`utils.data.sampling.epoch_seed`, and ``randperm`` as its first draw); the
    crop offsets, then the flips, are drawn after it from the same generator, for every position of the epoch.
    Everything is drawn whole, then cut at ``start``, so a resumed pass yields exactly the suffix of the uninterrupted
    one. ``start`` applies to the next pass only, as in ``SeededSampler``.
    """

    def __init__(self, size: int, seed: int, *, shuffle: bool, augmentation: Augmentation | None) -> None:
        self.size, self.seed, self.shuffle, self.augmentation = size, seed, shuffle, augmentation
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0 (a position in the epoch), got {start}")
        self.epoch, self.start = epoch, start

    def draw(self) -> EpochDraws:
        """The next pass's draws (from position ``start``), and back to ``start = 0`` for the pass after it."""
        start, self.start = self.start, 0
        if not self.shuffle and self.augmentation is None:
            return EpochDraws(order=torch.arange(start, self.size), offsets=None, flips=None)
        g = torch.Generator()
        g.manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
        offsets = flips = None
        if self.augmentation is not None:
            offsets = torch.randint(0, 2 * self.augmentation.padding + 1, (self.size, 2), generator=g)
            flips = torch.rand(self.size, generator=g) < self.augmentation.flip_p  # RandomHorizontalFlip's test
            offsets, flips = offsets[start:], flips[start:]
        return EpochDraws(order=order[start:], offsets=offsets, flips=flips)

    def __len__(self) -> int:
        return max(self.size - self.start, 0)


def crop_flip(images: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, *,
              padding: int, channels_last: bool = False) -> torch.Tensor:
    """``images[index]`` zero-padded by ``padding``, cropped back to their size at ``offsets`` and flipped where
    ``flips``: one gather for the whole batch.

    ``images`` (N, C, H, W), any dtype; ``index`` (B,), ``offsets`` (B, 2) as ``(top, left)`` in the padded image
    (torchvision's ``i, j``), ``flips`` (B,) bool, all on the device of ``images``. Output pixel ``(y, x)`` of an
    image comes from source row ``i - padding + y`` and column ``j - padding + x`` (``j - padding + W - 1 - x``
    flipped: the flip follows the crop, as in the torchvision pipeline), and is 0 outside the image.
    With ``channels_last`` the gather writes NHWC memory directly (the result is NCHW-shaped, channels-last strided).
    """
    _, channels, height, width = images.shape
    device = images.device
    rows = offsets[:, :1] - padding + torch.arange(height, device=device)  # (B, H) source rows
    x = torch.arange(width, device=device)
    cols = offsets[:, 1:] - padding + torch.where(flips[:, None], width - 1 - x, x)  # (B, W) source columns
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]  # (B, H, W)
    rows, cols, ch = rows.clamp(0, height - 1), cols.clamp(0, width - 1), torch.arange(channels, device=device)
    if channels_last:
        out = images[index[:, None, None, None], ch[None, None, None, :], rows[:, :, None, None],
                     cols[:, None, :, None]]  # (B, H, W, C)
        return out.masked_fill_(~inside[..., None], 0).permute(0, 3, 1, 2)
    out = images[index[:, None, None, None], ch[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    return out.masked_fill_(~inside[:, None], 0)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ``(x / 255 - mean) / std``: ``ToTensor`` then ``Normalize``, the same float
    operations in the same order, so the results are bit-identical to torchvision's (``mean``, ``std``: (C,) float32
    on the device). The memory format of ``images`` is kept."""
    shape = (1, -1, 1, 1)
    return images.to(torch.float32).div_(255).sub_(mean.view(shape)).div_(std.view(shape))


class DeviceLoader:
    """Batches ``(images, labels)`` made on ``device`` from uint8 images held there; a drop-in for the DataLoaders
    of :func:`utils.data.loaders.build_loaders` (see the module docstring for what is the same and what differs).

    ``images``: uint8 (N, C, H, W), tensor or array; ``labels``: (N,) integers; ``spec``: batch size, normalisation,
    order, augmentation, device and rank (:class:`LoaderSpec`). ``spec.train`` shuffles per epoch and augments with
    ``spec.augmentation`` (``None``: shuffle only); otherwise the images come in order, as they are.

    ``len(loader)`` is the number of batches of the next pass (``ceil((N - start) / batch_size)``, as a DataLoader
    over a ``SeededSampler``); ``loader.sampler.set_epoch(epoch, start)`` (or ``loader.set_epoch``) picks the epoch.
    """

    generator = None  # no worker base seed to set: what start_epoch_order looks for on a DataLoader

    def __init__(self, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | Sequence[int],
                 spec: LoaderSpec) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels, dtype=torch.int64)
        mean, std, batch_size, world = spec.mean, spec.std, spec.batch_size, spec.world
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be one per image ({len(images)}), got shape {tuple(labels.shape)}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1] or min(std) <= 0:
            raise ValueError(f"mean/std: one value per channel ({images.shape[1]}), std > 0; got {mean} / {std}")
        if not isinstance(batch_size, int) or batch_size < 1 or (spec.train and batch_size % world):
            raise ValueError(f"batch_size must be a positive integer (divisible by world={world} when training), got "
                             f"{batch_size!r}")
        self.device = torch.device(spec.device)
        self.images = images.to(self.device).contiguous()  # the one host-to-device copy of the pixels
        self.labels = labels.to(self.device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.batch_size, self.train, self.channels_last = batch_size, spec.train, spec.channels_last
        self.rank, self.world = (spec.rank, world) if spec.train else (0, 1)  # a test split is sharded by the caller
        self.augmentation = spec.augmentation if spec.train else None
        self.sampler = EpochOrder(len(images), spec.seed, shuffle=spec.train, augmentation=self.augmentation)

    @classmethod
    def from_cifar_root(cls, root: str, *, train: bool, batch_size: int, mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None, **kwargs: Any) -> DeviceLoader:
        """The training (``train``) or test split of ``<root>/cifar-10-batches-py``, read and checked by
        :mod:`utils.data.cifar` (a missing or damaged file is the same one-line UserError), normalised with
        ``mean``/``std`` (default: CIFAR-10's). ``kwargs``: the other fields of :class:`LoaderSpec` (``seed``,
        ``device``, ``augmentation``, ``channels_last``...)."""
        default_mean, default_std = default_mean_std("cifar10")
        mean, std = mean or default_mean, std or default_std
        bundle = build_datasets("cifar10", root, mean=mean, std=std, train=train)
        images, labels = dataset_uint8(bundle.train if train else bundle.test, bundle.input_size[1])
        return cls(images, labels, LoaderSpec(batch_size=batch_size, mean=mean, std=std, train=train, **kwargs))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Same as ``loader.sampler.set_epoch``: the next pass is epoch ``epoch``, from position ``start``."""
        self.sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        if self.world > 1:
            share = rank_share(len(self.sampler), self.batch_size, self.world)
            return math.ceil(share / (self.batch_size // self.world))
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        draws = self.sampler.draw()
        if not self.train:  # in order, as they are: slices, no gather
            first = int(draws.order[0]) if len(draws.order) else 0
            for k in range(first, first + len(draws.order), self.batch_size):
                yield self._finish(self.images[k:k + self.batch_size]), self.labels[k:k + self.batch_size]
            return
        order, offsets, flips, step = draws.order, draws.offsets, draws.flips, self.batch_size
        if self.world > 1:  # this rank's share of every step (utils.core.distributed)
            mine = rank_positions(len(order), self.batch_size, self.rank, self.world)
            order = order[mine]
            offsets = offsets[mine] if offsets is not None else None
            flips = flips[mine] if flips is not None else None
            step = self.batch_size // self.world
        order = order.to(self.device, non_blocking=True)  # once per epoch; the only other copy
        if offsets is not None and flips is not None:
            offsets = offsets.to(self.device, non_blocking=True)
            flips = flips.to(self.device, non_blocking=True)
        for k in range(0, len(order), step):
            index = order[k:k + step]
            if offsets is None or flips is None or self.augmentation is None:
                batch = self.images[index]
            else:
                batch = crop_flip(self.images, index, offsets[k:k + step], flips[k:k + step],
                                  padding=self.augmentation.padding, channels_last=self.channels_last)
            yield self._finish(batch), self.labels[index]

    def _finish(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)  # a no-op for crop_flip's NHWC output
        return normalize(batch, self.mean, self.std)


# ------------------------------------------------------------------------------------------ from a DataBundle


@dataclass(frozen=True)
class _Pipeline:
    """What a torchvision transform pipeline does, in the terms DeviceLoader can reproduce."""

    augmentation: Augmentation | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _square(size: Any) -> int | None:
    """The side of a square torchvision ``size`` (int, (s,), (s, s)), else None."""
    sides = [size] if isinstance(size, int) else list(size)
    return sides[0] if sides and all(s == sides[0] for s in sides) and len(sides) <= 2 else None


def _read_pipeline(transform: Any, side: int, what: str) -> _Pipeline:
    """Translate ``transform`` (a ``T.Compose``) into a :class:`_Pipeline`, or raise a UserError naming the step
    that cannot be reproduced on the device. ``side``: the images' side, at which Resize/CenterCrop are no-ops."""
    steps = list(getattr(transform, "transforms", [transform]))
    padding, flip_p, mean, std, tensor = None, 0.0, None, None, False

    def refuse(step: Any, why: str) -> UserError:
        return UserError(f"{_KEY}: the {what} transform {step!r} {why}; the GPU loader reproduces only the CIFAR-style "
                         "pad-and-crop + flip pipeline of cifar10 and imagefolder with data.image_size <= 64. Fix: "
                         'set data.loader to "torchvision"')

    for step in steps:
        if isinstance(step, T.Resize | T.CenterCrop):
            if _square(step.size) != side or tensor:
                raise refuse(step, f"changes {side}x{side} images")
        elif isinstance(step, T.RandomCrop):
            pad = step.padding
            pad = _square(pad) if not isinstance(pad, int) else pad
            if (_square(step.size) != side or pad is None or step.fill != 0 or step.padding_mode != "constant"
                    or tensor or padding is not None):
                raise refuse(step, "is not a zero-padded crop back to the image size")
            padding = pad
        elif isinstance(step, T.RandomHorizontalFlip):
            if tensor or flip_p:
                raise refuse(step, "comes after ToTensor or twice")
            flip_p = float(step.p)
        elif isinstance(step, T.ToTensor):
            tensor = True
        elif isinstance(step, T.Normalize):
            if not tensor or mean is not None or step.inplace:
                raise refuse(step, "is not one Normalize after ToTensor")
            mean, std = tuple(float(m) for m in step.mean), tuple(float(s) for s in step.std)
        else:
            raise refuse(step, "has no device counterpart")
    if not tensor:
        raise refuse(transform, "has no ToTensor (the images are not uint8 pictures)")
    mean = mean if mean is not None else (0.0,) * 3
    std = std if std is not None else (1.0,) * 3
    augmentation = Augmentation(padding=padding or 0, flip_p=flip_p) if padding or flip_p else None
    return _Pipeline(augmentation=augmentation, mean=mean, std=std)


def _folder_uint8(dataset: Any, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dataset_uint8` of an ImageFolder: every file decoded once, here; one that cannot be decoded stops with
    one line naming it, or with ``data.skip_bad_images`` is left out and named once
    (:class:`~utils.data.imagefiles.UnreadableImages`)."""
    unreadable = UnreadableImages(skip=getattr(dataset, "skip_bad_images", False), where=dataset.root)
    arrays, labels = [], []
    for path, label in dataset.samples:
        try:
            array = np.asarray(read_image(dataset.loader, path), dtype=np.uint8)  # RGB, (H, W, 3)
        except BadImageError as exc:
            unreadable.take([Unreadable(exc.path, exc.reason)])
            continue
        if array.shape != (side, side, 3):
            raise UserError(f"{_KEY}: {path} is {array.shape[1]}x{array.shape[0]}, not {side}x{side}: the GPU "
                            "loader keeps images as they are. Fix: set data.image_size to the images' size, or "
                            'data.loader to "torchvision" (which resizes)')
        arrays.append(array)
        labels.append(label)
    unreadable.tell()
    if not arrays:
        raise UserError(f"data: none of the {len(dataset.samples)} image files of {dataset.root} can be read "
                        f"(data.skip_bad_images left every one out). Fix: point data.root at readable images")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(labels, dtype=torch.int64)


def dataset_uint8(dataset: Any, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (uint8 (N, 3, side, side)) and labels (int64 (N,)) of a torchvision CIFAR10 or ImageFolder dataset,
    without its transforms: CIFAR's decoded array as it is, an ImageFolder's files decoded once, here
    (:func:`_folder_uint8`)."""
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4 and data.shape[3] == 3:
        images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) as torchvision keeps it
        labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    elif hasattr(dataset, "samples") and hasattr(dataset, "loader"):
        images, labels = _folder_uint8(dataset, side)
    else:
        raise UserError(f"{_KEY}: a {type(dataset).__name__} dataset has no uint8 pictures to hold on the device; the "
                        'GPU loader takes cifar10 and imagefolder (data.image_size <= 64). Fix: set data.loader to '
                        '"torchvision"')
    if images.shape[2:] != (side, side):
        raise UserError(f"{_KEY}: the images are {tuple(images.shape[2:])}, the model expects {side}x{side}; set "
                        'data.loader to "torchvision"')
    return images, labels


def build_device_loaders(bundle: Any, *, batch_size: int, seed: int, device: torch.device | str,
                         test_batch_size: int | None = None, channels_last: bool = False, rank: int = 0,
                         world: int = 1) -> tuple[DeviceLoader | None, DeviceLoader]:
    """Train (None if ``bundle.train`` is None) and test :class:`DeviceLoader`s for a
    :class:`~utils.data.catalog.DataBundle`, with the augmentation and normalisation read from the bundle's own
    transforms (the torchvision path's, exactly); a pipeline it cannot reproduce is a UserError that says to use
    ``data.loader: "torchvision"``.

    ``rank`` of ``world`` (torchrun): ``batch_size`` is the global batch, of which the training loader yields this
    rank's share of every step; the test loader holds a contiguous part of the test set (as
    :func:`utils.data.loaders.build_loaders` does)."""
    if batch_size < 1 or (test_batch_size is not None and test_batch_size < 1):
        raise UserError(f"data.batch_size/data.test_batch_size: expected positive integers (images per batch), got "
                        f"{batch_size} / {test_batch_size}")
    side = bundle.input_size[1]
    spec = _read_pipeline(bundle.train.transform, side, "training") if bundle.train is not None else None
    test = _read_pipeline(bundle.test.transform, side, "test")
    if test.augmentation is not None:
        raise UserError(f"{_KEY}: the test transform {bundle.test.transform!r} is random; set data.loader to "
                        '"torchvision"')
    images, labels = dataset_uint8(bundle.test, side)
    if world > 1:
        lo, hi = shard_bounds(len(images), rank, world)
        images, labels = images[lo:hi], labels[lo:hi]
    test_loader = DeviceLoader(images, labels, LoaderSpec(
        batch_size=test_batch_size or batch_size, mean=test.mean, std=test.std, train=False, seed=seed, device=device,
        channels_last=channels_last))
    train_loader = None
    if bundle.train is not None and spec is not None:
        images, labels = dataset_uint8(bundle.train, side)
        train_loader = DeviceLoader(images, labels, LoaderSpec(
            batch_size=batch_size, mean=spec.mean, std=spec.std, train=True, seed=seed, device=device,
            augmentation=spec.augmentation, channels_last=channels_last, rank=rank, world=world))
    return train_loader, test_loader
