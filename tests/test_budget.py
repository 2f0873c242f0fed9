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
    with pytest.raises(UserError, match=r"prune.allocation: expected one of uniform, global"):
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
                          retrain={"epochs": 1, "lr": 0.05, "schedule": "constant"},
                          output={"dir": str(tmp_path / "runs")})
    run = succeeded(run_script(PRUNER, "--json", str(config), cwd=tmp_path))
    results = json.loads((tmp_path / "runs" / "scratch" / "results.json").read_text())
    assert 0.49 <= results["after"]["params"] / results["before"]["params"] <= 0.5
    assert results["after"]["top1"] > results["pruned_before_retraining"]["top1"] + 10  # trained, from chance
    assert "prune.target: params 0.5" in run.stdout
