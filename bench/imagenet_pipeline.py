"""Images/s of the ImageNet input pipeline (``utils/data/folder.py``): training loader (RandomResizedCrop 224 + flip)
and evaluation loader (Resize 256 + CenterCrop 224), per-image vs per-batch normalisation, PIL vs torchvision.io
decoding, DataLoader workers, ``prefetch_factor``, pinned memory; with ``--device cuda`` also the copy to the GPU and
uint8 batches normalised there, and the training step of the ImageNet models the loader has to keep up with.

    OMP_WAIT_POLICY=PASSIVE python bench/imagenet_pipeline.py --device cpu --threads 1     # 2 cores: ~2 minutes
    python bench/imagenet_pipeline.py --device cuda --workers 4 8 12 16 --batch-size 256 --batches 20 --copies 20 \\
        --models tv_resnet18 tv_resnet34 tv_mobilenet_v2 --amp bf16

Data: the shared ImageNet sample (``../shared/data/imagenet-sample/val``, or ``--data``: any ImageFolder split)
replicated ``--copies`` times into a temporary tree of symbolic links, ``train/`` and ``val/`` alike (nothing is
copied), which the real ``utils.data.folder`` code then builds and loads. Its ~34 MB stay in the page cache: this
measures decoding and transforms, not disk reads. Its images are 256 pixels on the short side, where ILSVRC-2012's
average roughly 470x390: decoding costs less per image than on the real data, and evaluation's Resize(256) is nearly
free.

Pipelines (``--pipelines``):

    per-image    ToTensor + Normalize in each image's transform: ``dataset[i]``, what the loader did before
    batched      uint8 per image, normalised a batch at a time in the worker: ``build_loaders`` now (same numbers)
    torchvision  torchvision.io decoding + transforms.v2 on uint8 tensors, batched (``_build_folder(decode=...)``);
                 where torchvision.io cannot load, PIL decodes (the output's header says which)
    on-device    uint8 batches, copied to ``--device`` and normalised there by the consumer (main process on a CPU)

Every loader is ``build_loaders``'s own, with the knob being compared overridden (``prefetch_factor``, the dataset
view and collate function of a pipeline) and ``persistent_workers`` off: each timed segment starts its own workers
(untimed; the time to the first batch is printed apart: what ``persistent_workers`` saves at every epoch after the
first), consumes ``--settle`` batches untimed, times ``--batches`` batches and stops its workers, so no variant's
workers run while another is timed. Variants alternate inside rounds; medians over rounds, and ratios per round.
Besides images/s, the CPU time per image of the workers and of the main process during the timed batches (Linux
/proc): on a machine shared with other jobs it is steadier than wall time, and it says how many cores a rate needs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import header, median, prepare_device, shared_data, spread, synchronize
from utils.data import folder
from utils.data.catalog import DataSpec
from utils.data.datasets import default_mean_std
from utils.data.folder import BatchNormalize, torchvision_io_problem
from utils.data.imagefiles import MarkUnreadable, SetAsideUnreadable
from utils.data.loaders import build_loaders
from utils.data.sampling import SeededAugmentation

PIPELINES = ("per-image", "batched", "torchvision", "on-device")
SPLITS = ("train", "eval")
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default=None, help="an ImageFolder split (<class>/<image>) to replicate (default: "
                   "<shared data>/imagenet-sample/val)")
    p.add_argument("--copies", type=int, default=3, help="times each image appears in the replicated train/ and val/")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    p.add_argument("--pipelines", nargs="+", default=None, choices=PIPELINES,
                   help="default: all but on-device on a CPU, all on a GPU")
    p.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="DataLoader worker counts to compare")
    p.add_argument("--prefetch", nargs="+", type=int, default=[2], help="prefetch_factor values (workers > 0)")
    p.add_argument("--pin", nargs="+", default=None, choices=["on", "off"],
                   help="pinned memory (only with an accelerator; default: on with cuda, as the trainer sets it)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=6, help="timed batches per segment")
    p.add_argument("--settle", type=int, default=None, help="untimed batches at the start of each segment (default: "
                   "max(1, workers), the batches that all workers start on together)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all variants; medians are reported")
    p.add_argument("--models", nargs="*", default=[], help="also time a training step of these models on --device "
                   "(synthetic batches), the images/s the loader must keep up with, e.g. tv_resnet18")
    p.add_argument("--amp", choices=["bf16"], default=None, help="autocast dtype of the model steps")
    p.add_argument("--channels-last", action="store_true", help="channels-last model steps")
    p.add_argument("--steps", type=int, default=20, help="timed model steps per round")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the main process (workers use 1)")
    p.add_argument("--seed", type=int, default=0)
    return p


# ------------------------------------------------------------------------------------------------------ data


def replicate_tree(source: Path, dest: Path, copies: int, splits: Sequence[str] = ("train", "val")) -> int:
    """Symbolic links to every image of the ImageFolder split ``source`` (``<class>/<image>``), ``copies`` times
    each, as ``dest/<split>/<class>/<k>_<image>`` for every split: an ImageNet-layout tree ``copies`` times the size
    of ``source`` without copying a byte. Returns the images per split."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    classes = sorted(d for d in source.iterdir() if d.is_dir())
    count = 0
    for split in splits:
        count = 0
        for class_dir in classes:
            images = sorted(f for f in class_dir.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
            target = dest / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for k, image in itertools.product(range(copies), images):
                (target / f"{k}_{image.name}").symlink_to(image.resolve())
                count += 1
    return count


def build_bundles(root: Path, pipelines: Sequence[str]) -> dict[str, Any]:
    """One DataBundle per decoder the pipelines need ("pil" for all but torchvision)."""
    mean, std = default_mean_std("imagenet")
    decoders = {"torchvision" if p == "torchvision" else "pil" for p in pipelines}
    return {d: folder._build_folder("imagenet", str(root), DataSpec(mean=mean, std=std, train=True, download=False,
                                                                    image_size=None, decode=d), eval_splits=("val",))
            for d in sorted(decoders)}


# --------------------------------------------------------------------------------------------------- loaders


@dataclass
class Variant:
    split: str
    pipeline: str
    workers: int
    prefetch: int | None
    pin: bool
    loader: DataLoader
    consume: Callable[[Any], None]
    rates: list[float] = field(default_factory=list)
    worker_cpu_ms: list[float] = field(default_factory=list)  # CPU time per image of the workers, all together
    main_cpu_ms: list[float] = field(default_factory=list)  # and of the main process (all its threads)
    first_batch_s: list[float] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int, int | None, bool]:
        return self.split, self.pipeline, self.workers, self.prefetch, self.pin


def variant_loader(bundle: Any, split: str, pipeline: str, workers: int, prefetch: int | None, pin: bool,
                   args: argparse.Namespace) -> DataLoader:
    """``build_loaders``'s loader for ``split``, with the pipeline's dataset view and collate function,
    ``prefetch_factor`` and no persistent workers (see the module docstring)."""
    train, test = build_loaders(bundle, batch_size=args.batch_size, workers=workers, seed=args.seed, pin_memory=pin)
    loader = train if split == "train" else test
    assert loader is not None
    # build_loaders' view marks unreadable files instead of raising (utils/data/imagefiles.py); a benchmark tree has
    # none, so the plain items and collate function underneath are timed, read by a plain DataLoader.
    dataset, collate = loader.dataset, loader.collate_fn
    if isinstance(dataset, SeededAugmentation) and isinstance(dataset.dataset, MarkUnreadable):
        dataset = SeededAugmentation(dataset.dataset.items)
    dataset = dataset.items if isinstance(dataset, MarkUnreadable) else dataset
    collate = collate.collate if isinstance(collate, SetAsideUnreadable) else collate
    if pipeline == "per-image":  # dataset[i] itself: the transform ends in ToTensor + Normalize
        dataset = SeededAugmentation(bundle.train) if split == "train" else bundle.test
        collate = None
    elif pipeline == "on-device":  # the uint8 view, stacked by the default collate: uint8 batches
        collate = None
    else:
        assert isinstance(collate, folder._NormalizingCollate), "build_loaders no longer normalises per batch"
    return DataLoader(dataset, batch_size=loader.batch_size, sampler=loader.sampler, collate_fn=collate,
                      num_workers=workers, pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn,
                      prefetch_factor=prefetch, persistent_workers=False, generator=loader.generator)


def consumer(pipeline: str, device: torch.device, normalize: BatchNormalize) -> Callable[[Any], None]:
    """What the training loop does with a batch before the model: the copy to the device (a no-op on the CPU) and,
    for uint8 batches, the normalisation there."""

    def consume(batch: Any) -> None:
        images, target = batch
        images = images.to(device, non_blocking=True)
        target.to(device, non_blocking=True)
        if pipeline == "on-device":
            normalize(images)

    return consume


def cpu_seconds(pids: Sequence[int]) -> tuple[float, float]:
    """User + system CPU time of the processes ``pids`` together (Linux /proc, in 1/100 s; NaN elsewhere) and of this
    process (all its threads). Unlike wall time, it hardly depends on what else the machine runs."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan"), time.process_time()
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14 and 15)
    return total, time.process_time()


def run_segment(v: Variant, device: torch.device, settle: int, batches: int, batch_size: int, epoch: int) -> None:
    if hasattr(v.loader.sampler, "set_epoch"):
        v.loader.sampler.set_epoch(epoch)
    start = time.perf_counter()
    iterator = iter(v.loader)  # starts the workers
    v.consume(next(iterator))
    synchronize(device)
    v.first_batch_s.append(time.perf_counter() - start)
    for _ in range(settle - 1):
        v.consume(next(iterator))
    synchronize(device)
    pids = [w.pid for w in getattr(iterator, "_workers", [])]  # the DataLoader's worker processes
    workers_before, main_before = cpu_seconds(pids)
    start = time.perf_counter()
    for _ in range(batches):
        v.consume(next(iterator))
    synchronize(device)
    v.rates.append(batches * batch_size / (time.perf_counter() - start))
    workers_after, main_after = cpu_seconds(pids)
    v.worker_cpu_ms.append(1e3 * (workers_after - workers_before) / (batches * batch_size))
    v.main_cpu_ms.append(1e3 * (main_after - main_before) / (batches * batch_size))
    del iterator  # stops its workers (persistent_workers is off), so they cannot run during the next segment


# ---------------------------------------------------------------------------------------------- model steps


def model_rates(args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    """Training images/s of each of ``args.models`` on synthetic normalised batches: the rate a loader must feed."""
    from models import build_arch
    from utils.train.engine import train_step

    rates: dict[str, list[float]] = {}
    autocast = torch.bfloat16 if args.amp == "bf16" else None
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    images = torch.randn(args.batch_size, 3, 224, 224, device=device).contiguous(memory_format=memory_format)
    target = torch.randint(0, 1000, (args.batch_size,), device=device)
    criterion = nn.CrossEntropyLoss()
    for arch in args.models:
        torch.manual_seed(args.seed)
        model = build_arch(arch, {"num_classes": 1000}).model.to(device).to(memory_format=memory_format).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        for _ in range(3):  # cuDNN autotuning, allocator growth
            train_step(model, images, target, criterion, optimizer, autocast=autocast)
        rates[arch] = []
        for _ in range(args.rounds):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(model, images, target, criterion, optimizer, autocast=autocast)
            synchronize(device)
            rates[arch].append(args.steps * args.batch_size / (time.perf_counter() - start))
        del model, optimizer
    return rates


# ---------------------------------------------------------------------------------------------------- report


def paired(v: Variant, other: Variant) -> str:
    return f"{median([a / b for a, b in zip(v.rates, other.rates, strict=True)]):.2f}x"


def report(variants: list[Variant], args: argparse.Namespace) -> None:
    by_key = {v.key: v for v in variants}
    for split in args.splits:
        rows = [v for v in variants if v.split == split]
        what = "RandomResizedCrop(224) + flip" if split == "train" else "Resize(256) + CenterCrop(224)"
        print(f"\n## {split} loader ({what}): images/s, median of {args.rounds} rounds of {args.batches} batches of "
              f"{args.batch_size}")
        print("| pipeline | workers | prefetch | pinned | images/s | spread | vs per-image (same workers) | "
              f"vs {min(args.workers)} workers (same pipeline) | CPU ms/image: workers + main | first batch (s) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for v in rows:
            base = by_key.get((split, "per-image", v.workers, v.prefetch, v.pin))
            w0 = min(args.workers)
            low = by_key.get((split, v.pipeline, w0, v.prefetch if w0 else None, v.pin))
            cpu = (f"{median(v.worker_cpu_ms):.2f} + " if v.workers else "") + f"{median(v.main_cpu_ms):.2f}"
            print(f"| {v.pipeline} | {v.workers} | {v.prefetch or '-'} | {'yes' if v.pin else 'no'} | "
                  f"{median(v.rates):,.0f} | {spread(v.rates)} | {paired(v, base) if base else '-'} | "
                  f"{paired(v, low) if low else '-'} | {cpu} | {median(v.first_batch_s):.2f} |")


def main(args: argparse.Namespace) -> int:
    device = prepare_device(args.device, args.threads)
    header("ImageNet input pipeline", device)
    source = Path(args.data) if args.data else shared_data() / "imagenet-sample" / "val"
    if not source.is_dir():
        raise SystemExit(f"data not found: {source} (pass --data, or set PRUNE_SHARED_DATA to the folder that holds "
                         "imagenet-sample)")
    pipelines = args.pipelines or [p for p in PIPELINES if device.type != "cpu" or p != "on-device"]
    accelerator = torch.accelerator.is_available()
    pins = [p == "on" for p in (args.pin or (["on"] if device.type == "cuda" else ["off"]))]
    if any(pins) and not accelerator:
        raise SystemExit("--pin on needs an accelerator (build_loaders pins only where one is available)")
    problem = torchvision_io_problem()
    print(f"torchvision.io: {'decodes here' if problem is None else 'cannot decode here (' + problem + ')'}")
    if problem is not None and "torchvision" in pipelines:
        print("  the torchvision pipeline therefore decodes with PIL (its fallback) and measures transforms.v2 alone")
    need = (max(args.settle or 0, max(args.workers), 1) + args.batches) * args.batch_size
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        count = replicate_tree(source, root, args.copies)
        if count < need:
            raise SystemExit(f"a segment reads {need} images but the replicated split has {count}: raise --copies")
        print(f"data: {source} replicated {args.copies}x by symbolic links: {count} images in each of train/ and val/ "
              f"(page-cached); batch {args.batch_size}, {args.batches} timed batches per segment")
        per_image = 3 * 224 * 224
        print(f"bytes per image leaving a worker: float32 {4 * per_image:,}, uint8 (on-device) {per_image:,}")
        bundles = build_bundles(root, pipelines)
        mean, std = default_mean_std("imagenet")
        normalize = BatchNormalize(mean, std)
        variants = []
        for split, pipeline, workers, prefetch, pin in itertools.product(args.splits, pipelines, args.workers,
                                                                         args.prefetch, pins):
            if workers == 0 and prefetch != args.prefetch[0]:
                continue  # prefetch_factor means nothing without workers
            prefetch_used = prefetch if workers > 0 else None
            bundle = bundles["torchvision" if pipeline == "torchvision" else "pil"]
            loader = variant_loader(bundle, split, pipeline, workers, prefetch_used, pin, args)
            variants.append(Variant(split, pipeline, workers, prefetch_used, pin, loader,
                                    consumer(pipeline, device, normalize)))
        t0 = time.perf_counter()
        for round_ in range(args.rounds):
            for v in variants:
                settle = args.settle if args.settle is not None else max(1, v.workers)
                run_segment(v, device, settle, args.batches, args.batch_size, epoch=round_)
        print(f"({len(variants)} variants x {args.rounds} rounds in {time.perf_counter() - t0:.0f} s; "
              f"load average now {', '.join(f'{x:.2f}' for x in os.getloadavg())})")
        report(variants, args)
    if args.models:
        rates = model_rates(args, device)
        print(f"\n## Training step on {device.type} (synthetic batches of {args.batch_size}, amp {args.amp or 'off'}, "
              f"channels_last {args.channels_last}): the images/s a loader must deliver")
        print("| model | images/s | spread |")
        print("|---|---|---|")
        for arch, r in rates.items():
            print(f"| {arch} | {median(r):,.0f} | {spread(r)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
