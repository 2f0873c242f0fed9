"""Checkpoints are data, never pickled modules, and are written atomically.

A checkpoint of this tool is a dict::

    {"format": FORMAT, "format_version": 1, "arch": {"name": ..., "options": {...}}, "state_dict": ...,
     "masks": {param name: bool tensor} or None, "optimizer": ..., "scheduler": ..., "epoch": int,
     "best_top1": float, "config": {...}, "rng": {...}, "provenance": {git commit, versions, device}}

plus, from training, ``history``, ``progress`` (a run stopped inside an epoch), ``scaler`` (fp16) and, under
torchrun, ``rng_ranks`` (every rank's ``rng``, in rank order).

Loading rebuilds the model from ``arch`` (so a physically pruned model needs nothing but its file) and
loads the weights with strict keys. Files are read with ``torch.load(weights_only=True)``: a checkpoint
someone sent you cannot run code.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from utils.core.provenance import provenance

FORMAT = "prune-toolkit-checkpoint"
FORMAT_VERSION = 1


def capture_rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy and torch as tensors and plain data (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class TrainingState:
    """Where a training stands, for a checkpoint that can continue it (the default: none begun)."""

    epoch: int = 0  # epochs completed
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None  # the LR schedule (any object with state_dict())
    best_top1: float | None = None


def make_checkpoint(*, model: torch.nn.Module, arch: dict[str, Any], config: dict[str, Any],
                    masks: dict[str, torch.Tensor] | None = None, metrics: dict[str, float] | None = None,
                    device: torch.device | None = None, training: TrainingState | None = None) -> dict[str, Any]:
    """Assemble a checkpoint dict (see the module docstring); ``training`` fills its optimizer, scheduler, epoch
    and best_top1 (None, None, 0, None without it)."""
    training = training or TrainingState()
    optimizer, scheduler = training.optimizer, training.scheduler
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "masks": {k: v.cpu() for k, v in masks.items()} if masks else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": training.epoch,
        "best_top1": training.best_top1,
        "metrics": metrics,
        "config": config,
        "rng": capture_rng_state(),
        "provenance": provenance(device),
    }


def is_toolkit_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def model_size_kb(model: torch.nn.Module) -> float:
    """Size of the model's float state dict as torch.save writes it, in KB (1 KB = 1024 bytes, as the seed)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1024
