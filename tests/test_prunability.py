"""The prunability benchmark (``bench/prunability.py``, issue 14) on one torchvision classifier per family.

What is true today and must never regress: no model crashes the trace or the surgery; every model that prunes
computes, pruned, what the masked original computes; pruning a group removes parameters; and the share of the
channels the trace reaches does not fall below today's (:data:`REACHABLE_FLOORS`).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from bench import prunability
from bench.prunability import EQUIVALENT, family, format_family_table, format_table, measure, summarize
from utils.core.errors import UserError

# Channels reachable (channels of prunable groups / channels of all groups with a producer), measured at commit
# 8034728 with ratio 0.3 and rounded down to 5%: a RATCHET. The channel-trace rewrite (cat, split, SE mul, grouped
# convs, Linear, ...) is expected to raise these; raise the floor here whenever a model's figure goes up, never
# lower it. A refusal counts as 0%, so it is allowed only where the floor is 0. If the rewrite changes the
# denominator itself (Linear layers becoming producers adds the classifier's 1000 output channels, which the
# model's output pins), re-measure with bench/prunability.py and say so in the commit.
REACHABLE_FLOORS = {
    "vgg11_bn": 1.00,
    "resnet18": 1.00,
    "resnext50_32x4d": 0.30,      # grouped 3x3 convs block their groups
    "densenet121": 0.70,          # torch.cat of the dense blocks
    "googlenet": 0.20,            # torch.cat of the inception branches
    "squeezenet1_1": 0.05,        # torch.cat of the fire modules; the last conv is the output
    "shufflenet_v2_x0_5": 0.30,   # cat + channel shuffle; mean pooling
    "mobilenet_v2": 1.00,
    "mobilenet_v3_small": 0.25,   # squeeze-excitation multiply
    "mnasnet0_5": 0.75,           # mean pooling before the classifier
    "efficientnet_b0": 0.05,      # squeeze-excitation multiply, stochastic depth
    "regnet_x_400mf": 0.10,       # grouped convs
    "regnet_y_400mf": 0.15,       # grouped convs, squeeze-excitation multiply
    "convnext_tiny": 0.00,        # permute to channels-last (LayerNorm, Linear)
    "vit_b_16": 0.00,             # the patch embedding is reshaped into tokens
    "swin_t": 0.00,               # permute to channels-last
}
# ViT checks its input against image_size: built at 32x32 (2x2 patches of 16) instead of 224x224 for speed.
SIDES = {"vit_b_16": 32}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: 32-pixel inputs gain nothing from a second one, and on a loaded 2-core machine two
    threads waiting on each other cost several times the CPU time (157 s for this module instead of 21 s at a
    load average of 8)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def measured(name: str) -> dict[str, Any]:
    return measure(name, ratio=0.3, side=SIDES.get(name), seed=0)


@pytest.mark.parametrize("name", sorted(REACHABLE_FLOORS))
def test_prunes_without_crashing_and_equals_the_masked_original(name: str) -> None:
    record = measured(name)
    status = record["status"]
    assert status.startswith(("pruned", "nothing prunable", "refused")), f"{name}: {status} (in {record['step']})"
    floor = REACHABLE_FLOORS[name]
    if status.startswith("refused"):
        assert floor == 0, f"{name} was {floor:.0%} reachable and is now refused: {status}"
        return
    reachable = record["channels_reachable"] / record["channels_total"]
    assert reachable >= floor, f"{name}: {reachable:.1%} of the channels reachable, below the floor {floor:.0%}"
    if record["groups_pruned"]:
        assert record["rel_diff"] < EQUIVALENT, f"{name}: pruned output differs from the masked by {record['rel_diff']}"
        assert record["params_after"] < record["params_before"]
        assert record["macs_after"] <= record["macs_before"]
    else:
        assert record["params_after"] == record["params_before"]


def test_table_and_summary_cover_every_model() -> None:
    records = [measured(name) for name in sorted(REACHABLE_FLOORS)]
    table = format_table(records).splitlines()
    assert len(table) == 2 + len(records)
    assert all(row.count("|") == table[0].count("|") for row in table), "a row with a different column count"
    families = format_family_table(records).splitlines()
    assert len(families) == 2 + len({family(name) for name in REACHABLE_FLOORS})
    assert all(row.count("|") == families[0].count("|") for row in families)
    summary = summarize(records, [0.5])
    assert summary["pruned"] + summary["nothing_prunable"] + summary["refused"] + summary["crashed"] == len(records)
    assert summary["equivalent"] == summary["pruned"]


def test_refusals_and_crashes_are_recorded_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise UserError("the model does not trace")

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("size mismatch")

    monkeypatch.setattr(prunability, "plan_every_group", refuse)
    assert measure("squeezenet1_1")["status"] == "refused: the model does not trace"
    monkeypatch.undo()
    monkeypatch.setattr(prunability, "remove_filters", crash)
    record = measure("squeezenet1_1")
    assert (record["status"], record["step"]) == ("crashed: RuntimeError: size mismatch", "remove")
    for table in (format_table([record]), format_family_table([record])):
        head, _, row = table.splitlines()
        assert row.count("|") == head.count("|")


def test_blocking_reasons_are_shortened() -> None:
    blocked = ("its channels go through cat in features.denseblock1, which the channel analysis does not follow; "
               "grouped conv layer1.0.conv2 (groups=32) is not supported by filter pruning; "
               "its channels go through Permute features.1.0.block.1, which the channel analysis does not follow")
    assert prunability.short_reasons(blocked) == ["cat", "grouped conv", "Permute (module)"]
    assert prunability.short_reasons("a new wording about layer2.0.conv1") == ["a new wording about …"]
