"""scikit-learn's bundled 8x8 digits as 3x32x32 images: the embedded, download-free demo dataset ("digits")."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.core.tvguard import torchvision
from utils.data.catalog import DataBundle, DataSpec, fixed_size, register_dataset

T = torchvision.transforms

__all__ = ["digits_mean_std_from_data"]


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
    # Imported here, not at the top: scikit-learn takes about a second to import and only this demo dataset needs
    # it, so runs on the other datasets never load it.
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
def _digits(root: str, spec: DataSpec) -> DataBundle:
    """scikit-learn's bundled 8x8 digits (1,797 images) as 3x32x32 images: the embedded, download-free demo.

    ``root`` and ``download`` are ignored (the data ships inside scikit-learn). Augmentation is a random translation
    by up to 4 pixels; no horizontal flip, which turns some digits into others or into no digit.
    """
    del root  # the data ships inside scikit-learn; spec.download has nothing to fetch either
    size = fixed_size("digits", 8 * _DIGITS_SCALE, spec.image_size)
    train_x, train_y, test_x, test_y = _digits_split()
    classes = [str(d) for d in range(10)]
    normalize = T.Normalize(spec.mean, spec.std)
    test = _TensorImages(test_x, test_y, classes, normalize)
    train_ds = None
    if spec.train:
        # Padding fills 0, the background of the digits, as RandomCrop's zero padding does for CIFAR before Normalize.
        train_ds = _TensorImages(train_x, train_y, classes, T.Compose([T.RandomCrop(size, padding=4), normalize]))
    return DataBundle(train=train_ds, test=test, num_classes=10, classes=classes, input_size=(3, size, size))
