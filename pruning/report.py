"""Sparsity measured from the weights themselves, and the markdown tables the research code publishes.

Sparsity is counted from the actual values (``w == 0``), not from the masks: that is what a
checkpoint really holds, so the report also catches a fine-tuning run that let pruned weights drift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def _markdown(rows: Sequence[Sequence[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _threshold_cell(row: Mapping[str, Any], kind: str) -> str:
    thresholds: Mapping[str, float] = row.get("thresholds", {})
    if kind in thresholds:
        value = float(thresholds[kind])
        return "0" if value == 0 else f"{value:.2e}"
    # layer scope: thresholds are keyed by parameter name, one per layer: too many for a table cell.
    if row.get("scope") == "layer" or any(key not in (*KINDS, "global") for key in thresholds):
        return "per layer"
    return "-"


def format_sweep_table(baseline_top1: float, rows: Sequence[Mapping[str, Any]]) -> str:
    """The pruning-sweep table in markdown: one column per ratio after the unpruned baseline.

    Each row is ``{"prune_percent": float, "top1": float (percent), "thresholds": {"conv": ..,
    "fc": ..}}``, optionally with ``"top1_finetuned"`` (adds a ``top1 (fine-tuned)`` row, "-" where
    missing) and ``"scope"`` (``"layer"`` shows "per layer" in the threshold rows). Accuracy has two
    decimals, thresholds three significant digits (``2.98e-02``); the baseline's thresholds are 0.
    """
    table = [
        ["ratio", "Baseline", *(f"{float(row['prune_percent']):g}" for row in rows)],
        ["top1 (without fine-tune)", f"{baseline_top1:.2f}", *(f"{float(row['top1']):.2f}" for row in rows)],
        ["conv threshold", "0", *(_threshold_cell(row, "conv") for row in rows)],
        ["fc threshold", "0", *(_threshold_cell(row, "fc") for row in rows)],
    ]
    if any(row.get("top1_finetuned") is not None for row in rows):
        finetuned = [f"{row['top1_finetuned']:.2f}" if row.get("top1_finetuned") is not None else "-" for row in rows]
        table.append(["top1 (fine-tuned)", f"{baseline_top1:.2f}", *finetuned])
    return _markdown(table)


def format_layer_table(report: Mapping[str, Any]) -> str:
    """Per-layer sparsity of a :func:`sparsity_report` in markdown, with a total per kind and overall."""
    table = [["layer", "kind", "weights", "zeros", "sparsity"]]
    layers: Mapping[str, Mapping[str, Any]] = report["layers"]

    def line(label: str, kind: str, numel: int, zeros: int) -> list[str]:
        return [label, kind, str(numel), str(zeros), f"{100 * zeros / numel:.2f}%" if numel else "-"]

    for name, layer in layers.items():
        table.append(line(name, layer["kind"], layer["numel"], layer["zeros"]))
    for kind in KINDS:
        of_kind = [layer for layer in layers.values() if layer["kind"] == kind]
        if of_kind:
            table.append(line(f"all {kind}", kind, sum(x["numel"] for x in of_kind), sum(x["zeros"] for x in of_kind)))
    table.append(line("total", "", sum(x["numel"] for x in layers.values()), sum(x["zeros"] for x in layers.values())))
    return _markdown(table)
