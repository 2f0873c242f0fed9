"""How channel identity flows through each op of a traced model: the rules :func:`pruning.dependency.analyse`
applies node by node (the module docstring of :mod:`pruning.dependency` lists them and what they cannot see).

A rule takes the :class:`TraceContext` (what flows along every edge so far, and the draft groups), the node and
its module (``None`` for a function or method call) and returns what flows out: a :class:`Chan`, or ``None``
for a tensor whose channels are not followed. An op with no rule blocks the groups flowing into it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from pruning.groups import Consumer, GroupBuilder

__all__ = ["Chan", "Rule", "TraceContext", "has_state", "node_shape", "rule_for"]


class Chan(NamedTuple):
    """What flows along a graph edge: a group id, and ``None`` for an (N, C, H, W) tensor or the
    per-channel feature count for a tensor flattened to (N, C*H*W)."""

    group: int
    spatial: int | None


def node_shape(node: Any) -> tuple[int, ...] | None:
    """The output shape the shape pass recorded for ``node`` (None: not a node, or not a tensor)."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _where(node: fx.Node) -> str:
    """The module a node belongs to, for messages (``layer2.0.shortcut``)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack), None) or "the model's own forward"


def _what(node: fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        return f"{type(module).__name__} {node.target}"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{name} in {_where(node)}"


class TraceContext:
    """The state of one trace: what flows along every edge so far, the draft groups, and which groups every
    conv reads and writes."""

    def __init__(self, builder: GroupBuilder) -> None:
        self.b = builder
        self.info: dict[fx.Node, Chan | None] = {}
        self.convs: list[str] = []  # every Conv2d call, in execution order
        self.reads: dict[str, int | None] = {}  # conv -> draft group of its input channels
        self.writes: dict[str, int] = {}  # conv -> draft group of its output channels

    def chan(self, arg: Any) -> Chan | None:
        return self.info.get(arg) if isinstance(arg, fx.Node) else None

    def first(self, node: fx.Node) -> Chan | None:
        return self.chan(node.args[0]) if node.args else None

    def tracked(self, node: fx.Node) -> list[Chan]:
        return [chan for arg in node.all_input_nodes if (chan := self.info.get(arg)) is not None]

    def block_inputs(self, node: fx.Node, reason: str) -> None:
        for chan in self.tracked(node):
            self.b.block(chan.group, reason)

    def unknown(self, node: fx.Node, module: nn.Module | None = None) -> None:
        self.block_inputs(node, f"its channels go through {_what(node, module)}, which the channel analysis "
                                "does not follow")


Rule = Callable[[TraceContext, fx.Node, nn.Module | None], "Chan | None"]


def _passthrough(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Chan | None:
    """Elementwise ops, pooling, dropout, identity: channel ``c`` stays channel ``c``."""
    x = ctx.first(node)
    if x is None:
        return None
    shape, before = node_shape(node), node_shape(node.args[0])
    same = shape is not None and before is not None and len(shape) == len(before) and shape[1] == before[1]
    if not same:
        ctx.unknown(node, module)
        return None
    return x


def _conv(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Chan | None:
    assert isinstance(module, nn.Conv2d)
    name, x = str(node.target), ctx.first(node)
    ctx.convs.append(name)
    if x is not None and x.spatial is not None:
        ctx.unknown(node, module)
        x = None
    ctx.reads[name] = x.group if x is not None else None
    depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
    if depthwise:
        if x is None:  # input not followed: its channels cannot change, and neither can this conv's
            out = ctx.b.new(module.out_channels, blocked=f"depthwise conv {name} reads channels that are not followed")
            ctx.writes[name] = out
            return Chan(out, None)
        ctx.b.draft(x.group).depthwise.append(name)
        ctx.writes[name] = x.group
        return x
    if module.groups > 1:  # grouped, not depthwise: channels would have to go in whole groups
        reason = f"grouped conv {name} (groups={module.groups}) is not supported by filter pruning"
        if x is not None:
            ctx.b.block(x.group, reason)
        out = ctx.b.new(module.out_channels, blocked=reason)
    else:
        if x is not None:
            ctx.b.draft(x.group).consumers.append(Consumer(name, "conv"))
        out = ctx.b.new(module.out_channels)
        ctx.b.draft(out).producers.append(name)
    ctx.writes[name] = out
    return Chan(out, None)


def _norm(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Chan | None:
    x = ctx.first(node)
    if x is None:
        return None
    if x.spatial is not None:
        ctx.unknown(node, module)
        return None
    ctx.b.draft(x.group).norms.append(str(node.target))
    return x


def _linear(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Chan | None:
    x = ctx.first(node)
    if x is None:
        return None
    if x.spatial is None:  # a linear layer over the last (spatial) dimension of a feature map
        ctx.unknown(node, module)
        return None
    ctx.b.draft(x.group).consumers.append(Consumer(str(node.target), "linear", x.spatial))
    return None


def _flatten(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Chan | None:
    """(N, C, H, W) -> (N, C*H*W) keeps channel ``c`` as the block of H*W features at ``c*H*W``."""
    x = ctx.first(node)
    if x is None:
        return None
    before, after = node_shape(node.args[0]), node_shape(node)
    if before is None or after is None:
        ctx.unknown(node, module)
        return None
    if x.spatial is not None and after == before:
        return x
    if x.spatial is None and len(before) == 4 and after == (before[0], before[1] * before[2] * before[3]):
        return Chan(x.group, before[2] * before[3])
    ctx.unknown(node, module)
    return None


def _add(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Chan | None:
    """A residual sum: all tensor operands must keep the same channels, so their groups become one."""
    out = node_shape(node)
    operands = [arg for arg in (*node.args, *node.kwargs.values()) if isinstance(arg, fx.Node) and node_shape(arg)]
    chans = [ctx.chan(arg) for arg in operands]
    followed = [chan for chan in chans if chan is not None]
    if not followed:
        return None
    if out is None or any(chan is None for chan in chans) or any(node_shape(arg) != out for arg in operands) or \
            len({chan.spatial for chan in followed}) > 1:
        ctx.block_inputs(node, f"its channels are added to a tensor the channel analysis does not follow "
                               f"(or broadcast) in {_where(node)}")
        return None
    group = followed[0].group
    for chan in followed[1:]:
        group = ctx.b.union(group, chan.group)
    if len(followed) > 1:
        ctx.b.draft(group).summed = True
    return Chan(group, followed[0].spatial)


def _scale(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Chan | None:
    """A tensor times/over a Python number keeps its channels; with another tensor it is an unknown op."""
    operands = [*node.args, *node.kwargs.values()]
    tensors = [arg for arg in operands if isinstance(arg, fx.Node)]
    if len(tensors) == 1 and all(isinstance(arg, (int, float)) for arg in operands if arg is not tensors[0]):
        return ctx.chan(tensors[0])
    ctx.unknown(node, module)
    return None


_METADATA = frozenset({"shape", "dtype", "device", "ndim", "is_cuda"})


def _query(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Chan | None:
    """``x.size()``, ``x.shape``, ``x.dim()``, ``len(x)``: metadata, not a tensor that carries channels."""
    if node.target is getattr and node.args[1] not in _METADATA:  # x.T, x.mT, ...: a tensor after all
        ctx.unknown(node, module)
    return None


def _getitem(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Chan | None:
    """Slicing that keeps dims 0 and 1 whole (``x[:, :, ::2, ::2]``) passes the channels through."""
    x = ctx.first(node)
    if x is None:
        return None
    index = node.args[1]
    whole = slice(None, None, None)
    if isinstance(index, tuple) and len(index) >= 2 and index[0] == whole and index[1] == whole and \
            all(isinstance(i, slice) for i in index):
        return x
    ctx.unknown(node, module)
    return None


def _pad(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Chan | None:
    """Spatial padding passes channels through; channel zero-padding (option-A shortcut) blocks them."""
    x = ctx.first(node)
    if x is None:
        return None
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    if x.spatial is not None or not isinstance(pad, (tuple, list)) or len(pad) > 6:
        ctx.unknown(node, module)
        return None
    if len(pad) <= 4 or tuple(pad[4:6]) == (0, 0):
        return x
    where = _where(node)
    reason = (f"the zero-padding shortcut {where} places these channels at an offset inside a wider residual sum "
              "(option-A shortcut; build the model with shortcut B to prune residual channels)")
    ctx.b.block(x.group, reason)
    out = node_shape(node)
    return Chan(ctx.b.new(out[1] if out else 0, blocked=reason), None)


# Module types -> rule. isinstance order matters only for subclasses, which none of these have in torch.
_MODULE_RULES: tuple[tuple[type[nn.Module] | tuple[type[nn.Module], ...], Rule], ...] = (
    (nn.Conv2d, _conv),
    (nn.BatchNorm2d, _norm),
    (nn.Linear, _linear),
    (nn.Flatten, _flatten),
    ((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
      nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d,
      nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), _passthrough),
)

_FUNCTION_RULES: dict[Any, Rule] = {
    **dict.fromkeys((F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, F.hardswish,
                     F.hardsigmoid, F.hardtanh, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.dropout,
                     F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d),
                    _passthrough),
    **dict.fromkeys((torch.flatten, torch.reshape), _flatten),
    **dict.fromkeys((operator.add, operator.iadd, torch.add), _add),
    **dict.fromkeys((operator.mul, operator.truediv, torch.mul), _scale),
    operator.getitem: _getitem,
    F.pad: _pad,
    getattr: _query,
    len: _query,
}

_METHOD_RULES: dict[str, Rule] = {
    **dict.fromkeys(("relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"), _passthrough),
    **dict.fromkeys(("flatten", "view", "reshape"), _flatten),
    **dict.fromkeys(("add", "add_", "__add__", "__iadd__"), _add),
    **dict.fromkeys(("mul", "mul_", "div", "div_"), _scale),
    **dict.fromkeys(("size", "dim", "numel"), _query),
}


def rule_for(node: fx.Node, module: nn.Module | None) -> Rule | None:
    """The rule for ``node`` (``module``: its module, for a module call); None when no rule follows the op."""
    if node.op == "call_module":
        return next((rule for kind, rule in _MODULE_RULES if isinstance(module, kind)), None)
    if node.op == "call_method":
        return _METHOD_RULES.get(str(node.target))
    return _FUNCTION_RULES.get(node.target)


def has_state(module: nn.Module) -> bool:
    """Whether a module has its own parameters or buffers; calling a stateless one twice (torchvision's
    BasicBlock reuses its ``relu``) shares nothing that pruning would have to resize."""
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))

