"""``pruner_exp.py --dry-run``: the plan of a pruning run, without data and without trained weights.

The numbers must be the real run's: the plan of Li et al.'s ResNet-56 pruned-B gives the README's parameters and MACs
with no data folder and no checkpoint; a MobileNetV3 planned with a glob has the parameters and MACs of the model the
run's own code (``prepare_pruning``) prunes; with a checkpoint of this tool even the removed filters are the run's.
A spec the run refuses is refused with the same line. Everything runs in-process but one script run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_runner import PRUNER, REPO, run_script, snapshot, succeeded, write_config

import pruner_exp
from models import build_arch
from pruning.weight import prunable_weights
from utils.app.cli import run_main
from utils.app.dry_run import PLAN_KIND, dry_run, make_plan
from utils.app.pruner_main import prepare_pruning
from utils.checkpoint.format import make_checkpoint
from utils.checkpoint.load import load_toolkit_checkpoint
from utils.config.validate import from_dict, load_config
from utils.core.errors import UserError
from utils.report.profile import count_macs, count_params

PRUNED_B = REPO / "experiments" / "prune" / "cifar10_filter_prune_resnet56_pruned_b.json"


def _cfg(tmp_path: Path, arch: str, prune: dict[str, Any], **model: Any) -> Any:
    return from_dict({"name": "plan", "data": {"name": "cifar10", "root": str(tmp_path / "no-data")},
                      "model": {"arch": arch, **model}, "prune": prune, "output": {"dir": str(tmp_path / "out")}})


def _error(call: Any) -> str:
    with pytest.raises(UserError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("checkpoint", ["missing", "unset"])
def test_resnet56_pruned_b_gives_the_papers_numbers_without_data_or_checkpoint(
        checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "checkpoints" / "best.pth"
    cfg = load_config(PRUNED_B, [f"data.root={tmp_path / 'no-data'}", f"output.dir={tmp_path / 'out'}",
                                 f"model.checkpoint={missing}" if checkpoint == "missing" else "model.checkpoint=null"])
    assert dry_run(cfg) == 0
    out = capsys.readouterr().out
    plan_file = tmp_path / "out" / f"{cfg.name}.plan.json"
    assert [p.name for p in tmp_path.rglob("*")] == ["out", plan_file.name]  # no data, no run directory
    plan = json.loads(plan_file.read_text())
    assert plan["kind"] == PLAN_KIND and plan["arch"] == "resnet56" and plan["input_size"] == [3, 32, 32]
    assert plan["params"] == {"before": 853_018, "after": 735_712, "reduction_percent": pytest.approx(13.75, abs=0.01)}
    assert plan["macs"] == {"before": 125_485_696, "after": 90_907_264,
                            "reduction_percent": pytest.approx(27.56, abs=0.01)}
    widths = {row["layer"]: (row["before"], row["after"]) for row in plan["layers"]}
    skipped = {"conv16", "conv18", "conv20", "conv34", "conv38", "conv54"}
    stage = {f"conv{2 * i}": (16, 6) if i <= 9 else (32, 22) if i <= 18 else (64, 57) for i in range(1, 28)}
    assert widths == {layer: w for layer, w in stage.items() if layer not in skipped}
    assert all("removed" not in row for row in plan["layers"])  # random weights: which filters go means nothing
    status = {layer: row["status"] for row in plan["groups"] for layer in row["layers"]}
    assert {layer for layer, s in status.items() if s == "skipped"} == skipped
    assert status["conv3"] == status["fc"] == "blocked"  # option-A residual sums, the logits
    note = "does not exist (yet)" if checkpoint == "missing" else "neither model.checkpoint nor model.pretrained"
    assert any(note in n for n in plan["notes"])
    assert "Parameters: 853,018 -> 735,712 (-13.8%)\nMACs (one 3x32x32 input): 125,485,696 -> 90,907,264 (-27.6%)\n" \
        in out
    assert "conv2   layer1.0.conv1  16 -> 6\n" in out and f"Plan written to {plan_file}" in out


def test_mobilenet_v3_plan_equals_the_model_the_run_prunes(tmp_path: Path) -> None:
    prune = {"method": "filter", "layers": ["features.*"], "ratios": [0.3]}
    cfg = _cfg(tmp_path, "torchvision:mobilenet_v3_small", prune, num_classes=10, input_size=[3, 96, 96])
    plan = make_plan(cfg)
    model = build_arch("torchvision:mobilenet_v3_small", {"num_classes": 10}).model
    size = (3, 96, 96)
    pruned, outcome = prepare_pruning(cfg, model, torch.zeros(1, *size))  # what pruner_exp.py's run does
    assert plan["params"]["before"] == count_params(model) and plan["macs"]["before"] == count_macs(model, size)
    assert plan["params"]["after"] == count_params(pruned) < count_params(model)
    assert plan["macs"]["after"] == count_macs(pruned, size)
    assert {row["layer"]: [row["before"], row["after"]] for row in plan["layers"]} == \
        {layer: list(w) for layer, w in outcome.widths.items()}
    others = {row["status"] for row in plan["groups"] if row["status"] != "planned"}
    assert others == {"prunable", "blocked"}  # classifier.0 may go too; the logits may not


def test_with_a_checkpoint_of_this_tool_the_removed_filters_are_the_runs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_arch("resnet20", {"num_classes": 10, "shortcut": "B"}).model
    path = tmp_path / "best.pth"
    arch = {"name": "resnet20", "options": {"num_classes": 10, "shortcut": "B"}}
    torch.save(make_checkpoint(model=model, arch=arch, config={}), path)
    prune = {"method": "filter", "layers": ["layer1", "layer2.residual"], "ratios": [0.5, 0.25], "strategy": "greedy"}
    cfg = _cfg(tmp_path, "resnet20", prune, checkpoint=str(path))
    plan = make_plan(cfg)
    _, outcome = prepare_pruning(cfg, load_toolkit_checkpoint(path).model, torch.zeros(1, 3, 32, 32))
    assert plan["weights"] == str(path)
    assert {row["layer"]: row["removed"] for row in plan["layers"]} == outcome.removed
    assert len(outcome.removed) == 3 + 4  # three block-first convs, and stage 2's residual sum with its projection


@pytest.mark.parametrize(("layers", "amount"), [
    (["conv99"], {"channels": [1]}),  # an unknown layer
    (["conv2"], {"channels": [16]}),  # every filter of it
    (["conv2"], {"ratios": [0.97]}),  # a ratio that leaves none
    (["conv3"], {"channels": [2]}),  # a residual conv alone
])
def test_a_spec_the_run_refuses_is_refused_with_the_same_line(layers: list[str], amount: dict[str, Any],
                                                              tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "resnet20", {"method": "filter", "layers": layers, **amount}, shortcut="B")
    model = build_arch("resnet20", {"num_classes": 10, "shortcut": "B"}).model
    assert _error(lambda: make_plan(cfg)) == _error(lambda: prepare_pruning(cfg, model, torch.zeros(1, 3, 32, 32)))


def test_a_refused_spec_is_one_line_and_exit_2_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "e.json", name="e", model={"arch": "resnet20"}, output={"dir": str(tmp_path)},
                          prune={"method": "filter", "layers": ["conv2"], "channels": [16]})
    monkeypatch.setattr(sys, "argv", ["pruner_exp.py", "--json", str(config), "--dry-run"])
    with pytest.raises(SystemExit) as info:
        run_main(pruner_exp.cli)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: conv2 has 16 filters; prune.channels asks to remove 16, at most 15 can go\n"
    assert [p.name for p in tmp_path.iterdir()] == ["e.json"]


def test_weight_pruning_plan_counts_what_each_percent_zeroes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "resnet20", {"method": "weight", "percent": [0.3, 0.9]})
    plan = make_plan(cfg)
    weights = prunable_weights(build_arch("resnet20", {}).model)
    n = {kind: sum(w.numel() for k, w in weights.values() if k == kind) for kind in ("conv", "fc")}
    assert plan["prunable"] == n and plan["params"] == 269_722
    for row, percent in zip(plan["percent"], (0.3, 0.9), strict=True):  # k = round(p * n) per layer type
        assert row["zeroed"] == {kind: round(percent * count) for kind, count in n.items()}
        assert row["nonzero_params"]["after"] == 269_722 - sum(row["zeroed"].values())


def test_sensitivity_is_refused_and_only_an_earlier_plan_is_replaced(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "resnet20", {"method": "sensitivity"})
    assert "--dry-run plans filter and weight pruning" in _error(lambda: dry_run(cfg))
    cfg = _cfg(tmp_path, "resnet20", {"method": "weight", "percent": [0.5]})
    other = tmp_path / "results.json"
    other.write_text('{"name": "a real run"}')
    assert "is not a plan of --dry-run" in _error(lambda: dry_run(cfg, plan_out=str(other)))
    assert other.read_text() == '{"name": "a real run"}'
    assert "is a folder" in _error(lambda: dry_run(cfg, plan_out=str(tmp_path)))
    earlier = tmp_path / "p.json"
    earlier.write_text(json.dumps({"kind": PLAN_KIND}))
    assert dry_run(cfg, plan_out=str(earlier)) == 0 and json.loads(earlier.read_text())["method"] == "weight"


def test_the_script_plans_without_data_or_weights(tmp_path: Path) -> None:
    config = write_config(tmp_path / "plan.json", name="mine", data={"name": "cifar10", "root": "missing"},
                          model={"arch": "resnet20", "shortcut": "B"},
                          prune={"method": "filter", "layers": ["layer1"], "ratios": [0.5]})
    before = snapshot(tmp_path)
    run = succeeded(run_script(PRUNER, "--json", str(config), "--dry-run", "--plan-out", "plans/p.json",
                               cwd=tmp_path))
    assert set(snapshot(tmp_path)) - set(before) == {"plans", "plans/p.json"}
    plan = json.loads((tmp_path / "plans" / "p.json").read_text())
    lines = run.stdout.splitlines()
    assert lines[-1] == "Plan written to plans/p.json (no run directory made, nothing else written)"
    assert lines[-3] == f"Parameters: 272,474 -> {plan['params']['after']:,} " \
                        f"({-plan['params']['reduction_percent']:+.1f}%)"
    assert [(r["layer"], r["before"], r["after"]) for r in plan["layers"]] == [(f"conv{i}", 16, 8) for i in (2, 4, 6)]
