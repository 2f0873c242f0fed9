"""Tests of ``utils/data/``: real on-disk formats written small, properties of the transforms, clear user errors."""

from __future__ import annotations

import io
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.core.errors import UserError
from utils.core.tvguard import torchvision
from utils.data import digits
from utils.data.catalog import DataBundle
from utils.data.datasets import build_datasets, dataset_names, default_mean_std
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
    bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE)
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
    bundle = build_datasets(name, str(tmp_path), **ZERO_ONE, train=False)
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
