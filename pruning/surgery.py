"""What is done: channels physically removed, by replacing modules with smaller ones.

:func:`remove_channels` takes a :class:`~pruning.groups.ChannelGroup` and the channel indices to keep,
and swaps every module of the group for a smaller ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear``
holding the kept slices (weights, bias, BatchNorm running statistics; a depthwise conv's ``groups``
follows its width). New modules are made with the old one's dtype, device, train/eval mode and
``requires_grad``, and put in the old one's place, so the caller keeps the same model object (every
pruning method prunes in place). Nothing is masked: the removed filters no longer exist.

A pruned model cannot be rebuilt from its registry name and options alone, and checkpoints are data,
never pickled modules. So :func:`pruned_shapes` describes every conv, BatchNorm and linear layer's sizes
as plain JSON-able data (stored as ``arch["shapes"]``) and :func:`apply_shapes` resizes a freshly built
model to them before its weights are loaded with strict keys.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pruning.groups import ChannelGroup
from pruning.heads import HEAD_MODULES, PRUNED_ATTENTION, count_heads, head_dim, slice_attention
from utils.core.errors import UserError

__all__ = ["apply_shapes", "pruned_shapes", "remove_channels", "remove_units"]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _exact(module: nn.Module, kinds: tuple[type[nn.Module], ...], name: str) -> None:
    # A subclass may take other constructor arguments or override forward; rebuilding it as its base
    # class would silently change the model, so only the plain torch classes are resized.
    if type(module) not in kinds:
        raise TypeError(f"{name} is a {type(module).__name__}; channel surgery resizes only "
                        f"{', '.join(k.__name__ for k in kinds)} modules")


def _finish(new: nn.Module, old: nn.Module) -> nn.Module:
    new.train(old.training)
    for (_, new_param), (_, old_param) in zip(new.named_parameters(), old.named_parameters(), strict=True):
        new_param.requires_grad_(old_param.requires_grad)
    return new


def _new_conv(old: nn.Conv2d, *, in_channels: int, out_channels: int, groups: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                     dilation=old.dilation, groups=groups, bias=old.bias is not None, padding_mode=old.padding_mode,
                     device=old.weight.device, dtype=old.weight.dtype)


def _new_norm(old: nn.Module, num_features: int) -> nn.Module:
    ref = old.weight if old.weight is not None else old.running_mean  # None: no state, default device/dtype
    return type(old)(num_features, eps=old.eps, momentum=old.momentum, affine=old.affine,
                     track_running_stats=old.track_running_stats, device=getattr(ref, "device", None),
                     dtype=getattr(ref, "dtype", None))


def _new_linear(old: nn.Linear, *, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=old.bias is not None, device=old.weight.device,
                     dtype=old.weight.dtype)


def _keep(size: int, drop: set[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([i for i in range(size) if i not in drop], dtype=torch.long, device=device)


@torch.no_grad()
def _slice_conv(old: nn.Conv2d, drop: Mapping[str, set[int]]) -> nn.Conv2d:
    """``drop``: output positions (``conv_out``/``grouped``) and input positions (``conv_in``) to remove."""
    weight, bias, device = old.weight, old.bias, old.weight.device
    out_drop = drop.get("conv_out", set()) | drop.get("grouped", set())
    out_keep = _keep(old.out_channels, out_drop, device)
    weight = weight[out_keep]
    bias = bias[out_keep] if bias is not None else None
    if old.groups > 1:  # whole conv groups go (pruning.groups ties a group's channels into one unit)
        per_out = old.out_channels // old.groups
        groups = len(out_keep) // per_out
        in_channels = groups * (old.in_channels // old.groups)
    else:
        weight = weight[:, _keep(old.in_channels, drop.get("conv_in", set()), device)]
        groups, in_channels = 1, weight.shape[1]
    new = _new_conv(old, in_channels=in_channels, out_channels=weight.shape[0], groups=groups)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return _finish(new, old)


@torch.no_grad()
def _slice_norm(old: nn.Module, drop: Mapping[str, set[int]]) -> nn.Module:
    ref = old.weight if old.affine else old.running_mean
    keep = _keep(old.num_features, drop["norm"], ref.device if ref is not None else torch.device("cpu"))
    new = _new_norm(old, len(keep))
    if old.affine:
        new.weight.copy_(old.weight[keep])
        new.bias.copy_(old.bias[keep])
    if old.track_running_stats:
        new.running_mean.copy_(old.running_mean[keep])
        new.running_var.copy_(old.running_var[keep])
        new.num_batches_tracked.copy_(old.num_batches_tracked)
    return _finish(new, old)


@torch.no_grad()
def _slice_linear(old: nn.Linear, drop: Mapping[str, set[int]]) -> nn.Linear:
    device = old.weight.device
    out_keep = _keep(old.out_features, drop.get("linear_out", set()), device)
    in_keep = _keep(old.in_features, drop.get("linear_in", set()), device)
    new = _new_linear(old, in_features=len(in_keep), out_features=len(out_keep))
    new.weight.copy_(old.weight[out_keep][:, in_keep])
    if old.bias is not None:
        new.bias.copy_(old.bias[out_keep])
    return _finish(new, old)


@torch.no_grad()
def _slice_param(model: nn.Module, name: str, dim: int, drop: set[int]) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    kept = old.index_select(dim, _keep(old.shape[dim], drop, old.device)).clone()
    setattr(parent, attr, nn.Parameter(kept, requires_grad=old.requires_grad))


_SLICERS = {nn.Conv2d: _slice_conv, nn.BatchNorm1d: _slice_norm, nn.BatchNorm2d: _slice_norm, nn.Linear: _slice_linear}


def _slicer(module: nn.Module, name: str) -> Any:
    """What makes a smaller copy of ``module``: by its exact class, or :mod:`pruning.heads` for attention."""
    if isinstance(module, HEAD_MODULES):
        return lambda old, drop: slice_attention(old, drop["heads"])
    _exact(module, tuple(_SLICERS), name)
    return _SLICERS[type(module)]


_SIZE_OF_ROLE = {"conv_out": "out_channels", "grouped": "out_channels", "conv_in": "in_channels", "heads": "num_heads",
                 "linear_out": "out_features", "linear_in": "in_features", "norm": "num_features"}


def _check_sizes(model: nn.Module, groups: Sequence[ChannelGroup]) -> None:
    """Every member still has the size the groups were built for (else they describe another state of the model)."""
    for group in groups:
        for member in group.members:
            if member.role == "param":
                continue
            module = model.get_submodule(member.module)
            _slicer(module, member.module)
            size = _SIZE_OF_ROLE[member.role]
            highest = max((p for unit in member.index for p in unit), default=-1)
            have = count_heads(module) if member.role == "heads" else getattr(module, size)
            if highest >= have:
                raise ValueError(f"{member.module} has {have} {size.replace('_', ' ')} but the group "
                                 "addresses more: the group was built for another state of the model")


def remove_units(model: nn.Module, groups: Sequence[ChannelGroup], removed: Sequence[Sequence[int]]) -> None:
    """Remove units ``removed[i]`` of ``groups[i]`` from ``model`` at once, replacing the modules in place.

    All groups go in one pass because one module dimension may carry several groups (a conv reading a
    ``torch.cat`` of two convs' outputs): positions are those of the model as the groups describe it.
    """
    _check_sizes(model, groups)
    drops: dict[str, dict[str, set[int]]] = {}
    params: dict[tuple[str, int], set[int]] = {}
    for group, units in zip(groups, removed, strict=True):
        if not units:
            continue
        if not group.producers:
            raise ValueError("a channel group without producers (the model input) cannot lose channels")
        for member in group.members:
            gone = set(member.positions(units))
            if member.role == "param":
                params.setdefault((member.module, member.dim), set()).update(gone)
            else:
                drops.setdefault(member.module, {}).setdefault(member.role, set()).update(gone)
    for name, drop in drops.items():
        module = model.get_submodule(name)
        _replace(model, name, _slicer(module, name)(module, drop))
    for (name, dim), gone in params.items():
        _slice_param(model, name, dim, gone)


def remove_channels(model: nn.Module, group: ChannelGroup, keep_indices: Sequence[int] | torch.Tensor) -> None:
    """Keep only channels (units) ``keep_indices`` of ``group`` in every module of it, replacing the modules in place.

    ``group`` must describe ``model`` as it is now; to remove channels of several groups, use :func:`remove_units`
    (removing one group's channels shifts the positions of another group that shares a module dimension with it).
    """
    keep = torch.as_tensor(keep_indices, dtype=torch.long).flatten().sort().values
    if len(keep) == 0 or len(torch.unique(keep)) != len(keep) or keep[0] < 0 or keep[-1] >= group.channels:
        raise ValueError(f"keep_indices must be distinct channel indices in [0, {group.channels}), at least one")
    kept = set(keep.tolist())
    remove_units(model, [group], [[u for u in range(group.channels) if u not in kept]])


# --------------------------------------------------------------------------- shapes for checkpoints

_SHAPE_KEYS: dict[str, tuple[str, ...]] = {
    "Conv2d": ("in_channels", "out_channels", "groups"),
    "BatchNorm1d": ("num_features",),
    "BatchNorm2d": ("num_features",),
    "Linear": ("in_features", "out_features"),
}


def pruned_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {"type": "Conv2d", "in_channels": .., "out_channels": .., "groups": ..}, ...}`` for
    every conv, BatchNorm and linear layer: plain data that :func:`apply_shapes` turns a fresh model into
    this one with (all of them rather than only the changed ones, so the description does not depend on
    what the unpruned architecture was; a ResNet-34 needs 73 entries)."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        keys = _SHAPE_KEYS.get(type(module).__name__)
        if keys is not None and type(module) in (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear):
            shapes[name] = {"type": type(module).__name__, **{key: int(getattr(module, key)) for key in keys}}
        elif isinstance(module, PRUNED_ATTENTION):
            shapes[name] = {"type": "AttentionHeads", "num_heads": count_heads(module), "head_dim": head_dim(module)}
        elif not isinstance(module, (*_SLICERS, *HEAD_MODULES)):  # a parameter used directly (a layer scale)
            for param_name, param in module.named_parameters(prefix=name, recurse=False):
                shapes[param_name] = {"type": "Parameter", "shape": list(param.shape)}
    return shapes


def _bad(name: str, problem: str) -> UserError:
    return UserError(f"arch.shapes: {name}: {problem}; the checkpoint was written for another architecture "
                     "or model option (rebuild with the arch it was saved from)")


def _apply_head_shape(model: nn.Module, name: str, spec: Mapping[str, Any]) -> None:
    try:
        old = model.get_submodule(name)
    except AttributeError:
        raise _bad(name, "the model has no such module") from None
    if not isinstance(old, HEAD_MODULES):
        raise _bad(name, f"the checkpoint has attention heads but the model a {type(old).__name__}")
    heads, width = spec.get("num_heads"), spec.get("head_dim")
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in (heads, width)):
        raise _bad(name, f"num_heads and head_dim must be positive integers, got {heads!r} and {width!r}")
    if width != head_dim(old) or heads > count_heads(old):
        raise _bad(name, f"the model's attention has {count_heads(old)} heads of {head_dim(old)}")
    if heads < count_heads(old):  # the first heads, sized right; the checkpoint's weights are loaded next
        _replace(model, name, slice_attention(old, set(range(heads, count_heads(old)))))


def _apply_param_shape(model: nn.Module, name: str, shape: Any) -> None:
    parent_name, _, attr = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
    except AttributeError:
        raise _bad(name, "the model has no such parameter") from None
    if not isinstance(old, nn.Parameter):
        raise _bad(name, "the model has no such parameter")
    if not isinstance(shape, list) or len(shape) != old.ndim or \
            any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in shape):
        raise _bad(name, f"shape must be {old.ndim} positive integers, got {shape!r}")
    if list(old.shape) != shape:
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        setattr(parent, attr, nn.Parameter(new, requires_grad=old.requires_grad))


def apply_shapes(model: nn.Module, shapes: Mapping[str, Mapping[str, Any]]) -> None:
    """Resize the modules of a freshly built ``model`` to ``shapes`` (from :func:`pruned_shapes`), in place.

    The resized modules hold freshly initialised weights: loading the checkpoint's state dict follows.
    """
    if not isinstance(shapes, Mapping):
        raise UserError(f"arch.shapes: expected a mapping of module names to sizes, got {type(shapes).__name__}")
    for name, spec in shapes.items():
        if isinstance(spec, Mapping) and spec.get("type") == "Parameter":
            _apply_param_shape(model, name, spec.get("shape"))
            continue
        if isinstance(spec, Mapping) and spec.get("type") == "AttentionHeads":
            _apply_head_shape(model, name, spec)
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise _bad(name, "the model has no such module") from None
        kind = spec.get("type") if isinstance(spec, Mapping) else None
        if kind not in _SHAPE_KEYS:
            raise _bad(name, f"expected a mapping with a type in {', '.join(_SHAPE_KEYS)}, got {spec!r}")
        if type(module).__name__ != kind:
            raise _bad(name, f"the checkpoint has a {kind} but the model a {type(module).__name__}")
        sizes = {key: spec.get(key) for key in _SHAPE_KEYS[kind]}
        for key, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise _bad(name, f"{key} must be a positive integer, got {value!r}")
        current = {key: int(getattr(module, key)) for key in sizes}
        if current == sizes:
            continue
        try:
            if kind == "Conv2d":
                new = _new_conv(module, **sizes)
            elif kind == "Linear":
                new = _new_linear(module, **sizes)
            else:
                new = _new_norm(module, sizes["num_features"])
        except (ValueError, RuntimeError) as exc:  # e.g. groups that do not divide the channels
            raise _bad(name, str(exc)) from None
        _replace(model, name, _finish(new, module))
