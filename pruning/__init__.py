"""Network pruning: which weights, how they are scored, and what is done to them.

Which channels move together: :mod:`pruning.dependency` (the trace, with one rule per op in
:mod:`pruning.channel_rules`), :mod:`pruning.groups` (the groups), :mod:`pruning.heads` (attention heads as units) and
:mod:`pruning.naming` (the names users write). How they are scored: :mod:`pruning.importance`. What is done:
:mod:`pruning.weight` (masks), :mod:`pruning.filter` with :mod:`pruning.surgery` (physical removal), on a
schedule (:mod:`pruning.schedule`). The experiment runner picks a method by ``prune.method``
(the ``METHODS`` registry of ``utils/app/session.py``).
"""

from pruning.dependency import analyse, build_groups, default_example_input
from pruning.filter import STRATEGIES, FilterPruneResult, filters_to_remove, prune_filters
from pruning.groups import ChannelGraph, ChannelGroup, Consumer
from pruning.importance import get_importance, group_scores, l1_filter_norms, list_importances, register_importance
from pruning.masks import MaskKeeper, apply_masks, validate_masks
from pruning.naming import LayerNames, layer_names, prunable_layers
from pruning.sparsity import sparsity_report
from pruning.surgery import apply_shapes, pruned_shapes, remove_channels, remove_units
from pruning.weight import (
    KINDS,
    SCOPES,
    WeightPruneResult,
    compute_masks,
    magnitude,
    prunable_weights,
    prune_weights,
)

__all__ = [
    "KINDS",
    "SCOPES",
    "STRATEGIES",
    "ChannelGraph",
    "ChannelGroup",
    "Consumer",
    "FilterPruneResult",
    "LayerNames",
    "MaskKeeper",
    "WeightPruneResult",
    "analyse",
    "apply_masks",
    "apply_shapes",
    "build_groups",
    "compute_masks",
    "default_example_input",
    "filters_to_remove",
    "get_importance",
    "group_scores",
    "l1_filter_norms",
    "layer_names",
    "list_importances",
    "magnitude",
    "prunable_layers",
    "prunable_weights",
    "prune_filters",
    "prune_weights",
    "pruned_shapes",
    "register_importance",
    "remove_channels",
    "remove_units",
    "sparsity_report",
    "validate_masks",
]
