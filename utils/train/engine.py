"""The one training step loop and the one evaluation loop.

Baseline training, fine-tuning after pruning and pruning sweeps all call :func:`train_one_epoch` and
:func:`evaluate`; nothing else in the project iterates over a DataLoader to train or test.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from utils.core import distributed
from utils.core.errors import UserError
from utils.core.metrics import Meter


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def _progress(loader: Iterable, desc: str, initial: int = 0) -> tuple[Iterable, Any]:
    """A tqdm bar on a terminal (rank 0's only under torchrun); the bare loader otherwise (the caller prints plain
    lines)."""
    if sys.stderr.isatty() and distributed.is_main():
        total = len(loader) if hasattr(loader, "__len__") else getattr(loader, "total", None)
        bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, initial=initial, total=total)
        return bar, bar
    return loader, None


def train_step(model: nn.Module, images: torch.Tensor, target: torch.Tensor, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, *, autocast: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None,
               teacher: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch already on the device; returns the loss and the output (not synchronised).

    With a ``teacher`` (distillation, :mod:`utils.train.losses`) it runs on the same images under the same autocast,
    without gradients, and the loss is ``criterion(output, target, teacher_output)``."""
    with torch.autocast(images.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        output = model(images)
        if teacher is None:
            loss = criterion(output, target)
        else:
            with torch.no_grad():
                teacher_output = teacher(images)
            loss = criterion(output, target, teacher_output)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # unscales first; skips the step (and the mask hooks) on inf/NaN gradients
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss, output


@dataclass(frozen=True)
class StepOptions:
    """How :func:`train_one_epoch` runs its steps: their speed settings, how often it prints, and what it calls
    after each step.

    ``autocast``: run the forward pass and the loss under ``torch.autocast`` in that dtype (``train.amp``);
    ``scaler``: a gradient scaler for float16. ``channels_last``: the images in that memory format (the model's
    weights should be too). ``print_freq``: a progress line every that many steps (0: none).
    ``on_step(step)`` runs after each optimizer step (before ``stop()`` is asked), with the step's number in the
    epoch from 1: a gradual pruning schedule prunes there. When ``stop()`` turns true after a step, the epoch ends
    there (see :func:`train_one_epoch`). ``teacher``: a frozen network (in eval mode) run on every batch for a
    distillation loss, which then gets its output as a third argument (see :func:`train_step`).
    """

    autocast: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    print_freq: int = 0
    on_step: Callable[[int], None] | None = None
    stop: Callable[[], bool] | None = None
    teacher: nn.Module | None = None


def train_one_epoch(model: nn.Module, loader: Iterable, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, epoch: int, meter: Meter | None = None,
                    options: StepOptions | None = None) -> dict[str, float] | None:
    """Train for one pass over ``loader``; returns mean loss, top-1 and top-5 (in %) and the time taken.

    ``meter`` carries the sums of an epoch resumed in its middle (``loader`` then yields only the batches not yet
    seen, and steps are numbered on from ``meter.steps``). When ``options.stop()`` turns true after a step, the epoch
    ends there and None is returned: ``meter`` then holds what a checkpoint needs to finish the epoch later.
    ``options`` (:class:`StepOptions`, default: plain float32 steps, no printing, no hooks) also holds the speed
    settings and ``on_step``.

    Pruning masks are held by optimizer hooks (:class:`pruning.masks.MaskKeeper`), so this loop does not
    need to know whether the model is pruned. Under torchrun ``model`` is the DDP-wrapped one; the statistics
    returned are over all ranks.
    """
    options = options or StepOptions()
    model.train()
    meter = meter or Meter(device)
    start = time.perf_counter()
    memory_format = torch.channels_last if options.channels_last else torch.preserve_format
    check_each_step = device.type == "cpu" and not distributed.active()  # a CPU scalar costs nothing to read
    iterator, bar = _progress(loader, f"epoch {epoch} train", initial=meter.steps)
    for step, (images, target) in enumerate(iterator, start=meter.steps + 1):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        target = target.to(device, non_blocking=True)
        loss, output = train_step(model, images, target, criterion, optimizer, autocast=options.autocast,
                                  scaler=options.scaler, teacher=options.teacher)
        meter.update(loss, output, target)
        meter.note_finite(loss, step)
        if check_each_step:
            check_finite(meter, epoch)
        if options.print_freq and step % options.print_freq == 0:
            check_finite(meter, epoch)
            stats = meter.reduced().result()
            line = f"Epoch {epoch} step {step}: loss {stats['loss']:.4f}, top1 {stats['top1']:.2f}"
            print(line, flush=True) if bar is None else bar.set_postfix_str(line)
        if options.on_step is not None:
            options.on_step(step)
        if options.stop is not None and options.stop():
            check_finite(meter, epoch)  # never save a diverged model as resumable
            if bar is not None:
                bar.close()
            return None
    check_finite(meter, epoch)
    stats = meter.reduced().result()
    stats["time"] = time.perf_counter() - start
    return stats


def check_finite(meter: Meter, epoch: int) -> None:
    """Raise :class:`TrainingDiverged` naming the epoch and step where the loss first became NaN/inf (on any rank:
    every rank calls this at the same steps, so all of them stop together)."""
    first_bad = meter.first_bad_step
    if distributed.active():
        first_bad = distributed.all_reduce_max(first_bad.clone())
    step = int(first_bad.item())
    if step >= 0:
        raise TrainingDiverged(f"the training loss became NaN or infinite at epoch {epoch}, step {step}; the last "
                               "good checkpoint is "
                               "kept; lower the learning rate (train.lr / retrain.lr) and resume or restart")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, criterion: nn.Module, device: torch.device,
             *, desc: str = "test", channels_last: bool = False) -> dict[str, float]:
    """Mean loss, top-1 and top-5 (in %) of ``model`` over ``loader`` in eval mode (in float32, whatever
    ``train.amp`` is). Under torchrun each rank's loader holds part of the test set and the result is over all of it.
    """
    model.eval()
    meter = Meter(device)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    iterator, _ = _progress(loader, desc)
    for images, target in iterator:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        target = target.to(device, non_blocking=True)
        output = model(images)
        meter.update(criterion(output, target), output, target)
    return meter.reduced().result()
