"""Training throughput (images/s) of the CIFAR models: GPU-resident loader vs torchvision DataLoader, fp32 vs bf16
autocast, eager vs ``torch.compile``.

    python bench/train_throughput.py --device cuda --models vgg16_bn_cifar resnet20 resnet56 --steps 100
    python bench/train_throughput.py --device cpu --models resnet20 --steps 5 --rounds 2     # a quick check

A step is what the trainer does (forward, cross-entropy, backward, SGD with momentum and weight decay), with the
batch fetched from the loader inside the timed region: the loader's cost is part of what is measured. The step is the
trainer's own (:func:`utils.train.engine.train_step`), with the trainer's options: ``train.amp`` (bf16),
``train.compile``, ``train.channels_last``.

All variants of a model are built first, warmed up (``torch.compile`` compiles there; its time is printed apart),
then timed in rounds, each variant in turn, and the medians are reported: load from other processes then hits every
variant alike, and the ratios are side by side. Each timed segment starts with ``--settle`` untimed steps that drain
what a DataLoader's workers prefetched while the other variants ran. Partial last batches are skipped (a new shape
would recompile a compiled model). Data: ``--data`` (a folder holding ``cifar-10-batches-py``, or a 32x32 ImageFolder
tree such as ``../shared/data/cifar10-lossless-subset``); without it, random uint8 images in the real CIFAR-10 file
format, read by the real loading code.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import header, median, prepare_device, spread, synchronize, write_synthetic_cifar
from models import build_arch
from utils.data.datasets import build_datasets, default_mean_std
from utils.data.device import build_device_loaders
from utils.data.loaders import build_loaders
from utils.train.engine import train_step as engine_step
from utils.train.fit import AMP_DTYPES

Batch = tuple[torch.Tensor, torch.Tensor]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=["vgg16_bn_cifar", "resnet20", "resnet56"])
    p.add_argument("--steps", type=int, default=50, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all variants; medians are reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before the rounds")
    p.add_argument("--settle", type=int, default=None, help="untimed steps at the start of each timed segment "
                   "(default: 2 x workers, what a DataLoader prefetches)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the torchvision path")
    p.add_argument("--data", default=None, help="CIFAR root or 32x32 ImageFolder tree; default: synthetic images")
    p.add_argument("--synthetic-images", type=int, default=10_000, help="training images when --data is absent")
    p.add_argument("--loaders", nargs="+", default=["torchvision", "device"], choices=["torchvision", "device"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    p.add_argument("--channels-last", action="store_true", help="channels-last model and batches")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p


def load_bundle(args: argparse.Namespace, scratch: Path) -> tuple[Any, str]:
    """The DataBundle both paths read, and a line saying what data it is."""
    if args.data is None:
        root = write_synthetic_cifar(scratch, train=args.synthetic_images, test=256, seed=args.seed)
        mean, std = default_mean_std("cifar10")
        return (build_datasets("cifar10", str(root), mean=mean, std=std),
                f"synthetic: {args.synthetic_images} random uint8 CIFAR-format images")
    root = Path(args.data)
    name = "cifar10" if (root / "cifar-10-batches-py").is_dir() else "imagefolder"
    mean, std = default_mean_std("cifar10")  # the models' usual statistics; the values do not change the speed
    bundle = build_datasets(name, str(root), mean=mean, std=std, image_size=32 if name == "imagefolder" else None)
    return bundle, f"{name} at {root} ({len(bundle.train)} training images)"


def batches(loader: Any, device: torch.device, channels_last: bool, batch_size: int) -> Iterator[Batch]:
    """Endless full batches on ``device``, epoch after epoch (set_epoch as the trainer does)."""
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        for images, target in loader:
            if len(target) != batch_size:
                continue
            images = images.to(device, non_blocking=True)  # what the engine does; a no-op for device batches
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, target.to(device, non_blocking=True)


@dataclass
class Variant:
    loader: str
    precision: str
    mode: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step_model: Any
    stream: Iterator[Batch]
    warmup_s: float = 0.0
    rates: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.loader}/{self.precision}/{self.mode}"


def train_step(v: Variant, device: torch.device, criterion: nn.Module) -> None:
    images, target = next(v.stream)
    autocast = AMP_DTYPES.get(v.precision)
    engine_step(v.step_model, images, target, criterion, v.optimizer, autocast=autocast)


def run_model(arch: str, args: argparse.Namespace, device: torch.device, streams: dict[str, Iterator[Batch]],
              settle: int) -> None:
    torch.manual_seed(args.seed)
    base = build_arch(arch, {"num_classes": 10}).model
    criterion = nn.CrossEntropyLoss()
    variants: list[Variant] = []
    for loader, precision, mode in itertools.product(args.loaders, args.precisions, args.modes):
        model = copy.deepcopy(base).to(device).train()
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        step_model = torch.compile(model) if mode == "compile" else model
        variants.append(Variant(loader, precision, mode, model, optimizer, step_model, streams[loader]))
    for v in variants:  # compilation (and cuDNN autotuning, allocator growth) happens here
        start = time.perf_counter()
        for _ in range(args.warmup):
            train_step(v, device, criterion)
        synchronize(device)
        v.warmup_s = time.perf_counter() - start
    for _ in range(args.rounds):
        for v in variants:
            for _ in range(settle):
                train_step(v, device, criterion)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(v, device, criterion)
            synchronize(device)
            v.rates.append(args.steps * args.batch_size / (time.perf_counter() - start))
    report(arch, variants, args)


def report(arch: str, variants: list[Variant], args: argparse.Namespace) -> None:
    baseline = variants[0]
    print(f"\n## {arch}: images/s, median of {args.rounds} rounds of {args.steps} steps (batch {args.batch_size})")
    print(f"| variant (loader/precision/mode) | images/s | spread | vs {baseline.name} | warm-up (s) |")
    print("|---|---|---|---|---|")
    for v in variants:
        ratio = median([a / b for a, b in zip(v.rates, baseline.rates, strict=True)])
        print(f"| {v.name} | {median(v.rates):,.0f} | {spread(v.rates)} | {ratio:.2f}x | {v.warmup_s:.1f} |")
    by_name = {(v.loader, v.precision, v.mode): v for v in variants}
    print("\nPaired ratios (median over rounds of the per-round ratio):")
    axes = [("loader", 0, "device", "torchvision", args.loaders), ("precision", 1, "bf16", "fp32", args.precisions),
            ("mode", 2, "compile", "eager", args.modes)]
    for what, axis, better, than, present in axes:
        if better not in present or than not in present:
            continue
        for key, v in by_name.items():
            if key[axis] != better:
                continue
            other = by_name[key[:axis] + (than,) + key[axis + 1:]]
            ratio = median([a / b for a, b in zip(v.rates, other.rates, strict=True)])
            print(f"  {what}: {v.name} / {other.name} = {ratio:.2f}")


def main(args: argparse.Namespace) -> int:
    device = prepare_device(args.device, args.threads)
    header("Training throughput", device)
    settle = args.settle if args.settle is not None else 2 * args.workers
    with tempfile.TemporaryDirectory() as scratch:
        bundle, what = load_bundle(args, Path(scratch))
        print(f"data: {what}; torchvision path: {args.workers} workers"
              f"{', pinned memory' if device.type == 'cuda' else ''}; channels_last: {args.channels_last}; "
              f"settle: {settle} untimed steps per segment")
        streams: dict[str, Iterator[Batch]] = {}
        if "torchvision" in args.loaders:
            loader, _ = build_loaders(bundle, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                                      pin_memory=device.type == "cuda")
            streams["torchvision"] = batches(loader, device, args.channels_last, args.batch_size)
        if "device" in args.loaders:
            loader, _ = build_device_loaders(bundle, batch_size=args.batch_size, seed=args.seed, device=device,
                                             channels_last=args.channels_last)
            streams["device"] = batches(loader, device, args.channels_last, args.batch_size)
        for arch in args.models:
            run_model(arch, args, device, streams, settle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
