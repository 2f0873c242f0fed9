"""``pruner_exp.py --export``: the final model of every sweep row, and of a filter run, written in other forms.

* A weight sweep exports each row's final model into its ``p<ratio>/`` folder: at 0.9 the compressed file is well
  under a fifth of the dense checkpoint, it loads back to exactly that row's weights and masks, each layer is stored
  in the smaller of a bitmask and zero-run indices (recomputed here with numpy from the weights), the ONNX file
  computes what the checkpoint computes, and ``results.json`` / ``results.md`` carry the bytes.
* Retrained rows (one-shot, iterative, AGP) export ``p<ratio>/last.pth``, the model the row reports after retraining.
* A filter run exports its physically smaller model: the ONNX graph has the smaller convs and matches PyTorch.
* ``--resume RUN_DIR --export`` exports a finished run without retraining it; an export that fails after the run
  keeps the run's results; ``--export`` with a sensitivity analysis, or onnx missing, is one error line before any
  work.

The data is the tiny CIFAR-10 of ``test_schedule.py`` (random pixels, 80 training and 20 test images: these runs test
plumbing and exactness, not learning; a digits run retrains about ten times longer), the model an untrained
ResNet-20 whose BatchNorm statistics are measured on random images first, so that its logits are of order one and an
ONNX difference of 1e-4 means something.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_data import write_cifar
from test_runner import PRUNER, cifar, load, run_script, snapshot, succeeded, write_config
from torch import nn

from utils.checkpoint.load import load_compressed, load_toolkit_checkpoint
from utils.config.validate import load_config
from utils.core.errors import UserError

ATOL = 1e-4
RETRAIN = {"epochs": 2, "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "constant"}
ALL_FORMATS = ("compressed", "compressed-fp16", "onnx")


# ------------------------------------------------------------------------------------------------------ helpers


def calibrated(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with BatchNorm running statistics averaged over random batches, as training would leave them."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, 3, 32, 32, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny CIFAR-10 (5 steps of 16 images per epoch, 20 test images) and an untrained, calibrated ResNet-20 (shortcut
    A and B) to prune."""
    from models import get_model
    from utils.checkpoint.format import make_checkpoint
    from utils.core.files import atomic_torch_save

    folder = tmp_path_factory.mktemp("pruner_export")
    write_cifar(folder / "data", per_batch=16, n_test=20)
    torch.manual_seed(0)
    for shortcut in ("A", "B"):
        options = {"num_classes": 10, "shortcut": shortcut}
        model = calibrated(get_model("resnet20", **options))
        atomic_torch_save(make_checkpoint(model=model, arch={"name": "resnet20", "options": options}, config={}),
                          folder / f"resnet20{shortcut}.pth")
    return folder


def experiment(work: Path, name: str, *, shortcut: str = "A", **sections: Any) -> Path:
    """An experiment file with absolute paths, so that it runs from any working directory (and in-process)."""
    data = {**cifar(work / "data"), "batch_size": 16, "test_batch_size": 20}
    return write_config(work / f"{name}.json", name=name, seed=0, data=data,
                        model={"arch": "resnet20", "checkpoint": str(work / f"resnet20{shortcut}.pth")},
                        output={"dir": str(work / "runs")}, **sections)


def results(run: Path) -> dict[str, Any]:
    return json.loads((run / "results.json").read_text())


def table_row(markdown: str, label: str) -> list[str]:
    """The cells after the label of the markdown table line ``| label | ... |``."""
    [line] = [line for line in markdown.splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def assert_same_checkpoint(compressed: Path, dense: Path) -> None:
    """The compressed file loads back to exactly the dense checkpoint's weights, buffers and masks."""
    got, want = load_compressed(compressed), load(dense)
    assert list(got["state_dict"]) == list(want["state_dict"])
    for name, tensor in want["state_dict"].items():
        assert got["state_dict"][name].dtype == tensor.dtype and torch.equal(got["state_dict"][name], tensor), name
    assert (got["masks"] is None) == (want["masks"] is None)
    for name, mask in (want["masks"] or {}).items():
        assert torch.equal(got["masks"][name], mask), name
    assert got["arch"] == want["arch"]


def expected_encoding(weight: torch.Tensor, value_bytes: int) -> str:
    """The smallest of dense, bitmask and zero-run indices for ``weight``, recomputed with numpy from the format's
    definition: each stored tensor costs its bytes plus 64, bitmask 1 bit per element, indices one gap per non-zero
    value in the narrowest of uint8/int16/int32 that holds the longest run of zeros; ties go to the simpler."""
    flat = weight.reshape(-1).numpy()
    n = flat.size
    positions = np.flatnonzero(flat.view(np.int32) != 0)  # any bit set: -0.0 is a value
    values = 64 + positions.size * value_bytes
    gaps = np.diff(positions, prepend=-1) - 1
    longest = int(gaps.max()) if gaps.size else 0
    gap_bytes, gap_type = next((size, name) for size, name, limit in ((1, "uint8", 255), (2, "int16", 2**15 - 1),
                                                                      (4, "int32", 2**31 - 1)) if longest <= limit)
    sizes = {"dense": 64 + n * value_bytes, "bitmask": 64 + math.ceil(n / 8) + values,
             "indices": 64 + positions.size * gap_bytes + values}
    best = min(sizes, key=lambda name: (sizes[name], ("dense", "bitmask", "indices").index(name)))
    return f"indices/{gap_type}" if best == "indices" else best


def onnx_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime", reason="optional: pip install onnx onnxruntime (requirements-dev.txt)")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"input": x.numpy()})
    return torch.from_numpy(out)


def assert_onnx_matches(onnx_path: Path, checkpoint: Path) -> None:
    """Our own onnxruntime session, at a batch size the export's check does not use, against the checkpoint's model."""
    model = load_toolkit_checkpoint(checkpoint).model.eval()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        expected = model(x)
    assert expected.abs().max() > 0.5  # logits of order one: the tolerance is meaningful
    got = onnx_outputs(onnx_path, x)
    assert got.shape == expected.shape and (got - expected).abs().max().item() <= ATOL


# ------------------------------------------------------------------------------------------- a one-shot sweep


@pytest.fixture(scope="module")
def sweep(work: Path) -> tuple[Path, str]:
    """One-shot weight sweep at 0.5 and 0.9 without retraining, every export format; the run and its stdout."""
    pytest.importorskip("onnx", reason="optional: pip install onnx onnxruntime (requirements-dev.txt)")
    config = experiment(work, "sweep", prune={"method": "weight", "percent": [0.5, 0.9]})
    run = succeeded(run_script(PRUNER, "--json", str(config), "--export", *ALL_FORMATS, cwd=work))
    assert run.path is not None
    return run.path, run.stdout


def test_sweep_rows_carry_the_bytes_and_at_09_compress_under_a_fifth(sweep: tuple[Path, str]) -> None:
    run, stdout = sweep
    rows = results(run)["rows"]
    assert [r["prune_percent"] for r in rows] == [0.5, 0.9]
    for row in rows:
        folder = run / f"p{row['prune_percent']:g}"
        record = row["export"]
        assert record["checkpoint"] == row["checkpoint"] == str(folder / "pruned.pth")  # no retraining: the pruned
        assert record["checkpoint_file_bytes"] == (folder / "pruned.pth").stat().st_size
        for fmt, name in (("compressed", "pruned.sparse.pth"), ("compressed-fp16", "pruned.fp16.sparse.pth")):
            e = record[fmt]
            assert e["path"] == str(folder / name) and e["file_bytes"] == (folder / name).stat().st_size
            assert e["percent_of_dense"] == pytest.approx(100 * e["file_bytes"] / e["dense_file_bytes"])
            # the dense figure is the same checkpoint without its RNG state: within 2% of pruned.pth on disk
            assert 0.98 < e["dense_file_bytes"] / record["checkpoint_file_bytes"] <= 1
        assert record["onnx"]["path"] == str(folder / "pruned.onnx")
        assert record["onnx"]["bytes"] == (folder / "pruned.onnx").stat().st_size
        assert record["onnx"]["checked"] and record["onnx"]["max_abs_diff"] <= ATOL
    at_09 = rows[1]["export"]
    assert at_09["compressed"]["file_bytes"] < 0.2 * at_09["compressed"]["dense_file_bytes"]
    assert at_09["compressed"]["file_bytes"] < 0.2 * at_09["checkpoint_file_bytes"]  # and of the file on disk
    assert at_09["compressed-fp16"]["file_bytes"] < at_09["compressed"]["file_bytes"]
    assert rows[0]["export"]["compressed"]["file_bytes"] > at_09["compressed"]["file_bytes"]

    markdown = (run / "results.md").read_text()
    for text in (markdown, stdout):  # the same table printed and saved, the new lines after the existing ones
        assert "| fc threshold |" in text and text.index("| fc threshold |") < text.index("| checkpoint, dense")
        assert table_row(text, "checkpoint, dense (bytes)") == [
            "-", *(f"{r['export']['compressed']['dense_file_bytes']:,}" for r in rows)]
        for fmt in ("compressed", "compressed-fp16"):
            assert table_row(text, f"{fmt} (bytes, % of dense)") == [
                "-", *(f"{r['export'][fmt]['file_bytes']:,} ({r['export'][fmt]['percent_of_dense']:.1f}%)"
                       for r in rows)]
        assert table_row(text, "onnx (bytes)") == ["-", *(f"{r['export']['onnx']['bytes']:,}" for r in rows)]
        assert table_row(text, "onnx max abs diff") == [
            "-", *(f"{r['export']['onnx']['max_abs_diff']:.1e}" for r in rows)]


def test_compressed_rows_load_back_to_exactly_the_rows_checkpoints(sweep: tuple[Path, str]) -> None:
    run, _ = sweep
    for percent in (0.5, 0.9):
        folder = run / f"p{percent:g}"
        assert_same_checkpoint(folder / "pruned.sparse.pth", folder / "pruned.pth")
        half, dense = load_compressed(folder / "pruned.fp16.sparse.pth"), load(folder / "pruned.pth")
        for name, tensor in dense["state_dict"].items():  # fp16: the same zeros, the values to half precision
            got = half["state_dict"][name]
            assert got.dtype == tensor.dtype and torch.equal(got == 0, tensor == 0), name
            if tensor.is_floating_point():
                assert torch.equal(got, tensor.half().to(tensor.dtype)), name


def test_each_layer_is_stored_in_the_smaller_encoding(sweep: tuple[Path, str]) -> None:
    run, stdout = sweep
    for row in results(run)["rows"]:
        weights = load(row["checkpoint"])["state_dict"]
        for fmt, value_bytes in (("compressed", 4), ("compressed-fp16", 2)):
            layers = row["export"][fmt]["layers"]
            assert list(layers) == list(row["sparsity"]["layers"])  # every prunable weight, in model order
            assert layers == {name: expected_encoding(weights[name], value_bytes) for name in layers}
    at_09 = results(run)["rows"][1]["export"]["compressed"]["layers"]
    assert at_09["layer3.0.conv2.weight"] == "indices/uint8" and at_09["layer1.0.conv1.weight"] == "bitmask"
    assert "### Encoding per layer, compressed-fp16" in stdout
    assert "| layer3.0.conv2.weight | bitmask | indices/uint8 |" in (run / "results.md").read_text()


def test_onnx_rows_compute_what_their_checkpoints_compute(sweep: tuple[Path, str]) -> None:
    run, _ = sweep
    for percent in (0.5, 0.9):
        assert_onnx_matches(run / f"p{percent:g}" / "pruned.onnx", run / f"p{percent:g}" / "pruned.pth")


# ------------------------------------------------------------------------------- retrained rows, every schedule


@pytest.mark.parametrize(("schedule", "extra"), [("one_shot", {}), ("iterative", {"rounds": 2}),
                                                  ("agp", {"frequency": 2})])
def test_retrained_rows_export_their_last_checkpoint(work: Path, schedule: str, extra: dict[str, Any]) -> None:
    config = experiment(work, f"retrained_{schedule}", prune={"method": "weight", "percent": [0.9],
                                                               "schedule": schedule, **extra}, retrain=RETRAIN)
    run = succeeded(run_script(PRUNER, "--json", str(config), "--export", "compressed", cwd=work)).path
    assert run is not None
    [row] = results(run)["rows"]
    folder = run / "p0.9"
    assert row["export"]["checkpoint"] == str(folder / "last.pth")  # the model top1_finetuned was measured on
    assert load(folder / "last.pth")["metrics"]["test_top1"] == row["top1_finetuned"]
    assert_same_checkpoint(folder / "last.sparse.pth", folder / "last.pth")
    e = row["export"]["compressed"]
    assert e["file_bytes"] < 0.2 * e["dense_file_bytes"]
    # last.pth also holds the optimizer's momentum, which the compressed file (made to keep, not to resume) leaves out
    assert row["export"]["checkpoint_file_bytes"] > 1.5 * e["dense_file_bytes"]
    assert sorted(p.name for p in folder.glob("*.sparse.pth")) == ["last.sparse.pth"]


# ------------------------------------------------------------------------------------------------- filter runs


@pytest.mark.slow
def test_filter_run_exports_its_smaller_model(work: Path) -> None:
    from models import get_model
    from utils.checkpoint.export import onnx_conv_weight_shapes

    pytest.importorskip("onnx", reason="optional: pip install onnx onnxruntime (requirements-dev.txt)")
    prune = {"method": "filter", "layers": ["layer1", "layer2.residual"], "ratios": [0.5, 0.25], "latency": False}
    config = experiment(work, "filter", shortcut="B", prune=prune)
    run = succeeded(run_script(PRUNER, "--json", str(config), "--export", "onnx", "compressed", cwd=work))
    assert run.path is not None
    record = results(run.path)["export"]
    assert record["checkpoint"] == str(run.path / "pruned.pth")  # no retraining: the physically pruned model
    pruned = load_toolkit_checkpoint(run.path / "pruned.pth").model
    shapes = onnx_conv_weight_shapes(run.path / "pruned.onnx")
    expected = [tuple(m.weight.shape) for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    original = [tuple(m.weight.shape) for m in get_model("resnet20", num_classes=10, shortcut="B").modules()
                if isinstance(m, nn.Conv2d)]
    assert sorted(shapes) == sorted(expected) != sorted(original)
    assert (8, 16, 3, 3) in shapes and (24, 16, 1, 1) in shapes  # layer1 block-first convs, the stage 2 shortcut
    assert sum(math.prod(s) for s in shapes) < sum(math.prod(s) for s in original)
    assert_onnx_matches(run.path / "pruned.onnx", run.path / "pruned.pth")
    assert record["onnx"]["max_abs_diff"] <= ATOL
    assert_same_checkpoint(run.path / "pruned.sparse.pth", run.path / "pruned.pth")
    markdown = (run.path / "results.md").read_text()
    assert "### Exports of pruned.pth" in markdown and "### Exports of pruned.pth" in run.stdout
    assert f"| onnx | pruned.onnx | {record['onnx']['bytes']:,} |" in markdown


@pytest.mark.slow
def test_filter_agp_exports_the_model_with_the_filters_removed(work: Path) -> None:
    prune = {"method": "filter", "layers": ["layer1"], "ratios": [0.5], "schedule": "agp", "frequency": 2,
             "latency": False}
    config = experiment(work, "filter_agp", shortcut="B", prune=prune, retrain=RETRAIN)
    run = succeeded(run_script(PRUNER, "--json", str(config), "--export", "compressed", cwd=work)).path
    assert run is not None
    assert results(run)["export"]["checkpoint"] == str(run / "final.pth")  # not the full-width last.pth
    assert_same_checkpoint(run / "final.sparse.pth", run / "final.pth")
    assert load_compressed(run / "final.sparse.pth")["state_dict"]["layer1.0.conv1.weight"].shape[0] == 8


# ----------------------------------------------------------------------------------------------- resume, errors


def test_resume_of_a_finished_run_exports_it_without_retraining(work: Path) -> None:
    config = experiment(work, "later", prune={"method": "weight", "percent": [0.9]}, retrain={**RETRAIN, "epochs": 1})
    run = succeeded(run_script(PRUNER, "--json", str(config), cwd=work)).path
    assert run is not None
    assert "export" not in results(run)["rows"][0] and "compressed" not in (run / "results.md").read_text()
    last = (run / "p0.9" / "last.pth").read_bytes()
    resumed = succeeded(run_script(PRUNER, "--json", str(config), "--resume", str(run), "--export", "compressed",
                                   cwd=work))
    assert "Retraining for" in resumed.stdout and not re.search(r"^Epoch \d", resumed.stdout, re.MULTILINE)
    assert (run / "p0.9" / "last.pth").read_bytes() == last  # not retrained
    [row] = results(run)["rows"]
    assert row["export"]["checkpoint"] == str(run / "p0.9" / "last.pth")
    assert_same_checkpoint(run / "p0.9" / "last.sparse.pth", run / "p0.9" / "last.pth")
    assert table_row((run / "results.md").read_text(), "compressed (bytes, % of dense)")[1].startswith(
        f"{row['export']['compressed']['file_bytes']:,} (")


def test_a_failing_export_keeps_the_runs_results(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import utils.checkpoint.export
    from utils.app.pruner_main import main

    def failing(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise UserError("ONNX export of ResNet: onnxruntime differs from PyTorch by 0.5 (> 0.0001); the file was not "
                        "written")

    monkeypatch.setattr(utils.checkpoint.export, "export_onnx", failing)
    config = experiment(work, "failing", prune={"method": "weight", "percent": [0.5, 0.9]})
    with pytest.raises(UserError) as caught:
        main(load_config(config), export=("compressed", "onnx"))
    message = str(caught.value)
    run = work / "runs" / "failing"
    assert message.startswith("ONNX export of ResNet: onnxruntime differs from PyTorch by 0.5")
    assert "\n" not in message
    assert f"its results are saved, without the export, in {run / 'results.md'} and results.json" in message
    assert f"--resume {run} --export compressed onnx exports again without retraining" in message
    saved = results(run)
    assert [r["prune_percent"] for r in saved["rows"]] == [0.5, 0.9] and all("export" not in r for r in saved["rows"])
    assert "| top1 (without fine-tune) |" in (run / "results.md").read_text()
    assert (run / "p0.9" / "pruned.pth").is_file()


def test_export_with_sensitivity_is_one_error_line_before_any_work(work: Path) -> None:
    config = experiment(work, "sens", prune={"method": "sensitivity", "layers": ["conv2"],
                                             "sensitivity_ratios": [0.5]})
    before = snapshot(work)
    result = run_script(PRUNER, "--json", str(config), "--export", "compressed", cwd=work)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ('error: --export applies to weight and filter pruning; prune.method "sensitivity" ends '
                             "with no model to export: leave out --export\n")
    assert snapshot(work) == before


def test_export_onnx_without_onnx_is_refused_before_any_work(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.app.pruner_main import main

    monkeypatch.setitem(sys.modules, "onnx", None)  # what `import onnx` meets when it is not installed
    config = experiment(work, "no_onnx", prune={"method": "weight", "percent": [0.5]})
    with pytest.raises(UserError, match=r"^--export onnx needs the optional package 'onnx', which is not installed; "
                                        r"run `pip install onnx onnxruntime`, or leave out onnx$"):
        main(load_config(config), export=("compressed", "onnx"))
    assert not (work / "runs" / "no_onnx").exists()
