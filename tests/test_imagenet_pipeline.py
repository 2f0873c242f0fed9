"""The ImageNet input pipeline of ``utils/data/``: per-batch normalisation gives the per-image pipeline's numbers bit
for bit, the seeded contract holds with workers, the tensor (torchvision.io + transforms.v2) pipeline draws the same
crops as PIL's, the torchvision.io guard falls back to PIL, and the benchmark's replicated tree is what it claims.

Synthetic JPEG trees keep most tests independent of ``../shared/data``; the tests on real photographs use the shared
ImageNet sample and skip without it (fail under ``CI=true``, see ``conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from bench.imagenet_pipeline import replicate_tree
from utils.core.errors import UserError
from utils.core.tvguard import torchvision
from utils.data import catalog, folder, loaders
from utils.data.catalog import DataSpec
from utils.data.datasets import build_datasets, default_mean_std
from utils.data.folder import BatchNormalize, torchvision_io_problem
from utils.data.imagefiles import ImageFiles, MarkUnreadable, SetAsideUnreadable
from utils.data.loaders import build_loaders
from utils.data.sampling import SeededAugmentation

T = torchvision.transforms
MEAN, STD = default_mean_std("imagenet")
SIZE = 96  # > 64: the ImageNet-size pipeline (RandomResizedCrop / resize + centre crop), small enough to be fast


def _photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth image with some texture: gradients plus noise, closer to a photograph than uniform noise."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)


def write_jpeg_tree(root: Path, splits: dict[str, dict[str, int]]) -> None:
    """``root/<split>/<class>/<i>.JPEG`` of varied sizes and aspect ratios; the first image of each class is grey
    (ImageNet has some, and both pipelines must turn them into RGB)."""
    rng = np.random.default_rng(0)
    for split, classes in splits.items():
        for cls, count in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = int(rng.integers(100, 160)), int(rng.integers(100, 160))
                image = Image.fromarray(_photo(rng, h, w))
                (image.convert("L") if i == 0 else image).save(folder / f"{i}.JPEG", quality=90)


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    write_jpeg_tree(root, {"train": {"a": 5, "b": 4}, "val": {"a": 3, "b": 3}})
    return root


def _bundle(root: Path, decode: str = "pil", train: bool = True) -> catalog.DataBundle:
    return folder._build_folder("imagefolder", str(root), DataSpec(mean=MEAN, std=STD, train=train, download=False,
                                                                    image_size=SIZE, decode=decode),
                                eval_splits=("val", "test"))


def _epoch(loader: DataLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b, strict=True))


@contextlib.contextmanager
def _no_warning() -> Iterator[None]:
    """Fail the test if a warning is raised inside."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ------------------------------------------------------------------------------------ per-batch normalisation


def test_batch_normalize_is_totensor_normalize_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    pictures = [rng.integers(0, 256, (17, 23, 3), dtype=np.uint8) for _ in range(6)]
    per_image = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    expected = torch.stack([per_image(Image.fromarray(p)) for p in pictures])
    images = [T.functional.pil_to_tensor(Image.fromarray(p)) for p in pictures]  # (3, H, W) views of HWC arrays
    normalize = BatchNormalize(MEAN, STD)
    assert torch.equal(normalize(images), expected)  # a collate function's list
    assert torch.equal(normalize(torch.stack(images)), expected)  # a stacked batch (normalised on a device)
    with pytest.raises(ValueError, match=r"expected uint8 images \(N, 3, H, W\)"):
        normalize(expected)
    with pytest.raises(ValueError, match=r"of one shape \(3, H, W\), got torch.uint8 \(3, 17, 22\)"):
        normalize([images[0], images[1][:, :, :22]])


def test_loaders_give_the_per_image_pipelines_batches(jpeg_tree: Path) -> None:
    """build_loaders reads uint8 items and normalises per batch; the batches are those of dataset[i] (ToTensor +
    Normalize per image, what the loaders returned before), bit for bit, for training (same seeds) and evaluation."""
    bundle = _bundle(jpeg_tree)
    assert isinstance(bundle.train, folder._FolderImages)
    assert repr(bundle.train.transform) == repr(folder._folder_transforms(SIZE, MEAN, STD)[0])  # dataset[i] unchanged
    train, test = build_loaders(bundle, batch_size=4, workers=0, seed=5)
    per_image = DataLoader(SeededAugmentation(bundle.train), batch_size=4, sampler=train.sampler)
    for epoch in (0, 1):
        batched = _epoch(train, epoch)
        assert batched[0][0].dtype == torch.float32 and batched[0][0].shape == (4, 3, SIZE, SIZE)
        assert _same_batches(batched, _epoch(per_image, epoch))
    items = [bundle.test[i] for i in range(len(bundle.test))]
    expected = [(torch.stack([x for x, _ in items[k:k + 4]]), torch.tensor([y for _, y in items[k:k + 4]]))
                for k in range(0, len(items), 4)]
    assert _same_batches(list(test), expected)


@pytest.mark.parametrize("decode", folder.FOLDER_DECODERS)
def test_same_batches_with_0_and_2_workers(jpeg_tree: Path, decode: str) -> None:
    """The seeded contract (utils/data/sampling.py): batches depend on (seed, epoch) only, whatever the workers."""
    with pytest.warns(UserWarning) if decode == "torchvision" and torchvision_io_problem() else _no_warning():
        bundle = _bundle(jpeg_tree, decode)
    runs = []
    for workers in (0, 2):
        train, test = build_loaders(bundle, batch_size=4, workers=workers, seed=11)
        runs.append((_epoch(train, 3), list(test)))
    assert _same_batches(runs[0][0], runs[1][0]) and _same_batches(runs[0][1], runs[1][1])
    train, _ = build_loaders(bundle, batch_size=4, workers=0, seed=11)
    assert not _same_batches(runs[0][0], _epoch(train, 4))  # another epoch, other crops


# ---------------------------------------------------------------------------------------- the tensor pipeline


def _sample_images(shared, count: int) -> list[Path]:
    root = shared("imagenet-sample", "val")
    return sorted(root.glob("*/*.JPEG"))[:: 1000 // count][:count]


def test_tensor_transforms_draw_the_same_crops_as_pil(shared) -> None:
    """transforms.v2 on the uint8 tensor vs PIL on the same decoded photograph, under the same seed: the same crop
    and flip (a different one would differ by tens of levels), resized within 1 level of PIL's (both are antialiased
    bilinear in fixed point and round differently)."""
    pil_train, pil_eval = (folder._without_normalize(t) for t in folder._folder_transforms(224, MEAN, STD))
    tensor_train, tensor_eval = folder._tensor_transforms(224)
    worst, total, count = 0.0, 0.0, 0
    for k, path in enumerate(_sample_images(shared, 12)):
        image = torchvision.datasets.folder.default_loader(str(path))
        for pil_tf, tensor_tf in ((pil_train, tensor_train), (pil_eval, tensor_eval)):
            torch.manual_seed(k)
            expected = pil_tf(image)
            torch.manual_seed(k)
            got = tensor_tf(T.functional.pil_to_tensor(image))
            assert got.dtype == torch.uint8 and got.shape == expected.shape == (3, 224, 224)
            diff = (got.int() - expected.int()).abs()
            worst, total, count = max(worst, diff.max().item()), total + diff.sum().item(), count + diff.numel()
    assert worst <= 1 and total / count < 0.1, (worst, total / count)


@pytest.mark.skipif(torchvision_io_problem() is not None,
                    reason=f"torchvision.io cannot decode in this installation: {torchvision_io_problem()}")
def test_torchvision_io_decodes_like_pil(shared) -> None:
    """torchvision.io and PIL each bundle their own libjpeg-turbo; versions and build options may round the inverse
    DCT and chroma upsampling differently, so the bound is torchvision's own test's for decode_jpeg vs PIL (mean
    absolute difference < 2 levels), and the shapes must agree."""
    for path in _sample_images(shared, 12):
        ours = folder._torchvision_io_loader(str(path))
        pil = folder._pil_tensor_loader(str(path))
        assert ours.dtype == torch.uint8 and ours.shape == pil.shape
        assert (ours.float() - pil.float()).abs().mean().item() < 2


# ------------------------------------------------------------------------------------------ the fallback guard


@pytest.fixture
def fresh_guard():
    folder.torchvision_io_problem.cache_clear()
    yield
    folder.torchvision_io_problem.cache_clear()


def test_guard_falls_back_to_pil_when_torchvision_io_cannot_load(jpeg_tree: Path, monkeypatch, fresh_guard) -> None:
    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("Couldn't load the image extension.\nmore details")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", broken)
    assert folder.torchvision_io_problem() == "RuntimeError: Couldn't load the image extension."
    with pytest.warns(UserWarning, match=r'data.decode "torchvision": torchvision.io cannot decode here .*PIL'):
        bundle = _bundle(jpeg_tree, "torchvision")
    assert bundle.train.loader is folder._pil_tensor_loader and bundle.test.loader is folder._pil_tensor_loader
    image, label = bundle.test[0]  # a grey JPEG, made RGB
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32 and label == 0


def test_guard_uses_torchvision_io_when_it_decodes(jpeg_tree: Path, monkeypatch, fresh_guard) -> None:
    def working(data_: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return torch.zeros(3, 8, 8, dtype=torch.uint8)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", working)
    assert folder.torchvision_io_problem() is None
    with _no_warning():
        bundle = _bundle(jpeg_tree, "torchvision", train=False)
    assert bundle.test.loader is folder._torchvision_io_loader


def test_guard_rejects_a_decoder_that_returns_nonsense(monkeypatch, fresh_guard) -> None:
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda *a, **k: torch.zeros(8, 8, dtype=torch.uint8))
    assert "returned torch.uint8 (8, 8)" in folder.torchvision_io_problem()


def test_unknown_decoder_is_a_user_error(jpeg_tree: Path) -> None:
    with pytest.raises(UserError, match="data.decode: expected one of pil, torchvision, got 'opencv'"):
        _bundle(jpeg_tree, "opencv")


def test_small_images_keep_the_plain_pipeline(tmp_path: Path) -> None:
    """CIFAR-like folders keep ImageFolder's per-image pipeline: utils/data/device.py reads their transforms, and
    their loaders read the dataset itself (only marking unreadable files, utils/data/imagefiles.py)."""
    write_jpeg_tree(tmp_path, {"train": {"a": 1}, "val": {"a": 1}})
    bundle = build_datasets("imagefolder", str(tmp_path), mean=MEAN, std=STD, image_size=32)
    assert type(bundle.train) is ImageFiles and not isinstance(bundle.train, folder._FolderImages)
    items, collate, _ = folder._loader_view(bundle.train)
    assert isinstance(items, MarkUnreadable) and items.items is bundle.train
    assert isinstance(collate, SetAsideUnreadable) and collate.collate is default_collate


# -------------------------------------------------------------------------------------------- replicated tree


def test_replicate_tree_links_every_image_copies_times(tmp_path: Path) -> None:
    write_jpeg_tree(tmp_path / "src", {"val": {"n01": 2, "n02": 3}})
    (tmp_path / "src" / "val" / "n01" / "notes.txt").write_text("not an image")
    count = replicate_tree(tmp_path / "src" / "val", tmp_path / "big", copies=3)
    assert count == 15
    for split in ("train", "val"):
        files = sorted((tmp_path / "big" / split).glob("*/*"))
        assert len(files) == 15 and all(f.is_symlink() for f in files)
        assert {os.path.realpath(f) for f in files} == {str(p.resolve()) for p in (tmp_path / "src").glob("*/*/*.JPEG")}
    bundle = build_datasets("imagenet", str(tmp_path / "big"), mean=MEAN, std=STD)
    assert bundle.classes == ["n01", "n02"] and len(bundle.train) == len(bundle.test) == 15
    assert sorted(bundle.test.targets) == [0] * 6 + [1] * 9


def test_shared_sample_loads_batched_with_workers(shared) -> None:
    """The real ImageNet sample through build_loaders with 2 workers: the first evaluation batch is dataset[i]'s."""
    bundle = build_datasets("imagenet", str(shared("imagenet-sample")), mean=MEAN, std=STD, train=False)
    _, test = build_loaders(bundle, batch_size=8, workers=2, seed=0)
    images, labels = next(iter(test))
    assert torch.equal(images, torch.stack([bundle.test[i][0] for i in range(8)]))
    assert labels.tolist() == [bundle.test[i][1] for i in range(8)]


# ------------------------------------------------------------------------------------------------- workers


@pytest.mark.parametrize(("cores", "processes", "expected"), [(1, 1, 0), (2, 1, 1), (16, 1, 15), (64, 8, 7),
                                                                (64, 1, loaders.MAX_AUTO_WORKERS), (4, 8, 0)])
def test_auto_workers_leave_a_core_per_training_process(monkeypatch, cores: int, processes: int,
                                                        expected: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert loaders.auto_workers(processes) == expected


# ---------------------------------------------------------------------------------------------- the benchmark


def test_benchmark_runs_every_pipeline_on_a_tiny_tree(jpeg_tree: Path, capsys) -> None:
    """bench/imagenet_pipeline.py end to end on the CPU (one batch of each variant): it must not rot."""
    from bench import imagenet_pipeline

    args = imagenet_pipeline.get_args_parser().parse_args(
        ["--device", "cpu", "--data", str(jpeg_tree / "val"), "--copies", "2", "--workers", "0", "1",
         "--batch-size", "4", "--batches", "1", "--rounds", "1", "--pipelines", *imagenet_pipeline.PIPELINES])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torchvision.io fallback, where it applies
        assert imagenet_pipeline.main(args) == 0
    out = capsys.readouterr().out
    for pipeline in imagenet_pipeline.PIPELINES:
        assert out.count(f"| {pipeline} | ") == 4  # train and eval, 0 and 1 workers
    assert "## train loader" in out and "## eval loader" in out and "torchvision.io: " in out
