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
from utils.core.errors import UserError

__all__ = ["apply_shapes", "pruned_shapes", "remove_channels"]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


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


@torch.no_grad()
def _slice_conv(old: nn.Conv2d, *, out_keep: torch.Tensor | None = None, in_keep: torch.Tensor | None = None,
                depthwise: bool = False) -> nn.Conv2d:
    weight, bias = old.weight, old.bias
    out_keep = out_keep.to(weight.device) if out_keep is not None else None
    in_keep = in_keep.to(weight.device) if in_keep is not None else None
    if depthwise:  # weight (C, 1, kh, kw): output channel c is input channel c
        weight = weight[out_keep]
        bias = bias[out_keep] if bias is not None else None
        n = len(out_keep)
        new = _new_conv(old, in_channels=n, out_channels=n, groups=n)
    else:
        if out_keep is not None:
            weight = weight[out_keep]
            bias = bias[out_keep] if bias is not None else None
        if in_keep is not None:
            weight = weight[:, in_keep]
        new = _new_conv(old, in_channels=weight.shape[1], out_channels=weight.shape[0], groups=1)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return _finish(new, old)


@torch.no_grad()
def _slice_norm(old: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = _new_norm(old, len(keep))
    ref = old.weight if old.affine else old.running_mean
    keep = keep.to(ref.device) if ref is not None else keep
    if old.affine:
        new.weight.copy_(old.weight[keep])
        new.bias.copy_(old.bias[keep])
    if old.track_running_stats:
        new.running_mean.copy_(old.running_mean[keep])
        new.running_var.copy_(old.running_var[keep])
        new.num_batches_tracked.copy_(old.num_batches_tracked)
    return _finish(new, old)


@torch.no_grad()
def _slice_linear(old: nn.Linear, keep: torch.Tensor, spatial: int) -> nn.Linear:
    # Channel c of a flattened (C, H, W) map owns features c*H*W .. c*H*W + H*W - 1.
    keep = keep.to(old.weight.device)
    features = (keep[:, None] * spatial + torch.arange(spatial, device=keep.device)[None, :]).flatten()
    new = _new_linear(old, in_features=len(features), out_features=old.out_features)
    new.weight.copy_(old.weight[:, features])
    if old.bias is not None:
        new.bias.copy_(old.bias)
    return _finish(new, old)


def remove_channels(model: nn.Module, group: ChannelGroup, keep_indices: Sequence[int] | torch.Tensor) -> None:
    """Keep only channels ``keep_indices`` of ``group`` in every module of it, replacing the modules in place.

    ``group`` must describe ``model`` as it is now (groups of one model are independent, so removing
    channels from one group leaves every other group's indices valid).
    """
    keep = torch.as_tensor(keep_indices, dtype=torch.long).flatten().sort().values
    if len(keep) == 0 or len(torch.unique(keep)) != len(keep) or keep[0] < 0 or keep[-1] >= group.channels:
        raise ValueError(f"keep_indices must be distinct channel indices in [0, {group.channels}), at least one")
    if not group.producers:
        raise ValueError("a channel group without producers (the model input) cannot lose channels")
    for name in group.producers + group.depthwise:
        conv = model.get_submodule(name)
        _exact(conv, (nn.Conv2d,), name)
        if conv.out_channels != group.channels:
            raise ValueError(f"{name} has {conv.out_channels} output channels but the group has {group.channels}: "
                             "the group was built for another state of the model")
    for name in group.producers:
        _replace(model, name, _slice_conv(model.get_submodule(name), out_keep=keep))
    for name in group.depthwise:
        _replace(model, name, _slice_conv(model.get_submodule(name), out_keep=keep, depthwise=True))
    for name in group.norms:
        norm = model.get_submodule(name)
        _exact(norm, _BATCH_NORMS, name)
        _replace(model, name, _slice_norm(norm, keep))
    for consumer in group.consumers:
        module = model.get_submodule(consumer.module)
        if consumer.kind == "conv":
            _exact(module, (nn.Conv2d,), consumer.module)
            _replace(model, consumer.module, _slice_conv(module, in_keep=keep))
        elif consumer.kind == "linear":
            _exact(module, (nn.Linear,), consumer.module)
            _replace(model, consumer.module, _slice_linear(module, keep, consumer.spatial))
        else:
            raise ValueError(f"unknown consumer kind {consumer.kind!r}")


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
    return shapes


def _bad(name: str, problem: str) -> UserError:
    return UserError(f"arch.shapes: {name}: {problem}; the checkpoint was written for another architecture "
                     "or model option (rebuild with the arch it was saved from)")


def apply_shapes(model: nn.Module, shapes: Mapping[str, Mapping[str, Any]]) -> None:
    """Resize the modules of a freshly built ``model`` to ``shapes`` (from :func:`pruned_shapes`), in place.

    The resized modules hold freshly initialised weights: loading the checkpoint's state dict follows.
    """
    if not isinstance(shapes, Mapping):
        raise UserError(f"arch.shapes: expected a mapping of module names to sizes, got {type(shapes).__name__}")
    for name, spec in shapes.items():
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
