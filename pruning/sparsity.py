"""Sparsity measured from the weights themselves.

Sparsity is counted from the actual values (``w == 0``), not from the masks: that is what a
checkpoint really holds, so the report also catches a fine-tuning run that let pruned weights drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pruning.weight import KINDS, prunable_weights


def sparsity_report(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Fraction of zero weights per kind, overall and per layer, over the prunable weights.

    Returns ``{"conv": float, "fc": float, "total": float, "layers": {name: {"kind", "numel", "zeros",
    "sparsity"}}}``; a kind the model lacks has no key. With ``masks``, each masked layer also gets
    ``"masked"`` (how many entries its mask prunes), so ``zeros >= masked`` can be checked at a glance.
    """
    layers: dict[str, dict[str, Any]] = {}
    for name, (kind, weight) in prunable_weights(model).items():
        numel = weight.numel()
        zeros = int((weight.detach() == 0).sum())
        layers[name] = {"kind": kind, "numel": numel, "zeros": zeros, "sparsity": zeros / numel if numel else 0.0}
        if masks is not None and name in masks:
            layers[name]["masked"] = int((~masks[name]).sum())

    report: dict[str, Any] = {}
    for kind in KINDS:
        numel = sum(layer["numel"] for layer in layers.values() if layer["kind"] == kind)
        if numel:
            report[kind] = sum(layer["zeros"] for layer in layers.values() if layer["kind"] == kind) / numel
    total = sum(layer["numel"] for layer in layers.values())
    report["total"] = sum(layer["zeros"] for layer in layers.values()) / total if total else 0.0
    report["layers"] = layers
    return report


