"""Training order and augmentation that depend on (seed, epoch, position) alone.

A shuffled DataLoader normally draws its augmentation from whatever RNG the process holding the sample has: the
main process's global RNG with ``workers=0``, each worker's own RNG otherwise, whose state carries over from epoch to
epoch with persistent workers. Then the batches of epoch 5 depend on the worker count and on everything drawn before,
and a run resumed in the middle of an epoch cannot draw the same batches as the run it continues.

Here the sampler draws, per epoch, the permutation *and* one seed per position from a generator seeded with
``(seed, epoch)``; the dataset wrapper applies each sample's transforms under its own seed and puts the process's
RNG back. So the batches are the same with 0 or 16 workers, and resuming at step k only has to start the sampler at
position ``k * batch_size``: the skipped samples are never loaded, and the global RNG (dropout) is left to the
training loop alone. Transforms must draw from torch's RNG, as torchvision's do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from utils.core.choices import SEED_STRIDE  # (seed, epoch) -> one generator seed


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * SEED_STRIDE + epoch


def rank_share(count: int, global_batch: int, world: int) -> int:
    """How many of a pass's ``count`` positions each rank takes (the length of :func:`rank_positions`)."""
    full, last = divmod(count, global_batch)
    return full * (global_batch // world) + last // world


def rank_positions(count: int, global_batch: int, rank: int, world: int) -> torch.Tensor:
    """The positions ``0..count-1`` of a pass that rank ``rank`` of ``world`` takes, in order: its contiguous
    ``global_batch / world`` of every step's ``global_batch`` positions (:mod:`utils.core.distributed`). The pass's
    last, smaller step is split the same way, cut to a multiple of ``world`` (at most ``world - 1`` positions left
    out)."""
    per = global_batch // world
    full, last = divmod(count, global_batch)
    starts = torch.arange(full) * global_batch + rank * per
    positions = (starts[:, None] + torch.arange(per)).flatten()
    tail = last // world
    if tail:
        first = full * global_batch + rank * tail
        positions = torch.cat([positions, torch.arange(first, first + tail)])
    return positions


class SeededSampler(Sampler[tuple[int, int]]):
    """Shuffled ``(index, augmentation seed)`` pairs for one epoch at a time; call :meth:`set_epoch` before each.

    ``start`` skips the first positions of the next pass only (a run resumed inside an epoch), without drawing
    anything different: the permutation and the seeds are drawn whole, then cut.

    Under torchrun (``world`` > 1) each rank draws the same permutation and seeds and keeps its share of every step's
    ``global_batch`` positions (:func:`rank_positions`); its DataLoader batches ``global_batch / world`` at a time.
    """

    def __init__(self, size: int, seed: int, *, global_batch: int | None = None, rank: int = 0, world: int = 1):
        if world > 1 and (global_batch is None or global_batch % world):
            raise ValueError(f"a sampler shared by {world} ranks needs a global batch divisible by it, got "
                             f"{global_batch}")
        self.size, self.seed = size, seed
        self.global_batch, self.rank, self.world = global_batch, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator()
        g.manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=g)
        seeds = torch.randint(0, 2**62, (self.size,), generator=g)
        start, self.start = self.start, 0
        order, seeds = order[start:], seeds[start:]
        if self.world > 1:
            assert self.global_batch is not None
            mine = rank_positions(len(order), self.global_batch, self.rank, self.world)
            order, seeds = order[mine], seeds[mine]
        yield from zip(order.tolist(), seeds.tolist(), strict=True)

    def __len__(self) -> int:
        count = self.size - self.start
        if self.world > 1:
            assert self.global_batch is not None
            return rank_share(count, self.global_batch, self.world)
        return count


class SeededAugmentation(Dataset):
    """``dataset[index]`` with its random transforms drawn from the seed the sampler paired with ``index``."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)

    def __getattr__(self, name: str) -> Any:  # classes, targets, ... of the wrapped dataset
        if name == "dataset":  # not yet set (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)
