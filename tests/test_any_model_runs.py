"""End to end on models outside the registry: the real scripts train, list, prune, export and report them.

Three networks that the rewritten channel trace reaches, at 32x32 on a tiny CIFAR-10 (40 training and 20 test images of
random pixels, test_data's writer): ``torchvision:mobilenet_v3_small`` (squeeze-excitation gates, hardswish, a hidden
Linear), ``torchvision:shufflenet_v2_x0_5`` (cat, split and channel shuffle) and a 2-layer ViT given as a user's
``module:callable``. Each is trained for one epoch by ``trainer_exp.py``; ``pruner_exp.py`` then filter-prunes a glob of
each with the ``agp`` schedule over 2 retraining epochs and ``--export onnx``, weight-prunes MobileNetV3 one-shot and
the ViT iteratively, runs a sensitivity sweep of 2 ViT layers and lists every model's layers. The runs are made once
for the module, two at a time; the tests read what they wrote and check it against an independent re-computation:
re-evaluating each reloaded checkpoint gives the loss and top-1 the run reported, its parameters are the reported
count, the ONNX file gives the checkpoint's logits under onnxruntime.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from test_data import write_cifar
from test_runner import PRUNER, TRAINER, Run, cifar, run_script, succeeded, write_config
from torch import nn
from torch.utils.data import DataLoader

from pruning.heads import HEAD_MODULES, PRUNED_ATTENTION, count_heads
from utils.app.layer_list import list_layers
from utils.checkpoint.load import LoadedModel, load_toolkit_checkpoint
from utils.config.validate import from_dict
from utils.core.errors import UserError
from utils.data.datasets import build_datasets, default_mean_std
from utils.report.compare import write_report
from utils.train.engine import evaluate

VIT_MODULE = "e2e_tiny_vit"  # the user's module, written to the work folder; a name no other test imports
VIT_SOURCE = '''\
from utils.core.tvguard import torchvision


def tiny_vit(num_classes: int = 10):
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                hidden_dim=32, mlp_dim=64, num_classes=num_classes)
'''
ARCHS = {"mobilenet": "torchvision:mobilenet_v3_small", "shufflenet": "torchvision:shufflenet_v2_x0_5",
         "vit": f"{VIT_MODULE}:tiny_vit"}
# What the filter runs prune: every prunable layer the glob matches. ShuffleNet's stage3 is left out: the shuffles
# of its 8 blocks couple each branch's 48 channels into one unit, which a ratio cannot prune (see the report).
GLOBS = {"mobilenet": ["features.*"], "shufflenet": ["stage2.*", "stage4.*"], "vit": ["encoder.*"]}
SENSITIVITY_LAYERS = ["encoder.layers.encoder_layer_0.mlp.0", "encoder.layers.encoder_layer_1.mlp.0"]
SENSITIVITY_RATIOS = [0.25, 0.5]
HAS_ONNX = importlib.util.find_spec("onnx") is not None  # --export onnx needs it (requirements-dev.txt installs it)
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


def exports(*formats: str) -> list[str]:
    """The ``--export`` arguments for ``formats``, ONNX left out where the onnx package is not installed."""
    formats = tuple(f for f in formats if f != "onnx" or HAS_ONNX)
    return ["--export", *formats] if formats else []


@contextmanager
def vit_importable(folder: Path) -> Iterator[None]:
    """The user's module importable in this process (a checkpoint of it rebuilds through it), then forgotten."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(VIT_MODULE, None)


# Every run's own sections: the tiny CIFAR-10 at its size (so --list-layers traces at 32x32, not the 224 default).
COMMON = {"seed": 0, "data": {**cifar("data"), "image_size": 32}, "output": {"dir": "runs"}}
Job = tuple[Path, Path, list[str]]  # script, experiment file, further arguments


def _trainings(work: Path) -> dict[str, Job]:
    """One epoch of each model, the files written."""
    return {f"train_{key}": (TRAINER, write_config(work / f"train_{key}.json", name=f"train_{key}",
                                                   model={"arch": arch}, train={"epochs": 1, "lr": 0.05}, **COMMON), [])
            for key, arch in ARCHS.items()}


def _prunings(work: Path) -> dict[str, Job]:
    """Every pruner run (of the trainings' checkpoints), the files written."""
    jobs = {}
    for key, arch in ARCHS.items():
        model = {"arch": arch, "checkpoint": f"runs/train_{key}/best.pth"}
        jobs[f"filter_{key}"] = (PRUNER, write_config(
            work / f"filter_{key}.json", name=f"filter_{key}", model=model, retrain={"epochs": 2, "lr": 0.01},
            prune={"method": "filter", "layers": GLOBS[key], "ratios": [0.5], "schedule": "agp", "frequency": 1,
                   "latency": False}, **COMMON), exports("onnx"))
        jobs[f"list_{key}"] = (PRUNER, work / f"filter_{key}.json", ["--list-layers"])
    mobilenet = {"arch": ARCHS["mobilenet"], "checkpoint": "runs/train_mobilenet/best.pth"}
    jobs["weight_mobilenet"] = (PRUNER, write_config(
        work / "weight_mobilenet.json", name="weight_mobilenet", model=mobilenet,
        prune={"method": "weight", "percent": [0.5], "scope": "layer"}, **COMMON), exports("onnx", "compressed"))
    vit = {"arch": ARCHS["vit"], "checkpoint": "runs/train_vit/best.pth"}
    jobs["weight_vit"] = (PRUNER, write_config(
        work / "weight_vit.json", name="weight_vit", model=vit, retrain={"epochs": 2, "lr": 0.01},
        prune={"method": "weight", "percent": [0.5], "schedule": "iterative", "rounds": 2}, **COMMON), exports("onnx"))
    jobs["sensitivity_vit"] = (PRUNER, write_config(
        work / "sensitivity_vit.json", name="sensitivity_vit", model=vit,
        prune={"method": "sensitivity", "layers": SENSITIVITY_LAYERS, "sensitivity_ratios": SENSITIVITY_RATIOS},
        **COMMON), [])
    return jobs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every run of the module by name (``train_<model>``, ``filter_<model>``, ``list_<model>``, ``weight_mobilenet``,
    ``weight_vit``, ``sensitivity_vit``) and the folder they ran in (``work``)."""
    work = tmp_path_factory.mktemp("any_model_runs")
    write_cifar(work / "data", per_batch=8, n_test=20)
    (work / f"{VIT_MODULE}.py").write_text(VIT_SOURCE, encoding="utf-8")

    def launch(jobs: dict[str, Job]) -> dict[str, Run]:
        with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: one's imports overlap the other's work
            futures = {key: pool.submit(run_script, script, "--json", str(path), *extra, cwd=work)
                       for key, (script, path, extra) in jobs.items()}
            return {key: succeeded(future.result()) for key, future in futures.items()}

    made: dict[str, Any] = launch(_trainings(work))
    made |= launch(_prunings(work))
    made["work"] = work
    return made


# ------------------------------------------------------------------------------------------------------ helpers


def _results(run: Run) -> dict[str, Any]:
    assert run.path is not None
    return json.loads((run.path / "results.json").read_text())


def _reload(runs: dict[str, Any], path: str | Path) -> LoadedModel:
    with vit_importable(runs["work"]):
        return load_toolkit_checkpoint(runs["work"] / path)


def _test_set(runs: dict[str, Any]) -> DataLoader:
    """The 20 test images in one batch, as the runs evaluated them (test_batch_size 100)."""
    mean, std = default_mean_std("cifar10")
    bundle = build_datasets("cifar10", str(runs["work"] / "data"), mean=mean, std=std, train=False)
    return DataLoader(bundle.test, batch_size=100)


def _evaluated(runs: dict[str, Any], model: nn.Module) -> dict[str, float]:
    with torch.no_grad():
        return evaluate(model, _test_set(runs), nn.CrossEntropyLoss(), torch.device("cpu"))


def _assert_onnx_computes(runs: dict[str, Any], onnx_path: Path, model: nn.Module) -> None:
    """The exported file exists and gives ``model``'s logits on the test images under onnxruntime."""
    if not HAS_ONNX:
        return
    assert onnx_path.is_file() and onnx_path.stat().st_size > 0
    if not HAS_ORT:
        return
    import onnxruntime  # optional (requirements-dev.txt): found above

    images = next(iter(_test_set(runs)))[0]
    with torch.no_grad():
        expected = model.eval()(images)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    assert expected.abs().max() > 0  # logits of a trained model, not the zeros an untouched ViT head gives
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-4 + 1e-6 * expected.abs().max())


def _listed(stdout: str) -> dict[str, tuple[str, str]]:
    """``{name: (channels, prunable or why not)}`` of the layer lines ``--list-layers`` printed."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("name ")) + 1
    end = next((i for i, line in enumerate(lines) if line.startswith("Names that stand")), len(lines))
    rows = [re.split(r"\s{2,}", line, maxsplit=3) for line in lines[start:end]]
    return {name: (channels, status) for name, _module, channels, status in rows}


# -------------------------------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_list_layers_names_the_units_of_each_model(runs: dict[str, Any]) -> None:
    mobilenet = _listed(runs["list_mobilenet"].stdout)
    assert mobilenet["features.4.block.2.fc1"] == ("24", "prunable")  # an SE gate's hidden width
    assert mobilenet["classifier.0"] == ("1024", "prunable")  # the hidden Linear
    assert mobilenet["features.4.block.3.0"][1].startswith("prunable only with features.5.block.3.0, "
                                                           "features.6.block.3.0 (write group")
    assert "traced with one 3x32x32 input (data.image_size)" in runs["list_mobilenet"].stdout
    shufflenet = _listed(runs["list_shufflenet"].stdout)
    assert shufflenet["stage2.0.branch2.0"] == ("24", "prunable") and "stage4.3.branch2.5" in shufflenet
    vit = _listed(runs["list_vit"].stdout)
    assert vit["encoder.layers.encoder_layer_0.mlp.0"] == ("64", "prunable")
    assert vit["conv_proj"][1].startswith("not prunable: MultiheadAttention")  # the embedding width: heads, not it
    assert vit["heads.head"][1] == "not prunable: its channels are the model's output"


def test_list_layers_of_a_model_that_refuses_the_default_size_is_one_line(tmp_path: Path) -> None:
    """The ViT asserts its image size (torch._assert: an AssertionError, not a RuntimeError) at the default 224."""
    (tmp_path / f"{VIT_MODULE}.py").write_text(VIT_SOURCE, encoding="utf-8")
    cfg = from_dict({"name": "t", "data": {"name": "cifar10"}, "model": {"arch": ARCHS["vit"]}})
    with vit_importable(tmp_path), pytest.raises(UserError) as raised:
        list_layers(cfg)
    assert str(raised.value) == (f"--list-layers: model.arch '{ARCHS['vit']}' cannot take one input of [3, 224, 224] "
                                 "(the default; set model.input_size to the data's size; Wrong image height! Expected "
                                 "32 but got 224!); set model.input_size to the [C, H, W] it takes")


@pytest.mark.slow
@pytest.mark.parametrize("key", list(ARCHS))
def test_filter_agp_model_reloads_and_computes_what_the_run_reported(runs: dict[str, Any], key: str) -> None:
    """The final model (filters removed after the gradual pruning and retraining) has the reported parameters, loss
    and top-1, is smaller where the run said, and its ONNX file computes it."""
    run = runs[f"filter_{key}"]
    results = _results(run)
    assert results["schedule"]["name"] == "agp" and results["agp"]["last_step"] == results["agp"]["pruning_steps"]
    final = _reload(runs, results["final_checkpoint"]).model
    assert sum(p.numel() for p in final.parameters()) == results["after"]["params"] < results["before"]["params"]
    removed = next(r for r in run.metrics() if r.get("phase") == "removed")  # the run's evaluation, unrounded
    again = _evaluated(runs, final)
    assert again["top1"] == results["after"]["top1"] == results["top1_masked"]
    assert again["loss"] == pytest.approx(removed["loss"], rel=1e-5)
    original = _reload(runs, f"runs/train_{key}/best.pth").model
    for layer in results["widths"]:  # outside the registry a layer's name is its module's
        assert _width(final.get_submodule(layer)) < _width(original.get_submodule(layer)), layer
    _assert_onnx_computes(runs, run.path / "final.onnx", final)
    if HAS_ONNX and HAS_ORT:
        assert results["export"]["onnx"]["checked"]


def _width(module: nn.Module) -> int:
    """A layer's filters: output channels or features, or an attention module's heads."""
    return count_heads(module) if isinstance(module, (*HEAD_MODULES, *PRUNED_ATTENTION)) else module.weight.shape[0]


@pytest.mark.slow
@pytest.mark.parametrize("key", [
    "mobilenet", "vit",
    "shufflenet",  # its units are several filters (channel shuffle): widths still count filters
])
def test_reported_widths_are_the_filters_of_the_pruned_convs(runs: dict[str, Any], key: str) -> None:
    results = _results(runs[f"filter_{key}"])
    final = _reload(runs, results["final_checkpoint"]).model
    original = _reload(runs, f"runs/train_{key}/best.pth").model
    for layer, (before, after) in results["widths"].items():
        assert (_width(original.get_submodule(layer)), _width(final.get_submodule(layer))) == (before, after), layer


@pytest.mark.slow
def test_the_encoder_glob_prunes_attention_heads(runs: dict[str, Any]) -> None:
    final = _reload(runs, _results(runs["filter_vit"])["final_checkpoint"]).model
    assert [layer.self_attention.num_heads for layer in final.encoder.layers] == [2, 2]


@pytest.mark.slow
def test_weight_pruning_one_shot_and_iterative_reload_with_their_zeros(runs: dict[str, Any]) -> None:
    """MobileNetV3 one-shot (SE gates, the hidden Linear), the ViT in 2 rounds (attention's in_proj_weight): each
    checkpoint has exactly the reported zeros, re-evaluates to the reported loss, and its ONNX file computes it."""
    row = _results(runs["weight_mobilenet"])["rows"][0]
    pruned = _reload(runs, row["checkpoint"])
    params = dict(pruned.model.named_parameters())
    assert {f"{name}.weight" for name in ("features.4.block.2.fc1", "classifier.0")} <= set(row["sparsity"]["layers"])
    for name, entry in row["sparsity"]["layers"].items():
        assert int((params[name] == 0).sum()) == entry["zeros"] == round(0.5 * entry["numel"]), name
        assert torch.equal(params[name] == 0, ~pruned.masks[name].bool()), name
    assert _evaluated(runs, pruned.model)["loss"] == pytest.approx(row["loss"], rel=1e-5)
    _assert_onnx_computes(runs, runs["weight_mobilenet"].path / "p0.5" / "pruned.onnx", pruned.model)
    compressed = _reload(runs, runs["weight_mobilenet"].path / "p0.5" / "pruned.sparse.pth")
    assert all(torch.equal(a, b) for a, b in zip(compressed.model.state_dict().values(),
                                                 pruned.model.state_dict().values(), strict=True))

    run = runs["weight_vit"]
    row = _results(run)["rows"][0]
    assert [r["ratio"] for r in row["rounds"]] == [0.4375, 0.5]  # the cubic ramp at rounds 1 and 2 of 2
    last = _reload(runs, run.path / "p0.5" / "last.pth")
    params = dict(last.model.named_parameters())
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in row["sparsity"]["layers"]
    for name, entry in row["sparsity"]["layers"].items():  # still exactly the pruned zeros after the retraining
        assert int((params[name] == 0).sum()) == entry["zeros"] > 0, name
        assert torch.equal(params[name] == 0, ~last.masks[name].bool()), name
    final_epoch = [r for r in run.metrics() if r.get("round") == 2 and "epoch" in r][-1]
    assert _evaluated(runs, last.model)["loss"] == pytest.approx(final_epoch["test_loss"], rel=1e-5)
    _assert_onnx_computes(runs, run.path / "p0.5" / "last.onnx", last.model)


@pytest.mark.slow
def test_sensitivity_has_a_row_per_requested_layer(runs: dict[str, Any]) -> None:
    run = runs["sensitivity_vit"]
    found = json.loads((run.path / "sensitivity.json").read_text())
    assert found["ratios"] == SENSITIVITY_RATIOS and list(found["layers"]) == SENSITIVITY_LAYERS
    for curve in found["layers"].values():
        assert curve["filters"] == 64 and curve["kept"] == [48, 32]
        assert len(curve["top1"]) == len(curve["top5"]) == len(SENSITIVITY_RATIOS)
    baseline = _evaluated(runs, _reload(runs, "runs/train_vit/best.pth").model)
    assert found["baseline"]["top1"] == baseline["top1"]
    assert found["baseline"]["loss"] == pytest.approx(baseline["loss"], rel=1e-5)
    assert (run.path / "sensitivity.csv").read_text().count("\n") >= 1 + len(SENSITIVITY_LAYERS)


@pytest.mark.slow
def test_report_compares_the_runs_of_every_model(runs: dict[str, Any], tmp_path: Path) -> None:
    names = ["train_vit", "filter_mobilenet", "filter_shufflenet", "filter_vit", "weight_mobilenet", "weight_vit",
             "sensitivity_vit"]
    made = write_report([runs[name].path for name in names], tmp_path / "report")
    header = made["table"].splitlines()[0]
    assert all(f"| {name} " in header + " " for name in names)
    params = next(line for line in made["table"].splitlines() if line.startswith("| parameters |"))
    for name in ("filter_mobilenet", "filter_shufflenet", "filter_vit"):
        after = _results(runs[name])["after"]["params"]
        assert f"→ {after:,} (" in params, name
    assert {p.name for p in made["plots"]} >= {f"widths_{name}.png" for name in names if name.startswith("filter")}
