"""Magnitude weight pruning (Han et al. 2015, "Learning both Weights and Connections").

Kept in the three parts the style guide asks for, so that a new criterion or grouping touches one:

* **which** weights are ranked together: :func:`prunable_weights` finds them (conv and linear
  weights; biases and BatchNorm are never pruned) and the ``scope`` groups them (:func:`_groups`);
* **how** they are scored: :func:`magnitude`, the absolute value;
* **what** is done: the ``k`` lowest-scored weights of each group are masked (:func:`_select_smallest`)
  and zeroed (:func:`pruning.masks.apply_masks`), once (one-shot); :func:`prune_weights_further` prunes an
  already pruned model to a higher ratio, for the schedules of :mod:`pruning.schedule`.

Exactness matters more than it looks: the sweep table compares ratios 0.3, 0.4, ... and a threshold
compare (``|w| <= t``) over-prunes whenever weights tie (a half-pruned model is full of zeros, which
all tie). So each group of ``n`` weights loses exactly ``k = round(percent * n)`` of them.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from pruning.masks import apply_masks
from utils.core import choices
from utils.core.errors import UserError

__all__ = ["KINDS", "SCOPES", "WeightPruneResult", "apply_masks", "check_percent", "check_scope", "compute_masks",
           "magnitude", "prunable_weights", "prune_weights", "prune_weights_further"]

SCOPES = choices.WEIGHT_SCOPES
"""``layer_type``: one threshold for all conv weights, one for all linear weights (Han et al.'s
setting and the research code's); ``global``: one for both; ``layer``: each layer its own."""

# Module type -> kind. Order matters only for subclasses of both, which do not exist in torch.
_KIND_OF_MODULE: tuple[tuple[type[nn.Module], str], ...] = ((nn.Conv2d, "conv"), (nn.Linear, "fc"))
KINDS = tuple(kind for _, kind in _KIND_OF_MODULE)


def prunable_weights(model: nn.Module) -> dict[str, tuple[str, nn.Parameter]]:
    """``{qualified parameter name: (kind, weight)}`` in model order; kind is ``"conv"`` or ``"fc"``.

    Every ``nn.Conv2d`` (grouped and depthwise included) and ``nn.Linear`` weight, and the input projections of an
    ``nn.MultiheadAttention`` (as ``fc``; its output projection is a Linear). Biases and
    normalisation parameters are left alone: they are a tiny share of the weights and pruning them
    shifts activations instead of removing connections. A weight shared by two modules is listed once,
    under the name ``named_parameters()`` gives it, so that masks line up with the state dict.
    """
    found: dict[str, tuple[str, nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        kind = next((k for cls, k in _KIND_OF_MODULE if isinstance(module, cls)), None)
        weights = [("weight", getattr(module, "weight", None))] if kind is not None else []
        if isinstance(module, nn.MultiheadAttention):  # its input projections are parameters, not Linear modules
            kind = "fc"
            weights = [(n, getattr(module, n)) for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight",
                                                         "v_proj_weight")]
        for attr, weight in weights:
            if weight is None or id(weight) in seen:
                continue
            seen.add(id(weight))
            found[f"{module_name}.{attr}" if module_name else attr] = (kind, weight)
    return found


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """The importance of each weight: ``|w|``, flattened (a detached copy, safe to modify)."""
    return weight.detach().abs().flatten()


def check_percent(percent: object) -> float:
    """``percent`` as a float in [0, 1), or a :class:`UserError` naming the config key."""
    ok = isinstance(percent, numbers.Real) and not isinstance(percent, bool) and 0 <= percent < 1
    if not ok:
        raise UserError(f"prune.percent: expected a number in [0, 1), got {percent!r}")
    return float(percent)  # type: ignore[arg-type]


def check_scope(scope: object) -> str:
    """``scope`` if it is one of :data:`SCOPES`, else a :class:`UserError` listing them."""
    if scope not in SCOPES:
        raise UserError(f"prune.scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
    return scope  # type: ignore[return-value]


@dataclass(frozen=True)
class WeightPruneResult:
    """Outcome of magnitude pruning.

    ``masks``: ``{parameter name: bool tensor}``, True = kept, one per prunable weight, on the
    weight's device. ``thresholds``: the magnitude at which each group was cut, i.e. the k-th
    smallest ``|w|`` (0.0 when nothing is pruned). Keys by scope:

    * ``layer_type``: ``"conv"`` and ``"fc"``, each only when the model has weights of that kind;
    * ``global``: ``"global"``, repeated under ``"conv"``/``"fc"`` (kinds present) so a table can show them;
    * ``layer``: one key per parameter name; no ``"conv"``/``"fc"``.
    """

    percent: float
    scope: str
    masks: dict[str, torch.Tensor]
    thresholds: dict[str, float]


def _groups(weights: dict[str, tuple[str, nn.Parameter]], scope: str) -> dict[str, list[str]]:
    """Which weights share a threshold: ``{group key: [parameter names]}``."""
    if scope == "layer":
        return {name: [name] for name in weights}
    if scope == "global":
        return {"global": list(weights)}
    groups: dict[str, list[str]] = {}
    for name, (kind, _) in weights.items():
        groups.setdefault(kind, []).append(name)
    return groups


def _select_smallest(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """Exactly the ``k`` lowest of the 1-d ``scores`` (bool, True = selected) and the k-th lowest value.

    ``torch.kthvalue`` finds the threshold by selection, O(n) on the scores' own device, instead of
    sorting 21M values. Entries tied with the threshold are selected in index order until ``k`` are
    taken; the later tied ones are kept. Zeros from an earlier pruning are the lowest scores and tie
    at 0, so pruning again with the same settings chooses the same weights (idempotent).
    """
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool), 0.0
    threshold = torch.kthvalue(scores, k).values
    selected = scores <= threshold
    excess = int(selected.sum()) - k
    if excess > 0:  # ties at the threshold: take only the first (tied - excess) of them
        tied = scores == threshold
        wanted = int(tied.sum()) - excess
        rank = tied.to(torch.int32).cumsum(0, dtype=torch.int32)  # 1-based rank among tied entries
        selected = (scores < threshold) | (tied & (rank <= wanted))
    return selected, float(threshold)


def compute_masks(model: nn.Module, percent: float, scope: str, *,
                  pruned: Mapping[str, torch.Tensor] | None = None) -> WeightPruneResult:
    """Decide which weights to prune, without touching the model.

    In each group (see :data:`SCOPES`) of ``n`` weights exactly ``k = round(percent * n)`` weights
    with the smallest ``|w|`` are pruned (Python's ``round``: halves go to the even integer), so
    the achieved sparsity equals the request to within half a weight per group.

    ``pruned``: masks of an earlier pruning (True = kept). Their pruned weights rank below every other one,
    so they stay pruned as long as ``k`` covers them. They are zero and would rank first anyway; this only
    makes it certain when a kept weight happens to be exactly zero too.
    """
    percent = check_percent(percent)
    scope = check_scope(scope)
    weights = prunable_weights(model)
    if not weights:
        raise UserError(f"the model ({type(model).__name__}) has no nn.Conv2d or nn.Linear weights to prune")

    masks: dict[str, torch.Tensor] = {}
    thresholds: dict[str, float] = {}
    with torch.no_grad():
        for key, names in _groups(weights, scope).items():
            params = [weights[name][1] for name in names]
            # cat-then-abs_ keeps one copy of a group's weights in memory, not two.
            if len(params) == 1:
                scores = magnitude(params[0])
            else:
                scores = torch.cat([p.detach().flatten() for p in params]).abs_()
            if pruned:
                earlier = torch.cat([~pruned[name].to(scores.device).flatten() if name in pruned else
                                     torch.zeros(weights[name][1].numel(), dtype=torch.bool, device=scores.device)
                                     for name in names])
                scores.masked_fill_(earlier, -1.0)
            selected, threshold = _select_smallest(scores, round(percent * scores.numel()))
            thresholds[key] = max(threshold, 0.0)  # -1 only marks the earlier pruned weights
            kept = ~selected
            for name, part in zip(names, kept.split([p.numel() for p in params]), strict=True):
                # clone: each mask owns its storage, so saving one mask does not save the whole group.
                masks[name] = part.view(weights[name][1].shape).clone()

    if scope == "global":
        present = {kind for kind, _ in weights.values()}
        thresholds.update({kind: thresholds["global"] for kind in KINDS if kind in present})
    return WeightPruneResult(percent=percent, scope=scope, masks={name: masks[name] for name in weights},
                             thresholds=thresholds)


def prune_weights_further(model: nn.Module, masks: Mapping[str, torch.Tensor], *, percent: float,
                          scope: str = "layer_type") -> WeightPruneResult:
    """Prune an already pruned ``model`` (``masks``: what is pruned now) to ``percent``, in place.

    The ranking is redone on the current weights (after retraining, the weights that matter have changed), as in
    Han et al.'s iterative pruning and Zhu & Gupta's gradual pruning; the weights pruned before stay pruned, so
    the new masks only grow. A ``percent`` below what ``masks`` already prunes in a group is a programming error.
    """
    result = compute_masks(model, percent, scope, pruned=masks)
    for name, mask in masks.items():
        if bool((mask.to(result.masks[name].device) < result.masks[name]).any()):
            raise ValueError(f"{name}: pruning to {percent:g} would revive weights pruned before; a schedule's "
                             "ratios must not decrease")
    apply_masks(model, result.masks)
    return result


def prune_weights(model: nn.Module, *, percent: float, scope: str = "layer_type") -> WeightPruneResult:
    """Magnitude-prune ``model`` in place: :func:`compute_masks`, then zero the pruned weights.

    Fine-tuning afterwards must hold them at zero: ``MaskKeeper(model, result.masks).attach(optimizer)``.
    """
    result = compute_masks(model, percent, scope)
    apply_masks(model, result.masks)
    return result
