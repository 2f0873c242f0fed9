"""What every dataset builder shares: the :class:`DataSpec` it is given, the :class:`DataBundle` it returns, and the
registry it joins with :func:`register_dataset`.

The builders live one family to a module (:mod:`utils.data.cifar`, :mod:`utils.data.folder`,
:mod:`utils.data.digits`) and import this module; :mod:`utils.data.datasets` imports them all and is what callers
use. Everything a user can get wrong in a :class:`DataSpec` is a one-line :class:`~utils.core.errors.UserError`
naming the config key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from torch.utils.data import Dataset

from utils.core.errors import UserError
from utils.core.registry import Registry

__all__ = [
    "DATASETS",
    "MIN_IMAGE_SIZE",
    "DataBundle",
    "DataSpec",
    "DatasetBuilder",
    "DatasetEntry",
    "fixed_size",
    "register_dataset",
]


MIN_IMAGE_SIZE = 8  # pixels: the smallest data.image_size (and image side taken as the default) any dataset accepts


@dataclass(frozen=True)
class DataBundle:
    """The datasets of one experiment plus what a model needs to know about them."""

    train: Dataset | None  # None when only evaluation was asked for
    test: Dataset
    num_classes: int
    classes: list[str]
    input_size: tuple[int, int, int]  # C, H, W the models see


@dataclass(frozen=True)
class DataSpec:
    """How to build a dataset's splits: every builder takes one, and uses the fields that apply to it.

    Checked on construction (the ``data.*`` keys a user sets); ``decode`` is checked by the folder datasets only,
    the others ignore it and ``skip_bad_images``.
    """

    mean: Sequence[float]  # per-channel normalisation on the 0..1 scale, one value per RGB channel
    std: Sequence[float]
    train: bool = True  # build the training split too (evaluation needs only the test split)
    download: bool = False  # fetch missing data where the dataset has a download source; a no-op otherwise
    image_size: int | None = None  # side in pixels of the square images the model sees; None: the dataset's own
    decode: str = "pil"  # how the folder datasets decode ImageNet-size images (utils.data.folder.FOLDER_DECODERS)
    skip_bad_images: bool = False  # folder datasets: leave out image files that cannot be decoded (else: stop there)

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UserError(f"data.mean/data.std: expected 3 values each (one per RGB channel), got {list(self.mean)} "
                            f"/ {list(self.std)}")
        if any(s <= 0 for s in self.std):
            raise UserError(f"data.std: every value must be > 0, got {list(self.std)}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < MIN_IMAGE_SIZE):
            raise UserError(f"data.image_size: expected an integer >= {MIN_IMAGE_SIZE} (pixels), got "
                            f"{self.image_size!r}")


class DatasetBuilder(Protocol):
    """Signature every registered builder has: the dataset's folder and what to build from it."""

    def __call__(self, root: str, spec: DataSpec) -> DataBundle: ...


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its builder and the normalisation its images get unless the config overrides it."""

    build: DatasetBuilder
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(
    name: str, *, mean: Sequence[float], std: Sequence[float]
) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register a builder under ``name`` together with its default normalisation.

    The mean/std live next to the builder so a new dataset is one decorated function, not an edit in two places.
    """

    def decorate(builder: DatasetBuilder) -> DatasetBuilder:
        DATASETS.add(name, DatasetEntry(builder, tuple(float(m) for m in mean), tuple(float(s) for s in std)))
        return builder

    return decorate


def fixed_size(name: str, size: int, image_size: int | None) -> int:
    """Datasets stored at one resolution; resizing them would silently change every published number."""
    if image_size not in (None, size):
        raise UserError(f"data.image_size: {name} images are {size}x{size}; got {image_size}. "
                        f"Remove data.image_size or set it to {size}")
    return size
