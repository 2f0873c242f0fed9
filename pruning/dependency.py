"""Which channels move together: channel groups read off the model's own graph with ``torch.fx``.

Removing output channel ``c`` of a conv is only correct when channel ``c`` disappears from every tensor that
carries it: the conv's BatchNorm, input channel ``c`` of the next conv, the ``H*W`` input features of a linear layer
after ``flatten``, its place inside a ``torch.cat`` read by a later conv, the depthwise conv and the
squeeze-and-excitation gate that act on it, and every other conv whose output is *added* to it. Hand-written
per-architecture tables of these couplings go stale the moment a model changes, so :func:`analyse` traces the model
(``torch.fx.symbolic_trace``), runs a shape pass on an example input (``ShapeProp``) and follows every tensor's
channels as arrays of unit ids (:mod:`pruning.unit_ids`), op by op (:mod:`pruning.channel_rules`, one rule per op):

* ``Conv2d``/``Linear`` read the units of their input along the channel (last, for ``Linear``) axis and write new
  ones; a grouped conv (depthwise included) ties each conv group's input and output channels into one unit, so it
  loses whole conv groups and ``groups`` stays valid (the same rule serves MobileNet's depthwise convs, ResNeXt's and
  RegNet's grouped ones; pruning the same channels of every group instead would keep the cardinality but leave
  units of 1/groups of the channels, too coarse for 32 groups of 4);
* ``BatchNorm`` carries its input's units; activations, pooling, dropout, ``stochastic_depth`` pass them through;
* ``add``/``mul`` of tensors tie the units at the same place (a residual sum; a gate of shape (N, C, 1, 1));
* ``cat``, ``chunk``, ``permute``, ``flatten``/``view``/``reshape`` and slicing move the ids exactly as they move the
  elements, which follows DenseNet's and Inception's concatenations, ShuffleNet's channel shuffle and ConvNeXt's
  channels-last blocks without a rule of their own; where a size is written into the graph as a number the channels
  along it are tied or blocked (:func:`pruning.channel_rules._reshape` says how);
* a parameter used directly (a layer scale) is sliced along the one axis its units vary along.

The units that touch the same modules in the same way form a group (:mod:`pruning.groups`). What cannot be followed
is refused, never guessed: the units are *blocked*, with the reason in the error a user gets:

* ops with no rule (attention, ``einsum``, a module such as ``PReLU``), which block whatever flows into them;
* ``LayerNorm``/``GroupNorm`` over channels (removing one changes the others' outputs, so the pruned model would
  not compute what the masked one does): the residual stream of a ConvNeXt, ViT or Swin;
* zero-padding of the channel dimension (``F.pad`` on dim 1), how the CIFAR ResNet option-A ``PadShortcut`` widens a
  stage's input (Li et al. 2017, §3.4, only prune the first conv of each block there anyway);
* a module with parameters called more than once (shared weights);
* the model's input and output channels, fixed by the data and the loss.

Where the parts live: what a group is, :mod:`pruning.groups`; the rule of every op, :mod:`pruning.channel_rules`;
the user-facing layer names, :mod:`pruning.naming`. This module traces the model and applies the rules.
"""


from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pruning.channel_rules import has_state, rule_for
from pruning.groups import ChannelGraph, ChannelGroup, UnitBuilder, freeze, written_and_read
from pruning.heads import HEAD_MODULES
from pruning.trace_state import TraceContext, arrays, node_shape
from utils.core.errors import UserError

__all__ = ["analyse", "build_groups", "default_example_input"]

# The example input of a model that does not declare its ``input_size`` (C, H, W): an ImageNet image. The CIFAR
# models declare 3x32x32 (models/api.py says what a model class declares for pruning).
DEFAULT_INPUT_SIZE = (3, 224, 224)


def default_example_input(model: nn.Module) -> torch.Tensor:
    """One zero image of the size ``model`` was built for: its declared ``input_size``, else 3x224x224."""
    return torch.zeros(1, *getattr(model, "input_size", DEFAULT_INPUT_SIZE))


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer, with every attention module whose heads are pruned kept whole, as torch's own are."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, HEAD_MODULES) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ... depending on the construct
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"filter pruning finds coupled channels by tracing the model with torch.fx, and "
                        f"{type(model).__name__} does not trace ({first}); prune it with the 'weight' method, "
                        "or make its forward traceable (no data-dependent control flow)") from exc


def _propagate_shapes(gm: fx.GraphModule, model: nn.Module, example_input: torch.Tensor) -> None:
    """Fill ``node.meta["tensor_meta"]`` by one eval-mode forward pass (BN statistics untouched)."""
    modes = {module: module.training for module in model.modules()}
    param = next(model.parameters(), None)
    if param is not None:
        example_input = example_input.to(device=param.device, dtype=param.dtype)
    try:
        model.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"the example input of shape {tuple(example_input.shape)} does not run through "
                        f"{type(model).__name__} ({first}); pass an example_input of the size the model "
                        "was built for") from exc
    finally:
        for module, training in modes.items():
            module.train(training)


def _follow(gm: fx.GraphModule, ctx: TraceContext) -> None:
    """Apply every node's rule in execution order."""
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    for position, node in enumerate(gm.graph.nodes):
        ctx.position = position
        module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if node.op == "placeholder":
            ctx.info[node] = _input_ids(ctx, node_shape(node))
            continue
        if node.op == "output":
            ctx.block_inputs(node, "its channels are the model's output")
            continue
        rule = rule_for(node, module)
        ctx.info[node] = rule(ctx, node, module) if rule is not None else ctx.unknown(node, module)
        if module is not None and calls[node.target] > 1 and has_state(module):
            reason = f"module {node.target} is called more than once (shared weights)"
            ctx.block_inputs(node, reason)
            for ids in arrays(ctx.info[node]):
                ctx.b.block(ids, reason)


def _input_ids(ctx: TraceContext, shape: tuple[int, ...] | None) -> np.ndarray | None:
    """The model's input: one blocked unit per channel (axis 1), or one for a tensor without channels."""
    reason = "its channels are the model's input"
    if not shape:
        return None
    if len(shape) < 2:
        return ctx.fresh(len(shape), reason)
    return ctx.b.new(shape[1], blocked=reason).reshape((1, shape[1]) + (1,) * (len(shape) - 2))


def _keep_params(ctx: TraceContext) -> None:
    """A parameter used directly becomes a member along the one axis its units vary along; one whose units vary
    along several axes cannot be sliced: blocked."""
    roots = ctx.b.roots()
    for name, ids, position in ctx.params:
        units = roots[ids]
        axes = [a for a in range(units.ndim) if units.shape[a] > 1 and
                not np.array_equal(np.broadcast_to(np.take(units, [0], axis=a), units.shape), units)]
        if len(axes) == 1:
            ctx.position = position
            column = np.moveaxis(ids, axes[0], 0).reshape(ids.shape[axes[0]], -1)[:, 0]
            ctx.record(name, "param", column, dim=axes[0])
        elif axes:
            ctx.b.block(ids, f"parameter {name} mixes channels along several dimensions")
        elif units.size > 1:
            ctx.b.block(ids, f"parameter {name} is tied as a whole to channels the analysis does not follow")


def analyse(model: nn.Module, example_input: torch.Tensor | None = None) -> ChannelGraph:
    """Trace ``model`` and return its channel groups (see the module docstring for the rules).

    ``example_input`` (one batch, e.g. ``torch.zeros(1, 3, 32, 32)``) only sets the shapes the trace sees; it
    defaults to :func:`default_example_input`.
    """
    if example_input is None:
        example_input = default_example_input(model)
    gm = _trace(model)
    _propagate_shapes(gm, model, example_input)
    ctx = TraceContext(UnitBuilder(), gm)
    _follow(gm, ctx)
    _keep_params(ctx)
    groups, group_index = freeze(ctx.b, ctx.records)
    writes, reads = written_and_read(ctx.records, group_index)
    return ChannelGraph(groups=groups, convs=list(dict.fromkeys(ctx.convs)), reads=reads, writes=writes,
                        grouped=frozenset(ctx.grouped), linears=tuple(dict.fromkeys(ctx.linears)))


def build_groups(model: nn.Module, example_input: torch.Tensor | None = None) -> list[ChannelGroup]:
    """The channel groups of ``model`` (see :func:`analyse`), ordered by their first producer."""
    return analyse(model, example_input).groups
