"""``pruner_exp.py --export``: the final model of every sweep row (weight) or of the run (filter) in other forms."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from pruning import (
    prunable_weights,
)
from utils.app.session import Session
from utils.checkpoint.export import export_model
from utils.checkpoint.load import load_toolkit_checkpoint
from utils.config.schema import ExperimentConfig
from utils.core import distributed
from utils.core.errors import UserError

EXPORTABLE = ("weight", "filter")  # the methods that end with a model to export



def check_export(cfg: ExperimentConfig, export: Sequence[str]) -> None:
    """Raise the UserError ``--export`` would meet, before any work: the run directory does not exist yet.

    Only a missing ``onnx`` is checked this early; onnxruntime is optional (without it the file is written
    unchecked, and the report says so).
    """
    if not export:
        return
    if cfg.prune.method not in EXPORTABLE:
        raise UserError(f"--export applies to weight and filter pruning; prune.method {json.dumps(cfg.prune.method)} "
                        "ends with no model to export: leave out --export")
    if "onnx" in export and importlib.util.find_spec("onnx") is None:
        raise UserError("--export onnx needs the optional package 'onnx', which is not installed; run `pip install "
                        "onnx onnxruntime`, or leave out onnx")



def export_final(s: Session, checkpoint: str | Path) -> dict[str, Any]:
    """Write the model saved in ``checkpoint`` in each ``--export`` format beside it, named after it (``last.pth``:
    ``last.sparse.pth``, ``last.fp16.sparse.pth``, ``last.onnx``); return what ``results.json`` records.

    The model is read back from the file, not taken from memory: the export is what the checkpoint holds, and a
    resumed run whose retraining was complete exports the same model. The record: ``{"checkpoint",
    "checkpoint_file_bytes" (that file as written, optimizer state included), "compressed" / "compressed-fp16":
    {"path", "file_bytes", "dense_file_bytes" (the same checkpoint written by torch.save without the optimizer and
    RNG state, which the compressed file leaves out too), "percent_of_dense", "encodings" (tensors per encoding),
    "layers" ({weight: encoding} of the prunable weights, read back from the file)}, "onnx": the report of
    :func:`utils.checkpoint.export.export_onnx`}``. Under torchrun rank 0 alone exports (it alone writes files).
    """
    path = Path(checkpoint)
    record: dict[str, Any] = {"checkpoint": str(path)}
    if not distributed.is_main():
        return record
    loaded = load_toolkit_checkpoint(path, expect_arch=s.cfg.model.arch)
    record["checkpoint_file_bytes"] = path.stat().st_size
    reports = export_model(loaded.model, loaded.checkpoint, path.parent, path.stem, s.export, s.data.input_size)
    for fmt, report in reports.items():
        if fmt.startswith("compressed"):
            report = {**report, "percent_of_dense": 100 * report["file_bytes"] / report["dense_file_bytes"],
                      "layers": _stored_encodings(report["path"], prunable_weights(loaded.model))}
        record[fmt] = report
    return record



def _stored_encodings(path: str, names: Iterable[str]) -> dict[str, str]:
    """The encoding the compressed file ``path`` stores each of ``names`` in, read back from the file: ``dense``,
    ``bitmask`` or ``indices/<gap type>`` (``indices/uint8``: one byte per non-zero value)."""
    tensors = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]["tensors"]
    found = {}
    for name in names:
        entry = tensors[name]
        gaps = entry.get("gaps")
        found[name] = entry["encoding"] + (f"/{str(gaps.dtype).removeprefix('torch.')}" if gaps is not None else "")
    return found


@contextlib.contextmanager
def results_kept_on_error(s: Session) -> Iterator[None]:
    """Around the exports, which run after the results are saved: a failing one (onnxruntime disagrees with
    PyTorch, the disk is full) also says that the run's results are kept, and how to export again."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"{exc} (--export, after the run: its results are saved, without the export, in "
                        f"{s.run / 'results.md'} and results.json; --resume {s.run.path} --export "
                        f"{' '.join(s.export)} exports again without retraining)") from None
