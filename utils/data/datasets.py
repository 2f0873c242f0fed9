"""Datasets by name: torchvision datasets and transforms behind a small name -> builder registry.

Every builder returns a :class:`~utils.data.catalog.DataBundle` so callers (trainer, pruner, sensitivity sweeps) never
branch on the dataset name. Everything a user can get wrong here (a missing folder, an empty class, a truncated CIFAR
batch, no internet for a download) becomes a one-line :class:`~utils.core.errors.UserError` that shows the expected
layout and the config key to change (``data.root``, ``data.download``, ``data.image_size``).

Importing this module registers every dataset: each family's builders live in a module of their own (a new dataset
is one function decorated with :func:`~utils.data.catalog.register_dataset` there, plus its import below).
"""

from __future__ import annotations

import os
from typing import Any

from utils.core.errors import UserError
from utils.data import cifar, digits, folder  # noqa: F401 - imported for their registrations in DATASETS
from utils.data.catalog import DATASETS, DataBundle, DatasetEntry, DataSpec

__all__ = ["build_datasets", "dataset_names", "default_mean_std"]


def dataset_names() -> list[str]:
    """Sorted names accepted by :func:`build_datasets` (for ``--help`` texts and config validation)."""
    return DATASETS.names()


def _entry(name: str) -> DatasetEntry:
    """The registered dataset ``name``; an unknown name is a UserError naming the config key and the known names."""
    try:
        return DATASETS.get(name)
    except UserError as exc:
        raise UserError(f"data.name: {exc}") from None


def default_mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std that the dataset's images are normalised with unless the config overrides them.

    Overriding matters: published checkpoints were trained with differing statistics (several CIFAR-10 ResNets
    use ImageNet's), and evaluating them with other numbers costs accuracy.
    """
    entry = _entry(name)
    return entry.mean, entry.std


def build_datasets(name: str, root: str, **spec: Any) -> DataBundle:
    """Build the train (unless ``train`` is False) and test datasets of ``name`` from the folder ``root``.

    ``spec``: the fields of :class:`~utils.data.catalog.DataSpec` (written there once, and checked there): ``mean``
    and ``std`` (required), ``train``, ``download`` (fetch missing data where the dataset has a download source; a
    no-op otherwise), ``image_size`` (the side of the square images the model sees; ``None`` takes the dataset's own:
    32 for cifar10 and digits, for the folder datasets the images' own when they are one small square size, else
    224; only the folder datasets can change it), ``decode`` (how the folder datasets decode ImageNet-size images,
    :data:`utils.data.folder.FOLDER_DECODERS`) and ``skip_bad_images`` (the folder datasets' loaders leave out files
    that cannot be decoded instead of stopping there).
    """
    entry = _entry(name)
    fields = {key: tuple(value) if key in ("mean", "std") else value for key, value in spec.items()}
    return entry.build(os.path.expanduser(str(root)), DataSpec(**fields))
