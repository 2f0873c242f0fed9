"""DataLoaders for a :class:`~utils.data.catalog.DataBundle`: seeded order and augmentation, a rank's share under
torchrun, and as many workers as the machine's cores allow."""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import random
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from utils.core.distributed import shard_bounds
from utils.core.errors import UserError
from utils.data.catalog import DataBundle
from utils.data.folder import _loader_view  # which items and collate an ImageFolder split's loaders use
from utils.data.imagefiles import UnreadableImages
from utils.data.sampling import SeededAugmentation, SeededSampler
from utils.train.interrupt import STOP_SIGNALS

__all__ = ["MAX_AUTO_WORKERS", "auto_workers", "build_loaders"]


MAX_AUTO_WORKERS = 16  # past this, more workers mostly add memory (each holds the sample list) and start-up time


def auto_workers(processes: int = 1) -> int:
    """DataLoader workers for each of ``processes`` training processes on this machine (torchrun's local world size):
    the CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow) shared among
    the processes, less one core each for the training loop itself, at most :data:`MAX_AUTO_WORKERS`; 0 (load in
    the training process) when that leaves none.

    Why: an ImageNet training image takes about 2 ms of CPU to decode, crop and normalise on the shared 256-pixel
    sample, more at full size (docs/benchmarks.md), so a GPU that trains thousands of images a second needs every
    core the machine has; a fixed default of 2 starves it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(cores // max(1, processes) - 1, MAX_AUTO_WORKERS))


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in each worker from torch's per-worker seed (itself drawn from the loader's generator),
    and make the worker ignore the signals that stop a run.

    torch seeds itself per worker, but numpy/random would otherwise start from the parent's state in every worker
    (forked copies), repeating the same "random" numbers across workers.

    Ctrl-C, ``timeout``, SLURM and systemd signal the whole process group, workers included; a worker that died of
    SIGTERM would end the run with a DataLoader error before the training process could stop at the step and save
    (:mod:`utils.train.interrupt`), and each worker would print the stop message again. Workers end when the loader
    shuts them down, when the training process dies (torch's watchdog), or at its exit (:func:`_end_workers`).
    """
    del worker_id
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _end_workers() -> None:
    """Kill the DataLoader workers still alive when the training process exits (a loader kept alive to the end, as by
    the traceback of an error): multiprocessing would send them SIGTERM, which they ignore, and wait forever."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report each as a worker that failed
    for process in multiprocessing.active_children():
        if process.daemon:  # torch's workers; multiprocessing ends every daemonic child at exit anyway
            process.kill()


# Run by multiprocessing's exit hook before it terminates and joins the children (whatever the atexit order).
multiprocessing.util.Finalize(None, _end_workers, exitpriority=0)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class _CheckingLoader(DataLoader):
    """A DataLoader over an ImageFolder split whose batches come with the unreadable files set aside
    (:class:`~utils.data.imagefiles.CheckedBatch`): it yields the plain batches and hands the unreadable files to
    ``unreadable``, which stops the pass at the first one or skips them (``data.skip_bad_images``) and says so once,
    at the end of the pass. A batch whose every file is skipped is left out."""

    def __init__(self, dataset: Any, *, unreadable: UnreadableImages, **kwargs: Any) -> None:
        self.unreadable = unreadable
        super().__init__(dataset, **kwargs)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for batch, unreadable in super().__iter__():
            if unreadable:
                self.unreadable.take(unreadable)
            if batch is not None:
                yield batch
        self.unreadable.tell()


def _loader(items: Any, collate: Any, unreadable: UnreadableImages | None, **kwargs: Any) -> DataLoader:
    if unreadable is None:
        return DataLoader(items, collate_fn=collate, **kwargs)
    return _CheckingLoader(items, unreadable=unreadable, collate_fn=collate, **kwargs)


def build_loaders(
    bundle: DataBundle,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    test_batch_size: int | None = None,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> tuple[DataLoader | None, DataLoader]:
    """Train loader (shuffled, None if ``bundle.train`` is None) and test loader (in dataset order).

    ``rank`` of ``world`` (torchrun): ``batch_size`` is the global batch, of which this rank loads its share of every
    step (:class:`~utils.data.sampling.SeededSampler`), and its test loader holds a contiguous part of the test set.

    Reproducibility: the training order and every sample's augmentation come from ``(seed, epoch)`` alone
    (:mod:`utils.data.sampling`; call ``train_loader.sampler.set_epoch(epoch)`` before each epoch), the same with any
    number of workers. The loaders have their own generators because every DataLoader iterator draws a base seed;
    without one, each pass would advance the global RNG and change the dropout of the training that follows it.

    ImageNet-size folder datasets are read as uint8 pictures and normalised a batch at a time in the workers
    (:class:`utils.data.folder.BatchNormalize`): the batches are those of ``dataset[i]``, bit for bit, at a fraction
    of the cost. A folder dataset's image file that cannot be decoded stops the pass with one line naming it, from
    any worker, or is left out with ``data.skip_bad_images`` (:mod:`utils.data.imagefiles`).
    """
    if batch_size < 1 or (test_batch_size is not None and test_batch_size < 1):
        raise UserError(f"data.batch_size/data.test_batch_size: expected positive integers (images per batch), got "
                        f"{batch_size} / {test_batch_size}")
    if workers < 0:
        raise UserError(f"data.workers: expected an integer >= 0, got {workers}")
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": pin_memory and torch.accelerator.is_available(),  # avoids a warning per epoch on CPU
        "worker_init_fn": _seed_worker if workers > 0 else None,
        "persistent_workers": workers > 0,  # no process start-up (and dataset re-pickling) every epoch
        "drop_last": False,
    }
    train_loader = None
    if bundle.train is not None:
        sampler = SeededSampler(len(bundle.train), seed, global_batch=batch_size, rank=rank, world=world)
        train, train_collate, train_unreadable = _loader_view(bundle.train)
        train_loader = _loader(SeededAugmentation(train), train_collate, train_unreadable,
                               batch_size=batch_size // world, sampler=sampler, generator=_generator(seed), **common)
    test, test_collate, test_unreadable = _loader_view(bundle.test)
    if world > 1:
        lo, hi = shard_bounds(len(test), rank, world)
        test = Subset(test, range(lo, hi))
    test_loader = _loader(test, test_collate, test_unreadable, batch_size=test_batch_size or batch_size, shuffle=False,
                          generator=_generator(seed), **common)
    return train_loader, test_loader
