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

Criteria are registered by name (:func:`register_importance`) so that a new one touches only this file;
the grouping (:mod:`pruning.dependency`) and the removal (:mod:`pruning.surgery`) do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Protocol

import torch
from torch import nn

from pruning.groups import WRITERS, ChannelGroup
from pruning.heads import rows_of_heads
from utils.core.registry import Registry

__all__ = ["FilterImportance", "get_importance", "group_scores", "l1_filter_norms", "list_importances",
           "register_importance"]


class FilterImportance(Protocol):
    """``(conv weight, *, ignore_in_channels) -> one score per output filter``; higher = more important."""

    def __call__(self, conv_weight: torch.Tensor, *, ignore_in_channels: Collection[int] | None = None
                 ) -> torch.Tensor: ...


_IMPORTANCE: Registry[FilterImportance] = Registry("filter importance")


def register_importance(name: str) -> Callable[[FilterImportance], FilterImportance]:
    """Register a filter-importance criterion under ``name``."""
    return _IMPORTANCE.register(name)


def list_importances() -> list[str]:
    """Names of the registered criteria, sorted."""
    return _IMPORTANCE.names()


def get_importance(name: str) -> FilterImportance:
    """The criterion registered as ``name``; an unknown name is a :class:`UserError` listing the known ones."""
    return _IMPORTANCE.get(name)


def _kept_inputs(weight: torch.Tensor, ignore_in_channels: Collection[int] | None) -> torch.Tensor:
    if not ignore_in_channels:
        return weight
    keep = torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
    keep[torch.as_tensor(sorted(ignore_in_channels), dtype=torch.long, device=weight.device)] = False
    return weight[:, keep]


@register_importance("l1")
def l1_filter_norms(conv_weight: torch.Tensor, *, ignore_in_channels: Collection[int] | None = None
                    ) -> torch.Tensor:
    """``sum |w|`` over (in, kh, kw) for every output filter of a ``groups == 1`` conv weight, in float64.

    ``ignore_in_channels``: input channels whose kernels are left out of the sums (the greedy strategy
    passes the channels already removed from the previous layer).
    """
    weight = _kept_inputs(conv_weight.detach(), ignore_in_channels)
    return weight.abs().to(torch.float64).flatten(1).sum(dim=1)


def group_scores(model: nn.Module, group: ChannelGroup, *, importance: str = "l1",
                 ignore_in_channels: Mapping[str, Collection[int]] | None = None) -> torch.Tensor:
    """One score per channel (unit) of ``group``: the sum of its producers' filter scores (a unit written by
    several filters of one producer, as when a grouped conv reads it, sums them).

    A group with one producer (a plain conv, a ResNet block's first conv, a MobileNetV2 expansion conv)
    is scored exactly as Li et al. do. A residual group has several producers writing the same channel;
    summing their scores lets every conv that writes the channel vote (Torch-Pruning averages, which ranks
    the same); a squeeze-and-excitation gate's filter on the channel votes the same way. Li et al. (§3.4)
    instead rank such channels by the projection shortcut's 1x1 filters alone; that is a different criterion
    and would be registered as one. Depthwise convs and BatchNorm carry the
    channel but do not score it. ``ignore_in_channels``: ``{producer: input channels to leave out}``.
    """
    score_of = get_importance(importance)
    ignore = ignore_in_channels or {}
    total = torch.zeros(group.channels, dtype=torch.float64)
    for member in group.members:
        if member.role not in WRITERS:
            continue
        module = model.get_submodule(member.module)
        weight = rows_of_heads(module) if member.role == "heads" else module.weight
        per_filter = score_of(weight, ignore_in_channels=ignore.get(member.module)).cpu()
        total += per_filter[torch.tensor(member.index, dtype=torch.long)].sum(dim=1)
    return total
