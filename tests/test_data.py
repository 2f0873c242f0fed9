"""Tests of ``utils/data/``: real on-disk formats written small, properties of the transforms, clear user errors."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import pickle
import re
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.core.errors import UserError
from utils.core.tvguard import torchvision
from utils.data import digits, folder
from utils.data.catalog import DataBundle
from utils.data.datasets import build_datasets, dataset_names, default_mean_std
from utils.data.device import build_device_loaders
from utils.data.folder import torchvision_io_problem
from utils.data.imagefiles import BadImageError, read_image
from utils.data.loaders import build_loaders

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ZERO_ONE = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # identity normalisation: tensors are raw pixels/255


# ------------------------------------------------------------------ CIFAR-10 python batches, written like the originals


class _Py2Str(bytes):
    """A Python 2 ``str``: the original batches were pickled by Python 2, so their keys and raw array bytes are
    (SHORT_)BINSTRING opcodes, which Python 3 decodes with ``encoding=``. Writing Python 3 ``bytes`` instead would
    give a file that no real CIFAR-10 loader sees (keys would load as ``b"data"`` under torchvision's latin1)."""


class _Global:
    """Stand-in callable pickled as a GLOBAL reference (the originals name ``numpy.core.multiarray._reconstruct``)."""

    def __init__(self, module: str, name: str) -> None:
        self.ref = f"{module}\n{name}\n".encode()

    def __call__(self, *args: object) -> None:
        raise TypeError("only a pickling marker")


def _py2(value: object) -> object:
    if isinstance(value, bytes):
        return _Py2Str(value)
    if isinstance(value, str):
        return _Py2Str(value.encode("latin1"))
    if isinstance(value, tuple):
        return tuple(_py2(v) for v in value)
    return value


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: the only one whose opcodes can be customised
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2str(self, obj: _Py2Str) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + bytes(obj))
        self.memoize(obj)

    def _save_global_ref(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + obj.ref)

    dispatch[_Py2Str] = _save_py2str
    dispatch[_Global] = _save_global_ref

    def reducer_override(self, obj: object) -> object:
        if isinstance(obj, np.ndarray):
            _fn, args, state = obj.__reduce__()
            return _Global("numpy.core.multiarray", "_reconstruct"), _py2(args), _py2(state)
        if isinstance(obj, np.dtype):
            fn, args, state = obj.__reduce__()
            return fn, _py2(args), _py2(state)
        return NotImplemented


def _dump_py2(obj: dict, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _cifar_batch(label: str, images: np.ndarray, labels: list[int]) -> dict:
    """One batch dict with the keys and types of the originals: data uint8 (N, 3072) in CHW order, labels a list."""
    return {
        _Py2Str(b"batch_label"): _Py2Str(label.encode()),
        _Py2Str(b"labels"): labels,
        _Py2Str(b"data"): images.reshape(len(images), -1),
        _Py2Str(b"filenames"): [_Py2Str(f"img_{i:05d}.png".encode()) for i in range(len(images))],
    }


def write_cifar(root: Path, *, per_batch: int = 4, n_test: int = 6, train: bool = True, seed: int = 0) -> dict:
    """Write a small ``cifar-10-batches-py`` and return the images (N, 3, 32, 32) and labels of each file."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    names = [f"data_batch_{b}" for b in range(1, 6)] if train else []
    for name in names + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch_label = "testing batch 1 of 1" if name == "test_batch" else f"training batch {name[-1]} of 5"
        _dump_py2(_cifar_batch(batch_label, images, labels), folder / name)
        written[name] = (images, labels)
    meta = {
        _Py2Str(b"num_cases_per_batch"): per_batch,
        _Py2Str(b"label_names"): [_Py2Str(c.encode()) for c in CIFAR_CLASSES],
        _Py2Str(b"num_vis"): 3072,
    }
    _dump_py2(meta, folder / "batches.meta")
    return written


def _to_uint8(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Undo Normalize and ToTensor: back to the uint8 pixels the transform started from."""
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return (x * s + m).mul(255).round().to(torch.uint8).numpy()


def test_cifar_fixture_matches_original_format(tmp_path: Path) -> None:
    write_cifar(tmp_path, per_batch=2, n_test=2)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02}") and b"U\x04data" in raw and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    as_bytes = pickle.loads(raw, encoding="bytes")  # the CIFAR-10 web page's own loading snippet
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape == (2, 3072)


def test_cifar10_loads_and_round_trips_pixels(tmp_path: Path) -> None:
    written = write_cifar(tmp_path)
    mean, std = default_mean_std("cifar10")
    bundle = build_datasets("cifar10", str(tmp_path), mean=mean, std=std)
    assert isinstance(bundle, DataBundle)
    assert bundle.classes == CIFAR_CLASSES and bundle.num_classes == 10 and bundle.input_size == (3, 32, 32)
    assert len(bundle.train) == 5 * 4 and len(bundle.test) == 6
    train_labels = [label for b in range(1, 6) for label in written[f"data_batch_{b}"][1]]
    assert bundle.train.targets == train_labels  # batches concatenated in order 1..5
    images, labels = written["test_batch"]
    for i in range(len(images)):
        x, y = bundle.test[i]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert y == labels[i]
        np.testing.assert_array_equal(_to_uint8(x, mean, std), images[i])


def _crops(padded: np.ndarray, size: int) -> list[np.ndarray]:
    n = padded.shape[-1] - size + 1
    return [padded[:, i:i + size, j:j + size] for i in range(n) for j in range(n)]


def test_cifar10_train_augmentation_is_pad4_crop_and_flip(tmp_path: Path) -> None:
    written = write_cifar(tmp_path, per_batch=1, n_test=1)
    image = written["data_batch_1"][0][0]  # random pixels: every crop offset and flip gives a distinct image
    bundle = build_datasets("cifar10", str(tmp_path), **ZERO_ONE)
    candidates = _crops(np.pad(image, ((0, 0), (4, 4), (4, 4))), 32)
    torch.manual_seed(0)
    seen_offsets, seen_flips = set(), set()
    for _ in range(60):
        out = _to_uint8(bundle.train[0][0], **ZERO_ONE)
        matches = [(k, flip) for k, c in enumerate(candidates) for flip in (False, True)
                   if np.array_equal(out, c[:, :, ::-1] if flip else c)]
        assert matches, "an augmented image that is no pad-4 crop (or its mirror) of the original"
        seen_offsets.add(matches[0][0])
        seen_flips.add(matches[0][1])
    assert seen_flips == {False, True} and len(seen_offsets) > 10


def test_cifar10_eval_needs_only_test_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path, train=False)
    bundle = build_datasets("cifar10", str(tmp_path), **ZERO_ONE, train=False)
    assert bundle.train is None and len(bundle.test) == 6
    with pytest.raises(UserError, match="missing: data_batch_1, data_batch_2"):
        build_datasets("cifar10", str(tmp_path), **ZERO_ONE, train=True)


def test_cifar10_missing_folder_shows_layout_and_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        build_datasets("cifar10", str(tmp_path / "nowhere"), **ZERO_ONE)
    message = str(info.value)
    assert "\n" not in message
    for part in ("cifar-10-batches-py", "data_batch_1..data_batch_5", "test_batch", "batches.meta",
                 "data.download", "data.root"):
        assert part in message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape"])
def test_cifar10_corrupt_batch_names_the_file(tmp_path: Path, damage: str) -> None:
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    if damage == "truncate":  # what an interrupted copy leaves
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "garbage":
        path.write_bytes(b"<html>404 Not Found</html>")
    else:
        _dump_py2(_cifar_batch("b", np.zeros((2, 3, 16, 16), np.uint8), [0, 1]), path)
    with pytest.raises(UserError, match=r"data_batch_3 is corrupt"):
        build_datasets("cifar10", str(tmp_path), **ZERO_ONE)
    build_datasets("cifar10", str(tmp_path), **ZERO_ONE, train=False)  # the test split alone is still fine


def test_cifar10_download_offline_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(UserError, match=r"could not download .*cifar-10-batches-py/\{data_batch_1"):
        build_datasets("cifar10", str(tmp_path), **ZERO_ONE, download=True)
    write_cifar(tmp_path)  # data present: download=True must not touch the network
    assert len(build_datasets("cifar10", str(tmp_path), **ZERO_ONE, download=True).test) == 6


def test_cifar10_rejects_other_image_sizes(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    assert build_datasets("cifar10", str(tmp_path), **ZERO_ONE, image_size=32).input_size == (3, 32, 32)
    with pytest.raises(UserError, match="data.image_size: cifar10 images are 32x32"):
        build_datasets("cifar10", str(tmp_path), **ZERO_ONE, image_size=64)


# --------------------------------------------------------------------------------------------------- registry


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(UserError) as info:
        build_datasets("cifar100", "/tmp", **ZERO_ONE)
    for name in dataset_names():
        assert name in str(info.value)
    with pytest.raises(UserError, match="unknown dataset"):
        default_mean_std("mnist")


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "imagefolder", "digits"])
def test_every_dataset_is_registered_with_three_channel_stats(name: str) -> None:
    assert name in dataset_names()
    mean, std = default_mean_std(name)
    assert len(mean) == len(std) == 3 and all(0 < m < 1 for m in mean) and all(0 < s < 1 for s in std)


def test_default_mean_std_values() -> None:
    assert default_mean_std("cifar10") == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert default_mean_std("imagenet") == imagenet and default_mean_std("imagefolder") == imagenet


def test_bad_normalisation_is_a_user_error() -> None:
    with pytest.raises(UserError, match="data.mean/data.std: expected 3 values"):
        build_datasets("digits", "", mean=(0.5,), std=(0.5,))
    with pytest.raises(UserError, match="data.std: every value must be > 0"):
        build_datasets("digits", "", mean=(0.5, 0.5, 0.5), std=(0.5, 0.0, 0.5))


# ------------------------------------------------------------------------------------------------ image folders


def write_tree(root: Path, splits: dict[str, dict[str, int]], size: int = 32) -> dict[str, np.ndarray]:
    """PNG ImageFolder tree ``root/<split>/<class>/<i>.png``; returns each file's pixels (H, W, 3) by path."""
    rng = np.random.default_rng(1)
    pixels = {}
    for split, classes in splits.items():
        for cls, count in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                array = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(array).save(folder / f"{i}.png")
                pixels[str(folder / f"{i}.png")] = array
    return pixels


def test_imagefolder_train_and_val_at_imagenet_size(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train": {"dog": 2, "cat": 3}, "val": {"cat": 1, "dog": 1}})
    bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=224)
    assert bundle.classes == ["cat", "dog"] and bundle.num_classes == 2 and bundle.input_size == (3, 224, 224)
    assert len(bundle.train) == 5 and len(bundle.test) == 2
    assert bundle.train[0][0].shape == bundle.test[0][0].shape == (3, 224, 224)
    assert [y for _, y in bundle.test] == [0, 1]


def test_imagefolder_small_images_keep_pixels(tmp_path: Path) -> None:
    pixels = write_tree(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 2, "b": 1}})
    bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=32)
    assert bundle.input_size == (3, 32, 32)
    for (path, _label), (x, _y) in zip(bundle.test.samples, bundle.test, strict=True):
        np.testing.assert_array_equal(_to_uint8(x, **ZERO_ONE), pixels[path].transpose(2, 0, 1))
    image = pixels[bundle.train.samples[0][0]].transpose(2, 0, 1)
    candidates = _crops(np.pad(image, ((0, 0), (4, 4), (4, 4))), 32)
    torch.manual_seed(0)
    for _ in range(10):  # CIFAR-style: pad-4 crop and flip, no rescaling
        out = _to_uint8(bundle.train[0][0], **ZERO_ONE)
        assert any(np.array_equal(out, c) or np.array_equal(out, c[:, :, ::-1]) for c in candidates)


def test_imagefolder_prefers_val_over_test(tmp_path: Path) -> None:
    write_tree(tmp_path, {"val": {"a": 1, "b": 1}, "test": {"a": 3, "b": 3}})
    assert len(build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, train=False).test) == 2


@pytest.mark.parametrize("name", ["imagefolder", "imagenet"])
def test_val_only_tree_evaluates_but_cannot_train(tmp_path: Path, name: str) -> None:
    write_tree(tmp_path, {"val": {"n01": 1, "n02": 2}}, size=40)
    bundle = build_datasets(name, str(tmp_path), **ZERO_ONE, train=False, image_size=224)
    assert bundle.train is None and len(bundle.test) == 3 and bundle.test[2][0].shape == (3, 224, 224)
    with pytest.raises(UserError, match=r"no train/ folder .*<data.root>/train/<class>/\*\.jpg"):
        build_datasets(name, str(tmp_path), **ZERO_ONE, train=True)


def test_imagenet_needs_val_not_test(tmp_path: Path) -> None:
    write_tree(tmp_path, {"test": {"a": 1}})
    with pytest.raises(UserError, match=r"no val/ folder"):
        build_datasets("imagenet", str(tmp_path), **ZERO_ONE, train=False)


def test_imagefolder_missing_root_shows_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"does not exist; expected layout: <data.root>/train/<class>/\*\.jpg"):
        build_datasets("imagefolder", str(tmp_path / "absent"), **ZERO_ONE)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 1}})
    (tmp_path / "train" / "ghost").mkdir()
    (tmp_path / "train" / "ghost" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=r"class folder .*train/ghost has no images"):
        build_datasets("imagefolder", str(tmp_path), **ZERO_ONE)


def test_split_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / "flat.png")  # ILSVRC's flat val layout
    with pytest.raises(UserError, match="no class folders in"):
        build_datasets("imagenet", str(tmp_path), **ZERO_ONE, train=False)


def test_train_and_val_classes_must_match(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "c": 1}})
    with pytest.raises(UserError, match=r"only in train: \['b'\], only in val: \['c'\]"):
        build_datasets("imagefolder", str(tmp_path), **ZERO_ONE)


def test_shared_cifar10_subset_loads_as_imagefolder(shared) -> None:
    root = shared("cifar10-lossless-subset")
    bundle = build_datasets("imagefolder", str(root), **ZERO_ONE, image_size=32)
    assert bundle.classes == CIFAR_CLASSES and bundle.input_size == (3, 32, 32)
    assert len(bundle.train) == 5085 and len(bundle.test) == 1017
    _, loader = build_loaders(bundle, batch_size=256, workers=0, seed=0)
    total = sum(x.sum(dim=(0, 2, 3)) for x, _ in loader) / (1017 * 32 * 32)
    assert torch.allclose(total, torch.tensor([0.496, 0.487, 0.451]), atol=1e-3)  # as the data README states


def test_shared_imagenet_sample_evaluates(shared) -> None:
    root = shared("imagenet-sample")
    mean, std = default_mean_std("imagenet")
    bundle = build_datasets("imagenet", str(root), mean=mean, std=std, train=False)
    assert bundle.train is None and bundle.num_classes == 1000 and len(bundle.test) == 1000
    assert bundle.classes[0] == "n01440764" and bundle.test[0][0].shape == (3, 224, 224)


# ---------------------------------------------------------------------------------------------------------- digits


def test_digits_sizes_and_shapes() -> None:
    mean, std = default_mean_std("digits")
    bundle = build_datasets("digits", "/ignored", mean=mean, std=std)
    assert len(bundle.train) + len(bundle.test) == 1797 and len(bundle.test) == 360
    assert bundle.num_classes == 10 and bundle.classes == [str(d) for d in range(10)]
    assert bundle.input_size == (3, 32, 32)
    for ds in (bundle.train, bundle.test):
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
        assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])  # grey replicated to 3 channels


def test_digits_split_is_stratified_and_fixed() -> None:
    from sklearn.datasets import load_digits

    per_class = np.bincount(load_digits().target)
    torch.manual_seed(1)
    np.random.seed(1)
    first = build_datasets("digits", "", **ZERO_ONE, train=False).test
    digits._digits_split.cache_clear()  # recompute from scratch under a different global seed
    torch.manual_seed(2)
    np.random.seed(2)
    second = build_datasets("digits", "", **ZERO_ONE, train=False).test
    assert first.targets == second.targets and torch.equal(first.images, second.images)
    assert np.all(np.abs(np.bincount(first.targets, minlength=10) - 0.2 * per_class) <= 1)


def test_digits_pixels_are_upsampled_originals() -> None:
    from sklearn.datasets import load_digits

    test = build_datasets("digits", "", **ZERO_ONE, train=False).test
    x = test.images[:, 0]
    assert x.min() >= 0 and x.max() <= 1
    # Averaging each 4x4 block undoes a 4x bilinear upsampling up to edge effects: every test image must come from
    # a distinct original (the split draws without replacement) and be close to it.
    pooled = torch.nn.functional.avg_pool2d(x.unsqueeze(1), 4).flatten(1)
    originals = torch.from_numpy(load_digits().images).float().div(16).flatten(1)
    nearest = torch.cdist(pooled, originals).argmin(dim=1)
    assert len(set(nearest.tolist())) == len(test)
    assert (torch.from_numpy(load_digits().target)[nearest] == torch.tensor(test.targets)).all()


def test_digits_mean_std_match_fresh_computation() -> None:
    digits._digits_split.cache_clear()
    mean, std = digits.digits_mean_std_from_data()
    expected_mean, expected_std = default_mean_std("digits")
    np.testing.assert_allclose(mean, expected_mean, atol=5e-5)
    np.testing.assert_allclose(std, expected_std, atol=5e-5)


def test_digits_augmentation_translates_without_flipping() -> None:
    bundle = build_datasets("digits", "", **ZERO_ONE)
    base = bundle.train.images[0].numpy()
    candidates = _crops(np.pad(base, ((0, 0), (4, 4), (4, 4))), 32)
    torch.manual_seed(0)
    offsets = set()
    for _ in range(40):
        out = bundle.train[0][0].numpy()
        matches = [k for k, c in enumerate(candidates) if np.array_equal(out, c)]
        assert matches, "digits augmentation must be a pure translation (no flip)"
        offsets.add(matches[0])
    assert len(offsets) > 5
    assert not any(np.array_equal(out, c[:, :, ::-1]) for c in candidates)  # this digit is not mirror-symmetric


def test_digits_rejects_other_sizes() -> None:
    with pytest.raises(UserError, match="digits images are 32x32"):
        build_datasets("digits", "", **ZERO_ONE, image_size=28)


# --------------------------------------------------------------------------------------------------------- loaders


def _first_batch(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(loader))


def test_loaders_repeat_with_the_same_seed() -> None:
    bundle = build_datasets("digits", "", **ZERO_ONE)
    batches = []
    for seed in (0, 0, 1):
        torch.manual_seed(123)  # workers=0: augmentation uses the global RNG, which the caller seeds
        train, _ = build_loaders(bundle, batch_size=32, workers=0, seed=seed)
        batches.append(_first_batch(train))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
    assert not torch.equal(batches[0][1], batches[2][1])


def test_loaders_with_workers_repeat_regardless_of_global_rng() -> None:
    bundle = build_datasets("digits", "", **ZERO_ONE)
    batches = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        train, _ = build_loaders(bundle, batch_size=64, workers=2, seed=7)
        assert train.persistent_workers
        batches.append(_first_batch(train))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])


class _NumpyRandom(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> float:
        return float(np.random.rand())


def test_workers_seed_numpy_distinctly_and_reproducibly() -> None:
    bundle = DataBundle(train=_NumpyRandom(), test=_NumpyRandom(), num_classes=1, classes=["x"], input_size=(1, 1, 1))
    draws = []
    for _ in range(2):
        train, _ = build_loaders(bundle, batch_size=1, workers=2, seed=3)
        draws.append([float(v) for v in train])
    assert draws[0] == draws[1]
    assert len(set(draws[0])) == 8  # workers forked from one parent would otherwise repeat each other's numbers


def test_test_loader_is_ordered_and_leaves_global_rng_alone() -> None:
    bundle = build_datasets("digits", "", **ZERO_ONE, train=False)
    train, test = build_loaders(bundle, batch_size=16, test_batch_size=100, workers=0, seed=0)
    assert train is None
    state = torch.get_rng_state()
    labels = torch.cat([y for _, y in test])
    assert torch.equal(torch.get_rng_state(), state)
    assert labels.tolist() == bundle.test.targets and test.batch_size == 100 and not test.drop_last


def test_bad_loader_arguments_are_user_errors() -> None:
    bundle = build_datasets("digits", "", **ZERO_ONE, train=False)
    with pytest.raises(UserError, match="batch_size"):
        build_loaders(bundle, batch_size=0, workers=0, seed=0)
    with pytest.raises(UserError, match="data.workers"):
        build_loaders(bundle, batch_size=8, workers=-1, seed=0)


# ------------------------------------------------------------------- image files: unreadable, hidden, linked, sizes


def _png_bytes(size: int = 32, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@functools.cache
def _bomb_png(side: int) -> bytes:
    """A black 1-bit ``side`` x ``side`` PNG: a few kilobytes on disk, ``side**2`` pixels decoded."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg_bytes(size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


BAD_FILES = {  # name -> (its bytes, what the error says)
    "empty.png": (lambda: b"", "is empty (0 bytes)"),
    "truncated.png": (lambda: _png_bytes()[:400], "is truncated or damaged"),
    "truncated.jpg": (lambda: _jpeg_bytes()[:300], "is truncated or damaged"),
    "notes.png": (lambda: b"not an image at all\n" * 4, "is not an image file that PIL can identify"),
    "bomb.png": (lambda: _bomb_png(14_000), "decompression-bomb limit"),  # 196 Mpx: PIL's error (twice its limit)
    "big.png": (lambda: _bomb_png(10_000), "decompression-bomb limit"),  # 100 Mpx: PIL only warns, would decode it
}


def _torchvision_io_or_stand_in(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torchvision.io's decoder where it loads; elsewhere one that fails on a broken file as torchvision.io does (a
    RuntimeError) and decodes a good one with PIL. Returns the paths it was asked to decode."""
    decoded: list[str] = []
    real = torchvision.io.decode_image

    def decode(data: torch.Tensor, mode: object = None) -> torch.Tensor:
        decoded.append(bytes(data.numpy()[:8]).hex())
        if torchvision_io_problem() is None:
            return real(data, mode=mode)
        try:
            image = Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            raise RuntimeError(f"Image is incomplete or truncated ({type(exc).__name__})") from None
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)

    monkeypatch.setattr(torchvision.io, "decode_image", decode)
    return decoded


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_an_unreadable_image_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                   decoder: str) -> None:
    data, reason = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(data())
    if decoder == "pil":
        decode = torchvision.datasets.folder.default_loader
    else:
        decoded, decode = _torchvision_io_or_stand_in(monkeypatch), folder._torchvision_io_loader
    with pytest.raises(BadImageError) as caught:
        read_image(decode, str(path))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"data: cannot read the image {path}: it ") and reason in message
    assert "replace or delete the file" in message and "data.skip_bad_images: true" in message
    assert caught.value.path == str(path) and pickle.loads(pickle.dumps(caught.value)).args == caught.value.args
    if decoder == "torchvision" and name in ("bomb.png", "big.png"):
        assert decoded == []  # refused from the header: torchvision.io has no bomb guard of its own


def test_read_image_returns_what_decodes(tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(_png_bytes(seed=3))
    image = read_image(torchvision.datasets.folder.default_loader, str(tmp_path / "good.png"))
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(_png_bytes(seed=3)))))


def _tree_with(root: Path, extra: dict[str, bytes], split: str = "val") -> dict[str, np.ndarray]:
    pixels = write_tree(root, {"train": {"cat": 2, "dog": 2}, split: {"cat": 3, "dog": 3}})
    for rel, data in extra.items():
        (root / rel).write_bytes(data)
    return pixels


def test_hidden_files_and_folders_are_not_part_of_the_tree(tmp_path: Path) -> None:
    _tree_with(tmp_path, {"val/cat/._0.png": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + bytes(50),
                          "val/dog/.thumb.png": _png_bytes(seed=5)})
    for hidden in ("val/.ipynb_checkpoints", "val/cat/.cache"):
        (tmp_path / hidden).mkdir()
        (tmp_path / hidden / "7.png").write_bytes(_png_bytes(seed=7))
    bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=32)
    assert bundle.classes == ["cat", "dog"]  # .ipynb_checkpoints is no class
    names = [os.path.relpath(path, tmp_path) for path, _ in bundle.test.samples]
    assert names == [f"val/{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    _, test = build_loaders(bundle, batch_size=4, workers=0, seed=0)
    assert sum(len(y) for _, y in test) == 6


def test_a_class_of_hidden_files_only_is_empty(tmp_path: Path) -> None:
    _tree_with(tmp_path, {})
    (tmp_path / "train" / "bird").mkdir()
    (tmp_path / "train" / "bird" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    with pytest.raises(UserError, match=r"class folder .*train/bird has no images .*hidden files are not images"):
        build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=32)


@pytest.mark.parametrize(("link", "target"), [("val/cat/loop", ".."), ("val/cat/self", "."),
                                              ("val/cat/dogs", "../dog"), ("val/kitty", "cat"), ("val/cat/up", "../.."),
                                              ("train/dog/val", "../../val"), ("val/cat/t", "../../train/cat")])
def test_folder_links_back_into_the_tree_are_refused(tmp_path: Path, link: str, target: str) -> None:
    _tree_with(tmp_path, {})
    (tmp_path / link).symlink_to(target)
    with pytest.raises(UserError) as caught:
        build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=32)
    assert f"folder link {tmp_path / link} -> {target} leads back into" in str(caught.value)
    assert "remove the link" in str(caught.value) and "\n" not in str(caught.value)


def test_links_out_of_the_tree_are_followed_and_keep_their_label(tmp_path: Path) -> None:
    """How subsets are made: a class folder, a sub-folder or a file linked from elsewhere adds those images, with the
    label of the folder the link is in."""
    pixels = _tree_with(tmp_path / "tree", {})
    elsewhere = write_tree(tmp_path / "elsewhere", {"more": {"cats": 2, "dogs": 1}}, size=32)
    (tmp_path / "tree" / "val" / "cat" / "more").symlink_to(tmp_path / "elsewhere" / "more" / "cats")
    (tmp_path / "tree" / "val" / "dog" / "9.png").symlink_to(tmp_path / "elsewhere" / "more" / "dogs" / "0.png")
    bundle = build_datasets("imagefolder", str(tmp_path / "tree"), **ZERO_ONE, image_size=32)
    labels = {os.path.relpath(path, tmp_path / "tree"): label for path, label in bundle.test.samples}
    assert labels == {**{f"val/cat/{i}.png": 0 for i in range(3)}, "val/cat/more/0.png": 0, "val/cat/more/1.png": 0,
                      **{f"val/dog/{i}.png": 1 for i in range(3)}, "val/dog/9.png": 1}
    for (path, _), (x, _) in zip(bundle.test.samples, bundle.test, strict=True):
        source = os.path.realpath(path)
        expected = pixels.get(source, elsewhere.get(source))
        np.testing.assert_array_equal(_to_uint8(x, **ZERO_ONE), expected.transpose(2, 0, 1))


def test_a_loop_or_a_second_link_outside_the_tree_is_refused(tmp_path: Path) -> None:
    _tree_with(tmp_path / "tree", {})
    write_tree(tmp_path / "elsewhere", {"more": {"cats": 1}}, size=32)
    outside = tmp_path / "elsewhere" / "more"
    (tmp_path / "tree" / "val" / "cat" / "more").symlink_to(outside)
    (outside / "cats" / "back").symlink_to(outside)
    with pytest.raises(UserError, match=rf"folder link .*/val/cat/more/cats/back -> {outside} points to {outside}, "
                                        r"a folder that holds the link \(a loop\)"):
        build_datasets("imagefolder", str(tmp_path / "tree"), **ZERO_ONE, image_size=32)
    (outside / "cats" / "back").unlink()
    (tmp_path / "tree" / "val" / "dog" / "same").symlink_to(outside)
    with pytest.raises(UserError, match=rf"/val/dog/same is the folder {outside}, already read through another link"):
        build_datasets("imagefolder", str(tmp_path / "tree"), **ZERO_ONE, image_size=32)


def _bad_tree(root: Path) -> dict[str, np.ndarray]:
    """2 classes, train 2+2 and val 3+3 good images, plus in val/cat an empty and a truncated file, in val/dog a
    decompression bomb, in train/dog a truncated file (they sort after the good ones of their folder)."""
    return _tree_with(root, {"val/cat/7.png": b"", "val/cat/8.png": _png_bytes(seed=8)[:500],
                             "val/dog/9.png": _bomb_png(14_000), "train/dog/8.png": _png_bytes(seed=8)[:500]})


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_stops_at_the_first_unreadable_file_in_any_process(tmp_path: Path, workers: int) -> None:
    _bad_tree(tmp_path)
    bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=32)
    train, test = build_loaders(bundle, batch_size=4, workers=workers, seed=0)
    with pytest.raises(BadImageError) as caught:
        list(test)
    assert str(caught.value).startswith(f"data: cannot read the image {tmp_path}/val/cat/7.png: it is empty")
    assert "\n" not in str(caught.value)  # a worker's error arrives as the same one line, not its traceback
    with pytest.raises(BadImageError, match=r"train/dog/8.png: it is truncated"):
        list(train)


@pytest.mark.parametrize(("image_size", "workers"), [(32, 0), (32, 2), (72, 2)])
def test_skip_bad_images_leaves_them_out_and_names_them_once(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             image_size: int, workers: int) -> None:
    pixels = _bad_tree(tmp_path)
    bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=image_size, skip_bad_images=True)
    train, test = build_loaders(bundle, batch_size=4, workers=workers, seed=0)
    with caplog.at_level(logging.WARNING, logger="utils.data.imagefiles"):
        for _ in range(2):  # a second pass meets the same files and says nothing new
            images = torch.cat([x for x, _ in test])
            train.sampler.set_epoch(0)
            assert len(torch.cat([y for _, y in train])) == 4
    good = [path for path, _ in bundle.test.samples if path in pixels]
    assert len(images) == len(good) == 6
    if image_size == 32:  # the readable images, in order, untouched
        for x, path in zip(images, good, strict=True):
            np.testing.assert_array_equal(_to_uint8(x, **ZERO_ONE), pixels[path].transpose(2, 0, 1))
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 2, notes  # one per split
    test_note = next(n for n in notes if f"of {tmp_path}/val:" in n)
    assert test_note.startswith("data.skip_bad_images: left out 3 unreadable image files")
    assert f"{tmp_path}/val/cat/7.png is empty (0 bytes)" in test_note and "decompression-bomb" in test_note
    assert test.unreadable.skipped.keys() == {str(tmp_path / f) for f in ("val/cat/7.png", "val/cat/8.png",
                                                                           "val/dog/9.png")}


def test_a_batch_of_unreadable_files_only_is_left_out(tmp_path: Path) -> None:
    _bad_tree(tmp_path)
    bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=32, train=False,
                            skip_bad_images=True)
    _, test = build_loaders(bundle, batch_size=1, workers=0, seed=0)
    assert [len(y) for _, y in test] == [1] * 6 and len(test) == 9


def test_the_device_loader_stops_at_or_skips_unreadable_files(tmp_path: Path) -> None:
    pixels = _bad_tree(tmp_path)
    bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=32, train=False)
    with pytest.raises(BadImageError, match=r"val/cat/7.png: it is empty"):
        build_device_loaders(bundle, batch_size=4, seed=0, device="cpu")
    bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=32, train=False,
                            skip_bad_images=True)
    _, test = build_device_loaders(bundle, batch_size=4, seed=0, device="cpu")
    good = [path for path, _ in bundle.test.samples if path in pixels]
    images = torch.cat([x for x, _ in test])
    assert len(images) == 6
    for x, path in zip(images, good, strict=True):
        np.testing.assert_array_equal(_to_uint8(x, **ZERO_ONE), pixels[path].transpose(2, 0, 1))


# ------------------------------------------------------------------------ data.image_size from the images themselves


def test_image_size_defaults_to_the_images_own_small_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_tree(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 2, "b": 1}}, size=32)
    bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE)
    assert bundle.input_size == (3, 32, 32) and bundle.test[0][0].shape == (3, 32, 32)
    assert "data.image_size 32" in capsys.readouterr().out
    assert build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=48).input_size == (3, 48, 48)


@pytest.mark.parametrize("sizes", [(28, 32), (96, 96), (4, 4)])
def test_other_small_images_keep_224_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    sizes: tuple[int, int]) -> None:
    for i, size in enumerate(sizes):
        write_tree(tmp_path / f"part{i}", {"val": {"a": 1}}, size=size)
        (tmp_path / "val" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"part{i}" / "val" / "a" / "0.png").rename(tmp_path / "val" / "a" / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="utils.data.folder"):
        bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, train=False)
    assert bundle.input_size == (3, 224, 224)
    assert len(caplog.records) == 1 and "data.image_size is not set: each is scaled up to 224x224" in caplog.text
    assert "Fix: set data.image_size" in caplog.text


def test_large_images_keep_224_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_tree(tmp_path, {"val": {"a": 2}}, size=256)
    with caplog.at_level(logging.WARNING):
        assert build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, train=False).input_size == (3, 224, 224)
    assert caplog.records == []


def test_the_size_is_read_from_a_sample_of_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path, {"val": {"a": 150, "b": 50}}, size=8)
    read: list[str] = []
    real = folder.header_sizes
    monkeypatch.setattr(folder, "header_sizes", lambda paths: read.extend(paths) or real(paths))
    assert build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, train=False).input_size == (3, 8, 8)
    assert len(read) == 64 and any("/b/" in path for path in read)  # spread over the classes


def _subset_tree(root: Path, shared_root: Path, per_class: int) -> Path:
    for source in sorted((shared_root / "test").iterdir()):
        (root / "test" / source.name).mkdir(parents=True)
        for image in sorted(source.glob("*.png"))[:per_class]:
            (root / "test" / source.name / image.name).write_bytes(image.read_bytes())
    return root


@pytest.mark.slow
def test_a_cifar_checkpoint_on_cifar_pngs_needs_no_image_size(shared, tmp_path: Path) -> None:
    """The issue's case through the real script: akamaster's ResNet-20 on CIFAR-10 PNGs without data.image_size
    scores what it scores at 32 (not the near-chance of 224: the images are no longer scaled up)."""
    from test_runner import TRAINER, run_script, succeeded  # not at the top: test_runner imports this module

    root = _subset_tree(tmp_path / "pngs", shared("cifar10-lossless-subset"), per_class=10)
    weights = shared("weights", "cifar10", "akamaster_resnet20-12fca82f.th")
    config = {"name": "eval", "data": {"name": "imagefolder", "root": str(root), "workers": 0,
                                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
              "model": {"arch": "resnet20", "checkpoint": str(weights)}, "output": {"dir": str(tmp_path / "runs")}}
    (tmp_path / "eval.json").write_text(json.dumps(config))
    tops = {}
    for size in (None, 32):
        args = ("--set", f"data.image_size={size}") if size else ()
        run = succeeded(run_script(TRAINER, "--json", str(tmp_path / "eval.json"), "--evaluate", *args, cwd=tmp_path))
        tops[size] = re.search(r"Top1: ([\d.]+)", run.stdout).group(1)
        assert ("data.image_size 32" in run.stdout) == (size is None)
    assert tops[None] == tops[32] and float(tops[None]) > 50, tops  # 100 images, ten classes: chance is 10


@pytest.mark.slow
def test_skip_bad_images_through_the_trainer(tmp_path: Path) -> None:
    """A training run with workers over a tree with unreadable files and a macOS companion: it trains on the
    readable images and names what it left out once per split on stderr."""
    from test_runner import TRAINER, run_script, succeeded  # not at the top: test_runner imports this module

    _bad_tree(tmp_path / "tree")
    (tmp_path / "tree" / "val" / "dog" / "._0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    config = {"name": "skip", "seed": 0, "data": {"name": "imagefolder", "root": str(tmp_path / "tree"),
                                                  "batch_size": 2, "workers": 2, "skip_bad_images": True},
              "model": {"arch": "resnet20"}, "train": {"epochs": 2, "lr": 0.05, "schedule": "constant"},
              "output": {"dir": str(tmp_path / "runs")}}
    (tmp_path / "skip.json").write_text(json.dumps(config))
    run = succeeded(run_script(TRAINER, "--json", str(tmp_path / "skip.json"), cwd=tmp_path))
    notes = run.stderr.splitlines()
    assert len(notes) == 2 and all(n.startswith("data.skip_bad_images: left out") for n in notes), run.stderr
    assert "left out 1 unreadable image file of" in notes[0] and "train/dog/8.png is truncated" in notes[0]
    assert "left out 3 unreadable image files of" in notes[1] and "._0.png" not in run.stderr
    assert [record["epoch"] for record in run.metrics()] == [0, 1]
