"""Gradient statistics for the criteria that need data: ``sum p * dL/dp`` per output channel, per batch.

Molchanov et al. (2019, "Importance Estimation for Neural Network Pruning") estimate how much the loss changes when
a set of parameters is zeroed by the first-order Taylor term ``sum_s g_s w_s`` over the set, squared. What the
criterion needs from the data is therefore, for every module and every batch, the per-output-channel sums of
``p * dL/dp`` over the module's parameters; :func:`taylor_statistics` computes them and
:func:`pruning.importance.taylor_scores` squares and averages them per channel group.

The model is run in **eval mode**: BatchNorm normalises with its running statistics, which are the ones the pruned
model is evaluated with, and its buffers do not move (train mode would update ``running_mean``/``running_var`` with
every batch, so scoring would change the model it scores). Dropout is off too, so the statistics of a batch do not
depend on the global random generator. The gradients come from :func:`torch.autograd.grad`, never ``.backward()``:
no ``.grad`` is written, and what a training loop left there is still there afterwards. Nothing here moves a weight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TaylorStats", "channel_contributions", "taylor_statistics"]

# Modules whose parameters are per output channel along dimension 0 (weight rows and bias entries): what a channel
# group's producers and norms are made of.
_SCORED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TaylorStats:
    """``per_batch[module]``: a float64 CPU tensor ``(batches, output channels)``, row ``b`` the sums over each output
    channel's parameters (weight row and bias entry) of ``p * dL/dp`` on batch ``b``. Valid for the model as it was
    when they were computed: after filters are physically removed the shapes differ (compute them again)."""

    per_batch: dict[str, torch.Tensor]
    batches: int


def channel_contributions(module: nn.Module, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """``sum p * g`` per output channel (dimension 0) over ``module``'s ``weight`` and ``bias``, in float64;
    ``grads``: ``{"weight": g, "bias": g}`` for those that have one."""
    total = None
    for name, grad in grads.items():
        product = (getattr(module, name).detach().to(torch.float64) * grad.detach().to(torch.float64))
        per_channel = product.flatten(1).sum(dim=1) if product.dim() > 1 else product
        total = per_channel if total is None else total + per_channel
    assert total is not None
    return total.cpu()


def _scored_parameters(model: nn.Module) -> dict[str, dict[str, nn.Parameter]]:
    """``{module name: {"weight": p, "bias": p}}`` of every conv, linear and normalisation layer, for the parameters
    that exist and require a gradient."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, _SCORED):
            params = {n: p for n in ("weight", "bias") if isinstance(p := getattr(module, n, None), nn.Parameter)
                      and p.requires_grad}
            if params:
                found[name] = params
    return found


def taylor_statistics(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                      loss: Loss | None = None, device: torch.device | None = None) -> TaylorStats:
    """Per-batch, per-output-channel ``sum p * dL/dp`` of every conv, linear and normalisation layer of ``model``.

    ``batches``: ``(images, targets)`` pairs (e.g. a few from the training loader), moved to ``device`` (default: the
    device of the model's first parameter; the model itself is not moved). ``loss``: default cross-entropy, the mean
    over the batch. The model is evaluated in eval mode and left in the mode it was in, with its weights, buffers and
    ``.grad`` as they were (see the module docstring). No batch at all is a ``ValueError``.
    """
    loss = loss or nn.functional.cross_entropy
    scored = _scored_parameters(model)
    flat = [(name, key, p) for name, params in scored.items() for key, p in params.items()]
    device = device or next(model.parameters()).device
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in scored}
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for images, target in batches:
                value = loss(model(images.to(device)), target.to(device))
                grads = torch.autograd.grad(value, [p for _, _, p in flat], allow_unused=True)
                per_module: dict[str, dict[str, torch.Tensor]] = {name: {} for name in scored}
                for (name, key, p), grad in zip(flat, grads, strict=True):
                    per_module[name][key] = torch.zeros_like(p) if grad is None else grad
                for name, module_grads in per_module.items():
                    rows[name].append(channel_contributions(model.get_submodule(name), module_grads))
    finally:
        model.train(was_training)
    count = len(next(iter(rows.values()), []))
    if not count:
        raise ValueError("taylor_statistics: no batch to compute gradients on")
    return TaylorStats(per_batch={name: torch.stack(r) for name, r in rows.items()}, batches=count)
