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
import os
import platform
import random
import subprocess
import tempfile
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils import distributed
from utils.errors import UserError

FORMAT = "prune-toolkit-checkpoint"
FORMAT_VERSION = 1
REPO = Path(__file__).resolve().parents[1]


@cache
def git_commit() -> str:
    """The commit of the code that produced a result ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def provenance(device: torch.device | str | None = None) -> dict[str, str]:
    """What a number needs to be traced: code version, library versions, device and time."""
    from utils.tv import torchvision

    info = {
        "git_commit": git_commit(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if device is not None:
        device = torch.device(device)
        info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    return info


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


def atomic_torch_save(obj: Any, path: str | Path) -> int:
    """Write ``obj`` to ``path`` through a temporary file, fsync and rename: a crash leaves the old file or the
    new one, never half of one. Returns the file size in bytes."""
    return atomic_write_bytes(path, checkpoint_bytes(obj))


def checkpoint_bytes(obj: Any) -> bytes:
    """``obj`` serialised by torch.save (once, so ``last`` and ``best`` can share the bytes)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_write_bytes(path: str | Path, data: bytes) -> int:
    """Atomically replace ``path`` with ``data`` (temp file in the same folder, fsync, rename, fsync folder).

    Every file the project writes goes through here, so this is where the rule of a run under torchrun is kept:
    rank 0 alone writes (:mod:`utils.distributed`); on the other ranks this writes nothing."""
    if not distributed.is_main():
        return len(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make results unreadable to the rest of a team
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(f"could not write {path}: {exc.strerror or exc}; free some space or choose another "
                            "output.dir (the previous file, if any, is intact)") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(data)


@cache
def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def make_checkpoint(*, model: torch.nn.Module, arch: dict[str, Any], config: dict[str, Any], epoch: int = 0,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    masks: dict[str, torch.Tensor] | None = None, best_top1: float | None = None,
                    metrics: dict[str, float] | None = None, device: torch.device | None = None) -> dict[str, Any]:
    """Assemble a checkpoint dict (see the module docstring)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "masks": {k: v.cpu() for k, v in masks.items()} if masks else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "best_top1": best_top1,
        "metrics": metrics,
        "config": config,
        "rng": capture_rng_state(),
        "provenance": provenance(device),
    }


def is_toolkit_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by this tool, with clear errors for missing, corrupt or foreign files."""
    from models.loading import read_checkpoint_file

    return check_checkpoint(read_checkpoint_file(path), path)


def check_checkpoint(obj: Any, path: str | Path) -> dict[str, Any]:
    """``obj`` if it is a checkpoint of this tool in a format version this code reads, else a UserError."""
    if not is_toolkit_checkpoint(obj):
        raise UserError(f"{path}: not a checkpoint written by this tool (no 'format' key); to start from plain "
                        "weights use model.checkpoint in the experiment file instead of --resume")
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {version} is not supported by this version of the tool "
                        f"(it reads version {FORMAT_VERSION}); use the tool version that wrote it "
                        f"(git commit {obj.get('provenance', {}).get('git_commit', 'unknown')})")
    from utils.compress import expand_checkpoint, is_compressed_checkpoint  # here: utils.compress imports this module

    return expand_checkpoint(obj, source=path) if is_compressed_checkpoint(obj) else obj


def model_size_kb(model: torch.nn.Module) -> float:
    """Size of the model's float state dict as torch.save writes it, in KB (1 KB = 1024 bytes, as the seed)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1024
