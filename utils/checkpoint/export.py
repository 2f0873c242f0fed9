"""ONNX export of any registered model, pruned or not, checked against PyTorch under onnxruntime.

A filter-pruned model is physically smaller (its convs have fewer filters), so the exported graph is smaller
too and runs anywhere ONNX does; a weight-pruned model exports with its zeros (dense kernels: ONNX has no
sparse convolution that runtimes use).

Which exporter. torch 2.13 has two:

* the TorchScript-based one (``torch.onnx.export(..., dynamo=False)``), used here by default. It needs only
  the ``onnx`` package, exports every model of the registry in well under a second (ResNet-20 0.1 s,
  MobileNetV2 0.6 s on 2 CPU cores) and writes one self-contained file. torch marks it deprecated; it is
  what this tool uses until it is removed (requirements.txt pins torch), because
* the torch.export-based one (``dynamo=True``) additionally needs ``onnxscript`` (and its ``onnx-ir``),
  takes 5-20x longer (MobileNetV2: 10 s) and by default splits weights into a side file. It is available
  with ``dynamo=True`` for models the TorchScript tracer cannot handle.

Neither needs a network connection. ``onnxruntime`` is needed only for the check (``check=True``); without
it the export still happens and the report says it was not checked. onnx, onnxruntime and onnxscript are
optional dependencies (requirements-dev.txt installs them for the tests): a missing one is a
:class:`~utils.core.errors.UserError` that names the ``pip install`` that fixes it.

The graph has one input ``input`` of shape ``(batch, C, H, W)`` with a dynamic batch dimension and one output
``logits`` of shape ``(batch, classes)``. The model is exported in eval mode (BatchNorm uses its running
statistics; the exporter folds it into the convolutions) and its training flag is restored afterwards. The
file is checked (``onnx.checker`` and, with onnxruntime, outputs at two batch sizes) before it is written,
atomically, so a failed check leaves no file behind.
"""

from __future__ import annotations

import importlib
import math
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoint.compress import save_compressed
from utils.core.choices import EXPORT_FORMATS
from utils.core.errors import UserError
from utils.core.files import atomic_write_bytes

__all__ = ["CHECK_BATCHES", "DEFAULT_ATOL", "DEFAULT_OPSET", "DEFAULT_RTOL", "INPUT_NAME", "OUTPUT_NAME", "Comparison",
           "export_model", "export_onnx", "onnx_conv_weight_shapes"]

# Opset 18: the lowest the torch.export-based exporter writes, within the TorchScript exporter's range (<= 20),
# and run by onnxruntime >= 1.14 and TensorRT >= 8.6.
DEFAULT_OPSET = 18
# Allowed |onnxruntime - PyTorch| on the logits: DEFAULT_ATOL + DEFAULT_RTOL * (largest |logit|). Trained models give
# logits of order 1-30, where this is 1e-4 to 1.3e-4; the relative part is for outputs in the millions (an untrained
# ResNet-110's reach 5e9, where float32 steps are 512 apart and the two runtimes' summation orders differ by hundreds).
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-6
CHECK_BATCHES = (1, 3)  # two batch sizes, so a batch dimension frozen into the graph would fail the check
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_INSTALL = "pip install onnx onnxruntime"


def _require(module: str, fix: str, why: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{why} needs the optional package {module!r}, which is not installed; run `{fix}`") from None


def _check_input_size(input_size: Sequence[int]) -> tuple[int, ...]:
    size = tuple(input_size)
    if len(size) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise UserError(f"input_size: expected three positive integers (channels, height, width), got {input_size!r}")
    return size


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _export_bytes(model: nn.Module, example: torch.Tensor, opset: int, dynamo: bool) -> bytes:
    """The ONNX file of ``model`` (in eval mode) as bytes, written by the chosen exporter to a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as scratch:
        out = Path(scratch) / "model.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated (the choice is deliberate: module docstring),
            # that its own logging helper is, and that slices with a step (ResNet shortcut A's x[:, :, ::2, ::2])
            # are not constant-folded, which changes nothing in the result.
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec", category=FutureWarning)  # torch.export
            # torch._assert's input checks (torchvision's VisionTransformer asserts the image size) are traced as
            # constants; the input's H and W are fixed in the file anyway, and the check at CHECK_BATCHES catches a
            # batch size frozen into the graph. module="torch$": the warnings torch/__init__.py (torch._assert) issues.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch$")
            if dynamo:
                batch = torch.export.Dim("batch", min=1)
                torch.onnx.export(model, (example,), out, dynamo=True, external_data=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                                  verbose=False)
            else:
                torch.onnx.export(model, (example,), out, dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        return out.read_bytes()


def _compare(model: nn.Module, data: bytes, input_size: tuple[int, ...], device: torch.device, seed: int,
             ort: Any) -> tuple[float, float]:
    """Largest |onnxruntime - PyTorch| and largest |PyTorch output| over random inputs at :data:`CHECK_BATCHES`."""
    options = ort.SessionOptions()
    # Idle onnxruntime threads sleep instead of spinning (its default), which on a busy machine slows the
    # PyTorch run beside it several times over; the check runs once, so the spin-up latency does not matter.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst, scale = 0.0, 0.0
    for batch in CHECK_BATCHES:
        x = torch.randn(batch, *input_size, generator=generator)
        with torch.no_grad():
            expected = model(x.to(device)).float().cpu()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        got = torch.from_numpy(got)
        if got.shape != expected.shape:
            raise UserError(f"ONNX export: onnxruntime returned shape {tuple(got.shape)} for batch {batch}, PyTorch "
                            f"{tuple(expected.shape)}; the file was not written")
        diff = (got - expected).abs().max().item() if got.numel() else 0.0
        worst = max(worst, float("inf") if math.isnan(diff) else diff)  # NaN counts as the worst difference
        scale = max(scale, expected.abs().max().item() if expected.numel() else 0.0)
    return worst, scale


@dataclass(frozen=True)
class Comparison:
    """How the check of :func:`export_onnx` compares onnxruntime with PyTorch: on random inputs drawn from ``seed``,
    allowing ``atol + rtol * max|logit|``."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    seed: int = 0


def export_onnx(model: nn.Module, path: str | Path, input_size: Sequence[int] = (3, 32, 32), *, check: bool = True,
                opset: int = DEFAULT_OPSET, dynamo: bool = False, compare: Comparison | None = None) -> dict[str, Any]:
    """Export ``model`` to the ONNX file ``path`` with a dynamic batch dimension; return a report.

    ``input_size``: ``(C, H, W)`` of one image (CIFAR models 3x32x32, torchvision ImageNet models 3x224x224).
    ``check``: before writing, validate the graph with ``onnx.checker`` and, when onnxruntime is installed, run
    it on random inputs (``compare.seed``) at batch sizes :data:`CHECK_BATCHES`; a difference from PyTorch above
    ``compare.atol + compare.rtol * max|logit|`` is a UserError and nothing is written (``compare``: default
    :class:`Comparison`). ``dynamo``: use the torch.export-based exporter (needs onnxscript).

    Report: ``{"path", "bytes", "opset", "exporter" ("torchscript" | "dynamo"), "input": [name, shape],
    "output": [name, shape], "checked" (bool), "max_abs_diff" (float, or None unchecked), "max_abs_output",
    "tolerance" (what max_abs_diff had to stay within), "onnxruntime" (version or None), "seconds" (the export
    alone)}`` with ``"batch"`` for the dynamic dimension.
    """
    compare = compare or Comparison()
    input_size = _check_input_size(input_size)
    onnx = _require("onnx", _INSTALL, "ONNX export")
    if dynamo:
        _require("onnxscript", "pip install onnxscript", "ONNX export with dynamo=True")
    device = _device_of(model)
    example = torch.zeros(1, *input_size, device=device)  # shapes only; no draw from the global RNG
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            classes = model(example).shape[1:]
        start = time.perf_counter()
        try:
            data = _export_bytes(model, example, opset, dynamo)
        except torch.onnx.errors.UnsupportedOperatorError as exc:
            line = str(exc).strip().splitlines()[0]
            raise UserError(f"ONNX export of {type(model).__name__}: {line}; try another opset (opset={opset} now) or "
                            "dynamo=True") from None
        seconds = time.perf_counter() - start
        report: dict[str, Any] = {
            "path": str(path), "bytes": len(data), "opset": opset, "exporter": "dynamo" if dynamo else "torchscript",
            "input": [INPUT_NAME, ["batch", *input_size]], "output": [OUTPUT_NAME, ["batch", *classes]],
            "checked": False, "max_abs_diff": None, "max_abs_output": None, "tolerance": None, "onnxruntime": None,
            "seconds": seconds,
        }
        if check:
            onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
            try:
                ort = importlib.import_module("onnxruntime")
            except ImportError:
                ort = None  # exported but not run: the report says so
            if ort is not None:
                diff, scale = _compare(model, data, input_size, device, compare.seed, ort)
                tolerance = compare.atol + compare.rtol * scale
                if not diff <= tolerance:
                    raise UserError(f"ONNX export of {type(model).__name__}: onnxruntime differs from PyTorch by "
                                    f"{diff:.3g} (> {tolerance:.3g}); the file was not written. Try dynamo=True, "
                                    "or check=False to keep it anyway")
                report.update(checked=True, max_abs_diff=diff, max_abs_output=scale, tolerance=tolerance,
                              onnxruntime=ort.__version__)
    finally:
        model.train(was_training)
    atomic_write_bytes(path, data)
    return report


def onnx_conv_weight_shapes(path_or_bytes: str | Path | bytes) -> list[tuple[int, ...]]:
    """The weight shape of every Conv node of an ONNX file, in graph order (to see pruned widths in the file).

    The weight is an initializer, or for graphs that keep it as a node output a Constant node's tensor.
    """
    onnx = _require("onnx", _INSTALL, "reading an ONNX file")
    numpy_helper = _require("onnx.numpy_helper", _INSTALL, "reading an ONNX file")

    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    graph = onnx.load_from_string(data).graph
    tensors = {init.name: tuple(init.dims) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = tuple(numpy_helper.to_array(node.attribute[0].t).shape)
    return [tensors[node.input[1]] for node in graph.node if node.op_type == "Conv"]


def export_model(model: nn.Module, checkpoint: dict[str, Any], folder: str | Path, stem: str,
                 formats: Sequence[str], input_size: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Write ``model`` (whose checkpoint dict is ``checkpoint``) as each of ``formats`` into ``folder``:
    ``<stem>.sparse.pth`` (non-zero values plus a bitmask or zero-run indices per tensor; ``compressed-fp16``
    stores the values in half precision) and ``<stem>.onnx``. Returns each format's report and prints a line each.
    """
    folder = Path(folder)
    reports: dict[str, dict[str, Any]] = {}
    for fmt in dict.fromkeys(formats):
        if fmt.startswith("compressed"):
            fp16 = fmt == "compressed-fp16"
            path = folder / f"{stem}{'.fp16' if fp16 else ''}.sparse.pth"
            report = save_compressed(path, checkpoint, fp16=fp16)
            reports[fmt] = {"path": str(path), "file_bytes": report["file_bytes"],
                            "dense_file_bytes": report["dense_file_bytes"], "encodings": report["encodings"]}
            print(f"Exported {path}: {report['file_bytes']:,} bytes ({report['dense_file_bytes']:,} as an ordinary "
                  f"checkpoint, {100 * report['file_bytes'] / report['dense_file_bytes']:.1f}%)")
        elif fmt == "onnx":
            report = export_onnx(model, folder / f"{stem}.onnx", input_size)
            reports[fmt] = report
            checked = (f"onnxruntime matches PyTorch to {report['max_abs_diff']:.1e}" if report["checked"]
                       else "not checked: onnxruntime is not installed")
            print(f"Exported {report['path']}: {report['bytes']:,} bytes; {checked}")
        else:
            raise UserError(f"--export {fmt}: unknown format; known: {', '.join(EXPORT_FORMATS)}")
    return reports
