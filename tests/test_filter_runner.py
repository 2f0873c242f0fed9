"""End to end: ``pruner_exp.py`` with ``prune.method`` ``filter`` and ``sensitivity``, as a user runs it.

Subprocesses of the real scripts on tiny experiment files (helpers shared with ``test_runner.py``). The tiny CIFAR-10
(random pixels, 100 test images) tests plumbing and exactness: every number in the reports is recomputed here, from
the checkpoints the run wrote, by code that shares nothing with the tool (parameters by ``numel``, MACs by forward
hooks, L1 ranks with torch's stable argsort). The VGG-16 figures are Li et al.'s Table 1; the shared-data tests run a
published ResNet-20 on real CIFAR-10 images.

Checkpoints are built in-process with ``make_checkpoint`` (seeded, untrained): training one epoch on random pixels
first would give no better a model and cost a subprocess.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from test_data import write_cifar
from test_runner import (
    CIFAR_PER_BATCH,
    CIFAR_TEST,
    EVAL_LINE,
    PRUNER,
    TRAINER,
    Run,
    cifar,
    epoch_lines,
    load,
    run_script,
    snapshot,
    succeeded,
    write_config,
)
from torch import nn

from utils.checkpoint.load import load_toolkit_checkpoint

REPO = Path(__file__).resolve().parents[1]
VGG_JSON = REPO / "experiments" / "prune" / "cifar10_filter_prune_vgg16_bn.json"
R20_BLOCK_FIRST = [f"conv{i}" for i in range(2, 19, 2)]  # resnet20's convs that may be pruned alone
RESNET_OPTIONS = {"num_classes": 10, "shortcut": "B"}  # B: 1x1 downsample convs, so shortcuts are counted too
FILTER_SPEC = {"method": "filter", "layers": ["layer1", "layer2"], "ratios": [0.5]}
COST_KEYS = ("params", "macs", "size_kb")
REPORT_KEYS = {"params", "macs", "size_kb", "top1", "top5", "latency_ms"}
IMAGENET_MEAN_STD = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # what akamaster trained with


# ------------------------------------------------------------------------------------------------------ helpers


def save_checkpoint(path: Path, arch: str, *, seed: int = 0, **options: Any) -> Path:
    """A toolkit checkpoint of a freshly initialised (seeded) ``arch``."""
    from models import get_model
    from utils.checkpoint.format import make_checkpoint

    torch.manual_seed(seed)
    options = {"num_classes": 10, **options}
    torch.save(make_checkpoint(model=get_model(arch, **options), arch={"name": arch, "options": options}, config={}),
               path)
    return path


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hook_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one image, counted by forward hooks."""
    total = 0

    def conv(m: nn.Conv2d, _inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m: nn.Linear, _inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
               for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_size))
    for handle in handles:
        handle.remove()
    return total


def conv_modules(arch: str, **options: Any) -> dict[str, str]:
    """``{layer name users write: conv module name}`` of the unpruned ``arch``."""
    from models import get_model
    from pruning import prunable_layers

    return prunable_layers(get_model(arch, **options))


def smallest_l1(weight: torch.Tensor, count: int, ignore_in: Sequence[int] = ()) -> list[int]:
    """The ``count`` filters of smallest L1 norm (ties to the lower index), kernels on ``ignore_in`` left out."""
    keep = [c for c in range(weight.shape[1]) if c not in set(ignore_in)]
    norms = weight[:, keep].abs().double().flatten(1).sum(dim=1)
    return sorted(torch.argsort(norms, stable=True)[:count].tolist())


def results(run: Run, name: str = "results.json") -> dict[str, Any]:
    assert run.path is not None
    return json.loads((run.path / name).read_text())


def cifar_test_loader(root: Path) -> Any:
    from utils.data.datasets import build_datasets, default_mean_std
    from utils.data.loaders import build_loaders

    mean, std = default_mean_std("cifar10")
    bundle = build_datasets("cifar10", str(root), mean=mean, std=std, train=False)
    return build_loaders(bundle, batch_size=CIFAR_TEST, workers=0, seed=0)[1]


def assert_user_error(run: Run, *fragments: str) -> None:
    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr and run.path is None
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny CIFAR-10 in ``data/`` and a seeded resnet20 (shortcut B) checkpoint."""
    folder = tmp_path_factory.mktemp("filter_runner")
    write_cifar(folder / "data", per_batch=CIFAR_PER_BATCH, n_test=CIFAR_TEST)
    save_checkpoint(folder / "resnet20_b.pth", "resnet20", shortcut="B")
    return folder


def resnet_config(work: Path, file: str, name: str, **sections: Any) -> Path:
    return write_config(work / file, name=name, seed=0, data=cifar(work / "data"),
                        model={"arch": "resnet20", "checkpoint": str(work / "resnet20_b.pth")},
                        output={"dir": str(work / "runs")}, **sections)


@pytest.fixture(scope="module")
def filter_json(work: Path) -> Path:
    return resnet_config(work, "filter.json", "filter_resnet20", prune=FILTER_SPEC,
                         retrain={"epochs": 1, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                                  "schedule": "constant"})


@pytest.fixture(scope="module")
def filter_run(work: Path, filter_json: Path) -> Run:
    """Half the filters of every block-first conv of stages 1 and 2, then one epoch of retraining."""
    return succeeded(run_script(PRUNER, "--json", str(filter_json), cwd=work))


# ------------------------------------------------------------------------------------------- filter: ResNet-20


@pytest.mark.slow
def test_filter_report_matches_an_independent_count_of_the_models(filter_run: Run, work: Path) -> None:
    from models import get_model

    assert filter_run.path is not None
    res = results(filter_run)
    before, after, change = res["before"], res["after"], res["reduction_percent"]
    assert res["method"] == "filter" and res["strategy"] == "independent" and res["arch"] == "resnet20"
    assert REPORT_KEYS <= set(before) and REPORT_KEYS <= set(after) and set(change) == REPORT_KEYS

    unpruned = get_model("resnet20", **RESNET_OPTIONS)
    assert before["params"] == count_params(unpruned) == 272_474
    assert before["macs"] == hook_macs(unpruned)
    pruned = load_toolkit_checkpoint(filter_run.path / "best.pth").model
    assert after["params"] == count_params(pruned)
    assert after["macs"] == hook_macs(pruned)
    assert after["params"] < before["params"] and after["macs"] < before["macs"]

    for key in (*COST_KEYS, "top1", "top5"):
        assert change[key] == pytest.approx((before[key] - after[key]) / before[key] * 100, rel=1e-12), key
    assert set(before["latency_ms"]) == set(after["latency_ms"]) == set(change["latency_ms"]) == {"1", "64"}
    for batch, ms in before["latency_ms"].items():
        assert ms > 0 and after["latency_ms"][batch] > 0
        assert change["latency_ms"][batch] == pytest.approx((ms - after["latency_ms"][batch]) / ms * 100), batch

    # Which filters went: the smallest L1 norms of each layer on the checkpoint's own weights.
    state = load(work / "resnet20_b.pth")["state_dict"]
    modules = conv_modules("resnet20", **RESNET_OPTIONS)
    expected_layers = ["conv2", "conv4", "conv6", "conv8", "conv10", "conv12"]  # layer1, layer2 block-first convs
    assert list(res["widths"]) == list(res["removed"]) == expected_layers
    for layer in expected_layers:
        weight = state[f"{modules[layer]}.weight"]
        n = weight.shape[0]
        assert res["widths"][layer] == [n, n // 2]
        assert res["removed"][layer] == smallest_l1(weight, n // 2), layer
        assert pruned.get_submodule(modules[layer]).out_channels == n // 2


@pytest.mark.slow
def test_filter_run_prints_and_saves_its_report(filter_run: Run) -> None:
    assert filter_run.path is not None
    res = results(filter_run)
    before, after, change = res["before"], res["after"], res["reduction_percent"]
    metrics = filter_run.metrics()
    assert [m.get("phase") for m in metrics] == ["before", "pruned", None]
    assert {k: metrics[0][k] for k in ("top1", "top5")} == {k: before[k] for k in ("top1", "top5")}
    assert metrics[1] == {"phase": "pruned", **res["pruned_before_retraining"]}
    [epoch] = metrics[2:]
    assert (after["top1"], after["top5"]) == (epoch["test_top1"], epoch["test_top5"])  # the last epoch's model

    [line] = epoch_lines(filter_run.stdout)
    assert int(line.group(1)) == 0 and float(line.group(5)) == round(epoch["test_top1"], 4)
    assert res["average_top1_last_epochs"] == epoch["test_top1"]
    assert f"Average test accuracy: {epoch['test_top1']:.4f}" in filter_run.stdout
    assert f"Model size: {before['size_kb']:.0f} Kb -> {after['size_kb']:.0f} Kb" in filter_run.stdout
    for layer, (old, new) in res["widths"].items():
        assert f"  {layer}: {old} -> {new} filters" in filter_run.stdout

    md = (filter_run.path / "results.md").read_text()
    assert md.startswith("## filter_resnet20: resnet20, L1-norm filter pruning (independent)\n")
    rows = [f"| parameters | {before['params']:,} | {after['params']:,} | {-change['params']:+.1f}% |",
            f"| MACs | {before['macs']:,} | {after['macs']:,} | {-change['macs']:+.1f}% |",
            (f"| top-1 (%) | {before['top1']:.2f} | {after['top1']:.2f} | "
             f"{after['top1'] - before['top1']:+.2f} points |")]
    for row in rows:
        assert row in md and row in filter_run.stdout, row
    assert md.count("| latency, batch ") == 2


@pytest.mark.slow
def test_filter_checkpoints_are_physically_smaller_and_load_back(filter_run: Run, work: Path) -> None:
    from utils.train.engine import evaluate

    assert filter_run.path is not None
    assert {"pruned.pth", "last.pth", "best.pth", "config.json", "metrics.jsonl", "results.md",
            "results.json"} <= {p.name for p in filter_run.path.iterdir()}
    res = results(filter_run)
    pruned_ckpt, best = load(filter_run.path / "pruned.pth"), load(filter_run.path / "best.pth")
    for ckpt in (pruned_ckpt, best):
        assert not ckpt["masks"]  # the filters are gone: nothing is held at zero
        assert ckpt["arch"]["name"] == "resnet20" and ckpt["arch"]["options"] == RESNET_OPTIONS
        assert ckpt["arch"]["shapes"]
    assert best["arch"] == pruned_ckpt["arch"]
    assert best["epoch"] == 1 and best["metrics"]["test_top1"] == res["after"]["top1"]

    # pruned.pth is the model of the "pruned, before retraining" row: same accuracy when evaluated here.
    loaded = load_toolkit_checkpoint(filter_run.path / "pruned.pth", expect_arch="resnet20")
    assert loaded.masks is None and count_params(loaded.model) == res["after"]["params"]
    stats = evaluate(loaded.model, cifar_test_loader(work / "data"), nn.CrossEntropyLoss(), torch.device("cpu"))
    assert stats["top1"] == res["pruned_before_retraining"]["top1"]
    assert stats["loss"] == pytest.approx(res["pruned_before_retraining"]["loss"], rel=1e-5)


@pytest.mark.slow
def test_evaluate_pruned_best_reproduces_the_best_epoch(filter_run: Run, filter_json: Path, work: Path) -> None:
    assert filter_run.path is not None
    ckpt = filter_run.path / "best.pth"
    before = snapshot(filter_run.path)
    out = work / "eval_runs"
    run = succeeded(run_script(TRAINER, "--json", str(filter_json), "--evaluate", "--resume", str(ckpt),
                               "--set", f"output.dir={out}", cwd=work))
    [line] = run.stdout.splitlines()
    match = EVAL_LINE.match(line)
    assert match and match.group(1) == str(ckpt)
    best = max((m for m in filter_run.metrics() if "epoch" in m), key=lambda m: m["test_top1"])
    assert float(match.group(2)) == pytest.approx(best["test_top1"], abs=1e-4)
    assert float(match.group(3)) == pytest.approx(best["test_top5"], abs=1e-4)
    assert not out.exists() and snapshot(filter_run.path) == before


@pytest.mark.slow
def test_training_a_filter_pruned_checkpoint_further_keeps_its_widths(filter_run: Run, work: Path) -> None:
    assert filter_run.path is not None
    start = filter_run.path / "best.pth"
    config = write_config(work / "continue.json", name="continue_filter_pruned", seed=1, data=cifar(work / "data"),
                          model={"arch": "resnet20", "checkpoint": str(start)},
                          train={"epochs": 1, "lr": 0.01, "schedule": "constant"}, output={"dir": str(work / "runs")})
    run = succeeded(run_script(TRAINER, "--json", str(config), cwd=work))
    assert run.path is not None and len(epoch_lines(run.stdout)) == 1
    first, then = load(start), load(run.path / "last.pth")
    assert then["arch"] == first["arch"] and not then["masks"]
    assert then["state_dict"].keys() == first["state_dict"].keys()
    for key, tensor in first["state_dict"].items():
        assert then["state_dict"][key].shape == tensor.shape, key  # still the pruned widths
        if tensor.ndim == 4:
            assert not torch.equal(then["state_dict"][key], tensor), f"{key} was not trained"
    reloaded = load_toolkit_checkpoint(run.path / "last.pth").model
    assert count_params(reloaded) == results(filter_run)["after"]["params"]


# ------------------------------------------------------------------------------------------- filter: VGG-16-bn


@pytest.fixture(scope="module")
def vgg_runs(work: Path) -> dict[str, Run]:
    """The shipped Li et al. VGG-16 spec on an untrained checkpoint, without retraining, for both strategies."""
    checkpoint = save_checkpoint(work / "vgg16_bn.pth", "vgg16_bn_cifar")
    spec = json.loads(VGG_JSON.read_text())
    config = write_config(work / "vgg.json", **{
        **spec, "data": cifar(work / "data"), "model": {**spec["model"], "checkpoint": str(checkpoint)},
        "prune": {**spec["prune"], "latency": False}, "retrain": {**spec["retrain"], "epochs": 0},
        "output": {"dir": str(work / "runs")}})
    return {strategy: succeeded(run_script(PRUNER, "--json", str(config), "--set", f"prune.strategy={strategy}",
                                           cwd=work))
            for strategy in ("independent", "greedy")}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["independent", "greedy"])
def test_vgg16_li_et_al_table1_counts(vgg_runs: dict[str, Run], strategy: str) -> None:
    """Li et al. Table 1, VGG-16 pruned-A: 1.5e7 -> 5.4e6 parameters, 3.13e8 -> 2.06e8 FLOPs."""
    run = vgg_runs[strategy]
    assert run.path is not None
    res = results(run)
    assert res["strategy"] == strategy
    assert (res["before"]["params"], res["after"]["params"]) == (14_987_722, 5_397_034)
    assert (res["before"]["macs"], res["after"]["macs"]) == (313_463_808, 206_279_680)
    assert res["widths"] == {"conv1": [64, 32], **{f"conv{i}": [512, 256] for i in range(8, 14)}}
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "metrics.jsonl", "pruned.pth", "results.json",
                                                         "results.md"]  # retrain.epochs 0: no last/best
    pruned = load_toolkit_checkpoint(run.path / "pruned.pth").model
    assert count_params(pruned) == 5_397_034 and hook_macs(pruned) == 206_279_680
    assert "Epoch 0." not in run.stdout and res["average_top1_last_epochs"] is None
    assert res["after"]["top1"] == res["pruned_before_retraining"]["top1"]
    # prune.latency false: no timing, and no latency in the report
    assert "latency_ms" not in res["before"] and "latency_ms" not in res["reduction_percent"]
    assert "| latency" not in (run.path / "results.md").read_text() and "| latency" not in run.stdout


@pytest.mark.slow
def test_vgg16_greedy_changes_which_filters_not_how_many(vgg_runs: dict[str, Run], work: Path) -> None:
    """Independent: each layer's smallest L1 norms. Greedy: conv9..conv13 leave out the kernels on the channels
    just removed from the layer before (Li et al. sec. 3.3); conv1 and conv8 follow unpruned layers, so agree."""
    removed = {strategy: results(run)["removed"] for strategy, run in vgg_runs.items()}
    state = load(work / "vgg16_bn.pth")["state_dict"]
    modules = conv_modules("vgg16_bn_cifar")
    for layer, gone in removed["independent"].items():
        weight = state[f"{modules[layer]}.weight"]
        assert gone == smallest_l1(weight, weight.shape[0] // 2), layer
    for i in (1, 8, *range(9, 14)):
        layer = f"conv{i}"
        weight = state[f"{modules[layer]}.weight"]
        before = removed["greedy"][f"conv{i - 1}"] if i >= 9 else []
        assert removed["greedy"][layer] == smallest_l1(weight, weight.shape[0] // 2, before), layer
    assert removed["greedy"]["conv1"] == removed["independent"]["conv1"]
    assert removed["greedy"]["conv8"] == removed["independent"]["conv8"]
    assert any(removed["greedy"][f"conv{i}"] != removed["independent"][f"conv{i}"] for i in range(9, 14))


# --------------------------------------------------------------------------------------------------- user errors


# id: (prune section, fragments the one error line must hold)
FILTER_ERRORS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "unknown_layer": ({"method": "filter", "layers": ["conv99"], "ratios": [0.5]},
                      ["prune.layers", "'conv99'", "conv1", "conv19", "layer1", "layer3.residual"]),
    "too_many_filters": ({"method": "filter", "layers": ["conv2"], "channels": [16]},
                         ["conv2 has 16 filters", "remove 16", "at most 15"]),
    "channels_and_ratios": ({"method": "filter", "layers": ["conv2"], "channels": [2], "ratios": [0.5]},
                            ["prune.channels", "prune.ratios", "exactly one", "both are set"]),
    "coupled_second_conv": ({"method": "filter", "layers": ["conv3"], "ratios": [0.5]},
                            ["conv3", "residual sum", "conv1, conv5, conv7", "layer1.residual"]),
    "sensitivity_unknown_skip": ({"method": "sensitivity", "skip": ["conv99"]},
                                 ["prune.skip", "conv99", ", ".join(R20_BLOCK_FIRST)]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FILTER_ERRORS))
def test_prune_spec_errors_are_one_line_exit_2_and_create_nothing(case: str, work: Path, tmp_path: Path) -> None:
    prune, fragments = FILTER_ERRORS[case]
    config = write_config(tmp_path / "error.json", name="filter_error", seed=0, data=cifar(work / "data"),
                          model={"arch": "resnet20", "checkpoint": str(work / "resnet20_b.pth")}, prune=prune,
                          retrain={"epochs": 1}, output={"dir": str(tmp_path / "runs")})
    before = snapshot(tmp_path)
    run = run_script(PRUNER, "--json", str(config), cwd=tmp_path)
    assert_user_error(run, *fragments)
    assert run.stdout == ""  # caught before the run starts: no evaluation, no "Run directory:"
    assert snapshot(tmp_path) == before and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------------- sensitivity


SENSITIVITY = {"method": "sensitivity", "sensitivity_ratios": [0.5, 0.25], "sensitivity_tolerance": 0.0}


@pytest.fixture(scope="module")
def sensitivity_run(work: Path) -> Run:
    config = resnet_config(work, "sensitivity.json", "sensitivity_resnet20", prune=SENSITIVITY)
    return succeeded(run_script(PRUNER, "--json", str(config), cwd=work))


def assert_sensitivity_outputs(run: Run, layers: list[str]) -> dict[str, Any]:
    """The json, csv and png of a sensitivity run agree with each other and with the rule for ``sensitive``."""
    assert run.path is not None
    res = results(run, "sensitivity.json")
    base = res["baseline"]["top1"]
    assert list(res["layers"]) == layers
    at = res["ratios"].index(res["checked_at"])
    expected = [n for n, c in res["layers"].items() if base - c["top1"][at] > res["tolerance"]]
    assert res["sensitive"] == expected
    assert f'Use them as "prune.skip": {expected}' in run.stdout

    with (run.path / "sensitivity.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["layer", "filters", "ratio", "filters_kept", "top1", "top5"]
    assert len(rows) == 1 + len(layers) * len(res["ratios"])
    expected_rows = [[layer, str(c["filters"]), str(ratio), str(c["kept"][i]), f"{c['top1'][i]:.4f}",
                      f"{c['top5'][i]:.4f}"]
                     for layer, c in res["layers"].items() for i, ratio in enumerate(res["ratios"])]
    assert rows[1:] == expected_rows

    png = (run.path / "sensitivity.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and min(image.size) >= 100
    logged = [m for m in run.metrics() if m.get("phase") == "sensitivity"]
    assert [(m["layer"], m["ratio"], m["top1"]) for m in logged] == [
        (layer, ratio, c["top1"][i]) for layer, c in res["layers"].items() for i, ratio in enumerate(res["ratios"])]
    return res


@pytest.mark.slow
def test_sensitivity_covers_every_block_first_conv(sensitivity_run: Run, work: Path) -> None:
    res = assert_sensitivity_outputs(sensitivity_run, R20_BLOCK_FIRST)
    assert res["ratios"] == [0.25, 0.5]  # sorted
    assert res["tolerance"] == 0.0 and res["checked_at"] == 0.5  # sensitivity_at defaults to 0.5
    state = load(work / "resnet20_b.pth")["state_dict"]
    modules = conv_modules("resnet20", **RESNET_OPTIONS)
    for layer, c in res["layers"].items():
        n = state[f"{modules[layer]}.weight"].shape[0]
        assert c["filters"] == n and c["kept"] == [n - -(-n // 4), n // 2], layer  # ceil(r * n) go
        assert len(c["top1"]) == len(c["top5"]) == 2
        assert all(0 <= a <= b <= 100 for a, b in zip(c["top1"], c["top5"], strict=True))


@pytest.mark.slow
def test_sensitivity_point_equals_a_physically_pruned_model(sensitivity_run: Run, work: Path) -> None:
    """One point of the sweep, recomputed: prune the layer for real and evaluate."""
    from pruning import prune_filters
    from utils.train.engine import evaluate

    res = results(sensitivity_run, "sensitivity.json")
    original = load_toolkit_checkpoint(work / "resnet20_b.pth").model
    loader = cifar_test_loader(work / "data")
    for layer in ("conv2", "conv18"):
        model = copy.deepcopy(original)
        prune_filters(model, layers=[layer], ratios=[0.5], example_input=torch.zeros(1, 3, 32, 32))
        stats = evaluate(model, loader, nn.CrossEntropyLoss(), torch.device("cpu"))
        assert stats["top1"] == pytest.approx(res["layers"][layer]["top1"][1], abs=1e-9), layer
    base = evaluate(original, loader, nn.CrossEntropyLoss(), torch.device("cpu"))
    assert base["top1"] == res["baseline"]["top1"]


@pytest.mark.slow
def test_sensitivity_skip_leaves_a_layer_out(work: Path) -> None:
    config = resnet_config(work, "sensitivity_skip.json", "sensitivity_skip", prune={**SENSITIVITY, "skip": ["conv2"]})
    run = succeeded(run_script(PRUNER, "--json", str(config), cwd=work))
    assert_sensitivity_outputs(run, R20_BLOCK_FIRST[1:])
    assert "conv2:" not in run.stdout


# --------------------------------------------------------------------------------------------------- shared data


def akamaster_config(shared: Any, folder: Path, name: str, prune: dict[str, Any]) -> Path:
    """akamaster's ResNet-20 (shortcut A, ImageNet mean/std) on the 1,017 lossless CIFAR-10 test images."""
    return write_config(
        folder / f"{name}.json", name=name, seed=0,
        data={"name": "imagefolder", "root": str(shared("cifar10-lossless-subset")), "image_size": 32,
              **IMAGENET_MEAN_STD, "batch_size": 256, "workers": 0},
        model={"arch": "resnet20", "shortcut": "A",
               "checkpoint": str(shared("weights", "cifar10", "akamaster_resnet20-12fca82f.th"))},
        prune=prune, output={"dir": str(folder / "runs")})


@pytest.mark.slow
def test_shared_akamaster_resnet20_sensitivity(shared: Any, tmp_path: Path) -> None:
    config = akamaster_config(shared, tmp_path, "aka20_sensitivity",
                              {"method": "sensitivity", "sensitivity_ratios": [0.3, 0.9]})
    run = succeeded(run_script(PRUNER, "--json", str(config), cwd=tmp_path))
    res = assert_sensitivity_outputs(run, R20_BLOCK_FIRST)
    base = res["baseline"]["top1"]
    assert base == pytest.approx(91.64, abs=0.1)  # the data README's number for this checkpoint
    for layer, c in res["layers"].items():
        assert c["top1"][1] < base, layer  # removing 90% of any layer's filters hurts
        assert c["top1"][0] > c["top1"][1], layer  # and hurts more than removing 30%


@pytest.mark.slow
def test_shared_akamaster_resnet20_filter_prune_a_style(shared: Any, tmp_path: Path) -> None:
    config = akamaster_config(shared, tmp_path, "aka20_filter",
                              {"method": "filter", "layers": ["layer1", "layer2", "layer3"], "ratios": [0.1],
                               "latency": False})
    run = succeeded(run_script(PRUNER, "--json", str(config), cwd=tmp_path))
    res = results(run)
    assert res["before"]["top1"] == pytest.approx(91.64, abs=0.1)
    assert res["widths"] == {f"conv{i}": [n, n - -(-n // 10)]
                             for i, n in zip(range(2, 19, 2), [16] * 3 + [32] * 3 + [64] * 3, strict=True)}
    assert res["reduction_percent"]["macs"] > 10 and res["reduction_percent"]["params"] > 10
    # Without retraining, 10% of every block-first conv costs a few points (measured: 91.64 -> 86.04).
    assert res["before"]["top1"] - 8 < res["after"]["top1"] < res["before"]["top1"]
    assert res["average_top1_last_epochs"] is None and "Epoch 0." not in run.stdout
