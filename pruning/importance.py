"""How filters are scored: per-output-channel importance of a conv, and of a whole channel group.

Li et al. (2017, §3.1) rank the filters of a layer by their L1 norm, ``sum |w|`` over input channels
and kernel positions: a filter with small weights produces small activations, and removing the
smallest-norm filters costs the least accuracy among cheap, data-free criteria. Scores are computed in
float64 so that the ranking does not depend on summation order (a float32 sum of 4608 terms can
reorder nearly tied filters between devices).

Two ways of ranking a layer when the layer before it is pruned in the same step (§3.3), chosen by the
caller through ``ignore_in_channels``:

* *independent*: every layer is ranked on the original weights;
* *greedy*: kernels that read an input channel already removed from the previous layer are left out of
  the sums, since they will be gone anyway.

Other criteria, each a few lines, registered by name (:func:`register_importance` for those that score a filter
from its own weights, :func:`register_group_importance` for those that need the whole group) so that a new one
touches only this file; the grouping (:mod:`pruning.dependency`) and the removal (:mod:`pruning.surgery`) do not
change: ``l2``, ``fpgm`` (He et al. 2019), ``bn_scale`` (Liu et al. 2017), ``random`` (the control), and ``taylor``
(Molchanov et al. 2019), the one criterion that needs data: it is registered with ``needs_gradients=True`` and
:func:`group_scores` hands it the :class:`~pruning.gradients.TaylorStats` of a few training batches.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from pruning.gradients import TaylorStats
from pruning.groups import WRITERS, ChannelGroup
from pruning.heads import rows_of_heads
from utils.core.errors import UserError
from utils.core.registry import Registry

__all__ = [
    "FilterImportance",
    "GroupImportance",
    "Scoring",
    "bn_scale",
    "check_gradients",
    "geometric_median_distances",
    "get_importance",
    "group_scores",
    "l1_filter_norms",
    "l2_filter_norms",
    "list_importances",
    "needs_gradients",
    "random_scores",
    "register_group_importance",
    "register_importance",
    "taylor_scores",
]


class FilterImportance(Protocol):
    """``(weight, *, ignore_in_channels) -> one score per output filter``; higher = more important."""

    def __call__(self, conv_weight: torch.Tensor, *, ignore_in_channels: Collection[int] | None = None
                 ) -> torch.Tensor: ...


GroupImportance = Callable[[nn.Module, ChannelGroup, Mapping[str, Collection[int]]], torch.Tensor]
"""``(model, group, ignore_in_channels per producer) -> one score per channel (unit) of the group``; a criterion
registered with ``needs_gradients`` also takes ``gradients=`` (a :class:`~pruning.gradients.TaylorStats`)."""

_IMPORTANCE: Registry[GroupImportance] = Registry("filter importance")
_NEEDS_GRADIENTS: set[str] = set()


def register_importance(name: str) -> Callable[[FilterImportance], FilterImportance]:
    """Register a criterion that scores each filter from its own weights (``l1``, ``l2``, ...) under ``name``: a
    group's channel then scores the sum of its producers' filter scores (see :func:`group_scores`)."""

    def register(score: FilterImportance) -> FilterImportance:
        _IMPORTANCE.register(name)(lambda model, group, ignore: _sum_over_producers(score, model, group, ignore))
        return score

    return register


def register_group_importance(name: str, *, needs_gradients: bool = False
                              ) -> Callable[[GroupImportance], GroupImportance]:
    """Register a criterion that scores a group's channels from more than one layer's weights (``bn_scale``), or,
    with ``needs_gradients``, from gradient statistics too (``taylor``): it is then called with ``gradients=``."""
    if needs_gradients:
        _NEEDS_GRADIENTS.add(name)
    return _IMPORTANCE.register(name)


def needs_gradients(name: str) -> bool:
    """Whether criterion ``name`` scores from gradients, so its caller has to draw training batches first."""
    return name in _NEEDS_GRADIENTS


def check_gradients(importance: str, gradients: TaylorStats | None) -> None:
    """A criterion that :func:`needs_gradients` given none is a ``UserError`` saying how to compute them."""
    if needs_gradients(importance) and gradients is None:
        raise UserError(f"prune.importance: {importance} scores channels from gradients, and none were given; "
                        "compute them with pruning.gradients.taylor_statistics(model, batches) and pass gradients=")


@dataclass(frozen=True)
class Scoring:
    """A criterion and what it scores from besides the weights: ``gradients`` for one that :func:`needs_gradients`
    (one argument where a function's signature has room for one)."""

    importance: str = "l1"
    gradients: TaylorStats | None = None


def list_importances() -> list[str]:
    """Names of the registered criteria, sorted."""
    return _IMPORTANCE.names()


def get_importance(name: str) -> GroupImportance:
    """The criterion registered as ``name``; an unknown name is a :class:`UserError` listing the known ones."""
    return _IMPORTANCE.get(name)


def _kept_inputs(weight: torch.Tensor, ignore_in_channels: Collection[int] | None) -> torch.Tensor:
    if not ignore_in_channels:
        return weight
    keep = torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
    keep[torch.as_tensor(sorted(ignore_in_channels), dtype=torch.long, device=weight.device)] = False
    return weight[:, keep]


def _filters(conv_weight: torch.Tensor, ignore_in_channels: Collection[int] | None) -> torch.Tensor:
    """``(filters, everything else)`` in float64, the kernels on ``ignore_in_channels`` left out."""
    return _kept_inputs(conv_weight.detach(), ignore_in_channels).to(torch.float64).flatten(1)


@register_importance("l1")
def l1_filter_norms(conv_weight: torch.Tensor, *, ignore_in_channels: Collection[int] | None = None
                    ) -> torch.Tensor:
    """``sum |w|`` over (in, kh, kw) for every output filter of a ``groups == 1`` conv weight, in float64 (Li et al.).

    ``ignore_in_channels``: input channels whose kernels are left out of the sums (the greedy strategy
    passes the channels already removed from the previous layer).
    """
    return _filters(conv_weight, ignore_in_channels).abs().sum(dim=1)


@register_importance("l2")
def l2_filter_norms(conv_weight: torch.Tensor, *, ignore_in_channels: Collection[int] | None = None
                    ) -> torch.Tensor:
    """``sqrt(sum w^2)`` of every output filter, in float64: the L2 variant of Li et al.'s norm."""
    return _filters(conv_weight, ignore_in_channels).norm(dim=1)


@register_importance("fpgm")
def geometric_median_distances(conv_weight: torch.Tensor, *, ignore_in_channels: Collection[int] | None = None
                               ) -> torch.Tensor:
    """He et al. 2019 (FPGM): a filter close to the layer's geometric median is the most replaceable by the others.
    The median's neighbourhood is found as the public implementation does, without computing the median: each
    filter's score is the sum of its Euclidean distances to all the layer's filters, and the smallest go."""
    filters = _filters(conv_weight, ignore_in_channels)
    return torch.cdist(filters, filters).sum(dim=1)


def _sum_over_producers(score: FilterImportance, model: nn.Module, group: ChannelGroup,
                        ignore: Mapping[str, Collection[int]]) -> torch.Tensor:
    """A weight criterion over a group: each channel (unit) scores the sum of its producers' filter scores."""
    total = torch.zeros(group.channels, dtype=torch.float64)
    for member in group.members:
        if member.role not in WRITERS:
            continue
        module = model.get_submodule(member.module)
        weight = rows_of_heads(module) if member.role == "heads" else module.weight
        per_filter = score(weight, ignore_in_channels=ignore.get(member.module)).cpu()
        total += per_filter[torch.tensor(member.index, dtype=torch.long)].sum(dim=1)
    return total


@register_group_importance("bn_scale")
def bn_scale(model: nn.Module, group: ChannelGroup, ignore: Mapping[str, Collection[int]]) -> torch.Tensor:
    """Liu et al. 2017 (network slimming): ``|gamma|`` of the BatchNorm after the channel, summed over the group's
    BatchNorms (a residual group has one per producer). A group without a BatchNorm with a scale cannot be ranked
    this way: ``UserError``."""
    total = torch.zeros(group.channels, dtype=torch.float64)
    scaled = 0
    for member in group.members:
        weight = getattr(model.get_submodule(member.module), "weight", None) if member.role == "norm" else None
        if weight is None:
            continue
        gamma = weight.detach().abs().to(torch.float64).cpu()
        total += gamma[torch.tensor(member.index, dtype=torch.long)].sum(dim=1)
        scaled += 1
    if not scaled:
        raise UserError(f"prune.importance: bn_scale ranks channels by their BatchNorm's scale, and the channels of "
                        f"{group.producers[0]} go through none; choose another criterion (l1, l2, fpgm)")
    return total


@register_group_importance("random")
def random_scores(model: nn.Module, group: ChannelGroup, ignore: Mapping[str, Collection[int]]) -> torch.Tensor:
    """One uniform draw per channel from torch's global generator, which the run's ``seed`` sets: the control that
    any criterion has to beat. Reproducible for a given seed and plan (groups are scored in input order)."""
    return torch.rand(group.channels, dtype=torch.float64)


@register_group_importance("taylor", needs_gradients=True)
def taylor_scores(model: nn.Module, group: ChannelGroup, ignore: Mapping[str, Collection[int]], *,
                  gradients: TaylorStats) -> torch.Tensor:
    """Molchanov et al. 2019: the first-order Taylor estimate of the loss change when a channel is removed,
    ``(sum over its parameters p of p * dL/dp)^2``, averaged over the batches of ``gradients``.

    The parameters are those of the BatchNorm after the channel (``gamma_c``, ``beta_c``: the paper's best variant,
    "BN scale/shift") where the group has one with an affine scale and shift, else the producers' filters (weight
    row and bias). A group with several such members (a residual group: a BatchNorm per producer; a MobileNet
    channel: one after the expansion conv, one after the depthwise conv) sums their ``p * dL/dp`` per batch *before*
    squaring: removing the channel zeroes all of them at once, and the paper's importance of a set of parameters
    ``S`` is ``(sum_{s in S} g_s w_s)^2`` (its section 3), not the sum of each member's square; the
    paper scores one gate per channel, and a channel of a group is one gate here. ``ignore`` (greedy) is not used:
    the estimate is of the model as it is. Attention heads are not scored this way yet (``UserError``).
    """
    norms = [m for m in group.members if m.role == "norm" and m.module in gradients.per_batch]
    members = norms or [m for m in group.members if m.role in WRITERS]
    if any(m.role == "heads" for m in members):
        raise UserError(f"prune.importance: taylor scores conv and linear channels, and {members[0].module} is an "
                        "attention layer's heads; choose another criterion (l1, l2, fpgm) for it")
    total = torch.zeros(gradients.batches, group.channels, dtype=torch.float64)
    for member in members:
        per_batch = gradients.per_batch.get(member.module)
        rows = model.get_submodule(member.module).weight.shape[0]
        if per_batch is None or per_batch.shape[1] != rows:
            raise ValueError(f"the gradient statistics have no {rows} channels of {member.module}: they were "
                             "computed on another model (compute them again after filters are removed)")
        total += per_batch[:, torch.tensor(member.index, dtype=torch.long)].sum(dim=2)
    return (total**2).mean(dim=0)


def group_scores(model: nn.Module, group: ChannelGroup, *, importance: str = "l1",
                 ignore_in_channels: Mapping[str, Collection[int]] | None = None,
                 gradients: TaylorStats | None = None) -> torch.Tensor:
    """One score per channel (unit) of ``group`` by criterion ``importance``; the smallest are removed first.

    Weight criteria (``l1``, ``l2``, ``fpgm``) score each producer's filters and sum them per channel. A group with
    one producer (a plain conv, a ResNet block's first conv, a MobileNetV2 expansion conv) is scored exactly as Li et
    al. do. A residual group has several producers writing the same channel; summing their scores lets every conv
    that writes the channel vote (Torch-Pruning averages, which ranks the same); a squeeze-and-excitation gate's
    filter on the channel votes the same way, and a unit of several filters (a conv group) sums them. Li et al.
    (§3.4) instead rank such channels by the projection shortcut's 1x1 filters alone; that is a different criterion
    and would be registered as one. Depthwise convs and BatchNorm carry the channel but do not score it, except
    for ``bn_scale``, which sums the group's BatchNorm scales. ``ignore_in_channels``: ``{producer: input channels
    to leave out}`` (the greedy strategy; weight criteria only). ``gradients``: the statistics a criterion that
    :func:`needs_gradients` scores from (:func:`pruning.gradients.taylor_statistics` of the model as it is now);
    without them such a criterion is a ``UserError``.
    """
    criterion = get_importance(importance)
    if importance not in _NEEDS_GRADIENTS:
        return criterion(model, group, ignore_in_channels or {})
    check_gradients(importance, gradients)
    return criterion(model, group, ignore_in_channels or {}, gradients=gradients)
