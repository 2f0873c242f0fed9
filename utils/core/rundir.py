"""Run directories: where a run's config, metrics, checkpoints and results go.

A new run never overwrites an earlier one: ``<output.dir>/<name>`` is taken when free, else ``<name>-2``,
``<name>-3``, ... (``output.overwrite`` reuses ``<name>``). ``--resume`` continues in the directory of the
checkpoint it resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from utils.core import distributed
from utils.core.errors import UserError
from utils.core.files import atomic_write_bytes


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


class RunDir:
    """One run's output folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, output_dir: str | Path, name: str, *, overwrite: bool = False) -> RunDir:
        """Make a fresh run directory (see the module docstring for the naming). Under torchrun rank 0 makes it and
        the other ranks get its path (or rank 0's error)."""
        if not distributed.active():
            return cls._create(output_dir, name, overwrite=overwrite)
        outcome: tuple[bool, str] = (False, "")
        if distributed.is_main():
            try:
                outcome = (True, str(cls._create(output_dir, name, overwrite=overwrite).path))
            except UserError as exc:
                outcome = (False, str(exc))
        made, text = distributed.broadcast_object(outcome)
        if not made:
            raise UserError(text)
        return cls(text)

    @classmethod
    def _create(cls, output_dir: str | Path, name: str, *, overwrite: bool) -> RunDir:
        base = Path(output_dir)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # "File exists" / "Not a directory" alone do not say which part of the path is in the way.
            blocker = next((p for p in (base, *base.parents) if p.exists() and not p.is_dir()), None)
            why = f"{blocker} is a file, not a folder" if blocker is not None else exc.strerror or str(exc)
            raise UserError(f"output.dir {str(base)!r} cannot be created ({why}); choose a writable "
                            "folder with --set output.dir=PATH") from None
        if not os.access(base, os.W_OK | os.X_OK):
            raise UserError(f"output.dir {str(base)!r} is not writable; choose a writable folder with "
                            "--set output.dir=PATH")
        candidate, n = base / name, 1
        while True:
            try:
                candidate.mkdir(exist_ok=overwrite)
                return cls(candidate)
            except FileExistsError:
                n += 1
                candidate = base / f"{name}-{n}"
            except OSError as exc:
                raise UserError(f"cannot create the run directory {candidate} ({exc.strerror or exc}); choose "
                                "another output.dir") from None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON atomically (a crash never leaves a half-written results file)."""
        return self.write_text(name, to_json(obj))

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` atomically (rank 0's under torchrun: the others write nothing)."""
        path = self.path / name
        atomic_write_bytes(path, text.encode())  # makes the folders it needs
        return path

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (one line per epoch or evaluation; rank 0's under torchrun)."""
        if not distributed.is_main():
            return
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")
