"""Pruning to a budget: how many channels each group gives so that the model meets a MACs or parameter target.

A user states a budget ("half the MACs") instead of a count per layer. :func:`plan_to_target` finds a
:class:`~pruning.filter.FilterPlan` over every prunable group (``skip`` left out, no group losing more than
``max_ratio`` of its channels) whose pruned model has at most ``target`` times the original MACs or parameters,
as close to it as the channels allow. Two allocations:

* ``uniform``: the same fraction of every group, the smallest fraction that meets the target;
* ``sensitivity``: from a sensitivity sweep of this tool (each layer pruned alone, top-1 at each ratio): for an
  accuracy drop ``d``, every measured layer gives the fraction at which its curve drops ``d`` points (linearly
  between the measured ratios), so the least sensitive layers give most; ``d`` is the smallest drop that meets the
  target. Layers the sweep did not measure (those that cannot be pruned alone, such as residual groups) give none;
* ``global``: one ranking of all channels across groups. A criterion's scores are on each layer's own scale
  (a 3x3 conv over 512 inputs sums 4608 weights, a 1x1 over 16 sums 16), so each group's scores are divided by
  their mean before they compete: a channel is ranked by how it compares with its own layer's channels, the
  normalisation Torch-Pruning and NNI use for global ranking. The lowest-ranked channels go first, as many as the
  target needs.

Both search the one number they depend on (the fraction; how many channels of the ranking go) by bisection, and
every step counts the MACs or parameters of the model pruned that way exactly (:func:`pruning.surgery.remove_units`
on a copy, then the counter), so the target holds for the model the run will build, not for an estimate.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pruning.dependency import analyse
from pruning.filter import FilterPlan, FilterSpec, filters_to_remove
from pruning.importance import group_scores
from pruning.naming import layer_names
from pruning.surgery import remove_units
from utils.core.errors import UserError

__all__ = ["ALLOCATIONS", "plan_to_target"]

ALLOCATIONS = ("uniform", "global", "sensitivity")

Curve = tuple[Sequence[float], Sequence[float], int]
"""A layer's sensitivity: the ratios measured, the top-1 drop (points) at each, and the layer's filters then."""

Cost = Callable[[nn.Module], int]


class _Search:
    """The model, the plan over every prunable group, each group's channels from lowest to highest score (ranked
    once, on the unpruned weights), and the cost of the model pruned by any counts."""

    def __init__(self, model: nn.Module, plan: FilterPlan, cost: Cost, max_ratio: float) -> None:
        self.model, self.plan, self.cost = model, plan, cost
        self.scores = {i: group_scores(model, plan.graph.groups[i], importance=plan.importance,
                                       gradients=plan.gradients) for i in plan.groups}
        self.order = {i: torch.argsort(scores, stable=True).tolist() for i, scores in self.scores.items()}
        self.cap = {i: min(len(s) - 1, int(len(s) * max_ratio)) for i, s in self.scores.items()}

    def cost_after(self, counts: dict[int, int]) -> int:
        smaller = copy.deepcopy(self.model)
        indices = sorted(self.plan.groups)
        remove_units(smaller, [self.plan.graph.groups[i] for i in indices],
                     [sorted(self.order[i][:counts.get(i, 0)]) for i in indices])
        return self.cost(smaller)


def _uniform(search: _Search, goal: float) -> dict[int, int]:
    """The smallest fraction of every group that meets ``goal``; then, as the counts jump together at that fraction,
    the fewest groups (largest first) taking their next channel, so the cost lands as near the goal as a channel."""
    groups = search.plan.graph.groups

    def counts(ratio: float) -> dict[int, int]:
        return {i: min(filters_to_remove(groups[i].channels, ratio), search.cap[i]) for i in search.plan.groups}

    low, high = 0.0, 1.0
    if search.cost_after(counts(high)) > goal:
        return counts(high)  # the caller reports the target as out of reach
    for _ in range(16):
        middle = (low + high) / 2
        low, high = (low, middle) if search.cost_after(counts(middle)) <= goal else (middle, high)
    return _fill(search, goal, counts(low), counts(high))


def _fill(search: _Search, goal: float, below: dict[int, int], above: dict[int, int]) -> dict[int, int]:
    """Between counts that miss ``goal`` (``below``) and counts that meet it (``above``), where several groups change
    at once: the fewest of them (largest first) that take their higher count and still meet it."""
    groups = search.plan.graph.groups
    moving = sorted((i for i in above if above[i] != below[i]), key=lambda i: -groups[i].channels)
    first, last = 0, len(moving)  # how many of ``moving`` take their higher count
    while first < last:
        middle = (first + last) // 2
        mixed = {**below, **{i: above[i] for i in moving[:middle]}}
        first, last = (first, middle) if search.cost_after(mixed) <= goal else (middle + 1, last)
    return {**below, **{i: above[i] for i in moving[:first]}}


def _ratio_at(curve: Curve, drop: float) -> float:
    """The largest fraction whose interpolated drop is at most ``drop`` (the curve made non-decreasing first)."""
    ratios, drops = [0.0, *curve[0]], [0.0, *curve[1]]  # nothing removed, nothing lost
    envelope = [max(drops[: i + 1]) for i in range(len(drops))]
    best = 0.0
    for i in range(1, len(ratios)):
        if envelope[i] <= drop:
            best = ratios[i]
            continue
        if envelope[i - 1] <= drop:  # the curve crosses ``drop`` between the two measured ratios
            share = (drop - envelope[i - 1]) / (envelope[i] - envelope[i - 1])
            best = ratios[i - 1] + (ratios[i] - ratios[i - 1]) * share
        break
    return best


def _sensitive(search: _Search, goal: float, curves: dict[int, Curve]) -> dict[int, int]:
    """The smallest accuracy drop at which every measured group, pruned to where its curve reaches it, meets
    ``goal`` (then :func:`_fill`, as layers with the same curve move together)."""
    groups = search.plan.graph.groups

    def counts(drop: float) -> dict[int, int]:
        return {i: min(filters_to_remove(groups[i].channels, _ratio_at(curve, drop)), search.cap[i])
                for i, curve in curves.items()}

    low, high = 0.0, max((max(c[1]) for c in curves.values()), default=0.0) + 1.0
    if search.cost_after(counts(high)) > goal:
        return counts(high)
    for _ in range(20):
        middle = (low + high) / 2
        low, high = (low, middle) if search.cost_after(counts(middle)) <= goal else (middle, high)
    return _fill(search, goal, counts(low), counts(high))


def _global(search: _Search, goal: float) -> dict[int, int]:
    """The fewest channels of the one ranking (scores over each group's mean) that meet ``goal``."""
    ranking = sorted((float(search.scores[i][u]) / (float(search.scores[i].mean()) or 1.0), i)
                     for i in search.plan.groups for u in search.order[i][:search.cap[i]])

    def counts(n: int) -> dict[int, int]:
        taken = dict.fromkeys(search.plan.groups, 0)
        for _, i in ranking[:n]:
            taken[i] += 1
        return taken

    low, high = 0, len(ranking)
    if search.cost_after(counts(high)) > goal:
        return counts(high)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if search.cost_after(counts(middle)) <= goal else (middle + 1, high)
    return counts(high)


def plan_to_target(model: nn.Module, *, target: float, cost: Cost, allocation: str = "global",
                   max_ratio: float = 0.9, spec: FilterSpec | None = None, example_input: torch.Tensor | None = None,
                   sensitivity: dict[str, Curve] | None = None) -> tuple[FilterPlan, int, int]:
    """A plan whose pruned model costs at most ``target`` times what ``model`` costs, by ``cost`` (MACs or
    parameters of a model); returns ``(plan, cost before, cost after)``. ``spec`` gives the criterion (and the
    gradients ``taylor`` scores from), the strategy and the layers to ``skip``; its ``layers``, ``channels`` and
    ``ratios`` are not used (the target decides).
    ``sensitivity``: ``{layer name: curve}`` for the ``sensitivity`` allocation."""
    if not 0 < target < 1:
        raise UserError(f"prune.target: expected a fraction in (0, 1) of the model's cost, got {target!r}")
    if allocation not in ALLOCATIONS:
        raise UserError(f"prune.allocation: expected one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if not 0 < max_ratio < 1:
        raise UserError(f"prune.max_ratio: expected a number in (0, 1), got {max_ratio!r}")
    spec = spec or FilterSpec()
    spec.check()
    graph = analyse(model, example_input)
    shell = FilterPlan(graph=graph, names=layer_names(model, graph), groups={}, strategy=spec.strategy,
                       importance=spec.importance, gradients=spec.gradients)
    skipped = _skipped(shell, spec.skip)
    plan = dataclasses.replace(shell, groups={i: (list(_layers(shell, i)), 0) for i, group in enumerate(graph.groups)
                                              if group.prunable and i not in skipped})
    before = cost(model)
    search = _Search(model, plan, cost, max_ratio)
    if allocation == "sensitivity":
        counts = _sensitive(search, target * before, _curves_by_group(plan, sensitivity))
    else:
        counts = (_uniform if allocation == "uniform" else _global)(search, target * before)
    after = search.cost_after(counts)
    if after > target * before:
        raise UserError(f"prune.target: {target:g} of the model's cost cannot be reached with prune.max_ratio "
                        f"{max_ratio:g} (the most it allows leaves {after / before:.3f}); raise prune.max_ratio or "
                        "skip fewer layers")
    chosen = dataclasses.replace(plan, groups={i: (plan.groups[i][0], n) for i, n in counts.items() if n})
    return chosen, before, after


def _curves_by_group(plan: FilterPlan, sensitivity: dict[str, Curve] | None) -> dict[int, Curve]:
    """Each measured layer's curve under the index of the one group it writes (a planned group)."""
    if not sensitivity:
        raise UserError("prune.allocation: sensitivity needs the curves of a sensitivity run of this model "
                        "(prune.sensitivity_file)")
    curves = {}
    for layer, curve in sensitivity.items():
        module = plan.names.module(plan.names.resolve(layer, key="prune.sensitivity_file")[0])
        for index in plan.graph.writes.get(module, ()):
            group = plan.graph.groups[index]
            filters = group.channels * group.filters_per_unit(module)
            if filters != curve[2]:
                raise UserError(f"prune.sensitivity_file: {layer} had {curve[2]} filters in the sensitivity run and "
                                f"has {filters} in this model: the file was measured on another model")
            if index in plan.groups:
                curves[index] = curve
    return curves


def _layers(plan: FilterPlan, index: int) -> Sequence[str]:
    return [plan.names.canonical(p) for p in plan.graph.groups[index].producers]


def _skipped(plan: FilterPlan, skip: Sequence[str]) -> set[int]:
    """The groups written by any layer ``skip`` names."""
    return {i for entry in skip for layer in plan.names.resolve(entry, key="prune.skip")
            for i in plan.graph.writes.get(plan.names.module(layer), ())}
