"""The allowed values of a key are written once, in ``utils.core.choices``: the config checks them and the libraries
that act on them use the same tuples, or, where a library maps each name to something, a dict with exactly those
keys."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from models.resnet_cifar import SHORTCUTS
from pruning.filter import STRATEGIES
from pruning.importance import list_importances
from pruning.schedule import SCHEDULES
from pruning.weight import SCOPES
from utils.config.schema import DataConfig, ModelConfig, OptimConfig, PruneConfig
from utils.core import choices
from utils.data.folder import FOLDER_DECODERS
from utils.train.fit import AMP_DTYPES, build_scheduler

# (section, field, allowed values, whether null is allowed too)
FIELDS = [
    (DataConfig, "decode", choices.DECODERS, False),
    (DataConfig, "loader", choices.LOADERS, False),
    (ModelConfig, "shortcut", choices.SHORTCUTS, True),
    (OptimConfig, "schedule", choices.LR_SCHEDULES, False),
    (OptimConfig, "amp", choices.AMP, True),
    (PruneConfig, "scope", choices.WEIGHT_SCOPES, False),
    (PruneConfig, "strategy", choices.FILTER_STRATEGIES, False),
    (PruneConfig, "schedule", choices.PRUNE_SCHEDULES, False),
]


@pytest.mark.parametrize(("section", "name", "allowed", "nullable"), FIELDS,
                         ids=[f"{c.__name__}.{n}" for c, n, *_ in FIELDS])
def test_config_field_allows_exactly_the_choices(section: type, name: str, allowed: tuple[str, ...],
                                                 nullable: bool) -> None:
    check = {f.name: f for f in dataclasses.fields(section)}[name].metadata["check"]
    assert all(check(value) for value in allowed)
    assert not check("no-such-value")
    assert check(None) is nullable


@pytest.mark.parametrize(("library", "allowed"), [(SCOPES, choices.WEIGHT_SCOPES),
                                                  (STRATEGIES, choices.FILTER_STRATEGIES),
                                                  (SCHEDULES, choices.PRUNE_SCHEDULES),
                                                  (FOLDER_DECODERS, choices.DECODERS)])
def test_library_uses_the_choices(library: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    assert library is allowed


@pytest.mark.parametrize(("mapping", "allowed"), [(AMP_DTYPES, choices.AMP), (SHORTCUTS, choices.SHORTCUTS)])
def test_library_mapping_has_a_value_for_every_choice(mapping: dict[str, Any], allowed: tuple[str, ...]) -> None:
    assert set(mapping) == set(allowed)


def test_every_lr_schedule_builds_its_own_scheduler() -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    kinds = {type(build_scheduler(optimizer, OptimConfig(epochs=2, schedule=name, milestones=[1])))
             for name in choices.LR_SCHEDULES}
    assert len(kinds) == len(choices.LR_SCHEDULES)


def test_every_filter_importance_the_config_allows_is_registered() -> None:
    assert tuple(sorted(choices.FILTER_IMPORTANCES)) == tuple(list_importances())
    check = {f.name: f for f in dataclasses.fields(PruneConfig)}["importance"].metadata["check"]
    assert all(check(name) for name in list_importances()) and not check("l3")
