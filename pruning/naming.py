"""The names users write for layers (``prune.layers``, ``prune.skip``), derived from the channel graph.

A name is pruning's vocabulary, not the model's: :func:`numbered_names` numbers the main-path convs
(``conv1``, ``conv2``, ...: VGG's ``features.conv1..13`` and Li et al.'s ResNet numbering) and
:func:`block_names` names the blocks of inverted-residual networks (MobileNetV2's ``block1``, ...). Which
scheme a model gets is the model's choice: its class declares ``layer_naming`` (models/api.py).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pruning.dependency import analyse
from pruning.groups import ChannelGraph
from utils.core.errors import UserError
from utils.core.tvguard import torchvision

__all__ = ["NAMING_SCHEMES", "LayerNames", "block_names", "layer_names", "module_names", "numbered_names",
           "prunable_layers"]


@dataclass(frozen=True)
class LayerNames:
    """The names a user may write in ``prune.layers``/``prune.skip`` and what they mean.

    ``layers``: short name -> producer conv (``conv7`` -> ``layer1.2.conv2``), in input order.
    ``selectors``: names that stand for several layers (``layer2`` -> its blocks' first convs).
    ``aliases``: other accepted spellings -> canonical layer name (module names, ``features.N``).
    ``producers``: every conv and linear layer whose filters can be ranked, by module name (also accepted as names);
    a glob (``features.*``) stands for the ``prunable`` ones it matches.
    ``note``: how else the short names may be written (shown in error messages).
    """

    layers: dict[str, str]
    selectors: dict[str, tuple[str, ...]]
    aliases: dict[str, str]
    producers: tuple[str, ...]
    note: str = ""  # how else the short names may be written, for error messages
    prunable: tuple[str, ...] = ()  # the producers whose channel groups may be pruned: what a glob matches

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
        if any(ch in name for ch in "*?["):
            return self._glob(name, key)
        raise UserError(f"{key}: unknown layer {name!r}; valid names: {self.describe()}")

    def _glob(self, pattern: str, key: str) -> list[str]:
        """The prunable layers whose module name or short name matches ``pattern`` (``features.*``, ``layer3.*``,
        ``encoder.layers.*.mlp.0``); layers that cannot be pruned are left out rather than refused."""
        found = [self.canonical(p) for p in self.prunable
                 if fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(self.canonical(p), pattern)]
        if not found:
            raise UserError(f"{key}: {pattern!r} matches no prunable layer; valid names: {self.describe()}")
        return list(dict.fromkeys(found))

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
    read, written = graph.reads.get(conv, ()), graph.writes.get(conv, ())
    return bool(read) and bool(written) and all(graph.groups[i].summed for i in (*read, *written)) and \
        set(read).isdisjoint(written)


def _producers(graph: ChannelGraph) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every conv, linear layer and attention module that writes channels (or heads), by module name, in execution
    order; and those of them whose groups may all be pruned."""
    producers = tuple(m for m, written in graph.writes.items() if written and not graph.is_depthwise(m))
    return producers, tuple(p for p in producers if all(graph.groups[i].prunable for i in graph.writes[p]))


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
            alone = tuple(aliases[c] for c in main if _stage(c) == stage and graph.alone(c))
            if alone:
                selectors[stage] = alone
    for group in graph.groups:
        stage = _stage(group.producers[-1]) if group.summed and group.producers else None
        if stage is not None and f"{stage}.residual" not in selectors:
            selectors[f"{stage}.residual"] = tuple(aliases.get(p, p) for p in group.producers)
    producers, prunable = _producers(graph)
    selectors.update(_group_selectors(graph, aliases, selectors))
    return LayerNames(layers=layers, selectors=selectors, aliases=aliases, producers=producers, prunable=prunable)


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
    producers, prunable = _producers(graph)
    layers = dict(sorted(layers.items(), key=lambda item: int(re.sub(r"\D", "", item[0]))))
    return LayerNames(layers=layers, selectors=_group_selectors(graph, aliases, {}), aliases=aliases,
                      producers=producers, prunable=prunable,
                      note="(block N may also be written as its module name features.N)")


def _group_selectors(graph: ChannelGraph, aliases: dict[str, str], taken: dict[str, tuple[str, ...]]
                     ) -> dict[str, tuple[str, ...]]:
    """``group<i>`` for every residual group (several producers that can only lose channels together) that no other
    name stands for yet: ``i`` is the group's index in the trace, as ``--list-layers`` shows it."""
    covered = {frozenset(members) for members in taken.values()}
    selectors = {}
    for index, group in enumerate(graph.groups):
        members = tuple(aliases.get(p, p) for p in group.producers)
        if group.summed and group.prunable and len(members) > 1 and frozenset(members) not in covered:
            selectors[f"group{index}"] = members
    return selectors


def module_names(graph: ChannelGraph) -> LayerNames:
    """Any model from outside the registry (``torchvision:``, ``timm:``, the user's own): every conv and linear
    layer that writes channels is named by its module name (``layer1.0.conv1``, ``classifier.1``); globs such as
    ``features.*`` stand for the prunable ones they match, and ``group<i>`` for the producers of residual group ``i``.
    """
    producers, prunable = _producers(graph)
    return LayerNames(layers={p: p for p in producers}, selectors=_group_selectors(graph, {}, {}), aliases={},
                      producers=producers, prunable=prunable, note="(module names; globs such as features.* too)")


# The schemes a model class may declare as its ``layer_naming`` (models/api.py).
NAMING_SCHEMES: dict[str, Callable[[ChannelGraph], LayerNames]] = {
    "numbered": numbered_names, "blocks": block_names, "modules": module_names}


def _naming(model: nn.Module) -> str:
    """The scheme ``model`` declares; undeclared: ``blocks`` for torchvision's MobileNetV2 (a class this project
    cannot add a declaration to), ``numbered`` for every other model (right for plain and residual CNNs)."""
    declared = getattr(model, "layer_naming", None)
    if declared is None:
        return "blocks" if isinstance(model, torchvision.models.MobileNetV2) else "numbered"
    if declared not in NAMING_SCHEMES:
        raise ValueError(f"{type(model).__name__}.layer_naming: expected one of {', '.join(NAMING_SCHEMES)}, "
                         f"got {declared!r}")
    return declared


def layer_names(model: nn.Module, graph: ChannelGraph | None = None, *,
                example_input: torch.Tensor | None = None) -> LayerNames:
    """The user-facing names of ``model``'s prunable layers (see :class:`LayerNames`)."""
    graph = graph if graph is not None else analyse(model, example_input)
    return NAMING_SCHEMES[_naming(model)](graph)


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
            if not alone or graph.alone(module)}
