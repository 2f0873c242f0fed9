"""Sensitivity analysis (Li et al. 2017, Figure 2): prune one layer at several ratios, evaluate each, no retraining.

Done naively this is ``layers x ratios`` full evaluations (243 for ResNet-56 at nine ratios). Two facts make
it cheaper without changing a single number:

- Removing filters gives exactly the original network's output with those channels forced to zero (the
  property the filter-pruning tests check for every architecture), so every ratio of one layer can run on the
  *original* weights with a channel mask instead of a physically pruned copy.
- Everything computed before the layer is the same for all ratios. The model is traced with ``torch.fx``,
  the last *cut point* before the layer is found (a value that everything later depends on, with nothing
  earlier used again after it), and there the batch is replicated once per ratio. Each copy is masked with
  its own ratio's channels, and the logits are split back per ratio.

So one pass over the test set evaluates all ratios of a layer, and the shared prefix runs once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn

from pruning.dependency import analyse
from pruning.filter import filters_to_remove
from pruning.groups import READERS, ChannelGraph, Member
from pruning.importance import Scoring, group_scores
from pruning.naming import layer_names
from utils.core.errors import UserError
from utils.core.metrics import Meter


def _replicate(x: torch.Tensor, copies: int) -> torch.Tensor:
    return x.repeat(copies, *([1] * (x.dim() - 1)))


def _last_cut_before(graph: fx.Graph, first_use: fx.Node) -> fx.Node:
    """The latest node before ``first_use`` whose value is all that later nodes need from the past."""
    nodes = list(graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    # For each position i: the earliest position used by any node after i (a node is a cut if that is itself).
    earliest_use_after = [len(nodes)] * (len(nodes) + 1)
    for i in range(len(nodes) - 1, -1, -1):
        used = [position[a] for a in nodes[i].all_input_nodes]
        earliest_use_after[i] = min([earliest_use_after[i + 1], *used])
    cut = nodes[0]  # the input placeholder: always a valid (if useless) cut
    for i, node in enumerate(nodes[: position[first_use]]):
        if node.op != "get_attr" and earliest_use_after[i + 1] >= i and i + 1 < len(nodes):
            cut = node
    return cut


class _VariantModel:
    """``model`` traced, with the batch replicated ``copies`` times at the last cut before ``modules``."""

    def __init__(self, model: nn.Module, modules: Iterable[str], copies: int):
        traced = fx.symbolic_trace(model)
        targets = set(modules)
        first = next(n for n in traced.graph.nodes if n.op == "call_module" and n.target in targets)
        cut = _last_cut_before(traced.graph, first)
        with traced.graph.inserting_after(cut):
            copied = traced.graph.call_function(_replicate, (cut, copies))
        cut.replace_all_uses_with(copied, delete_user_cb=lambda user: user is not copied)
        traced.recompile()
        self.module = traced


def _zero_hook(variant: nn.Module, member: Member, gone_of: Sequence[Sequence[int]], device: torch.device
               ) -> torch.utils.hooks.RemovableHandle:
    """A hook that zeroes, in copy ``i`` of the replicated batch, the positions of units ``gone_of[i]`` where
    ``member`` writes them (its output) or reads them (its input): the masked copy then computes what the model
    with those channels removed computes (see :func:`pruning.filter.filter_masks`)."""
    module = variant.get_submodule(member.module)
    dim = -1 if isinstance(module, nn.Linear) else 1
    size = module.weight.shape[1 if member.role in READERS else 0] if module.weight is not None else module.num_features
    masks = torch.ones(len(gone_of), size, device=device)
    for i, units in enumerate(gone_of):
        masks[i, member.positions(units)] = 0.0

    def zero(tensor: torch.Tensor) -> torch.Tensor:
        per_copy = tensor.view(len(gone_of), -1, *tensor.shape[1:])
        shape = [1] * per_copy.dim()
        shape[0], shape[dim if dim < 0 else dim + 1] = len(gone_of), size
        return (per_copy * masks.view(shape)).view(tensor.shape)

    if member.role in READERS:
        return module.register_forward_pre_hook(lambda _module, inputs: (zero(inputs[0]), *inputs[1:]))
    return module.register_forward_hook(lambda _module, _inputs, output: zero(output))


def layer_sensitivity(model: nn.Module, layer: str, ratios: Sequence[float], loader: Iterable, device: torch.device,
                      *, graph: ChannelGraph | None = None, example_input: torch.Tensor | None = None,
                      importance: str | Scoring = "l1") -> list[dict[str, Any]]:
    """Top-1/top-5/loss of ``model`` with the lowest-scored ``ratio`` of ``layer``'s filters (``importance``, L1 by
    default; a :class:`~pruning.importance.Scoring` for ``taylor``, with the gradient statistics of ``model``) removed,
    per ratio.

    The same filters :func:`pruning.filter.prune_filters` would remove (``ceil(r * n)`` of them, smallest L1
    first); the model itself is not modified. Returns one dict per ratio: ``ratio, filters, kept, top1, top5,
    loss``.
    """
    graph = graph if graph is not None else analyse(model, example_input)
    names = layer_names(model, graph)
    module = names.module(names.resolve(layer)[0])
    group = graph.group_of(module)
    if any(member.role == "heads" for member in group.members):
        raise UserError(f"sensitivity.layers: {layer} is an attention layer; the sensitivity sweep prunes channels, "
                        "not attention heads, yet: leave it out of sensitivity.layers")
    scoring = importance if isinstance(importance, Scoring) else Scoring(importance)
    order = torch.argsort(group_scores(model, group, importance=scoring.importance, gradients=scoring.gradients),
                          stable=True)
    gone_of, kept = [], []
    for ratio in ratios:
        gone = min(filters_to_remove(group.channels, ratio), group.channels - 1)  # a layer keeps one filter
        gone_of.append(order[:gone].tolist())
        kept.append(group.channels - gone)
    members = [m for m in group.members if m.role != "param"]
    variant = _VariantModel(model, [m.module for m in members], len(ratios)).module
    handles = [_zero_hook(variant, member, gone_of, device) for member in members]
    criterion = nn.CrossEntropyLoss()
    meters = [Meter(device) for _ in ratios]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, target in loader:
                images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
                # Replication multiplies the batch by the number of ratios: keep what runs at once near the
                # loader's batch, so activations stay as cache- and memory-friendly as a plain evaluation.
                step = max(1, images.size(0) // len(ratios))
                for chunk, chunk_target in zip(images.split(step), target.split(step), strict=True):
                    outputs = variant(chunk).view(len(ratios), chunk.size(0), -1)
                    for meter, output in zip(meters, outputs, strict=True):
                        meter.update(criterion(output, chunk_target), output, chunk_target)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    per = group.filters_per_unit(module)  # filters of the layer, not units
    return [{"ratio": r, "filters": group.channels * per, "kept": k * per, **m.result()}
            for r, k, m in zip(ratios, kept, meters, strict=True)]
