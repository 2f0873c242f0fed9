"""ONNX export: every registered model, pruned or not, runs under onnxruntime as it does in PyTorch.

Untrained networks make a weak check (an untrained VGG's logits are ~1e-3, a deep ResNet's ~1e9), so the models
here get BatchNorm statistics measured on random images first, as training would leave them: logits of order
one, where an absolute difference of 1e-4 means something. The outputs are compared here with an onnxruntime
session of our own, at a batch size the export's own check does not use.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from models import get_model, list_models
from pruning import prune_filters, prune_weights
from utils.checkpoint.export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_conv_weight_shapes
from utils.core.errors import UserError

onnx = pytest.importorskip("onnx", reason="optional: pip install onnx onnxruntime (requirements-dev.txt)")
ort = pytest.importorskip("onnxruntime", reason="optional: pip install onnx onnxruntime (requirements-dev.txt)")

ATOL = 1e-4
SLOW = {"tv_resnet34"}  # 4 s on 2 CPU cores (an 85 MB file, checked at 224x224)


def input_size(name: str) -> tuple[int, int, int]:
    return (3, 224, 224) if name.startswith("tv_") else (3, 32, 32)


def calibrated(model: nn.Module, size: tuple[int, int, int], seed: int = 0) -> nn.Module:
    """``model`` in eval mode with BatchNorm running statistics averaged over random batches (as if trained)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8 if size[1] <= 64 else 2, *size, generator=generator))
    return model.eval()


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    return torch.from_numpy(out)


def conv_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d)]


def assert_matches(model: nn.Module, path, size: tuple[int, int, int], batch: int = 5) -> float:
    x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        expected = model(x)
    got = run_onnx(path, x)
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    assert diff <= ATOL
    return diff


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in list_models()])
def test_every_registered_model_exports(name: str, tmp_path) -> None:
    size = input_size(name)
    torch.manual_seed(0)
    model = calibrated(get_model(name, num_classes=10), size)
    path = tmp_path / f"{name}.onnx"
    report = export_onnx(model, path, size)
    assert report["checked"] and report["max_abs_diff"] <= ATOL
    assert report["bytes"] == path.stat().st_size and report["opset"] == DEFAULT_OPSET
    assert report["input"] == [INPUT_NAME, ["batch", *size]] and report["output"] == [OUTPUT_NAME, ["batch", 10]]
    graph = onnx.load(path).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic, not frozen at 1
    assert assert_matches(model, path, size) <= ATOL
    assert sorted(onnx_conv_weight_shapes(path)) == sorted(conv_shapes(model))


def test_filter_pruned_resnet20_exports_its_smaller_shapes(tmp_path) -> None:
    torch.manual_seed(0)
    size = (3, 32, 32)
    original = calibrated(get_model("resnet20", num_classes=10), size)
    pruned = calibrated(get_model("resnet20", num_classes=10), size)
    pruned.load_state_dict(original.state_dict())
    outcome = prune_filters(pruned, ratios=[0.5], example_input=torch.zeros(1, *size))  # as prepare_pruning calls it
    assert outcome.widths and all(after < before for before, after in outcome.widths.values())

    full = export_onnx(original, tmp_path / "full.onnx", size)
    small = export_onnx(pruned, tmp_path / "pruned.onnx", size)
    assert small["max_abs_diff"] <= ATOL and small["bytes"] < 0.75 * full["bytes"]
    assert assert_matches(pruned, tmp_path / "pruned.onnx", size) <= ATOL
    shapes = onnx_conv_weight_shapes(tmp_path / "pruned.onnx")
    assert shapes == conv_shapes(pruned)  # graph order = module order for the CIFAR ResNets (shortcut A: no convs)
    assert shapes != conv_shapes(original)
    assert sum(np.prod(s) for s in shapes) < sum(np.prod(s) for s in conv_shapes(original))
    assert (8, 16, 3, 3) in shapes and (16, 8, 3, 3) in shapes  # layer1 block-first convs: 16 -> 8 filters


def test_weight_pruned_zeros_survive_in_the_file(tmp_path) -> None:
    from onnx import numpy_helper

    size = (3, 32, 32)
    torch.manual_seed(0)
    model = calibrated(get_model("resnet20", num_classes=10), size)
    prune_weights(model, percent=0.7, scope="layer")
    export_onnx(model, tmp_path / "m.onnx", size)
    graph = onnx.load(tmp_path / "m.onnx").graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    conv_weights = [weights[node.input[1]] for node in graph.node if node.op_type == "Conv"]
    zeros_in_file = sum(int((w == 0).sum()) for w in conv_weights)  # BatchNorm folded in scales, keeps zeros
    zeros_in_model = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert zeros_in_file == zeros_in_model > 0.6 * sum(w.size for w in conv_weights)
    assert assert_matches(model, tmp_path / "m.onnx", size) <= ATOL


@pytest.mark.slow  # 4 s: torch.export tracing and onnxscript's optimiser
def test_dynamo_exporter(tmp_path) -> None:
    pytest.importorskip("onnxscript", reason="optional: pip install onnxscript (requirements-dev.txt)")
    size = (3, 32, 32)
    torch.manual_seed(0)
    model = calibrated(get_model("resnet20", num_classes=10), size)
    report = export_onnx(model, tmp_path / "d.onnx", size, dynamo=True)
    assert report["exporter"] == "dynamo" and report["max_abs_diff"] <= ATOL
    assert list(tmp_path.iterdir()) == [tmp_path / "d.onnx"]  # one self-contained file, no external data
    assert assert_matches(model, tmp_path / "d.onnx", size) <= ATOL


class TraceFrozenBranch(nn.Module):
    """A data-dependent branch: tracing with the all-zero example records the ``else`` side only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean(dim=(2, 3))
        return y * 2 if x.amax() > 0 else -y


def test_a_mismatch_is_an_error_and_writes_nothing(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    model = TraceFrozenBranch().train()
    with pytest.warns(torch.jit.TracerWarning), pytest.raises(UserError, match="onnxruntime differs from PyTorch"):
        export_onnx(model, path, (3, 8, 8))
    assert path.read_bytes() == b"previous"
    assert model.training  # the training flag is restored, also after an error
    with pytest.warns(torch.jit.TracerWarning):
        report = export_onnx(model, path, (3, 8, 8), check=False)
    assert report["checked"] is False and report["max_abs_diff"] is None and path.read_bytes() != b"previous"


def test_missing_packages_name_the_fix(tmp_path, monkeypatch) -> None:
    model = get_model("resnet20", num_classes=10)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # None in sys.modules makes the import fail
    with pytest.raises(UserError, match=r"pip install onnxscript"):
        export_onnx(model, tmp_path / "m.onnx", dynamo=True)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    report = export_onnx(model, tmp_path / "m.onnx")  # exported, not run
    assert report["checked"] is False and report["onnxruntime"] is None and (tmp_path / "m.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UserError, match=r"ONNX export needs .*'onnx'.*pip install onnx onnxruntime"):
        export_onnx(model, tmp_path / "other.onnx")
    assert not (tmp_path / "other.onnx").exists()


@pytest.mark.parametrize("bad", [(32, 32), (3, 0, 32), (3, 32.0, 32), "3x32x32"])
def test_bad_input_size(bad, tmp_path) -> None:
    with pytest.raises(UserError, match="input_size: expected three positive integers"):
        export_onnx(get_model("resnet20", num_classes=10), tmp_path / "m.onnx", bad)


# ------------------------------------------------------------------------------------------ through the scripts


@pytest.mark.slow
def test_trainer_exports_the_best_model_and_an_evaluated_checkpoint(tmp_path) -> None:
    from test_runner import DIGITS, TRAINER, run_script, succeeded, write_config

    from utils.checkpoint.load import load_toolkit_checkpoint

    config = write_config(tmp_path / "t.json", name="t", seed=0, data=DIGITS, model={"arch": "resnet20"},
                          train={"epochs": 1, "lr": 0.05}, output={"dir": "runs"})
    run = succeeded(run_script(TRAINER, "--json", str(config), "--export", "onnx", "compressed", cwd=tmp_path))
    assert run.path is not None
    best = load_toolkit_checkpoint(run.path / "best.pth")
    sparse = load_toolkit_checkpoint(run.path / "best.sparse.pth")
    for key, tensor in best.model.state_dict().items():
        assert torch.equal(tensor, sparse.model.state_dict()[key]), key
    assert f"Exported {run.path.relative_to(tmp_path) / 'best.onnx'}" in run.stdout
    session = ort.InferenceSession(str(run.path / "best.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # digits are upscaled to 32x32
    with torch.no_grad():
        expected = best.model.eval()(x).numpy()
    np.testing.assert_allclose(session.run(None, {INPUT_NAME: x.numpy()})[0], expected, atol=1e-4, rtol=0)

    before = sorted(p.name for p in run.path.iterdir())
    evaluated = succeeded(run_script(TRAINER, "--json", str(config), "--evaluate", "--resume",
                                     str(run.path / "last.pth"), "--export", "compressed-fp16", cwd=tmp_path))
    assert evaluated.path is None and "[Test]" in evaluated.stdout
    assert sorted(p.name for p in run.path.iterdir()) == sorted(before + ["last.fp16.sparse.pth"])
    assert (run.path / "last.fp16.sparse.pth").stat().st_size < (run.path / "last.pth").stat().st_size
