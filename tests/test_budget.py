"""Pruning to a budget (pruning/budget.py): the pruned model meets a MACs or parameter target within 1% with both
allocations, on several architectures; no group loses more than max_ratio; the mistakes are one line each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_runner import PRUNER, run_script, succeeded, write_config

from models import get_model
from models.sources import build_arch
from pruning.budget import plan_to_target
from pruning.filter import FilterSpec, remove_filters, select_filters
from utils.app.pruner_main import prepare_pruning
from utils.config.validate import from_dict
from utils.core.errors import UserError
from utils.report.profile import count_macs, count_params

CASES = [  # (arch, options, cost, allocation, target)
    ("resnet20", {"shortcut": "B"}, "macs", "global", 0.5),
    ("resnet20", {"shortcut": "B"}, "macs", "uniform", 0.6),
    ("vgg16_bn_cifar", {}, "params", "uniform", 0.3),
    ("torchvision:mobilenet_v3_small", {"num_classes": 10}, "params", "global", 0.5),
]


@pytest.mark.parametrize(("arch", "options", "kind", "allocation", "target"), CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_the_target_is_met_within_one_percent(arch: str, options: dict, kind: str, allocation: str,
                                              target: float) -> None:
    torch.manual_seed(0)
    model = build_arch(arch, options).model.eval()
    x = torch.zeros(1, 3, 32, 32)
    cost = count_params if kind == "params" else (lambda m: count_macs(m, (3, 32, 32)))
    plan, before, after = plan_to_target(model, target=target, cost=cost, allocation=allocation, max_ratio=0.8,
                                         example_input=x)
    assert target - 0.01 <= after / before <= target
    remove_filters(model, plan, select_filters(model, plan))
    assert cost(model) == after  # the model the plan builds costs what the search counted
    for index, (_, count) in plan.groups.items():
        assert count <= int(0.8 * plan.graph.groups[index].channels)


def test_skip_leaves_a_layer_whole_and_global_ranks_on_each_layers_own_scale() -> None:
    model = get_model("resnet20", shortcut="B").eval()
    with torch.no_grad():
        model.layer1[0].conv1.weight.mul_(100.0)  # one layer's weights on another scale: normalised away
    plan, _, _ = plan_to_target(model, target=0.7, cost=count_params, spec=FilterSpec(skip=["layer2"]),
                                example_input=torch.zeros(1, 3, 32, 32))
    planned = {layer for layers, _ in plan.groups.values() for layer in layers}
    assert not planned & {"conv8", "conv10", "conv12"}  # layer2's block-first convs
    assert "conv2" in planned  # the scaled layer still gives channels: it competes with its own mean


def test_bad_targets_are_one_line() -> None:
    model = get_model("resnet20", shortcut="B").eval()
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(UserError, match=r"prune.target: expected a fraction in \(0, 1\)"):
        plan_to_target(model, target=1.5, cost=count_params, example_input=x)
    with pytest.raises(UserError, match=r"prune.allocation: expected one of uniform, global, sensitivity"):
        plan_to_target(model, target=0.5, cost=count_params, allocation="hessian", example_input=x)
    with pytest.raises(UserError, match=r"prune.allocation: sensitivity needs the curves of a sensitivity run"):
        plan_to_target(model, target=0.5, cost=count_params, allocation="sensitivity", example_input=x)
    with pytest.raises(UserError, match=r"prune.target: 0.01 of the model's cost cannot be reached with "
                                        r"prune.max_ratio 0.5"):
        plan_to_target(model, target=0.01, cost=count_params, max_ratio=0.5, example_input=x)


def test_prune_target_in_the_experiment_file_reaches_the_pruned_model(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = from_dict({"name": "t", "model": {"arch": "resnet20", "shortcut": "B"},
                     "prune": {"method": "filter", "target": {"macs": 0.6}, "allocation": "uniform",
                               "skip": ["conv2"]}})
    model = get_model("resnet20", shortcut="B").eval()
    x = torch.zeros(1, 3, 32, 32)
    pruned, outcome = prepare_pruning(cfg, model, x)
    reached = count_macs(pruned, (3, 32, 32)) / count_macs(model, (3, 32, 32))
    assert 0.59 <= reached <= 0.6 and "conv2" not in outcome.widths
    assert f"({reached:.4f})" in capsys.readouterr().out  # what it reached is printed
    with pytest.raises(UserError, match=r"prune.ratios: prune.target decides how many filters each layer gives"):
        from_dict({"name": "t", "model": {"arch": "resnet20"},
                   "prune": {"method": "filter", "target": {"params": 0.5}, "ratios": [0.3]}})


@pytest.mark.slow
def test_from_scratch_prunes_a_fresh_model_and_trains_it(tmp_path: Path) -> None:
    """Liu et al. 2019's baseline: no checkpoint, prune.from_scratch; the pruned architecture is trained, not the
    original's weights fine-tuned. Without the key the same file is refused (tests/test_bad_inputs.py)."""
    config = write_config(tmp_path / "scratch.json", name="scratch", seed=0,
                          data={"name": "digits", "batch_size": 64, "workers": 0},
                          model={"arch": "resnet20", "shortcut": "B"},
                          prune={"method": "filter", "target": {"params": 0.5}, "from_scratch": True,
                                 "latency": False},
                          # at lr 0.05 the one epoch reaches 46% on the training batches but tests at chance (loss
                          # 40: the BatchNorm running statistics trail weights that move that fast)
                          retrain={"epochs": 1, "lr": 0.02, "schedule": "constant"},
                          output={"dir": str(tmp_path / "runs")})
    run = succeeded(run_script(PRUNER, "--json", str(config), cwd=tmp_path))
    results = json.loads((tmp_path / "runs" / "scratch" / "results.json").read_text())
    assert 0.49 <= results["after"]["params"] / results["before"]["params"] <= 0.5
    assert results["after"]["top1"] > results["pruned_before_retraining"]["top1"] + 10  # trained, from chance
    assert "prune.target: params 0.5" in run.stdout


def _sensitivity_file(path: Path, layers: dict[str, tuple[int, float]]) -> Path:
    """A sensitivity.json as a sensitivity run writes it: ``{layer: (filters, top-1 lost per unit of ratio)}``."""
    ratios = [0.1, 0.3, 0.5, 0.7, 0.9]
    curves = {layer: {"filters": filters, "top1": [90.0 - slope * r for r in ratios]}
              for layer, (filters, slope) in layers.items()}
    path.write_text(json.dumps({"baseline": {"top1": 90.0}, "ratios": ratios, "layers": curves}), encoding="utf-8")
    return path


def test_sensitivity_allocation_takes_most_from_the_least_sensitive_layers(tmp_path: Path) -> None:
    # Synthetic curves (the allocation is what is tested, not a measurement): conv2 loses nothing however much it
    # loses, conv4 a lot; the other block-first convs of resnet20 in between.
    layers = {f"conv{i}": (16 if i <= 6 else 32 if i <= 12 else 64, 10.0) for i in range(2, 19, 2)}
    layers["conv2"], layers["conv4"] = (16, 0.0), (16, 60.0)
    path = _sensitivity_file(tmp_path / "sensitivity.json", layers)
    cfg = from_dict({"name": "t", "model": {"arch": "resnet20"},
                     "prune": {"method": "filter", "target": {"params": 0.8}, "allocation": "sensitivity",
                               "sensitivity_file": str(path)}})
    model = get_model("resnet20").eval()
    pruned, outcome = prepare_pruning(cfg, model, torch.zeros(1, 3, 32, 32))
    assert 0.79 <= count_params(pruned) / count_params(model) <= 0.8
    lost = {layer: 1 - after / before for layer, (before, after) in outcome.widths.items()}
    assert lost["conv2"] >= lost["conv6"] >= lost.get("conv4", 0.0) and lost["conv2"] > lost.get("conv4", 0.0)

    other = _sensitivity_file(tmp_path / "other.json", {"conv2": (64, 1.0)})
    for file, message in ((other, r"conv2 had 64 filters in the sensitivity run and has 16 in this model"),
                          (tmp_path / "none.json", r"none.json does not exist; run prune.method sensitivity")):
        bad = from_dict({"name": "t", "model": {"arch": "resnet20"},
                         "prune": {"method": "filter", "target": {"params": 0.8}, "allocation": "sensitivity",
                                   "sensitivity_file": str(file)}})
        with pytest.raises(UserError, match=message):
            prepare_pruning(bad, model, torch.zeros(1, 3, 32, 32))
