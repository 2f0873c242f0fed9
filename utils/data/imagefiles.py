"""The files of an ImageFolder split: which ones it holds, reading one, and what a loader does with those that cannot
be read.

* Listing (:func:`class_folders`, :func:`image_files`). torchvision's ImageFolder lists every folder and follows
  every folder link, so a macOS ``._x.png`` companion (AppleDouble metadata, never an image) becomes a sample that
  fails mid-run, and a link such as ``test/cat/loop -> ..`` reads every other class's images again under the label
  ``cat``. Here hidden files and folders (names that start with ``.``) are not part of the tree, as in a file
  manager, and every folder is read once: a folder link that leads back into the dataset's own folder (``..``,
  ``.``, another class, another split) or to a folder that holds it (a loop) is a one-line UserError naming the
  link. Links to files, and folder links to trees elsewhere, are followed: that is how subsets of a large dataset
  are usually made (the ImageNet benchmark tree of bench/imagenet_pipeline.py is one), so following no link would
  break them.
* Reading (:func:`read_image`): a file that cannot be decoded (empty, truncated, not an image, over PIL's
  decompression-bomb limit) is a :class:`BadImageError`, one line naming the file and what to do.
* Loading (:class:`Unreadable`, :class:`MarkUnreadable`, :class:`SetAsideUnreadable`, :class:`UnreadableImages`): in
  a DataLoader worker an exception reaches the main process re-raised with the worker's traceback in its message, so
  the worker does not raise: the item becomes an :class:`Unreadable` marker, the collate function sets the markers
  aside, and the main process stops at the first one or, with ``data.skip_bad_images``, leaves them out and says
  once which files it skipped.
* Sizes (:func:`header_sizes`): the images' pixel sizes from their headers, without decoding them.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from utils.core.errors import UserError
from utils.core.tvguard import torchvision

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "CheckedBatch",
    "ImageFiles",
    "MarkUnreadable",
    "SetAsideUnreadable",
    "Unreadable",
    "UnreadableImages",
    "class_folders",
    "header_sizes",
    "image_files",
    "list_samples",
    "read_image",
]

_LOG = logging.getLogger(__name__)
IMAGE_EXTENSIONS: tuple[str, ...] = torchvision.datasets.folder.IMG_EXTENSIONS  # what an image file's name ends with
_FIX = "set data.skip_bad_images: true to leave such files out (they are counted and named)"
_SHOWN = 3  # unreadable files named in the note of a loader that skipped some
_Item = TypeVar("_Item")


# --------------------------------------------------------------------------------------------------------- listing


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _tree(split_dir: str) -> str:
    """The real folder of the whole dataset (``data.root``) that ``split_dir`` is a split of."""
    return os.path.dirname(os.path.realpath(split_dir))


def _leads_back(link: str, tree_real: str, here_real: str) -> str | None:
    """Why the folder link ``link`` (in the folder whose real path is ``here_real``) must not be followed, or None.
    ``tree_real``: the real path of the dataset's folder (``data.root``), which holds every split."""
    target = os.path.realpath(link)
    if os.path.commonpath([target, tree_real]) in (target, tree_real):
        return (f"leads back into {tree_real} (its own class folder, a folder above it, another class or another "
                f"split)")
    if os.path.commonpath([target, here_real]) == target:
        return f"points to {target}, a folder that holds the link (a loop)"
    return None


def _refuse_link(link: str, tree_real: str, why: str) -> UserError:
    return UserError(f"data.root: the folder link {link} -> {os.readlink(link)} {why}: its images would be read again, "
                     f"under this label. Fix: remove the link (folder links are followed only to folders outside "
                     f"{tree_real} that do not hold them)")


def class_folders(split_dir: str) -> list[str]:
    """The class folders of ``split_dir``, sorted: its sub-folders but hidden ones (torchvision's label order).

    A class folder that is a link into the dataset itself (``kitty -> cat``) is refused: the same images under two
    labels."""
    tree_real = _tree(split_dir)
    names = []
    with os.scandir(split_dir) as entries:
        for entry in entries:
            if _hidden(entry.name) or not entry.is_dir():
                continue
            why = _leads_back(entry.path, tree_real, os.path.realpath(split_dir)) if entry.is_symlink() else None
            if why is not None:
                raise _refuse_link(entry.path, tree_real, why)
            names.append(entry.name)
    return sorted(names)


def _walk(class_dir: str, split_dir: str, visited: set[str]) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file names)`` under ``class_dir`` (links followed, hidden folders left out), each real folder once;
    ``visited``: the real folders of the split read so far."""
    tree_real = _tree(split_dir)
    for root, dirs, files in os.walk(class_dir, followlinks=True):
        here = os.path.realpath(root)
        if here in visited:  # two links to one folder outside the tree
            raise UserError(f"data.root: {root} is the folder {here}, already read through another link: its images "
                            f"would be read twice. Fix: remove one of the links")
        visited.add(here)
        dirs[:] = [d for d in dirs if not _hidden(d)]
        for name in dirs:
            path = os.path.join(root, name)
            why = _leads_back(path, tree_real, here) if os.path.islink(path) else None
            if why is not None:
                raise _refuse_link(path, tree_real, why)
        yield root, files


def image_files(class_dir: str, split_dir: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                visited: set[str] | None = None) -> list[str]:
    """The image files (by extension, case-insensitive) under ``class_dir`` of the split ``split_dir``, in
    torchvision's order (folders sorted, then the files of each); hidden files and folders are not listed, and a
    folder link back into the dataset's folder or to a folder above it is a UserError. ``visited``: the real folders
    of the split already read (from its other classes), so that no folder is read twice."""
    visited = set() if visited is None else visited
    return [os.path.join(root, name) for root, files in sorted(_walk(class_dir, split_dir, visited))
            for name in sorted(files) if not _hidden(name) and name.lower().endswith(extensions)]


def list_samples(split_dir: str, class_to_idx: dict[str, int],
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[tuple[str, int]]:
    """``(path, label)`` of every image of the split (ImageFolder's ``make_dataset``, with the listing rules of this
    module). Like torchvision's, raises FileNotFoundError when a class folder has no image, for the caller to
    explain."""
    visited: set[str] = set()
    samples, empty = [], []
    for name in sorted(class_to_idx):
        files = image_files(os.path.join(split_dir, name), split_dir, extensions, visited)
        samples += [(path, class_to_idx[name]) for path in files]
        empty += [] if files else [name]
    if empty:
        raise FileNotFoundError(f"no image files for the classes {', '.join(empty)}")
    return samples


# --------------------------------------------------------------------------------------------------------- reading


class BadImageError(UserError):
    """An image file that cannot be decoded: which one (``path``) and why (``reason``, a clause after "it")."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"data: cannot read the image {path}: it {reason}. Fix: replace or delete the file, or {_FIX}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.path, self.reason)


def _reason(path: str, exc: BaseException) -> str:
    """What is wrong with the file at ``path``, from the exception its decoder raised (by type, not wording)."""
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return (f"has more than {Image.MAX_IMAGE_PIXELS:,} pixels, PIL's decompression-bomb limit, so it was not "
                f"decoded")
    try:
        if os.path.getsize(path) == 0:
            return "is empty (0 bytes)"
    except OSError as stat_error:
        exc = stat_error
    detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
    if isinstance(exc, UnidentifiedImageError):
        return "is not an image file that PIL can identify"
    if isinstance(exc, OSError) and exc.errno is not None:  # the system's error (permissions, a vanished file)
        return f"cannot be opened ({detail})"
    return f"is truncated or damaged ({detail})"


def read_image(decode: Callable[[str], _Item], path: str) -> _Item:
    """``decode(path)``, or a :class:`BadImageError` naming the file when it cannot be decoded. An image over PIL's
    decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, ~89 megapixels: PIL only warns up to twice that) is
    refused unread: nothing in an ImageFolder needs that many pixels, and decoding one can take gigabytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return decode(path)
        except Exception as exc:  # noqa: BLE001 - PIL's decoders raise many types (OSError, ValueError, SyntaxError,
            # IndexError...) on a malformed file, and torchvision.io a RuntimeError: any of them while decoding this
            # one file means the file cannot be read.
            raise BadImageError(path, _reason(path, exc)) from None


def _header_size(path: str) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except Exception:  # noqa: BLE001 - as in read_image: the file's problem, reported when it is read
        return None


def header_sizes(paths: Sequence[str]) -> list[tuple[int, int]]:
    """``(width, height)`` of each of ``paths`` that PIL can identify, read from the file's header (nothing is
    decoded); files it cannot identify are left out here (reading them reports them)."""
    return [size for size in map(_header_size, paths) if size is not None]


# -------------------------------------------------------------------------------------------------- the dataset


class ImageFiles(torchvision.datasets.ImageFolder):
    """A torchvision ImageFolder listed and read by the rules of this module: hidden files and folders are not
    samples, a folder link back into the tree is a UserError, a file that cannot be decoded is a
    :class:`BadImageError` naming it. ``skip_bad_images``: what its DataLoaders do with such files
    (:class:`UnreadableImages`)."""

    def __init__(self, root: str, *, transform: Callable[[Any], Any] | None,
                 loader: Callable[[str], Any] = torchvision.datasets.folder.default_loader,
                 skip_bad_images: bool = False) -> None:
        super().__init__(root, transform=transform, loader=loader)
        self.skip_bad_images = skip_bad_images

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = class_folders(directory)
        if not classes:
            raise FileNotFoundError(f"no class folders in {directory}")
        return classes, {name: i for i, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory: str, class_to_idx: dict[str, int], extensions: tuple[str, ...] | None = None,
                     is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        assert is_valid_file is None and not allow_empty, "files are chosen by extension (image_files)"
        return list_samples(directory, class_to_idx, extensions or IMAGE_EXTENSIONS)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        image = read_image(self.loader, path)
        return (self.transform(image) if self.transform is not None else image), target


# --------------------------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Unreadable:
    """The item a DataLoader gets for an image file that cannot be decoded."""

    path: str
    reason: str

    def error(self) -> BadImageError:
        return BadImageError(self.path, self.reason)


class CheckedBatch(NamedTuple):
    """What :class:`SetAsideUnreadable` makes of a batch's items: the batch of the readable ones (None if there are
    none) and the markers of the others."""

    batch: Any
    unreadable: list[Unreadable]


class MarkUnreadable(Dataset):
    """``items[index]``, or an :class:`Unreadable` marker where its file cannot be decoded (instead of an exception,
    which a DataLoader worker would send to the main process wrapped in its traceback)."""

    def __init__(self, items: Any) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.items[index]
        except BadImageError as exc:
            return Unreadable(exc.path, exc.reason)

    def __getattr__(self, name: str) -> Any:  # classes, targets, samples, ... of the wrapped items
        if name == "items":  # not yet set (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.items, name)


class SetAsideUnreadable:
    """A collate function: ``collate`` (default: torch's) over the readable items of a batch, the
    :class:`Unreadable` markers beside it, as a :class:`CheckedBatch`."""

    def __init__(self, collate: Callable[[list[Any]], Any] | None = None) -> None:
        self.collate = collate or default_collate

    def __call__(self, items: list[Any]) -> CheckedBatch:
        unreadable = [item for item in items if isinstance(item, Unreadable)]
        readable = [item for item in items if not isinstance(item, Unreadable)]
        return CheckedBatch(self.collate(readable) if readable else None, unreadable)


class UnreadableImages:
    """What one loader does with the unreadable files it meets: stop at the first (its :class:`BadImageError`), or
    with ``skip`` leave them out, keep them in ``skipped`` (path -> reason) and say so once (:meth:`tell`)."""

    def __init__(self, *, skip: bool, where: str) -> None:
        self.skip, self.where = skip, where
        self.skipped: dict[str, str] = {}
        self._told = 0

    def take(self, unreadable: Sequence[Unreadable]) -> None:
        for item in unreadable:
            if not self.skip:
                raise item.error()
            self.skipped.setdefault(item.path, item.reason)

    def tell(self) -> None:
        """One warning naming the first few files skipped, when there are more than when it last spoke (a pass over
        the same files says nothing new)."""
        count = len(self.skipped)
        if count <= self._told:
            return
        self._told = count
        named = "; ".join(f"{path} {reason}" for path, reason in list(self.skipped.items())[:_SHOWN])
        more = f"; and {count - _SHOWN} more" if count > _SHOWN else ""
        _LOG.warning("data.skip_bad_images: left out %d unreadable image file%s of %s: %s%s", count,
                     "" if count == 1 else "s", self.where, named, more)
