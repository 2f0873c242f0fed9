"""Tests of ``utils/core/tvguard.py``, the guard that lets torchvision import next to a CPU-only torch."""

from __future__ import annotations

import builtins
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from utils.core import tvguard as tv

REPO = Path(__file__).resolve().parents[1]

_FRESH_SCRIPT = textwrap.dedent(
    """
    import torch
    from utils.core.tvguard import torchvision

    model = torchvision.models.resnet18().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1000) and torch.isfinite(out).all(), out.shape
    print("forward-ok")

    # The guard declares nms's schema without a kernel: calling it must either work or fail loudly, never return
    # something wrong.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    try:
        keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    except (RuntimeError, NotImplementedError):
        print("nms-unavailable")
    else:
        assert keep.tolist() == [0, 2], keep
        print("nms-ok")
    """
)


def test_fresh_interpreter_imports_torchvision_and_runs_a_model() -> None:
    # A subprocess: in this test session torchvision is already imported, so the guard's first import is long past.
    result = subprocess.run([sys.executable, "-c", _FRESH_SCRIPT], cwd=REPO, capture_output=True, text=True,
                            timeout=120, check=False)  # the assert below shows stderr
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split()
    assert lines[0] == "forward-ok" and lines[1] in {"nms-ok", "nms-unavailable"}


@pytest.mark.parametrize("message", [
    "CUDA error: no kernel image is available for execution on the device",
    "operator torchvision::nms has a kernel registered twice",  # names an op but is not the missing-op failure
])
def test_guard_reraises_unrelated_runtime_errors(monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    real_import = builtins.__import__

    def failing_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "torchvision":
            raise RuntimeError(message)
        return real_import(name, *args, **kwargs)

    modules_before = {m for m in sys.modules if m.startswith("torchvision")}
    library_before = tv._schema_library
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(RuntimeError) as info:
        tv.import_torchvision()
    monkeypatch.undo()
    assert str(info.value) == message
    # Nothing was "repaired": no modules forgotten, no operator schemas declared.
    assert {m for m in sys.modules if m.startswith("torchvision")} == modules_before
    assert tv._schema_library is library_before


def test_guard_returns_the_module_when_import_works() -> None:
    assert tv.import_torchvision() is sys.modules["torchvision"] is tv.torchvision
