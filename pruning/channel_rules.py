"""How channel identity flows through each op of a traced model: the rules :func:`pruning.dependency.analyse`
applies node by node (the module docstring of :mod:`pruning.dependency` lists them and what they cannot see).

A rule takes the :class:`TraceContext` (the unit ids of every tensor so far, see :mod:`pruning.unit_ids`, and the
union-find of units), the node and its module (``None`` for a function or method call) and returns the ids of what
flows out: an array, a tuple of arrays (``chunk``), or ``None`` for what is not a tensor. An op with no rule blocks
the units flowing into it. Adding an op touches only this module: write the rule, add it to a table at the end.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from pruning.heads import ATTENTION, HEAD_MODULES, count_heads
from pruning.trace_state import TraceContext, node_shape, what, where
from pruning.unit_ids import along_axis, compact, expand, varying
from utils.core.tvguard import torchvision

__all__ = ["Rule", "has_state", "rule_for"]

# A parameter used directly in the forward pass gets one id per element; larger ones (an attention block's qkv
# weight handed to a function) are not followed: their elements are one blocked unit.
_PARAM_LIMIT = 1 << 16


Rule = Callable[[TraceContext, fx.Node, nn.Module | None], Any]


def _attention(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """Self-attention (``nn.MultiheadAttention``, Swin's window attention, :mod:`pruning.heads`): every head is a
    unit of its own; the embedding width it reads and writes is not pruned here (a transformer's residual stream
    goes through LayerNorm anyway)."""
    args = [*node.args, *(node.kwargs.get(k) for k in ("query", "key", "value") if k in node.kwargs)][:3]
    same = len(args) == 3 and args[0] is args[1] is args[2] or len(args) == 1 and not isinstance(module, ATTENTION)
    plain = not isinstance(module, nn.MultiheadAttention) or (module._qkv_same_embed_dim and module.bias_k is None
                                                              and not module.add_zero_attn)
    if not same or not plain:
        return ctx.unknown(node, module)
    x = ctx.ids(args[0])
    reason = f"{what(node, module)} reads and writes this width (its heads are pruned, not its embedding)"
    ctx.b.block(x, reason)
    ctx.record(str(node.target), "heads", ctx.b.new(count_heads(module)))
    return ctx.blocked_like(x, reason), None


def _passthrough(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """Elementwise ops, pooling, dropout, identity: channel ``c`` stays channel ``c`` (sizes may change only along
    axes the ids do not vary along: spatial pooling, ``expand`` of a size-1 axis)."""
    x = ctx.ids(node.args[0]) if node.args else None
    shape, before = node_shape(node), node_shape(node.args[0]) if node.args else None
    if x is None or shape is None or before is None or len(shape) != len(before):
        return ctx.unknown(node, module)
    if any(shape[axis] != before[axis] for axis in varying(x)):
        return ctx.unknown(node, module)
    return x


def _conv(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    assert isinstance(module, nn.Conv2d)
    name = str(node.target)
    ctx.convs.append(name)
    inputs = ctx.along(node.args[0], 1)
    out = ctx.b.new(module.out_channels)
    if module.groups == 1:
        ctx.record(name, "conv_in", inputs)
        ctx.record(name, "conv_out", out)
    else:  # one unit per conv group: its input and output channels go together, so ``groups`` stays valid
        per_in, per_out = module.in_channels // module.groups, module.out_channels // module.groups
        for k in range(module.groups):
            chunk = np.concatenate([inputs[k * per_in:(k + 1) * per_in], out[k * per_out:(k + 1) * per_out]])
            ctx.tie([(chunk[:1].repeat(len(chunk) - 1), chunk[1:])])
        ctx.grouped.add(name)
        ctx.record(name, "grouped", out)
    return out.reshape(1, -1, 1, 1)


def _norm(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """BatchNorm: per-channel statistics and affine, along axis 1."""
    ctx.record(str(node.target), "norm", ctx.along(node.args[0], 1))
    return ctx.ids(node.args[0])


def _channel_norm(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """LayerNorm/GroupNorm: every output depends on the statistics of all normalised channels, so removing one
    changes the others; the pruned model would not compute what the masked one does. Blocked."""
    ctx.block_inputs(node, f"{what(node, module)} normalises across these channels (removing one changes the "
                           "others' outputs)")
    return ctx.ids(node.args[0])


def _linear(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    assert isinstance(module, nn.Linear)
    name = str(node.target)
    ctx.linears.append(name)
    ctx.record(name, "linear_in", ctx.along(node.args[0], -1))
    out = ctx.b.new(module.out_features)
    ctx.record(name, "linear_out", out)
    return out.reshape((1,) * (len(node_shape(node)) - 1) + (-1,))


def _sizes(node: fx.Node) -> list[Any]:
    """The target sizes of ``view``/``reshape`` as written in the graph (ints, or nodes computed at run time)."""
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    return list(sizes or node.kwargs.get("shape", ()))


def _reshape(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """Any reshape (``view``, ``flatten``, ``squeeze``...) keeps the element order: the ids are reshaped alike. A size
    written into the graph as a number cannot follow pruning, so the axes it fixes may not lose channels: where
    the channels are split over several axes (a channel shuffle's ``view(n, groups, c // groups, h, w)``), the
    channels at the same place of each of the fixed axes are tied; a single channel axis of fixed size is blocked
    (torchvision's ViT writes its hidden size into a ``reshape``)."""
    x, before, after = ctx.ids(node.args[0]), node_shape(node.args[0]), node_shape(node)
    full = expand(x, before) if x is not None and before is not None and after is not None else None
    if full is None:
        return ctx.unknown(node, module)
    out = compact(full.reshape(after))
    moving = varying(out)
    if str(node.target) not in ("view", "reshape") and node.target is not torch.reshape:
        return out
    sizes = _sizes(node)
    fixed = [a for a in moving if a < len(sizes) and isinstance(sizes[a], int) and sizes[a] != -1]
    free = [a for a in moving if a not in fixed]
    if not fixed:
        return out
    if len(free) != 1:
        ctx.b.block(out, f"{what(node, module)} writes the channel count into the graph as a number")
        return out
    column, ties = along_axis(out, free[0], after[free[0]])
    ctx.tie(ties)
    shape = [1] * len(after)
    shape[free[0]] = len(column)
    return column.reshape(shape)


def _permute(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """``permute``/``transpose``: the ids' axes move alike (ConvNeXt's channels-last blocks, a channel shuffle)."""
    x, shape = ctx.ids(node.args[0]), node_shape(node)
    if x is None or shape is None:
        return ctx.unknown(node, module)
    ndim = x.ndim
    if str(node.target) in ("transpose", "swapaxes", "swapdims") or node.target in (torch.transpose, torch.swapaxes):
        a, b = (node.args[1:3] if len(node.args) >= 3 else (node.kwargs.get("dim0"), node.kwargs.get("dim1")))
        order = list(range(ndim))
        order[a % ndim], order[b % ndim] = order[b % ndim], order[a % ndim]
    else:
        dims = node.args[1:] or (node.kwargs.get("dims"),)
        order = list(dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)
    if sorted(d % ndim for d in order) != list(range(ndim)):
        return ctx.unknown(node, module)
    return np.ascontiguousarray(np.transpose(x, [d % ndim for d in order]))


def _cat(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """``torch.cat``: the ids are concatenated; each input's channels sit at their offset in the output."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    shapes = [node_shape(t) for t in tensors]
    parts = [ctx.ids(t) for t in tensors]
    if not parts or any(p is None for p in parts) or any(s is None for s in shapes):
        return ctx.unknown(node, module)
    axis = dim % len(shapes[0])
    target = [max(p.shape[a] for p in parts) for a in range(len(shapes[0]))]
    pieces = []
    for part, shape in zip(parts, shapes, strict=True):
        target[axis] = shape[axis]
        pieces.append(np.broadcast_to(part, target))
    return compact(np.concatenate(pieces, axis=axis))


def _chunk(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """``chunk``/``split`` into equal pieces: the pieces keep equal sizes after pruning only if the channel at the
    same place of every piece goes together, so those are tied. Unequal or fixed-size pieces are blocked."""
    x, shape = ctx.ids(node.args[0]), node_shape(node.args[0])
    count = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks", node.kwargs.get("split_size_or_sections"))
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    if x is None or shape is None or not isinstance(dim, int):
        return ctx.unknown(node, module)
    axis = dim % len(shape)
    chunked = str(node.target) == "chunk" or node.target is torch.chunk
    pieces = count if chunked else (shape[axis] // count if isinstance(count, int) and count else None)
    if not isinstance(pieces, int) or pieces < 1 or shape[axis] % pieces:
        return ctx.unknown(node, module)
    if x.shape[axis] == 1:
        return tuple(x for _ in range(pieces))
    parts = np.split(x, pieces, axis=axis)
    if not chunked:  # split(size) writes the piece size into the graph: it cannot follow pruning
        for part in parts:
            ctx.b.block(part, f"{what(node, module)} splits at a size written into the graph")
        return tuple(parts)
    ctx.tie([(parts[0], part) for part in parts[1:]])
    return tuple(parts)


def _binary(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """``+ - * /`` of tensors: the channels at the same place of the operands are tied (a residual sum; a
    squeeze-and-excitation gate of shape (N, C, 1, 1) times its features; a layer-scale parameter). An operand
    broadcast along the channel axis (a spatial gate of one channel) is not tied. A number keeps the channels."""
    operands = [arg for arg in (*node.args, *node.kwargs.values()) if isinstance(arg, fx.Node) and node_shape(arg)]
    out = node_shape(node)
    if out is None:
        return None
    if len(operands) == 1:
        return ctx.ids(operands[0])
    aligned = []
    for arg in operands:
        ids, shape = ctx.ids(arg), node_shape(arg)
        pad = len(out) - len(shape)
        aligned.append((ids.reshape((1,) * pad + ids.shape), (1,) * pad + shape))
    full = [ids for ids, shape in aligned if shape == out]
    if not full:
        return ctx.unknown(node, module)
    result = np.broadcast_to(full[0], np.broadcast_shapes(*(ids.shape for ids in full)))
    tied = len(full)
    for ids in full[1:]:
        ctx.b.union_arrays(result, np.broadcast_to(ids, result.shape))
    for ids, shape in aligned:
        if shape == out:
            continue
        spread = [a for a in range(len(out)) if shape[a] == 1 < out[a]]
        if any(result.shape[a] > 1 for a in spread):
            continue
        shape_both = np.broadcast_shapes(result.shape, ids.shape)
        result = np.broadcast_to(result, shape_both)
        ctx.b.union_arrays(result, np.broadcast_to(ids, shape_both))
        tied += 1
    is_sum = node.target in (operator.add, operator.iadd, operator.sub, torch.add, torch.sub) or \
        str(node.target) in ("add", "add_", "sub", "sub_", "__add__", "__iadd__")
    if is_sum and tied > 1:
        ctx.b.summed.update(np.unique(result).tolist())
    return np.ascontiguousarray(result)


def _reduce(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """``mean``/``sum``/``amax`` over spatial axes (a global average pool): channels pass, the reduced axes go."""
    x, before, after = ctx.ids(node.args[0]), node_shape(node.args[0]), node_shape(node)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if x is None or before is None or after is None or dims is None:
        return ctx.unknown(node, module)
    axes = sorted({d % len(before) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))})
    if any(x.shape[a] > 1 for a in axes):
        return ctx.unknown(node, module)
    return x if len(after) == len(before) else x.reshape([s for a, s in enumerate(x.shape) if a not in axes])


def _getitem(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """One piece of a ``chunk``; slicing: along axes the ids do not vary along (spatial slicing, a class token)
    the channels pass; slicing channels at fixed bounds blocks them (the bounds cannot follow pruning)."""
    value, index = ctx.info.get(node.args[0]), node.args[1]
    if isinstance(value, tuple):
        return value[index] if isinstance(index, int) else ctx.unknown(node, module)
    x = ctx.ids(node.args[0])
    entries = index if isinstance(index, tuple) else (index,)
    if x is None or any(not isinstance(e, (slice, int, type(None), type(Ellipsis))) for e in entries):
        return ctx.unknown(node, module)  # advanced indexing with tensors
    consumed = sum(1 for e in entries if e is not None and e is not Ellipsis)
    small, axis, whole = [], 0, slice(None)
    for entry in entries:
        if entry is None or entry is Ellipsis:
            small.append(entry)
            axis += (x.ndim - consumed) if entry is Ellipsis else 0
            continue
        if x.shape[axis] > 1:
            small.append(entry)
            if entry != whole:
                ctx.b.block(x, f"{what(node, module)} slices channels at fixed bounds")
        else:
            small.append(0 if isinstance(entry, int) else whole)
        axis += 1
    return np.ascontiguousarray(x[tuple(small)])


def _pad(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """Spatial padding passes channels through; channel zero-padding (option-A shortcut) blocks them."""
    x, shape = ctx.ids(node.args[0]), node_shape(node)
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    if x is None or shape is None or not isinstance(pad, (tuple, list)):
        return ctx.unknown(node, module)
    padded = [x.ndim - 1 - i for i in range(len(pad) // 2) if tuple(pad[2 * i:2 * i + 2]) != (0, 0)]
    if not any(x.shape[axis] > 1 for axis in padded):
        return x
    reason = (f"the zero-padding shortcut {where(node)} places these channels at an offset inside a wider "
              "residual sum (option-A shortcut; build the model with shortcut B to prune residual channels)")
    ctx.b.block(x, reason)
    axis = next(a for a in padded if x.shape[a] > 1)
    new_shape = [1] * len(shape)
    new_shape[axis] = shape[axis]
    return ctx.b.new(shape[axis], blocked=reason).reshape(new_shape)


def _attr(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """A parameter used directly (a layer scale, a class token, a position embedding): one id per element, sorted
    out at the end of the trace (:func:`pruning.dependency.analyse` keeps it when its ids vary along one axis)."""
    value = ctx.root
    for part in str(node.target).split("."):
        value = getattr(value, part)
    if isinstance(value, nn.Parameter) and 0 < value.numel() <= _PARAM_LIMIT and value.ndim >= 1:
        ids = ctx.b.new(value.numel()).reshape(value.shape)
        ctx.params.append((str(node.target), ids, ctx.position))
        return ids
    if isinstance(value, torch.Tensor):
        return ctx.fresh(value.ndim, f"its channels meet the tensor {node.target}, which the channel analysis does "
                                     "not follow")
    return None


def _query(ctx: TraceContext, node: fx.Node, module: nn.Module | None) -> Any:
    """``x.size()``, ``x.shape``, ``x.dim()``, ``len(x)``: metadata, not a tensor that carries channels."""
    if node.target is getattr and node.args[1] not in ("shape", "dtype", "device", "ndim", "is_cuda"):
        return ctx.unknown(node, module)
    return None


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
                nn.Sigmoid, nn.Tanh, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ZeroPad2d)

# Module types -> rule. isinstance order matters only for subclasses (torchvision's LayerNorm2d is a LayerNorm).
_MODULE_RULES: tuple[tuple[type[nn.Module] | tuple[type[nn.Module], ...], Rule], ...] = (
    (nn.Conv2d, _conv),
    (HEAD_MODULES, _attention),
    ((nn.BatchNorm1d, nn.BatchNorm2d), _norm),
    ((nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm), _channel_norm),
    (nn.Linear, _linear),
    ((nn.Flatten, nn.Unflatten), _reshape),
    (_ACTIVATIONS, _passthrough),
)

_FUNCTION_RULES: dict[Any, Rule] = {
    **dict.fromkeys((F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, F.hardswish, F.mish,
                     F.hardsigmoid, F.hardtanh, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.dropout,
                     F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                     torchvision.ops.stochastic_depth), _passthrough),
    **dict.fromkeys((torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze), _reshape),
    **dict.fromkeys((torch.permute, torch.transpose, torch.swapaxes), _permute),
    **dict.fromkeys((operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, operator.truediv,
                     torch.add, torch.sub, torch.mul, torch.div), _binary),
    **dict.fromkeys((torch.mean, torch.sum, torch.amax), _reduce),
    **dict.fromkeys((F.layer_norm, F.group_norm), _channel_norm),
    torch.cat: _cat,
    torch.concat: _cat,
    torch.chunk: _chunk,
    torch.split: _chunk,
    operator.getitem: _getitem,
    F.pad: _pad,
    getattr: _query,
    len: _query,
}

_METHOD_RULES: dict[str, Rule] = {
    **dict.fromkeys(("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "clone", "expand", "expand_as"),
                    _passthrough),
    **dict.fromkeys(("flatten", "view", "reshape", "squeeze", "unsqueeze"), _reshape),
    **dict.fromkeys(("permute", "transpose", "swapaxes", "swapdims"), _permute),
    **dict.fromkeys(("add", "add_", "__add__", "__iadd__", "sub", "sub_", "mul", "mul_", "div", "div_"), _binary),
    **dict.fromkeys(("mean", "sum", "amax"), _reduce),
    **dict.fromkeys(("chunk", "split"), _chunk),
    **dict.fromkeys(("size", "dim", "numel"), _query),
}


def rule_for(node: fx.Node, module: nn.Module | None) -> Rule | None:
    """The rule for ``node`` (``module``: its module, for a module call); None when no rule follows the op."""
    if node.op == "call_module":
        return next((rule for kind, rule in _MODULE_RULES if isinstance(module, kind)), None)
    if node.op == "call_method":
        return _METHOD_RULES.get(str(node.target))
    if node.op == "get_attr":
        return _attr
    return _FUNCTION_RULES.get(node.target)


def has_state(module: nn.Module) -> bool:
    """Whether a module has its own parameters or buffers; calling a stateless one twice (torchvision's
    BasicBlock reuses its ``relu``) shares nothing that pruning would have to resize."""
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
