"""Attention heads as units of the channel trace: which modules hold heads, where each head sits in their
parameters, and how a module with fewer heads is made. One table for every kind of attention
(:mod:`pruning.attention`: ``nn.MultiheadAttention``; :mod:`pruning.window_attention`: Swin's), so the trace, the
scoring, the masks and the surgery ask here and never about a class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from pruning.attention import (
    ATTENTION,
    MHA_SLICES,
    AttentionHeads,
    count_heads,
    head_rows,
    head_slices,
    param_at,
    slice_heads,
)
from pruning.window_attention import (
    GRID_ATTENTION,
    GRID_SLICES,
    WINDOW_ATTENTION,
    WINDOW_SLICES,
    GridAttentionHeads,
    WindowAttentionHeads,
    slice_grid_heads,
    slice_window_heads,
)

__all__ = [
    "ATTENTION",
    "HEAD_MODULES",
    "PRUNED_ATTENTION",
    "QUERY_WEIGHTS",
    "count_heads",
    "head_dim",
    "heads_of",
    "rows_of_heads",
    "slice_attention",
]

# kind -> (module classes, where a head sits in each parameter, the query rows' parameter, what makes fewer heads)
_KINDS: tuple[tuple[tuple[type[nn.Module], ...], Sequence[tuple[str, int, str]], str,
                    Callable[[nn.Module, set[int]], nn.Module]], ...] = (
    (ATTENTION, MHA_SLICES, "in_proj_weight", slice_heads),
    (WINDOW_ATTENTION, WINDOW_SLICES, "qkv.weight", slice_window_heads),
    (GRID_ATTENTION, GRID_SLICES, "to_qkv.weight", slice_grid_heads),
)

HEAD_MODULES = tuple(cls for classes, *_ in _KINDS for cls in classes)
"""Every module class whose heads are pruned."""
QUERY_WEIGHTS = tuple(query for _, _, query, _ in _KINDS)
"""The parameters whose rows are the heads' query, key and value projections, one name per kind."""
PRUNED_ATTENTION = (AttentionHeads, WindowAttentionHeads, GridAttentionHeads)
"""The classes pruning puts in place of an attention module (traced whole, like torch's own modules)."""


def _kind(module: nn.Module) -> tuple:
    return next(kind for kind in _KINDS if isinstance(module, kind[0]))


def heads_of(module: nn.Module, heads: Sequence[int]) -> list[tuple[str, int, list[int]]]:
    """``(parameter path, dimension, positions)`` of ``heads`` in every parameter of ``module`` that holds them."""
    return head_slices(module, heads, _kind(module)[1])


def rows_of_heads(module: nn.Module) -> torch.Tensor:
    """One row per head: its query, key and value weights, for scoring it like a filter."""
    return head_rows(module, _kind(module)[2])


def head_dim(module: nn.Module) -> int:
    """The width of one head of ``module``."""
    return param_at(module, _kind(module)[2]).shape[0] // 3 // count_heads(module)


def slice_attention(module: nn.Module, drop: set[int]) -> nn.Module:
    """A module computing what ``module`` computes without heads ``drop``."""
    return _kind(module)[3](module, drop)
