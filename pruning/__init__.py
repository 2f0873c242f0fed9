"""Network pruning: which weights, how they are scored, and what is done to them.

Importing the package registers the built-in methods (``weight``), so :func:`get_method` always
knows them; a new method adds a module here and an import below.
"""

from pruning.masks import MaskKeeper, apply_masks, validate_masks
from pruning.registry import PruneOutcome, get_method, list_methods, method_options, register_method
from pruning.report import format_layer_table, format_sweep_table, sparsity_report
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
    "MaskKeeper",
    "PruneOutcome",
    "WeightPruneResult",
    "apply_masks",
    "compute_masks",
    "format_layer_table",
    "format_sweep_table",
    "get_method",
    "list_methods",
    "magnitude",
    "method_options",
    "prunable_weights",
    "prune_weights",
    "register_method",
    "sparsity_report",
    "validate_masks",
]
