"""Tests of ``utils/data/device.py``: the device-resident loader against the torchvision path it replaces.

Exactness (a given offset and flip gives torchvision's tensor bit for bit), statistics (offsets uniform over 0..8 and
flips at 0.5 in *both* paths, measured from the images they yield; matching per-channel mean/std), the order and
resumption contract of :mod:`utils.data.sampling`, and an un-augmented test split equal to torchvision's. All on the
CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import ZERO_ONE, write_cifar, write_tree
from torch import nn

from utils.core.errors import UserError
from utils.core.tvguard import torchvision
from utils.data.datasets import build_datasets, default_mean_std
from utils.data.device import (
    Augmentation,
    DeviceLoader,
    EpochOrder,
    LoaderSpec,
    build_device_loaders,
    crop_flip,
    normalize,
)
from utils.data.loaders import build_loaders
from utils.data.sampling import SeededSampler

F = torchvision.transforms.functional
CIFAR_MEAN, CIFAR_STD = default_mean_std("cifar10")
CHI2_8_DOF_P001 = 26.12  # chi-square critical value, 8 degrees of freedom (9 offsets), p = 0.001


def _images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("padding", [4, 2, 0])
@pytest.mark.parametrize("channels_last", [False, True])
def test_crop_flip_equals_torchvision_pad_crop_hflip(padding: int, channels_last: bool) -> None:
    span = 2 * padding + 1
    grid = [(i, j, f) for i in range(span) for j in range(span) for f in (False, True)]  # every offset and flip
    images = _images(len(grid), seed=padding, size=32)
    index = torch.randperm(len(grid), generator=torch.Generator().manual_seed(1))
    offsets = torch.tensor([[i, j] for i, j, _ in grid])
    flips = torch.tensor([f for _, _, f in grid])
    out = crop_flip(images, index, offsets, flips, padding=padding, channels_last=channels_last)
    assert out.shape == (len(grid), 3, 32, 32) and out.dtype == torch.uint8
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for k, (i, j, flip) in enumerate(grid):
        expected = F.crop(F.pad(images[index[k]], [padding], fill=0), i, j, 32, 32)
        expected = F.hflip(expected) if flip else expected
        assert torch.equal(out[k], expected), (i, j, flip)


def test_one_image_is_bit_identical_to_the_real_cifar_pipeline(tmp_path: Path) -> None:
    """Replay the draws torchvision's RandomCrop and RandomHorizontalFlip make under a seed, on the device path."""
    write_cifar(tmp_path, per_batch=4, n_test=2)
    bundle = build_datasets("cifar10", str(tmp_path), mean=CIFAR_MEAN, std=CIFAR_STD)
    loader, _ = build_device_loaders(bundle, batch_size=8, seed=0, device="cpu")
    assert loader.augmentation == Augmentation(padding=4, flip_p=0.5)
    seen = set()
    for seed in range(40):
        index = seed % len(bundle.train)
        torch.manual_seed(seed)
        expected = bundle.train[index][0]  # PIL pad + crop + flip, ToTensor, Normalize
        torch.manual_seed(seed)  # RandomCrop.get_params draws i then j in 0..8, then the flip draws rand(1) < p
        i, j = torch.randint(0, 9, (1,)).item(), torch.randint(0, 9, (1,)).item()
        flip = bool(torch.rand(1) < 0.5)
        seen.add(flip)
        got = normalize(crop_flip(loader.images, torch.tensor([index]), torch.tensor([[i, j]]), torch.tensor([flip]),
                                  padding=4), loader.mean, loader.std)[0]
        assert torch.equal(got, expected), (seed, i, j, flip)
    assert seen == {False, True}


# ----------------------------------------------------------------------------------------------------- statistics


def _coded_images(n: int) -> np.ndarray:
    """(N, 32, 32, 3) uint8 whose pixels say where they come from: R = row + 1, G = column + 1 (0 is padding), B varies
    per image, so each augmented image tells its crop offsets and flip."""
    ramp = np.arange(1, 33, dtype=np.uint8)
    images = np.empty((n, 32, 32, 3), np.uint8)
    images[..., 0] = ramp[None, :, None]
    images[..., 1] = ramp[None, None, :]
    images[..., 2] = np.random.default_rng(0).integers(40, 220, n, dtype=np.uint8)[:, None, None]
    return images


def _decode(batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets (i, j) and flips of images made from :func:`_coded_images` with CIFAR normalisation."""
    m, s = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    pixels = (batch * s + m).mul(255).round().to(torch.int64)
    r, g = pixels[:, 0, 16, 16], pixels[:, 1, 16, 16]
    flip = pixels[:, 1, 16, 17] < g  # columns run backwards
    # Output pixel (16, 16) comes from row i - 4 + 16 and column j - 4 + 16 (j - 4 + 15 flipped); values are index + 1.
    return (r - 13).numpy(), (g - 13 + flip.long()).numpy(), flip.numpy()


def _chi2_uniform(values: np.ndarray, bins: int) -> float:
    counts = np.bincount(values, minlength=bins)
    assert len(counts) == bins, f"values outside 0..{bins - 1}"
    expected = len(values) / bins
    return float(((counts - expected) ** 2 / expected).sum())


def _epochs(loader, epochs: int) -> torch.Tensor:
    batches = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        batches += [images for images, _ in loader]
    return torch.cat(batches)


@pytest.fixture(scope="module")
def coded_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Three epochs of 1,000 coded images through each path: the torchvision DataLoader and the device loader."""
    root = tmp_path_factory.mktemp("coded")
    write_cifar(root, per_batch=200, n_test=2)
    bundle = build_datasets("cifar10", str(root), mean=CIFAR_MEAN, std=CIFAR_STD)
    bundle.train.data[:] = _coded_images(len(bundle.train))
    torch_loader, _ = build_loaders(bundle, batch_size=100, workers=0, seed=3)
    device_loader, _ = build_device_loaders(bundle, batch_size=100, seed=3, device="cpu")
    return {"torchvision": _epochs(torch_loader, 3), "device": _epochs(device_loader, 3)}


@pytest.mark.parametrize("path", ["torchvision", "device"])
def test_offsets_are_uniform_over_0_to_8_and_flips_half(coded_runs: dict[str, torch.Tensor], path: str) -> None:
    i, j, flip = _decode(coded_runs[path])
    assert len(i) == 3000
    assert _chi2_uniform(i, 9) < CHI2_8_DOF_P001 and _chi2_uniform(j, 9) < CHI2_8_DOF_P001
    assert _chi2_uniform(i * 9 + j, 81) < 124.8  # jointly uniform: independent row and column offsets (p = 0.001)
    assert abs(flip.mean() - 0.5) < 4 * np.sqrt(0.25 / len(flip))
    for both in (i[flip], i[~flip]):  # the flip is independent of the offsets
        assert _chi2_uniform(both, 9) < CHI2_8_DOF_P001


def test_both_paths_draw_the_same_distribution(coded_runs: dict[str, torch.Tensor]) -> None:
    tv, dev = _decode(coded_runs["torchvision"]), _decode(coded_runs["device"])
    for a, b in ((tv[0], dev[0]), (tv[1], dev[1])):  # two-sample chi-square of homogeneity over the 9 offsets
        table = np.stack([np.bincount(a, minlength=9), np.bincount(b, minlength=9)]).astype(float)
        expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        assert ((table - expected) ** 2 / expected).sum() < CHI2_8_DOF_P001
    x, y = coded_runs["torchvision"], coded_runs["device"]
    assert torch.allclose(x.mean(dim=(0, 2, 3)), y.mean(dim=(0, 2, 3)), atol=0.02)  # ~0.3 sigma of a pixel
    assert torch.allclose(x.std(dim=(0, 2, 3)), y.std(dim=(0, 2, 3)), atol=0.02)
    assert torch.allclose(x.mean(dim=0), y.mean(dim=0), atol=0.15)  # per pixel position: padding lands alike


def test_random_images_have_matching_channel_statistics(tmp_path: Path) -> None:
    write_cifar(tmp_path, per_batch=100, n_test=2, seed=5)
    bundle = build_datasets("cifar10", str(tmp_path), mean=CIFAR_MEAN, std=CIFAR_STD)
    torch_loader, _ = build_loaders(bundle, batch_size=125, workers=0, seed=0)
    device_loader, _ = build_device_loaders(bundle, batch_size=125, seed=0, device="cpu")
    x, y = _epochs(torch_loader, 2), _epochs(device_loader, 2)
    assert x.shape == y.shape == (1000, 3, 32, 32)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), y.mean(dim=(0, 2, 3)), atol=0.01)
    assert torch.allclose(x.std(dim=(0, 2, 3)), y.std(dim=(0, 2, 3)), atol=0.01)
    zero = ((0 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)).view(1, 3, 1, 1)  # a padded pixel
    padded_x, padded_y = (x == zero).float().mean(), (y == zero).float().mean()
    # E[padded rows] = E|i - 4| = 20/9 of 32, so E[padded pixels] = 1 - (1 - 20/288)**2 = 0.134 (+ real zeros: 1/256)
    assert abs(padded_x - padded_y) < 0.01 and 0.12 < padded_y < 0.155


# ------------------------------------------------------------------------------------------ order and resumption


def _loader(n: int = 37, batch_size: int = 8, seed: int = 11, **kwargs) -> DeviceLoader:
    return DeviceLoader(_images(n, seed=2), torch.arange(n), LoaderSpec(batch_size=batch_size, mean=CIFAR_MEAN,
                                                                        std=CIFAR_STD, train=True, seed=seed, **kwargs))


def _pass(loader: DeviceLoader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch, start=start)
    return list(loader)


def test_batches_depend_on_seed_and_epoch_alone() -> None:
    a, b = _loader(), _loader()
    _pass(b, 7)  # an earlier pass on the same loader changes nothing
    first, again = _pass(a, 2), _pass(b, 2)
    assert len(first) == 5 and [len(y) for _, y in first] == [8, 8, 8, 8, 5]  # drop_last=False
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = _pass(a, 3)
    assert not torch.equal(torch.cat([y for _, y in other]), torch.cat([y for _, y in first]))
    assert not torch.equal(_pass(_loader(seed=12), 2)[0][0], first[0][0])


def test_every_image_once_per_epoch_in_the_seeded_sampler_order() -> None:
    loader = _loader()
    for epoch in range(3):
        labels = torch.cat([y for _, y in _pass(loader, epoch)])
        sampler = SeededSampler(37, seed=11)
        sampler.set_epoch(epoch)
        assert labels.tolist() == [index for index, _ in sampler]  # the DataLoader path's order, exactly
        assert sorted(labels.tolist()) == list(range(37))


@pytest.mark.parametrize("steps", [1, 3, 4])
def test_set_epoch_start_yields_the_suffix(steps: int) -> None:
    loader = _loader()
    full = _pass(loader, 5)
    loader.sampler.set_epoch(5, start=steps * loader.batch_size)
    assert len(loader) == len(full) - steps
    rest = list(loader)
    assert len(rest) == len(full) - steps
    for (x1, y1), (x2, y2) in zip(full[steps:], rest, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(loader) == len(full) and len(list(loader)) == len(full)  # start applies to one pass only


def test_start_epoch_order_resumes_a_device_loader_unchanged() -> None:
    """The trainer's own hook (``loader.sampler.set_epoch(epoch, start=step * batch_size)``) works as it is."""
    from utils.train.fit import start_epoch_order

    loader = _loader()
    start_epoch_order(loader, 11, 4)
    full = list(loader)
    start_epoch_order(loader, 11, 4, start_step=2)
    rest = list(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], rest, strict=True)) and len(rest) == len(full) - 2
    state = torch.get_rng_state()
    list(loader)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG (dropout) is left to the training loop


def test_epoch_order_draws_are_cut_not_redrawn() -> None:
    order = EpochOrder(20, seed=1, shuffle=True, augmentation=Augmentation())
    order.set_epoch(3)
    whole = order.draw()
    order.set_epoch(3, start=6)
    part = order.draw()
    assert torch.equal(part.order, whole.order[6:]) and torch.equal(part.offsets, whole.offsets[6:])
    assert torch.equal(part.flips, whole.flips[6:])
    assert whole.offsets.min() >= 0 and whole.offsets.max() <= 8


def test_channels_last_changes_the_layout_only() -> None:
    dense, nhwc = _pass(_loader(), 1), _pass(_loader(channels_last=True), 1)
    for (x1, _), (x2, _) in zip(dense, nhwc, strict=True):
        assert x2.is_contiguous(memory_format=torch.channels_last) and torch.equal(x1, x2)


def test_trains_through_the_engine() -> None:
    from utils.train.engine import train_one_epoch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    labels = torch.arange(37) % 10
    loader = DeviceLoader(_images(37), labels, LoaderSpec(batch_size=8, mean=CIFAR_MEAN, std=CIFAR_STD, train=True))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, torch.device("cpu"), epoch=0)
    assert stats is not None and np.isfinite(stats["loss"]) and 0 <= stats["top1"] <= 100


# ----------------------------------------------------------------------------------------------------- test split


def test_cifar_test_split_equals_torchvision_tensors(tmp_path: Path) -> None:
    write_cifar(tmp_path, per_batch=3, n_test=10)
    bundle = build_datasets("cifar10", str(tmp_path), mean=CIFAR_MEAN, std=CIFAR_STD)
    _, torch_test = build_loaders(bundle, batch_size=16, test_batch_size=4, workers=0, seed=0)
    train, test = build_device_loaders(bundle, batch_size=16, test_batch_size=4, seed=0, device="cpu")
    assert len(test) == len(torch_test) == 3 and len(train) == 1
    for _ in range(2):  # a second pass (the next epoch's evaluation) is the same
        for (x1, y1), (x2, y2) in zip(torch_test, test, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    alone = DeviceLoader.from_cifar_root(str(tmp_path), train=False, batch_size=4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(alone, test, strict=True))


def test_imagefolder_small_images_match_torchvision(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train": {"a": 3, "b": 2}, "test": {"a": 2, "b": 3}})
    bundle = build_datasets("imagefolder", str(tmp_path), **ZERO_ONE, image_size=32)
    _, torch_test = build_loaders(bundle, batch_size=2, workers=0, seed=0)
    train, test = build_device_loaders(bundle, batch_size=2, seed=0, device="cpu")
    assert train.augmentation == Augmentation(padding=4, flip_p=0.5)
    for (x1, y1), (x2, y2) in zip(torch_test, test, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert sorted(torch.cat([y for _, y in train]).tolist()) == [0, 0, 0, 1, 1]


def test_pipelines_it_cannot_reproduce_are_user_errors(tmp_path: Path) -> None:
    write_tree(tmp_path / "big", {"train": {"a": 1}, "val": {"a": 1}})
    bundle = build_datasets("imagefolder", str(tmp_path / "big"), **ZERO_ONE, image_size=224)  # RandomResizedCrop
    with pytest.raises(UserError, match='data.loader "gpu".*RandomResizedCrop.*"torchvision"'):
        build_device_loaders(bundle, batch_size=2, seed=0, device="cpu")
    digits = build_datasets("digits", "unused", mean=(0.3,) * 3, std=(0.3,) * 3)
    with pytest.raises(UserError, match='data.loader "gpu"'):
        build_device_loaders(digits, batch_size=2, seed=0, device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches() -> None:
    cpu, gpu = _loader(), _loader(device="cuda")
    assert gpu.images.is_cuda
    for (x1, y1), (x2, y2) in zip(_pass(cpu, 2), _pass(gpu, 2), strict=True):
        assert x2.is_cuda and torch.equal(y1, y2.cpu())
        assert torch.allclose(x1, x2.cpu(), rtol=0, atol=1e-6)
