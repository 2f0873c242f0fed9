"""Network pruning: which weights, how they are scored, and what is done to them.

Importing the package registers the built-in methods (``weight``, ``filter``), so :func:`get_method` always
knows them; a new method adds a module here and an import below.
"""

from pruning.dependency import (
    ChannelGraph,
    ChannelGroup,
    Consumer,
    LayerNames,
    analyse,
    build_groups,
    default_example_input,
    layer_names,
    prunable_layers,
)
from pruning.filter import STRATEGIES, FilterPruneResult, filters_to_remove, prune_filters
from pruning.importance import get_importance, group_scores, l1_filter_norms, list_importances, register_importance
from pruning.masks import MaskKeeper, apply_masks, validate_masks
from pruning.registry import PruneOutcome, get_method, list_methods, method_options, register_method
from pruning.sparsity import sparsity_report
from pruning.surgery import apply_shapes, pruned_shapes, remove_channels
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
    "PruneOutcome",
    "WeightPruneResult",
    "analyse",
    "apply_masks",
    "apply_shapes",
    "build_groups",
    "compute_masks",
    "default_example_input",
    "filters_to_remove",
    "get_importance",
    "get_method",
    "group_scores",
    "l1_filter_norms",
    "layer_names",
    "list_importances",
    "list_methods",
    "magnitude",
    "method_options",
    "prunable_layers",
    "prunable_weights",
    "prune_filters",
    "prune_weights",
    "pruned_shapes",
    "register_importance",
    "register_method",
    "remove_channels",
    "sparsity_report",
    "validate_masks",
]
