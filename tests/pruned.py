"""Physically filter-pruned CIFAR models of given widths, built the one way production rebuilds them.

A pruned architecture is rebuilt from the per-module sizes its checkpoint stores (``arch["shapes"]``):
build the full model, then :func:`pruning.surgery.apply_shapes` (``utils.checkpoint.load.build_model_from_arch``).
Tests that need a model of given widths make those sizes by pruning a full model with the library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from models import VGGCifar, get_model
from pruning import analyse, apply_shapes, pruned_shapes, remove_channels


def rebuilt_pruned(name: str, widths: Sequence[int], **options: Any) -> nn.Module:
    """Model ``name`` (with ``options``) whose filter-prunable convs have ``widths`` output channels.

    ``widths``: one per conv for VGG-16 (``features.conv1`` ... ``conv13``), one per residual block for the CIFAR
    ResNets (the block's first conv, the only one a block may lose filters from alone). The full model keeps the
    first ``width`` channels of each, and a freshly built model takes the pruned sizes with ``apply_shapes``, as a
    checkpoint is loaded; its weights are freshly initialised.
    """
    model = get_model(name, **options)
    if isinstance(model, VGGCifar):
        convs = model.conv_layer_names()
    else:
        convs = [f"{block}.conv1" for block, _ in model.blocks()]
    graph = analyse(model)
    for conv, width in zip(convs, widths, strict=True):
        remove_channels(model, graph.group_of(conv), range(width))
    rebuilt = get_model(name, **options)
    apply_shapes(rebuilt, pruned_shapes(model))
    return rebuilt
