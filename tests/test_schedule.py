"""Pruning schedules (``prune.schedule``): one-shot, iterative rounds and gradual (AGP) pruning.

* The maths of :mod:`pruning.schedule` against the formulas written out by hand.
* Weight pruning: every round reaches exactly its scheduled sparsity, masks only grow (even when a kept weight is
  exactly zero), and AGP through :func:`utils.train.fit.fit` keeps every masked weight at zero after every step
  and ends at the final sparsity with the momentum cleared where it prunes.
* Filter pruning: zeroing channels with :func:`pruning.filter.filter_masks` computes exactly what removing them
  computes, for a residual group, a linear consumer and depthwise convs; gradual selections only grow.
* End to end through ``pruner_exp.py``: an iterative weight sweep and AGP, each also stopped and resumed (the same
  weights as the run never stopped), iterative and AGP filter pruning (widths per round, the final model
  physically smaller and equal to the masked one), and the errors a schedule can raise before any work.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_data import write_cifar
from test_filter_pruning import _build, _example, _size, _spread
from test_interrupt import Stopped, step_line
from test_runner import EVAL_LINE, PRUNER, TRAINER, cifar, load, run_script, snapshot, succeeded, write_config
from torch import nn

from pruning import analyse, apply_masks, compute_masks, layer_names, prunable_weights, prune_weights
from pruning.filter import filter_masks, masked_filters, plan_filters, remove_filters, select_filters
from pruning.masks import MaskKeeper
from pruning.schedule import (
    agp_plan,
    cubic_fraction,
    epochs_per_round,
    round_ratios,
    scheduled_count,
    sparsity_at,
)
from pruning.weight import prune_weights_further
from utils.checkpoint.load import load_toolkit_checkpoint
from utils.config.validate import from_dict
from utils.core.errors import UserError
from utils.core.rundir import RunDir

# ---------------------------------------------------------------------------------------------------- the maths


def test_cubic_ramp_follows_zhu_and_gupta() -> None:
    for t in range(11):
        assert sparsity_at(0.8, t, 10) == pytest.approx(0.8 + (0.0 - 0.8) * (1 - t / 10) ** 3, abs=1e-15)
    assert sparsity_at(0.9, 3, 10, initial=0.5) == pytest.approx(0.9 + (0.5 - 0.9) * 0.7**3)
    assert cubic_fraction(0, 7) == 0.0 and cubic_fraction(7, 7) == 1.0  # exact at both ends
    assert cubic_fraction(-1, 7) == 0.0 and cubic_fraction(9, 7) == 1.0
    values = [cubic_fraction(t, 50) for t in range(51)]
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert all(s > 0 for s in steps) and steps == sorted(steps, reverse=True)  # fast first, slow near the target


def test_round_ratios_end_exactly_at_the_target() -> None:
    assert round_ratios(0.8, 4) == [0.4625, 0.7, 0.7875, 0.8]
    assert round_ratios(0.8, 1) == [0.8]
    assert round_ratios(0.5, 2) == [0.4375, 0.5]
    for rounds in range(1, 9):
        ratios = round_ratios(0.93, rounds)
        assert ratios[-1] == 0.93 and ratios == sorted(ratios) and len(set(ratios)) == rounds


def test_scheduled_counts_grow_to_the_one_shot_count() -> None:
    assert [scheduled_count(8, i, 4) for i in range(5)] == [0, 5, 7, 8, 8]  # ceil(8 * (1 - (1 - i/4)^3))
    assert [scheduled_count(8, i, 2) for i in range(3)] == [0, 7, 8]  # 0.875 * 8 = 7 exactly, not 8
    for final in range(40):
        counts = [scheduled_count(final, k, 12) for k in range(13)]
        assert counts[0] == 0 and counts[-1] == final and counts == sorted(counts)
        assert all(c == math.ceil(cubic_fraction(k, 12) * final - 1e-9) for k, c in enumerate(counts))


def test_epochs_split_evenly_over_rounds() -> None:
    assert epochs_per_round(8, 4) == 2 and epochs_per_round(3, 1) == 3
    with pytest.raises(UserError, match=r"retrain.epochs 6 .* 4 rounds .* set retrain.epochs to 4 or 8"):
        epochs_per_round(6, 4)
    with pytest.raises(UserError, match=r"set retrain.epochs to 4,"):
        epochs_per_round(3, 4)
    with pytest.raises(UserError, match=r"every round retrains"):
        epochs_per_round(0, 4)


def test_agp_plan_prunes_every_frequency_steps_and_reaches_the_target() -> None:
    plan = agp_plan(0.8, epochs=4, steps_per_epoch=40, frequency=10, end=0.75)
    assert (plan.steps, plan.last_step, plan.total_steps) == (12, 120, 160)
    assert [s for s in range(161) if plan.pruning_step(s) is not None] == list(range(10, 121, 10))
    assert plan.pruning_step(30) == 3 and plan.pruning_step(35) is None and plan.pruning_step(130) is None
    assert plan.ratio_at(0) == 0.0 and plan.ratio_at(9) == 0.0
    assert plan.ratio_at(10) == pytest.approx(0.8 * (1 - (11 / 12) ** 3))
    assert plan.ratio_at(15) == plan.ratio_at(10)  # between pruning steps the sparsity holds
    assert plan.ratio_at(120) == 0.8 and plan.ratio_at(160) == 0.8
    assert plan.first_epoch_at_final(40) == 2  # epoch 2 ends at step 120, the last pruning step
    uneven = agp_plan(0.5, epochs=2, steps_per_epoch=5, frequency=3, end=0.75)  # ramp 7 steps: pruning at 3, 6
    assert (uneven.steps, uneven.last_step) == (2, 6) and uneven.ratio_at(6) == 0.5
    with pytest.raises(UserError, match=r"prune.frequency 50 leaves no pruning step.*at most 30"):
        agp_plan(0.8, epochs=1, steps_per_epoch=40, frequency=50, end=0.75)


@pytest.mark.parametrize(("prune", "retrain", "message"), [
    ({"schedule": "iterative"}, {}, 'prune.schedule: "iterative" needs retraining, but retrain.epochs is 0'),
    ({"schedule": "agp"}, {"epochs": 0}, 'prune.schedule: "agp" needs retraining'),
    ({"schedule": "iterative", "rounds": 4}, {"epochs": 6}, "retrain.epochs: 6 is the total retraining budget"),
    ({"schedule": "iterative", "method": "sensitivity"}, {"epochs": 4},
     'prune.schedule: "iterative" prunes and retrains; prune.method "sensitivity" only'),
    ({"schedule": "gradual"}, {}, 'prune.schedule: expected one of "one_shot", "iterative", "agp"'),
    ({"rounds": 0}, {}, "prune.rounds: expected a positive integer"),
    ({"agp_end": 1.5}, {}, "prune.agp_end: expected a number in (0, 1]"),
])
def test_schedule_config_errors(prune: dict[str, Any], retrain: dict[str, Any], message: str) -> None:
    raw = {"name": "x", "model": {"arch": "resnet20"}, "prune": prune, "retrain": retrain}
    with pytest.raises(UserError) as error:
        from_dict(raw, source="s.json")
    assert str(error.value).startswith(f"s.json: {message}"), str(error.value)


def test_one_shot_files_may_carry_the_other_schedules_settings() -> None:
    """So one file runs all three schedules with ``--set prune.schedule=...`` and nothing else changed."""
    raw = {"name": "x", "model": {"arch": "resnet20"}, "retrain": {"epochs": 3},
           "prune": {"schedule": "one_shot", "rounds": 4, "frequency": 7, "agp_end": 0.5}}
    assert from_dict(raw).prune.rounds == 4


# ------------------------------------------------------------------------------------------------ weight pruning


def _kinds(model: nn.Module) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name, (kind, _) in prunable_weights(model).items():
        groups.setdefault(kind, []).append(name)
    return groups


def test_iterative_weight_masks_grow_and_reach_each_rounds_sparsity_exactly() -> None:
    torch.manual_seed(0)
    model = _build("resnet20")
    kinds = _kinds(model)
    gen = torch.Generator().manual_seed(1)
    masks = None
    for i, ratio in enumerate(round_ratios(0.8, 4)):
        if masks is None:
            outcome = prune_weights(model, percent=ratio, scope="layer_type")
        else:
            outcome = prune_weights_further(model, masks, percent=ratio, scope="layer_type")
            for name, mask in masks.items():
                assert not (mask < outcome.masks[name]).any(), f"round {i}: {name} revived a pruned weight"
        masks = outcome.masks
        params = dict(model.named_parameters())
        for kind, names in kinds.items():
            n = sum(params[name].numel() for name in names)
            pruned = sum(int((~masks[name]).sum()) for name in names)
            zeros = sum(int((params[name] == 0).sum()) for name in names)
            assert pruned == round(ratio * n) and zeros >= pruned, (i, kind)
        with torch.no_grad():  # "retraining": the kept weights move, one of them to exactly zero
            for name, mask in masks.items():
                params[name].add_(torch.randn(params[name].shape, generator=gen) * 0.01 * mask)
            first = next(iter(masks))
            params[first].view(-1)[masks[first].view(-1).nonzero()[0]] = 0.0
    with pytest.raises(ValueError, match="revive"):
        prune_weights_further(model, masks, percent=0.5, scope="layer_type")


def test_mask_keeper_update_zeroes_new_weights_and_their_momentum() -> None:
    torch.manual_seed(0)
    model = nn.Linear(20, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    keeper = MaskKeeper(model, compute_masks(model, 0.0, "layer").masks).attach(optimizer)
    x, y = torch.randn(32, 20), torch.randint(0, 10, (32,))
    for step in range(1, 13):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step % 4 == 0:  # a gradual schedule: more pruned every 4 steps
            outcome = prune_weights_further(model, keeper.masks, percent=step / 16, scope="layer")
            keeper.update(outcome.masks)
            buffer = optimizer.state[model.weight]["momentum_buffer"]
            assert not buffer[~outcome.masks["weight"]].any()  # no stale momentum where it pruned
        mask = keeper.masks["weight"]
        assert not model.weight[~mask].any() and int((~mask).sum()) == round((step // 4) * 4 / 16 * 200)
    keeper.detach()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


def test_agp_through_fit_holds_zeros_after_every_step_and_reaches_the_target(tmp_path: Path) -> None:
    from utils.config.schema import OptimConfig
    from utils.train.fit import Loaders, RunTarget, ScheduleHooks, fit

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(40, 3, 8, 8), torch.randint(0, 4, (40,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model = Tiny()
    plan = agp_plan(0.7, epochs=3, steps_per_epoch=len(loader), frequency=2, end=0.75)  # steps 2, 4, .., 10
    seen: list[tuple[int, int]] = []

    def on_step(step: int, masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        assert masks is not None
        for name, mask in masks.items():  # the optimizer step before this one left every masked weight at zero
            assert not dict(model.named_parameters())[name][~mask].any(), (step, name)
        if plan.pruning_step(step) is None:
            return None
        outcome = prune_weights_further(model, masks, percent=plan.ratio_at(step), scope="global")
        seen.append((step, sum(int((~m).sum()) for m in outcome.masks.values())))
        return outcome.masks

    result = fit(model, loaders=Loaders(train=loader, test=loader), optim=OptimConfig(epochs=3, lr=0.05),
                 device=torch.device("cpu"),
                 target=RunTarget(run=RunDir(tmp_path), arch={"name": "tiny", "options": {}}, config={}, seed=0),
                 masks=compute_masks(model, 0.0, "global").masks,
                 schedule=ScheduleHooks(on_step=on_step, best_after=plan.first_epoch_at_final(len(loader))))
    n = sum(p.numel() for _, p in prunable_weights(model).values())
    assert [s for s, _ in seen] == [2, 4, 6, 8, 10]
    counts = [c for _, c in seen]
    assert counts == sorted(counts) and counts[-1] == round(0.7 * n)
    assert result.masks is not None
    assert sum(int((~m).sum()) for m in result.masks.values()) == round(0.7 * n)
    last, best = load(tmp_path / "last.pth"), load(tmp_path / "best.pth")
    for name, mask in result.masks.items():
        assert torch.equal(last["masks"][name], mask) and torch.equal(best["masks"][name], mask)
        assert not last["state_dict"][name][~mask].any()
    assert best["epoch"] >= 2  # only epochs that end at the final sparsity (step 10 is in epoch 1 of 0..2)


# ------------------------------------------------------------------------------------------------ filter pruning


FILTER_CASES = [("resnet20", {"shortcut": "B"}, ["layer2.residual", "conv2"]),  # a residual group: 4 producers
                ("vgg16_bn_cifar", {}, None),  # the last conv feeds the linear layer
                ("tv_mobilenet_v2", {}, None)]  # depthwise convs and their BatchNorms carry the channels


@pytest.mark.parametrize(("name", "options", "layers"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_zeroed_filters_compute_what_removed_filters_compute(name: str, options: dict, layers: list[str] | None
                                                             ) -> None:
    model = _build(name, **options)
    example = _example(name)
    if layers is None:
        graph = analyse(model, example)
        names = layer_names(model, graph)
        layers = _spread([n for n in names.layers if graph.group_of(names.module(n)).prunable_alone])
    plan = plan_filters(model, layers=layers, ratios=[0.5], example_input=example)
    removed = select_filters(model, plan)
    masks = filter_masks(model, plan, removed)
    assert masked_filters(plan, masks) == removed
    masked, smaller = copy.deepcopy(model), copy.deepcopy(model)
    apply_masks(masked, masks)
    outcome = remove_filters(smaller, plan, removed)
    assert all(after < before for before, after in outcome.widths.values())
    x = torch.randn(4, 3, _size(name), _size(name), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - masked(x)).abs().max() > 1e-3  # the masks changed something
        assert (masked(x) - smaller(x)).abs().max().item() < 1e-4
        masked.train()  # batch statistics: the other channels' are the same
        smaller.train()
        torch.manual_seed(3)  # the same dropout in both (MobileNetV2's classifier)
        out_masked = masked(x)
        torch.manual_seed(3)
        assert (out_masked - smaller(x)).abs().max().item() < 1e-4


def test_gradual_filter_selection_keeps_what_it_masked() -> None:
    model = _build("resnet20")
    plan = plan_filters(model, layers=["layer1", "layer2"], ratios=[0.75], example_input=_example("resnet20"))
    finals = {index: count for index, (_, count) in plan.groups.items()}
    masks = filter_masks(model, plan, {})
    gen = torch.Generator().manual_seed(2)
    for k in range(1, 5):
        before = masked_filters(plan, masks)
        removed = select_filters(model, plan, counts={i: scheduled_count(c, k, 4) for i, c in finals.items()},
                                 first=before)
        for index, gone in removed.items():
            assert set(before[index]) <= set(gone) and len(gone) == scheduled_count(finals[index], k, 4)
        masks = filter_masks(model, plan, removed)
        apply_masks(model, masks)
        with torch.no_grad():  # training moves the kept filters; a kept one may be exactly zero
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)
            apply_masks(model, masks)
            first = min(plan.groups)
            conv = model.get_submodule(plan.graph.groups[first].producers[0])
            keep = [c for c in range(conv.out_channels) if c not in removed[first]]
            conv.weight[keep[0]] = 0.0
    assert {i: len(g) for i, g in masked_filters(plan, masks).items()} == finals


# ------------------------------------------------------------------------------------------- end to end (scripts)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny CIFAR-10 (80 training images: 5 steps of 16 per epoch) and an untrained ResNet-20 to prune."""
    from models import get_model
    from utils.checkpoint.format import make_checkpoint
    from utils.core.files import atomic_torch_save

    folder = tmp_path_factory.mktemp("schedule")
    write_cifar(folder / "data", per_batch=16, n_test=20)
    torch.manual_seed(0)
    for shortcut in ("A", "B"):
        model = get_model("resnet20", num_classes=10, shortcut=shortcut)
        arch = {"name": "resnet20", "options": {"num_classes": 10, "shortcut": shortcut}}
        atomic_torch_save(make_checkpoint(model=model, arch=arch, config={}), folder / f"resnet20{shortcut}.pth")
    return folder


def experiment(work: Path, name: str, *, shortcut: str = "A", **sections: Any) -> Path:
    data = {**cifar("data"), "batch_size": 16, "test_batch_size": 20}
    return write_config(work / f"{name}.json", name=name, seed=0, print_freq=1, data=data,
                        model={"arch": "resnet20", "checkpoint": f"resnet20{shortcut}.pth"}, output={"dir": "runs"},
                        **sections)


RETRAIN = {"epochs": 2, "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "constant"}
WEIGHT_ITERATIVE = {"method": "weight", "percent": [0.6], "schedule": "iterative", "rounds": 2}
WEIGHT_AGP = {"method": "weight", "percent": [0.7], "schedule": "agp", "frequency": 2, "agp_end": 0.75}


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load(a), load(b)
    assert x["epoch"] == y["epoch"] and "progress" not in y
    for key, tensor in x["state_dict"].items():
        assert torch.equal(tensor, y["state_dict"][key]), (a, key)
    for key, mask in (x["masks"] or {}).items():
        assert torch.equal(mask, y["masks"][key]), (a, key)


def assert_zeros(ckpt: dict[str, Any]) -> None:
    for name, mask in ckpt["masks"].items():
        assert not ckpt["state_dict"][name][~mask].any(), name


@pytest.fixture(scope="module")
def weight_iterative(work: Path) -> Path:
    run = succeeded(run_script(PRUNER, "--json", str(experiment(work, "witer", prune=WEIGHT_ITERATIVE,
                                                                retrain=RETRAIN)), cwd=work))
    assert run.path is not None
    return run.path


@pytest.mark.slow
def test_iterative_weight_sweep_records_every_round(weight_iterative: Path, work: Path) -> None:
    run = weight_iterative
    results = json.loads((run / "results.json").read_text())
    assert results["schedule"] == {"name": "iterative", "retrain_epochs": 2, "rounds": 2, "epochs_per_round": 1}
    [row] = results["rows"]
    assert [r["ratio"] for r in row["rounds"]] == [0.525, 0.6]  # 0.6 * (1 - 0.5^3), then the target
    weights = {name: w for name, w in load(work / "resnet20A.pth")["state_dict"].items()
               if name.endswith("weight") and w.ndim in (2, 4)}
    n = {kind: sum(w.numel() for w in weights.values() if (w.ndim == 4) == (kind == "conv")) for kind in ("conv", "fc")}
    for r in row["rounds"]:
        for kind in ("conv", "fc"):  # exactly the scheduled share of each layer type, after pruning and retraining
            assert r["sparsity"][kind] == round(r["ratio"] * n[kind]) / n[kind], (r["round"], kind)
    assert row["sparsity_finetuned"]["conv"] == round(0.6 * n["conv"]) / n["conv"]
    assert (row["top1"], row["top1_finetuned"]) == (row["rounds"][-1]["top1"], row["rounds"][-1]["top1_finetuned"])

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rounds = [m for m in metrics if m.get("phase") == "round"]
    assert [(m["round"], m["ratio"], m["top1"], m["top1_finetuned"]) for m in rounds] == [
        (r["round"], r["ratio"], r["top1"], r["top1_finetuned"]) for r in row["rounds"]]
    epochs = [m for m in metrics if "epoch" in m]
    assert [(m["round"], m["epoch"]) for m in epochs] == [(1, 0), (2, 0)]
    assert [m["test_top1"] for m in epochs] == [r["top1_finetuned"] for r in row["rounds"]]

    assert {p.name for p in (run / "p0.6").iterdir()} == {"round1", "pruned.pth", "last.pth", "best.pth"}
    assert {p.name for p in (run / "p0.6" / "round1").iterdir()} == {"pruned.pth", "last.pth", "best.pth"}
    first, final = load(run / "p0.6" / "round1" / "last.pth"), load(run / "p0.6" / "last.pth")
    assert_zeros(first)
    assert_zeros(final)
    for name, mask in first["masks"].items():  # round 2 kept what round 1 pruned pruned
        assert not (mask < final["masks"][name]).any(), name
    assert "| top1 (at the last pruning step) |" in (run / "results.md").read_text()
    assert "### Rounds of 0.6" in (run / "results.md").read_text()

    evaluated = succeeded(run_script(TRAINER, "--json", str(work / "witer.json"), "--evaluate", "--resume",
                                     str(run / "p0.6" / "last.pth"), cwd=work))
    match = EVAL_LINE.match(evaluated.stdout.splitlines()[-1])
    assert match is not None and float(match.group(2)) == round(row["top1_finetuned"], 4)


@pytest.mark.slow
def test_iterative_weight_run_stopped_in_round_2_resumes_exactly(weight_iterative: Path, work: Path) -> None:
    config = experiment(work, "witer", prune=WEIGHT_ITERATIVE, retrain=RETRAIN)
    stopped = Stopped([sys.executable, str(PRUNER), "--json", str(config)], work, step_line(0, 2, nth=2),
                      signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    run = work / "runs" / "witer-2"
    assert load(run / "p0.6" / "last.pth")["progress"]["step"] >= 2
    before = snapshot(run / "p0.6" / "round1")
    resumed = succeeded(run_script(PRUNER, *stopped.resume_argv()[2:], cwd=work))
    assert "Resuming runs/witer-2/p0.6/round1/last.pth at epoch 1" in resumed.stdout  # done: not retrained
    assert snapshot(run / "p0.6" / "round1")["last.pth"] == before["last.pth"]
    for file in ("round1/last.pth", "last.pth", "pruned.pth"):
        assert_same_weights(weight_iterative / "p0.6" / file, run / "p0.6" / file)
    rows = [json.loads((path / "results.json").read_text())["rows"][0] for path in (weight_iterative, run)]
    assert rows[0]["rounds"] == [{**r, "checkpoint": a["checkpoint"]} for r, a in zip(rows[1]["rounds"],
                                                                                     rows[0]["rounds"], strict=True)]


@pytest.mark.slow
def test_agp_weight_run_reaches_the_target_and_resumes_exactly(work: Path) -> None:
    config = experiment(work, "wagp", prune=WEIGHT_AGP, retrain=RETRAIN)
    whole = succeeded(run_script(PRUNER, "--json", str(config), cwd=work)).path
    assert whole is not None
    results = json.loads((whole / "results.json").read_text())
    [row] = results["rows"]
    assert row["agp"] == {"pruning_steps": 3, "frequency": 2, "last_step": 6, "total_steps": 10, "end": 0.75}
    agp = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    agp = [m for m in agp if m.get("phase") == "agp"]
    plan = agp_plan(0.7, epochs=2, steps_per_epoch=5, frequency=2, end=0.75)
    assert [(m["step"], m["ratio"]) for m in agp] == [(s, plan.ratio_at(s)) for s in (2, 4, 6)]
    last, pruned = load(whole / "p0.7" / "last.pth"), load(whole / "p0.7" / "pruned.pth")
    assert_zeros(last)
    n = {kind: sum(v["numel"] for v in row["sparsity"]["layers"].values() if v["kind"] == kind) for kind in ("conv",
                                                                                                            "fc")}
    for kind in ("conv", "fc"):
        assert row["sparsity"][kind] == row["sparsity_finetuned"][kind] == round(0.7 * n[kind]) / n[kind]
    assert pruned["metrics"]["step"] == 6 and pruned["metrics"]["top1"] == row["top1"]
    for name, mask in pruned["masks"].items():
        assert torch.equal(mask, last["masks"][name])  # the last pruning step's masks are the final ones
    assert load(whole / "p0.7" / "best.pth")["epoch"] == 2  # step 6 is in epoch 1: only its end is at 0.7

    stopped = Stopped([sys.executable, str(PRUNER), "--json", str(config)], work, step_line(0, 3), signal.SIGTERM)
    assert stopped.returncode == 143, stopped.stderr
    run = work / "runs" / "wagp-2"
    saved = load(run / "p0.7" / "last.pth")
    assert saved["epoch"] == 0 and 3 <= saved["progress"]["step"] < 5
    assert sum(int((~m).sum()) for m in saved["masks"].values()) > 0  # pruned once before it stopped
    succeeded(run_script(PRUNER, *stopped.resume_argv()[2:], cwd=work))
    for file in ("last.pth", "pruned.pth"):
        assert_same_weights(whole / "p0.7" / file, run / "p0.7" / file)


@pytest.mark.slow
def test_iterative_filter_run_removes_filters_round_by_round(work: Path) -> None:
    prune = {"method": "filter", "layers": ["layer1", "layer2.residual"], "ratios": [0.5, 0.25],
             "schedule": "iterative", "rounds": 2, "latency": False}
    run = succeeded(run_script(PRUNER, "--json", str(experiment(work, "fiter", shortcut="B", prune=prune,
                                                                retrain=RETRAIN)), cwd=work)).path
    assert run is not None
    results = json.loads((run / "results.json").read_text())
    # layer1's first convs: 16 -> 8 (ceil(0.5 * 16)), 7 of them in round 1 (ceil(0.875 * 8)); the residual
    # group of stage 2 (its second convs and the 1x1 shortcut): 32 -> 24, 7 in round 1.
    expected = [{"conv2": 9, "conv4": 9, "conv6": 9, "conv9": 25, "layer2.0.downsample.0": 25, "conv11": 25,
                 "conv13": 25}, {"conv2": 8, "conv4": 8, "conv6": 8, "conv9": 24, "layer2.0.downsample.0": 24,
                                 "conv11": 24, "conv13": 24}]
    assert [r["widths"] for r in results["rounds"]] == expected
    assert {k: v[1] for k, v in results["widths"].items()} == expected[-1]
    assert all(len(results["removed"][k]) == v[0] - v[1] for k, v in results["widths"].items())
    assert results["pruned_before_retraining"]["top1"] == results["rounds"][-1]["top1"]
    assert results["after"]["top1"] == results["rounds"][-1]["top1_finetuned"]
    assert {p.name for p in (run / "round1").iterdir()} == {"pruned.pth", "last.pth", "best.pth"}
    first, final = load_toolkit_checkpoint(run / "round1" / "last.pth"), load_toolkit_checkpoint(run / "last.pth")
    assert first.model.get_submodule("layer1.0.conv1").out_channels == 9
    assert final.model.get_submodule("layer1.0.conv1").out_channels == 8
    assert final.model.get_submodule("layer2.0.downsample.0").out_channels == 24
    assert load(run / "pruned.pth")["arch"]["shapes"] == load(run / "last.pth")["arch"]["shapes"]
    assert "### Rounds (filters left per layer)" in (run / "results.md").read_text()


@pytest.mark.slow
def test_agp_filter_run_zeroes_then_removes_exactly_those_filters(work: Path) -> None:
    prune = {"method": "filter", "layers": ["layer1", "layer2.residual"], "ratios": [0.5, 0.25],
             "schedule": "agp", "frequency": 2, "latency": False}
    run = succeeded(run_script(PRUNER, "--json", str(experiment(work, "fagp", shortcut="B", prune=prune,
                                                                retrain=RETRAIN)), cwd=work)).path
    assert run is not None
    results = json.loads((run / "results.json").read_text())
    assert {k: v[1] for k, v in results["widths"].items()} == {"conv2": 8, "conv4": 8, "conv6": 8, "conv9": 24,
                                                               "layer2.0.downsample.0": 24, "conv11": 24, "conv13": 24}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    removed = [m["removed"]["conv2"] for m in metrics if m.get("phase") == "agp"]
    assert removed == [scheduled_count(8, k, 3) for k in (1, 2, 3)]  # ramp 7 steps: pruning at 2, 4, 6

    masked = load_toolkit_checkpoint(run / "last.pth")  # full width, the removed filters held at zero
    final = load_toolkit_checkpoint(run / "final.pth")  # physically smaller
    assert masked.masks is not None and masked.model.get_submodule("layer1.0.conv1").out_channels == 16
    assert final.model.get_submodule("layer1.0.conv1").out_channels == 8
    state = masked.model.state_dict()
    for name, mask in masked.masks.items():
        assert not state[name][~mask].any(), name
    gone = [c for c in range(16) if not masked.masks["layer1.0.conv1.weight"][c].any()]
    assert gone == results["removed"]["conv2"]
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masked.model.eval(), final.model.eval()
    with torch.no_grad():
        assert (masked.model(x) - final.model(x)).abs().max().item() < 1e-4
    assert results["after"]["top1"] == results["top1_masked"]
    pruned = load_toolkit_checkpoint(run / "pruned.pth")  # at the last pruning step, filters removed
    assert pruned.model.get_submodule("layer1.0.conv1").out_channels == 8
    assert pruned.checkpoint["metrics"]["step"] == 6


def test_agp_without_a_pruning_step_is_refused_before_any_work(work: Path, tmp_path: Path) -> None:
    config = experiment(work, "wagp_bad", prune={**WEIGHT_AGP, "frequency": 50}, retrain=RETRAIN)
    before = snapshot(work / "runs") if (work / "runs").exists() else {}
    result = run_script(PRUNER, "--json", str(config), cwd=work)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith('error: prune.schedule "agp": retraining takes 10 optimizer steps (2 epochs of '
                                    "5), of which prune.agp_end 0.75 ramps over 7; prune.frequency 50")
    assert (snapshot(work / "runs") if (work / "runs").exists() else {}) == before


def test_resume_with_other_retrain_epochs_is_refused_for_schedules(tmp_path: Path) -> None:
    from utils.app.pruner_main import open_run_to_resume

    raw = {"name": "x", "model": {"arch": "resnet20", "checkpoint": "w.pth"}, "prune": WEIGHT_ITERATIVE,
           "retrain": RETRAIN}
    cfg = from_dict(raw)
    (tmp_path / "config.json").write_text(json.dumps({**cfg.to_dict(), "retrain": {**RETRAIN, "epochs": 4}}))
    with pytest.raises(UserError, match=r"retrain.epochs was 4 in that run but is 2 now; prune.schedule "):
        open_run_to_resume(str(tmp_path), cfg)
