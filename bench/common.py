"""Helpers shared by the benchmark scripts: where a number came from, timing on any device, synthetic CIFAR data.

Every script prints ratios measured side by side in one run (alternating the variants, medians over rounds: load
from other processes then affects all of them alike) and absolute numbers only next to :func:`describe_device`.
"""

from __future__ import annotations

import os
import pickle
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from utils.core.provenance import git_commit

REPO = Path(__file__).resolve().parents[1]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def prepare_device(name: str, threads: int | None) -> torch.device:
    """The device a benchmark runs on, with ``threads`` torch threads (None: torch's default) and cuDNN autotuning
    on a GPU, as ``utils.app.setup.select_device`` sets it for ``--gpu``."""
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def describe_device(device: torch.device) -> str:
    """One line naming what absolute numbers were measured on: the GPU, or the CPU model and thread count."""
    torch_line = f"torch {torch.__version__}"
    if device.type == "cuda":
        return (f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, {torch_line}); host CPU "
                f"{cpu_model()}")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"CPU {cpu_model()}, {torch.get_num_threads()} torch threads of {os.cpu_count()} cores, {torch_line}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average {load}")


def header(title: str, device: torch.device) -> None:
    print(f"# {title}")
    print(f"device: {describe_device(device)}")
    print(f"commit: {git_commit()}")  # "-dirty" when tracked files differ from it


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn()`` takes, with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """``min..max`` of a list of seconds/ratios, for judging how noisy a median is."""
    return f"{min(values):.3g}..{max(values):.3g}"


def shared_data() -> Path:
    """``../shared/data`` beside the checkout, or ``$PRUNE_SHARED_DATA`` (as ``tests/conftest.py`` finds it)."""
    return Path(os.environ.get("PRUNE_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_synthetic_cifar(root: Path, *, train: int, test: int, seed: int = 0) -> Path:
    """A ``cifar-10-batches-py`` of random uint8 images (train split over the 5 batch files) under ``root``: the
    real CIFAR loading code (files, transforms, loaders) runs on it, only the pixels are made up."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [train // 5 + (1 if b < train % 5 else 0) for b in range(5)]
    for name, n in [(f"data_batch_{b + 1}", sizes[b]) for b in range(5)] + [("test_batch", test)]:
        batch = {"batch_label": name, "labels": [int(v) for v in rng.integers(0, 10, n)],
                 "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": max(sizes), "num_vis": 3072}, f, protocol=2)
    return root
