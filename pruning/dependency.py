"""Which channels move together: channel groups read off the model's own graph with ``torch.fx``.

Removing output channel ``c`` of a conv is only correct when channel ``c`` disappears from every tensor
that carries it: the conv's BatchNorm, input channel ``c`` of the next conv, the ``H*W`` input features
of a linear layer after ``flatten`` that came from that channel, a depthwise conv (its output channel
``c`` *is* its input channel ``c``, so its filters, its BatchNorm and its ``groups`` follow) and every
other conv whose output is *added* to this one (a residual sum: all producers of the sum lose the same
indices, or the sum no longer lines up). Hand-written per-architecture tables of these couplings go
stale the moment a model changes, so :func:`analyse` traces the model (``torch.fx.symbolic_trace``),
runs a shape pass on an example input (``ShapeProp``: the ``H*W`` factors) and follows channel
identity from node to node:

* ``Conv2d`` (``groups == 1``): its input channels join the group of its input; its output starts a
  new group with the conv as *producer*. A depthwise conv passes its input group through.
* ``BatchNorm2d`` joins the group of its input; elementwise activations, pooling, dropout, identity,
  multiplying by a number and spatial slicing or padding pass it through unchanged.
* ``flatten``/``view``/``reshape`` from ``(N, C, H, W)`` to ``(N, C*H*W)`` keep the group with a
  spatial factor ``H*W``; a ``Linear`` reading that becomes a *consumer* of ``H*W`` features per channel.
* ``add`` (residual sums) merges the groups of its operands into one group.

What the trace cannot see, and how it is handled. Every case is conservative: the affected groups are
*blocked* (never pruned, with the reason in the error a user gets), never guessed.

* Ops this module has no rule for (``mul``, ``cat``, attention, a module such as ``PReLU`` with
  per-channel parameters, ...): every group flowing into them is blocked, naming the op. ``torch.cat``
  would need channel offsets; no registered model concatenates channels, so it is refused this way.
* Zero-padding of the channel dimension (``F.pad`` on dim 1), which is how the CIFAR ResNet option-A
  ``PadShortcut`` widens a stage's input to the next stage's width: the padded copy sits at an offset
  inside the wider residual sum, so the stage's sum group and the padded input are blocked. Li et al.
  (2017, §3.4) only prune the first conv of each block in these networks anyway, and that conv is free.
* A module with parameters or buffers called more than once (shared weights): its groups are blocked.
* The model's input and output channels are fixed by the data and the loss: blocked.

User-facing layer names are derived here as well (:func:`layer_names`), because they are a view of the
same graph: which convs are on the main path, which feed a residual sum, which stage they sit in.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from models.resnet_cifar import CifarResNet
from models.vgg_cifar import VGGCifar
from utils.core.errors import UserError
from utils.core.tvguard import torchvision

__all__ = ["ChannelGraph", "ChannelGroup", "Consumer", "LayerNames", "analyse", "build_groups",
           "default_example_input", "layer_names", "prunable_layers"]


@dataclass(frozen=True)
class Consumer:
    """A module whose *input* dimension carries a group's channels.

    ``kind`` is ``"conv"`` (input channels of a ``groups == 1`` conv) or ``"linear"`` (input features
    of a linear layer after ``flatten``: channel ``c`` owns features ``c*spatial .. c*spatial+spatial-1``).
    """

    module: str
    kind: str
    spatial: int = 1


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that can only be removed together, with the same indices, from all of these modules.

    ``producers`` write the channels (their output filters are what is ranked and removed); ``norms``
    (BatchNorm) and ``depthwise`` convs carry them through; ``consumers`` read them. ``summed`` says
    the channels go through a residual sum, so there is more than one producer and none may be
    pruned alone. ``blocked`` is why the group may not be pruned at all (``None``: it may, as a whole).
    """

    channels: int
    producers: tuple[str, ...]
    norms: tuple[str, ...] = ()
    depthwise: tuple[str, ...] = ()
    consumers: tuple[Consumer, ...] = ()
    summed: bool = False
    blocked: str | None = None

    @property
    def prunable(self) -> bool:
        """Whether the group may be pruned (as a whole: every producer loses the same channels)."""
        return self.blocked is None and bool(self.producers)

    @property
    def prunable_alone(self) -> bool:
        """Whether its one producer may be pruned on its own (False when it feeds a residual sum)."""
        return self.prunable and len(self.producers) == 1 and not self.summed

    def modules(self) -> tuple[str, ...]:
        """Every module that changes shape when the group loses channels."""
        return self.producers + self.depthwise + self.norms + tuple(c.module for c in self.consumers)


@dataclass(frozen=True)
class ChannelGraph:
    """The result of :func:`analyse`: the groups plus, for every conv, which group it reads and writes."""

    groups: list[ChannelGroup]
    convs: list[str]  # every Conv2d module, in execution order
    reads: dict[str, int | None]  # conv -> index of the group of its input channels (None: not followed)
    writes: dict[str, int]  # conv -> index of the group of its output channels (depthwise: the one it reads)

    def group_of(self, producer: str) -> ChannelGroup:
        return self.groups[self.writes[producer]]

    def is_depthwise(self, conv: str) -> bool:
        return self.reads.get(conv) == self.writes[conv]


# --------------------------------------------------------------------------- building the groups


class _Chan(NamedTuple):
    """What flows along a graph edge: a group id, and ``None`` for an (N, C, H, W) tensor or the
    per-channel feature count for a tensor flattened to (N, C*H*W)."""

    group: int
    spatial: int | None


@dataclass
class _Draft:
    channels: int
    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    summed: bool = False
    blocked: list[str] = field(default_factory=list)


class _Builder:
    """Union-find over draft groups: ``add`` merges groups that were separate until then."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.drafts: list[_Draft] = []

    def new(self, channels: int, *, blocked: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.drafts.append(_Draft(channels=channels, blocked=[blocked] if blocked else []))
        return len(self.parent) - 1

    def find(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def draft(self, index: int) -> _Draft:
        return self.drafts[self.find(index)]

    def block(self, index: int, reason: str) -> None:
        reasons = self.draft(index).blocked
        if reason not in reasons:
            reasons.append(reason)

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        keep, gone = self.drafts[a], self.drafts[b]
        keep.producers += gone.producers
        keep.norms += gone.norms
        keep.depthwise += gone.depthwise
        keep.consumers += gone.consumers
        keep.summed = keep.summed or gone.summed
        keep.blocked += [reason for reason in gone.blocked if reason not in keep.blocked]
        self.parent[b] = a
        return a


def _shape(node: Any) -> tuple[int, ...] | None:
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


class _Context:
    def __init__(self, builder: _Builder) -> None:
        self.b = builder
        self.info: dict[fx.Node, _Chan | None] = {}
        self.convs: list[str] = []  # every Conv2d call, in execution order
        self.reads: dict[str, int | None] = {}  # conv -> draft group of its input channels
        self.writes: dict[str, int] = {}  # conv -> draft group of its output channels

    def chan(self, arg: Any) -> _Chan | None:
        return self.info.get(arg) if isinstance(arg, fx.Node) else None

    def first(self, node: fx.Node) -> _Chan | None:
        return self.chan(node.args[0]) if node.args else None

    def tracked(self, node: fx.Node) -> list[_Chan]:
        return [chan for arg in node.all_input_nodes if (chan := self.info.get(arg)) is not None]

    def block_inputs(self, node: fx.Node, reason: str) -> None:
        for chan in self.tracked(node):
            self.b.block(chan.group, reason)

    def unknown(self, node: fx.Node, module: nn.Module | None = None) -> None:
        self.block_inputs(node, f"its channels go through {_what(node, module)}, which the channel analysis "
                                "does not follow")


Rule = Callable[[_Context, fx.Node, nn.Module | None], "_Chan | None"]


def _passthrough(ctx: _Context, node: fx.Node, module: nn.Module | None) -> _Chan | None:
    """Elementwise ops, pooling, dropout, identity: channel ``c`` stays channel ``c``."""
    x = ctx.first(node)
    if x is None:
        return None
    shape, before = _shape(node), _shape(node.args[0])
    same = shape is not None and before is not None and len(shape) == len(before) and shape[1] == before[1]
    if not same:
        ctx.unknown(node, module)
        return None
    return x


def _conv(ctx: _Context, node: fx.Node, module: nn.Module | None) -> _Chan | None:
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
            return _Chan(out, None)
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
    return _Chan(out, None)


def _norm(ctx: _Context, node: fx.Node, module: nn.Module | None) -> _Chan | None:
    x = ctx.first(node)
    if x is None:
        return None
    if x.spatial is not None:
        ctx.unknown(node, module)
        return None
    ctx.b.draft(x.group).norms.append(str(node.target))
    return x


def _linear(ctx: _Context, node: fx.Node, module: nn.Module | None) -> _Chan | None:
    x = ctx.first(node)
    if x is None:
        return None
    if x.spatial is None:  # a linear layer over the last (spatial) dimension of a feature map
        ctx.unknown(node, module)
        return None
    ctx.b.draft(x.group).consumers.append(Consumer(str(node.target), "linear", x.spatial))
    return None


def _flatten(ctx: _Context, node: fx.Node, module: nn.Module | None) -> _Chan | None:
    """(N, C, H, W) -> (N, C*H*W) keeps channel ``c`` as the block of H*W features at ``c*H*W``."""
    x = ctx.first(node)
    if x is None:
        return None
    before, after = _shape(node.args[0]), _shape(node)
    if before is None or after is None:
        ctx.unknown(node, module)
        return None
    if x.spatial is not None and after == before:
        return x
    if x.spatial is None and len(before) == 4 and after == (before[0], before[1] * before[2] * before[3]):
        return _Chan(x.group, before[2] * before[3])
    ctx.unknown(node, module)
    return None


def _add(ctx: _Context, node: fx.Node, module: nn.Module | None) -> _Chan | None:
    """A residual sum: all tensor operands must keep the same channels, so their groups become one."""
    out = _shape(node)
    operands = [arg for arg in (*node.args, *node.kwargs.values()) if isinstance(arg, fx.Node) and _shape(arg)]
    chans = [ctx.chan(arg) for arg in operands]
    followed = [chan for chan in chans if chan is not None]
    if not followed:
        return None
    if out is None or any(chan is None for chan in chans) or any(_shape(arg) != out for arg in operands) or \
            len({chan.spatial for chan in followed}) > 1:
        ctx.block_inputs(node, f"its channels are added to a tensor the channel analysis does not follow "
                               f"(or broadcast) in {_where(node)}")
        return None
    group = followed[0].group
    for chan in followed[1:]:
        group = ctx.b.union(group, chan.group)
    if len(followed) > 1:
        ctx.b.draft(group).summed = True
    return _Chan(group, followed[0].spatial)


def _scale(ctx: _Context, node: fx.Node, module: nn.Module | None) -> _Chan | None:
    """A tensor times/over a Python number keeps its channels; with another tensor it is an unknown op."""
    operands = [*node.args, *node.kwargs.values()]
    tensors = [arg for arg in operands if isinstance(arg, fx.Node)]
    if len(tensors) == 1 and all(isinstance(arg, (int, float)) for arg in operands if arg is not tensors[0]):
        return ctx.chan(tensors[0])
    ctx.unknown(node, module)
    return None


_METADATA = frozenset({"shape", "dtype", "device", "ndim", "is_cuda"})


def _query(ctx: _Context, node: fx.Node, module: nn.Module | None) -> _Chan | None:
    """``x.size()``, ``x.shape``, ``x.dim()``, ``len(x)``: metadata, not a tensor that carries channels."""
    if node.target is getattr and node.args[1] not in _METADATA:  # x.T, x.mT, ...: a tensor after all
        ctx.unknown(node, module)
    return None


def _getitem(ctx: _Context, node: fx.Node, module: nn.Module | None) -> _Chan | None:
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


def _pad(ctx: _Context, node: fx.Node, module: nn.Module | None) -> _Chan | None:
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
    out = _shape(node)
    return _Chan(ctx.b.new(out[1] if out else 0, blocked=reason), None)


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


def _rule(node: fx.Node, module: nn.Module | None) -> Rule | None:
    if node.op == "call_module":
        return next((rule for kind, rule in _MODULE_RULES if isinstance(module, kind)), None)
    if node.op == "call_method":
        return _METHOD_RULES.get(str(node.target))
    return _FUNCTION_RULES.get(node.target)


def _has_state(module: nn.Module) -> bool:
    """Whether a module has its own parameters or buffers; calling a stateless one twice (torchvision's
    BasicBlock reuses its ``relu``) shares nothing that pruning would have to resize."""
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
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


def analyse(model: nn.Module, example_input: torch.Tensor | None = None) -> ChannelGraph:
    """Trace ``model`` and return its channel groups (see the module docstring for the rules).

    ``example_input`` (one batch, e.g. ``torch.zeros(1, 3, 32, 32)``) only sets the spatial sizes
    that a linear layer after ``flatten`` sees; it defaults to :func:`default_example_input`.
    """
    if example_input is None:
        example_input = default_example_input(model)
    gm = _trace(model)
    _propagate_shapes(gm, model, example_input)
    builder = _Builder()
    ctx = _Context(builder)
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    order: dict[str, int] = {}
    for position, node in enumerate(gm.graph.nodes):
        module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if node.op == "placeholder":
            shape = _shape(node)
            fixed = builder.new(shape[1], blocked="its channels are the model's input") if shape and len(shape) >= 2 \
                else None
            ctx.info[node] = _Chan(fixed, None) if fixed is not None else None
            continue
        if node.op == "get_attr":
            ctx.info[node] = None
            continue
        if node.op == "output":
            ctx.block_inputs(node, "its channels are the model's output")
            continue
        if module is not None:
            order.setdefault(str(node.target), position)
        rule = _rule(node, module)
        if rule is None:  # whatever it returns (a tensor, a tuple of them), its inputs' channels are pinned
            ctx.unknown(node, module)
            ctx.info[node] = None
            continue
        ctx.info[node] = rule(ctx, node, module)
        if module is not None and calls[node.target] > 1 and _has_state(module):
            for chan in [ctx.info[node], *ctx.tracked(node)]:
                if chan is not None:
                    builder.block(chan.group, f"module {node.target} is called more than once (shared weights)")

    def position(module: str) -> int:
        return order.get(module, len(order))

    def first_producer(root: int) -> int:
        return min([position(m) for m in builder.drafts[root].producers] or [len(order)])

    roots = sorted({builder.find(i) for i in range(len(builder.parent))}, key=first_producer)
    index = {root: i for i, root in enumerate(roots)}
    groups = []
    for root in roots:
        d = builder.drafts[root]
        groups.append(ChannelGroup(
            channels=d.channels, producers=tuple(sorted(d.producers, key=position)),
            norms=tuple(sorted(d.norms, key=position)), depthwise=tuple(sorted(d.depthwise, key=position)),
            consumers=tuple(sorted(d.consumers, key=lambda c: position(c.module))),
            summed=d.summed, blocked="; ".join(d.blocked) or None,
        ))
    reads = {conv: (index[builder.find(g)] if g is not None else None) for conv, g in ctx.reads.items()}
    writes = {conv: index[builder.find(g)] for conv, g in ctx.writes.items()}
    return ChannelGraph(groups=groups, convs=list(ctx.convs), reads=reads, writes=writes)


def build_groups(model: nn.Module, example_input: torch.Tensor | None = None) -> list[ChannelGroup]:
    """The channel groups of ``model`` (see :func:`analyse`), ordered by their first producer."""
    return analyse(model, example_input).groups


# Input sizes of the model families whose builders do not say it. CIFAR models need 32x32: VGG's
# linear layer is sized for the 1x1 map five pools leave of it. Anything else gets the ImageNet size.
_INPUT_SIZES: tuple[tuple[type[nn.Module], tuple[int, int, int]], ...] = (
    (VGGCifar, (3, 32, 32)),
    (CifarResNet, (3, 32, 32)),
)
_DEFAULT_INPUT_SIZE = (3, 224, 224)


def default_example_input(model: nn.Module) -> torch.Tensor:
    """One zero image of the size ``model`` was built for: 3x32x32 for the CIFAR models, else 3x224x224."""
    size = next((size for kind, size in _INPUT_SIZES if isinstance(model, kind)), _DEFAULT_INPUT_SIZE)
    return torch.zeros(1, *size)


# --------------------------------------------------------------------------- user-facing layer names


@dataclass(frozen=True)
class LayerNames:
    """The names a user may write in ``prune.layers``/``prune.skip`` and what they mean.

    ``layers``: short name -> producer conv (``conv7`` -> ``layer1.2.conv2``), in input order.
    ``selectors``: names that stand for several layers (``layer2`` -> its blocks' first convs).
    ``aliases``: other accepted spellings -> canonical layer name (module names, ``features.N``).
    ``producers``: every conv whose filters can be ranked, by module name (also accepted as names).
    ``note``: how else the short names may be written (shown in error messages).
    """

    layers: dict[str, str]
    selectors: dict[str, tuple[str, ...]]
    aliases: dict[str, str]
    producers: tuple[str, ...]
    note: str = ""  # how else the short names may be written, for error messages

    def module(self, name: str) -> str:
        """The producer conv that canonical layer ``name`` stands for."""
        return self.layers.get(name, name)

    def canonical(self, module: str) -> str:
        """The name reports use for a producer conv: its short name where it has one."""
        return self.aliases.get(module, module)

    def resolve(self, name: str, *, key: str = "prune.layers") -> list[str]:
        """Canonical layer names that ``name`` stands for; an unknown name is a UserError listing valid ones."""
        if name in self.selectors:
            return list(self.selectors[name])
        if name in self.layers:
            return [name]
        if name in self.aliases:
            return [self.aliases[name]]
        if name in self.producers:
            return [name]
        raise UserError(f"{key}: unknown layer {name!r}; valid names: {self.describe()}")

    def describe(self) -> str:
        """The valid names, abbreviated where they are a long numbered run."""
        parts = [_abbreviate(list(self.layers)) + (f" {self.note}" if self.note else "")]
        if self.selectors:
            parts.append(_abbreviate(list(self.selectors)))
        unnamed = [m for m in self.producers if m not in self.aliases]
        if self.producers:
            parts.append(f"or a conv's module name such as {(unnamed or list(self.producers))[0]}")
        return "; ".join(part for part in parts if part)


def _abbreviate(names: Sequence[str], *, head: int = 4, tail: int = 2) -> str:
    if len(names) <= head + tail + 1:
        return ", ".join(names)
    return f"{', '.join(names[:head])}, ..., {', '.join(names[-tail:])} ({len(names)} names)"


def _stage(module: str) -> str | None:
    """Top-level child a module sits in (``layer2`` for ``layer2.0.conv1``), None for a top-level module."""
    return module.split(".", 1)[0] if "." in module else None


def _is_projection_shortcut(graph: ChannelGraph, conv: str) -> bool:
    """A conv that reads a residual sum and writes into one bypasses the block's main path: a projection
    shortcut (ResNet ``downsample.0``). Li et al. and the reference code do not number these."""
    read = graph.reads.get(conv)
    return read is not None and graph.groups[read].summed and graph.group_of(conv).summed and \
        graph.writes[conv] != read


def numbered_names(graph: ChannelGraph) -> LayerNames:
    """``conv1``, ``conv2``, ... over the main-path convs in input order (projection shortcuts and
    depthwise convs are not numbered). For VGG that is ``features.conv1..13``; for ResNets it is the
    numbering of Li et al. (2017) and of the reference code: ``conv1`` is the stem and block ``i``
    (counted over all stages) has ``conv{2i}`` (first conv) and ``conv{2i+1}`` (second conv), so
    ResNet-56's layers 16/18/20/34/38/54 are the first convs of blocks 8/9/10/17/19/27.

    Selectors: each stage (top-level child holding residual sums, ``layer1``, ...) stands for its
    convs that are prunable alone (the block-first convs), and ``<stage>.residual`` for all producers of
    the stage's residual sum (second convs, projection shortcut, and for the first stage the stem).
    """
    main = [c for c in graph.convs if not graph.is_depthwise(c) and not _is_projection_shortcut(graph, c)]
    layers = {f"conv{i}": conv for i, conv in enumerate(main, start=1)}
    aliases = {conv: name for name, conv in layers.items()}
    summed_stages = {_stage(p) for g in graph.groups if g.summed for p in g.producers} - {None}
    selectors: dict[str, tuple[str, ...]] = {}
    for stage in dict.fromkeys(_stage(conv) for conv in main):
        if stage in summed_stages:
            alone = tuple(aliases[c] for c in main if _stage(c) == stage and graph.group_of(c).prunable_alone)
            if alone:
                selectors[stage] = alone
    for group in graph.groups:
        stage = _stage(group.producers[-1]) if group.summed and group.producers else None
        if stage is not None and f"{stage}.residual" not in selectors:
            selectors[f"{stage}.residual"] = tuple(aliases.get(p, p) for p in group.producers)
    producers = tuple(c for c in graph.convs if not graph.is_depthwise(c))
    return LayerNames(layers=layers, selectors=selectors, aliases=aliases, producers=producers)


def block_names(graph: ChannelGraph) -> LayerNames:
    """Inverted-residual networks (MobileNetV2): ``blockN`` is the hidden (expanded) width of block
    ``features.N``: the expansion 1x1 conv's filters with their BatchNorm, the depthwise conv and its
    BatchNorm, and the input channels of the projection 1x1 conv. ``features.N`` is accepted too. Block 1
    has no expansion conv (expansion 1); its hidden channels are the stem's output, so ``block1`` is the
    stem conv. Any other conv whose group is prunable is reachable by its module name.
    """
    layers: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for group in graph.groups:
        if not group.depthwise or group.summed or not group.producers:
            continue
        parts = group.depthwise[0].split(".")
        if len(parts) > 1 and parts[1].isdigit():
            name = f"block{int(parts[1])}"
            layers[name] = group.producers[0]
            aliases[f"{parts[0]}.{parts[1]}"] = name
            aliases[group.producers[0]] = name
    producers = tuple(c for c in graph.convs if not graph.is_depthwise(c))
    layers = dict(sorted(layers.items(), key=lambda item: int(re.sub(r"\D", "", item[0]))))
    return LayerNames(layers=layers, selectors={}, aliases=aliases, producers=producers,
                      note="(block N may also be written as its module name features.N)")


# Model class -> naming scheme; every other model gets numbered_names (right for plain and residual CNNs).
_NAMING: tuple[tuple[type[nn.Module], Callable[[ChannelGraph], LayerNames]], ...] = (
    (torchvision.models.MobileNetV2, block_names),
)


def layer_names(model: nn.Module, graph: ChannelGraph | None = None, *,
                example_input: torch.Tensor | None = None) -> LayerNames:
    """The user-facing names of ``model``'s prunable layers (see :class:`LayerNames`)."""
    graph = graph if graph is not None else analyse(model, example_input)
    scheme = next((scheme for kind, scheme in _NAMING if isinstance(model, kind)), numbered_names)
    return scheme(graph)


def prunable_layers(model: nn.Module, example_input: torch.Tensor | None = None, *,
                    alone: bool = False) -> dict[str, str]:
    """``{name users write: module name}`` in input order: ``conv1``..``conv13`` for VGG16-bn, the numbered
    main-path convs for ResNets (``conv{2i}`` is block ``i``'s first conv), ``block1``.. for MobileNetV2.

    Not every listed layer may be pruned alone: a ResNet's second convs feed a residual sum (see
    :attr:`ChannelGroup.prunable_alone`); asking for one alone is an error naming its coupled layers.
    ``alone=True`` lists only the layers that may be (what a per-layer sensitivity sweep can prune).
    """
    graph = analyse(model, example_input)
    names = layer_names(model, graph)
    return {name: module for name, module in names.layers.items()
            if not alone or graph.group_of(module).prunable_alone}
