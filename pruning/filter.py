"""L1-norm filter pruning with physical removal (Li et al. 2017, "Pruning Filters for Efficient ConvNets").

The three parts, each in its own module so that a new architecture or criterion touches one:

* **which** channels move together: :mod:`pruning.dependency` traces the model and groups every conv's
  output channels with the BatchNorm, depthwise convs, next convs and linear layers that carry them, and
  with the other convs of a residual sum, and :mod:`pruning.naming` gives the layers their user-facing names;
* **how** they are scored: :mod:`pruning.importance` (L1 norm of each filter; ``greedy`` leaves out the
  kernels on channels just removed from the previous layer, ``independent`` does not);
* **what** is done: :mod:`pruning.surgery` replaces the modules with smaller ones, once (one-shot; prune
  again for an iterative schedule), or :func:`filter_masks` zeroes the filters instead, for a schedule that
  prunes while training and removes them at the end (:mod:`pruning.schedule`).

How many filters go: ``channels`` gives the count per layer; ``ratios`` a fraction ``r`` of the layer's
``n`` filters, and the layer keeps ``floor((1 - r) * n)`` of them, i.e. ``ceil(r * n)`` are removed. That
is the rounding of the public reimplementation (``num_keep = int(n * (1 - r))`` in Liu et al.'s
rethinking-network-pruning) and the one that reproduces Li et al.'s Table 1: ResNet-56 pruned-A/B lose
10.40% / 27.56% of their FLOPs (paper: 10.4% / 27.6%) and keep 773,336 / 735,712 parameters (paper:
7.7e5 / 7.3e5); removing ``floor(r * n)`` instead gives 7.2% / 24.7%. The filters with the smallest
scores go; ties go to the lower channel index.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pruning.dependency import analyse
from pruning.gradients import TaylorStats
from pruning.groups import READERS, WRITERS, ChannelGraph, ChannelGroup, Member
from pruning.heads import QUERY_WEIGHTS, heads_of
from pruning.importance import check_gradients, get_importance, group_scores
from pruning.naming import LayerNames, layer_names
from pruning.surgery import pruned_shapes, remove_units
from utils.core import choices
from utils.core.errors import UserError

__all__ = ["STRATEGIES", "FilterPlan", "FilterPruneResult", "FilterSpec", "filter_masks", "filters_to_remove",
           "masked_filters", "plan_every_group", "plan_filters", "prune_filters", "remove_filters", "select_filters"]

STRATEGIES = choices.FILTER_STRATEGIES
"""``independent``: every layer ranked on the original weights; ``greedy``: kernels on input channels
already removed from the previous layer are left out of the L1 sums (Li et al. §3.3)."""

# floor((1 - r) * n) is computed in floating point: (1 - 0.9) * 10 is 0.9999999999999998, which must give 1.
_ROUNDING_SLACK = 1e-9


@dataclass(frozen=True)
class FilterPruneResult:
    """What :func:`prune_filters` did. ``masks`` is empty: the filters are gone, nothing is held at zero.

    ``removed``: ``{layer: removed filter indices (of the layer before pruning)}``; ``widths``: ``{layer:
    (filters before, after)}``; ``modules``: ``{layer: module name}``; ``shapes``: every conv/BN/linear
    size of the pruned model, for the checkpoint's ``arch["shapes"]``.
    """

    removed: dict[str, list[int]]
    widths: dict[str, tuple[int, int]]
    modules: dict[str, str]
    shapes: dict[str, dict[str, Any]]
    strategy: str
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    per_unit: dict[str, int] = field(default_factory=dict)  # filters that can only go together (1 but for shuffles)


def filters_to_remove(n: int, ratio: float) -> int:
    """How many of a layer's ``n`` filters ``ratio`` removes: ``n - floor((1 - ratio) * n)`` (= ``ceil(ratio * n)``)."""
    return n - math.floor((1 - ratio) * n + _ROUNDING_SLACK)


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, (str, bytes)):
        raise UserError(f"{key}: expected a list, got {value!r}")
    return list(value) if isinstance(value, Sequence) else [value]


def _amounts(channels: Any, ratios: Any, count: int | None) -> tuple[str, list[float | int]]:
    """``("channels" | "ratios", one value per layer entry)`` after the checks the config cannot do alone."""
    if (channels is None) == (ratios is None):
        both = "both are set" if channels is not None else "neither is set"
        raise UserError(f"prune.channels / prune.ratios: filter pruning needs exactly one of them ({both}); give "
                        "the number of filters to remove per layer or the fraction of each layer's filters")
    key = "prune.channels" if channels is not None else "prune.ratios"
    values = _as_list(channels if channels is not None else ratios, key)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UserError(f"{key}: expected numbers, got {value!r}")
        if key == "prune.channels" and (not isinstance(value, numbers.Integral) or value < 0):
            raise UserError(f"prune.channels: filter counts must be integers >= 0, got {value!r}")
        if key == "prune.ratios" and not 0 <= value < 1:
            raise UserError(f"prune.ratios: fractions must be in [0, 1), got {value!r}")
    if count is None and len(values) != 1:
        raise UserError(f"{key}: prune.layers is empty (every layer that may be pruned alone), so give one value "
                        f"for all of them, or list the layers; got {len(values)} values")
    if len(values) == 1:
        values = values * (count or 1)
    elif len(values) != count:
        raise UserError(f"{key}: give one value for all of prune.layers or one per entry ({count}), got {len(values)}")
    return key.removeprefix("prune."), values


def _selector_for(names: LayerNames, layers: set[str]) -> str | None:
    return next((sel for sel, members in names.selectors.items() if set(members) == layers), None)


def _plan(graph: ChannelGraph, names: LayerNames, layers: Sequence[str], kind: str,
          values: Sequence[float | int], skip: Sequence[str]) -> dict[int, tuple[list[str], int]]:
    """``{group index: (its requested layers, filters to remove)}``, every user mistake a UserError."""
    requested: dict[str, tuple[str, float | int]] = {}  # canonical layer -> (entry it came from, amount)
    for entry, value in zip(layers, values, strict=True):
        for layer in names.resolve(entry):
            if layer in requested:
                raise UserError(f"prune.layers: {layer} is listed twice (in {requested[layer][0]!r} and {entry!r})")
            requested[layer] = (entry, value)
    for entry in skip:
        for layer in names.resolve(entry, key="prune.skip"):
            requested.pop(layer, None)

    by_group: dict[int, list[str]] = {}
    for layer in requested:
        for index in graph.writes[names.module(layer)]:
            by_group.setdefault(index, []).append(layer)
    plan: dict[int, tuple[list[str], int]] = {}
    for index, asked in by_group.items():
        group = graph.groups[index]
        first = asked[0]
        described = first if names.module(first) == first else f"{first} ({names.module(first)})"
        members = [names.canonical(p) for p in group.producers]
        others = ", ".join(m for m in members if m != first)
        free = [sel for sel, members_ in names.selectors.items() if all(graph.alone(names.module(m)) for m in members_)]
        instead = f"; prune the layers that are free alone instead ({', '.join(free)})" if free else ""
        if not group.prunable:
            coupled = f" feeds a residual sum together with {others} and" if group.summed and others else ""
            raise UserError(f"prune.layers: {described}{coupled} cannot be pruned: {group.blocked}{instead}")
        if group.summed and len(members) > 1:
            missing = [m for m in members if m not in asked]
            if missing:
                selector = _selector_for(names, set(members))
                hint = f" (the selector {selector!r} names them all)" if selector else ""
                raise UserError(
                    f"prune.layers: {described} feeds a residual sum together with {others}: their filters can only "
                    f"be removed together, with the same indices; list all {len(members)} with one amount{hint}"
                    f"{instead}")
            amounts = {requested[m][1] for m in members}
            if len(amounts) > 1:
                raise UserError(f"prune.{kind}: the coupled layers {', '.join(members)} must remove the same amount, "
                                f"got {sorted(amounts)}")
            asked = members
        plan[index] = (asked, _count(group, names, first, kind, requested[first][1]))
    return plan


def _count(group: ChannelGroup, names: LayerNames, layer: str, kind: str, value: float) -> int:
    """How many channels (units) of ``group`` the amount asked for ``layer`` removes. Counts are the layer's filters;
    where a unit is several of them (a channel shuffle, a grouped conv), a count must be a whole number of units."""
    n, per = group.channels, group.filters_per_unit(names.module(layer))
    if kind == "channels" and int(value) % per:
        raise UserError(f"prune.channels: {layer}'s filters can only be removed {per} at a time (a channel shuffle or "
                        f"a grouped conv ties them); give a multiple of {per}, got {value}")
    count = int(value) // per if kind == "channels" else filters_to_remove(n, float(value))
    if count > n - 1:
        what = f"{count * per}" if kind == "channels" else f"{count * per} (ratio {value:g} of {n * per})"
        raise UserError(f"{layer} has {n * per} filters; prune.{kind} asks to remove {what}, at most {(n - 1) * per} "
                        "can go" + (f" ({per} at a time)" if per > 1 else ""))
    return count


@dataclass(frozen=True)
class FilterPlan:
    """A filter-pruning spec resolved against a model, before anything is removed.

    ``groups``: ``{channel group index: (the requested layers writing it, filters to remove)}``; ``graph`` and
    ``names`` are the model's channel graph and layer names. Valid for the model as it was planned on: removing
    filters physically changes the groups' sizes (plan again then); masking them does not. ``gradients``: what a
    criterion that needs them scores from (``taylor``); a schedule that scores again later replaces them with
    statistics of the model as it is then (``dataclasses.replace``).
    """

    graph: ChannelGraph
    names: LayerNames
    groups: dict[int, tuple[list[str], int]]
    strategy: str
    importance: str = "l1"
    gradients: TaylorStats | None = None

    def layer_counts(self) -> dict[str, int]:
        """``{layer: filters to remove}`` for every requested layer (coupled layers each listed)."""
        return {layer: count for layers, count in self.groups.values() for layer in layers}


@dataclass(frozen=True)
class FilterSpec:
    """What to prune, as the ``prune`` section says it (see :func:`prune_filters` for each field)."""

    layers: Sequence[str] = ()
    channels: Sequence[int] | None = None
    ratios: Sequence[float] | None = None
    strategy: str = "independent"
    skip: Sequence[str] = ()
    importance: str = "l1"
    gradients: TaylorStats | None = None  # for a criterion that needs them (pruning.gradients.taylor_statistics)

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"prune.strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        get_importance(self.importance)  # an unknown name is a UserError listing the known ones
        check_gradients(self.importance, self.gradients)


def plan_filters(model: nn.Module, spec: FilterSpec | None = None, *, example_input: torch.Tensor | None = None,
                 **options: Any) -> FilterPlan:
    """Check a spec (a :class:`FilterSpec`, or its fields as keywords) against ``model`` and resolve it; nothing is
    changed."""
    spec = spec if spec is not None else FilterSpec(**options)
    spec.check()
    graph = analyse(model, example_input)
    names = layer_names(model, graph)
    layers = _as_list(spec.layers, "prune.layers")
    skip = _as_list(spec.skip, "prune.skip")
    if layers:
        kind, values = _amounts(spec.channels, spec.ratios, len(layers))
    else:  # every layer that may be pruned alone, all by the same amount
        kind, values = _amounts(spec.channels, spec.ratios, None)
        layers = [name for name in names.layers if graph.alone(names.module(name))]
        values = values * len(layers)
    return FilterPlan(graph=graph, names=names, groups=_plan(graph, names, layers, kind, values, skip),
                      strategy=spec.strategy, importance=spec.importance, gradients=spec.gradients)


def plan_every_group(model: nn.Module, *, ratio: float, strategy: str = "independent", importance: str = "l1",
                     example_input: torch.Tensor | None = None, gradients: TaylorStats | None = None) -> FilterPlan:
    """A plan that removes ``ceil(ratio * n)`` channels of every prunable group of ``model`` (residual groups and
    groups of several producers included), leaving out groups that would be emptied: the "prune everything by
    one ratio" baseline, and what the prunability benchmark measures."""
    if not 0 <= ratio < 1:
        raise UserError(f"ratio: expected a number in [0, 1), got {ratio!r}")
    graph = analyse(model, example_input)
    groups = {index: ([], filters_to_remove(group.channels, ratio)) for index, group in enumerate(graph.groups)
              if group.prunable and filters_to_remove(group.channels, ratio) < group.channels}
    return FilterPlan(graph=graph, names=layer_names(model, graph), groups=groups, strategy=strategy,
                      importance=importance, gradients=gradients)


def _greedy_ignore(graph: ChannelGraph, group: ChannelGroup, removed: Mapping[int, Sequence[int]]
                   ) -> dict[str, list[int]]:
    """``{producer: its input channels already removed from the groups it reads}`` (Li et al.'s greedy strategy)."""
    ignore: dict[str, list[int]] = {}
    for producer in group.producers:
        positions = []
        for read in graph.reads.get(producer, ()):
            member = graph.groups[read].member(producer, *READERS)
            if removed.get(read) and member is not None:
                positions += member.positions(removed[read])
        if positions:
            ignore[producer] = sorted(positions)
    return ignore


def select_filters(model: nn.Module, plan: FilterPlan, *, counts: dict[int, int] | None = None,
                   first: dict[int, Sequence[int]] | None = None) -> dict[int, list[int]]:
    """``{group index: the channels to remove, sorted}``: the ``count`` smallest-scored of each planned group.

    ``counts`` overrides the plan's counts per group (a schedule on its way to them); ``first``: channels of a
    group that go before any other whatever their score (those a gradual schedule has already masked: they are
    zero and would rank first anyway, this only makes it certain when another filter is exactly zero too).
    """
    removed_of_group: dict[int, list[int]] = {}
    # Rank in input order, so that greedy sees the removals of the layer before.
    for index in sorted(plan.groups):
        group = plan.graph.groups[index]
        count = plan.groups[index][1] if counts is None else counts[index]
        ignore = _greedy_ignore(plan.graph, group, removed_of_group) if plan.strategy == "greedy" else {}
        scores = group_scores(model, group, importance=plan.importance, ignore_in_channels=ignore,
                              gradients=plan.gradients)
        if first and first.get(index):
            if len(first[index]) > count:
                raise ValueError(f"group {index}: {len(first[index])} channels are already removed, more than the "
                                 f"{count} asked for; a schedule's counts must not decrease")
            scores[torch.as_tensor(list(first[index]), dtype=torch.long)] = -1.0
        order = torch.argsort(scores, stable=True)
        removed_of_group[index] = sorted(order[:count].tolist())
    return removed_of_group


def filter_masks(model: nn.Module, plan: FilterPlan, removed: dict[int, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Masks (True = kept) that zero the ``removed`` channels of every planned group instead of removing them.

    Every parameter slice that physically removing the channel would delete is zeroed: the writers' filters (weight
    rows and bias), the BatchNorm scale and shift, a grouped conv's filters on it, a parameter used directly, and the
    readers' weights on it (the next conv's input kernels, a linear layer's input features). A removed channel then
    contributes nothing downstream, whatever activation it passes through (``sigmoid(0)`` is not 0, a BatchNorm adds
    its shift to a zero input), so the masked model computes exactly what the model with the channels removed
    computes, in training and in eval mode (:mod:`pruning.sensitivity` relies on the same identity). Every
    parameter of every planned group gets a mask, all True where nothing is removed yet, so the set of masks is the
    same at every step of a schedule. A parameter shared by several groups (a conv's rows in one, its input kernels
    in another) gets one mask holding both.
    """
    masks: dict[str, torch.Tensor] = {}
    for index in sorted(plan.groups):
        for member in plan.graph.groups[index].members:
            for name, param, dim, positions in _member_slices(model, member, removed.get(index, ())):
                mask = masks.get(name)
                if mask is None:
                    mask = masks[name] = torch.ones(param.shape, dtype=torch.bool, device=param.device)
                mask.index_fill_(dim, torch.tensor(positions, dtype=torch.long, device=param.device), False)
    return masks


def _member_slices(model: nn.Module, member: Member, units: Sequence[int]
                   ) -> list[tuple[str, torch.Tensor, int, list[int]]]:
    """``(parameter name, parameter, dimension, positions of units)`` for every parameter of ``member``."""
    if member.role == "param":
        return [(member.module, model.get_parameter(member.module), member.dim, member.positions(units))]
    module = model.get_submodule(member.module)
    if member.role == "heads":  # a head's rows of q, k and v, its columns of the output projection, its bias entries
        return [(f"{member.module}.{path}", module.get_parameter(path), dim, positions)
                for path, dim, positions in heads_of(module, units)]
    dim = 1 if member.role in READERS else 0
    names = ("weight",) if member.role in READERS else ("weight", "bias")
    return [(f"{member.module}.{n}", getattr(module, n), dim, member.positions(units))
            for n in names if getattr(module, n, None) is not None]


def masked_filters(plan: FilterPlan, masks: Mapping[str, torch.Tensor]) -> dict[int, list[int]]:
    """The channels of each planned group that ``masks`` (from :func:`filter_masks`) zero: ``{group: [channels]}``."""
    found: dict[int, list[int]] = {}
    for index in sorted(plan.groups):
        member = next(m for m in plan.graph.groups[index].members if m.role in WRITERS)
        weights = QUERY_WEIGHTS if member.role == "heads" else ("weight",)
        rows = next(masks[key] for w in weights if (key := f"{member.module}.{w}") in masks).flatten(1).any(dim=1)
        if member.role == "heads":  # the query rows of each head
            rows = rows[: len(rows) // 3].view(len(member.index), -1).any(dim=1)
        found[index] = [u for u, positions in enumerate(member.index) if not rows[list(positions)].any()]
    return found


def remove_filters(model: nn.Module, plan: FilterPlan, removed: dict[int, Sequence[int]]) -> FilterPruneResult:
    """Remove the ``removed`` channels of the planned groups from ``model``, physically and in place."""
    removed_by_layer: dict[str, list[int]] = {}
    widths: dict[str, tuple[int, int]] = {}
    modules: dict[str, str] = {}
    per_unit: dict[str, int] = {}
    for index in sorted(plan.groups):
        group, gone = plan.graph.groups[index], sorted(removed.get(index, ()))
        for layer in plan.groups[index][0]:  # in the layer's own filters (a unit may be several of them)
            module = modules[layer] = plan.names.module(layer)
            member = group.member(module, *WRITERS)
            filters, positions = sum(len(unit) for unit in member.index), member.positions(gone)
            per_unit[layer] = max(per_unit.get(layer, 1), group.filters_per_unit(module))
            removed_by_layer[layer] = sorted(removed_by_layer.get(layer, []) + positions)
            before, after = widths.get(layer, (0, 0))
            widths[layer] = (before + filters, after + filters - len(positions))
    indices = sorted(plan.groups)
    remove_units(model, [plan.graph.groups[i] for i in indices], [sorted(removed.get(i, ())) for i in indices])
    return FilterPruneResult(removed=removed_by_layer, widths=widths, modules=modules, shapes=pruned_shapes(model),
                             strategy=plan.strategy, per_unit=per_unit)


def prune_filters(model: nn.Module, spec: FilterSpec | None = None, *, example_input: torch.Tensor | None = None,
                  **options: Any) -> FilterPruneResult:
    """Remove the lowest-scored filters (smallest L1 by default) of ``layers`` from ``model``, physically, in place.

    The spec is a :class:`FilterSpec` or its fields as keywords:

    ``layers``: names from :func:`pruning.naming.layer_names` (``conv7``, ``layer2``, ``block3``, a conv's
    module name); empty means every layer that may be pruned alone. ``channels`` (filters to remove) or
    ``ratios`` (fraction of each layer's filters; ``ceil(r * n)`` go): exactly one, with one value for all
    layers or one per ``layers`` entry (a selector's value applies to each layer in it). ``skip``: layers
    to leave out. ``strategy``: ``independent`` or ``greedy``. ``importance``: the criterion
    (:mod:`pruning.importance`: ``l1``, ``l2``, ``fpgm``, ``bn_scale``, ``random``, ``taylor``; ``taylor`` needs
    ``gradients``, :func:`pruning.gradients.taylor_statistics` of ``model``). ``example_input``: one batch of
    the size the model takes (default: 3x32x32 for the CIFAR models, 3x224x224 otherwise), used only to trace
    shapes.

    The three steps, for callers that need them apart (a schedule masks before it removes): :func:`plan_filters`,
    :func:`select_filters`, :func:`remove_filters` (or :func:`filter_masks`).
    """
    plan = plan_filters(model, spec, example_input=example_input, **options)
    return remove_filters(model, plan, select_filters(model, plan))
