"""What a channel group is: channels that can only be removed together, and the modules that carry them.

:func:`pruning.dependency.analyse` returns a :class:`ChannelGraph` of :class:`ChannelGroup` objects; the surgery
(:mod:`pruning.surgery`), the scoring (:mod:`pruning.importance`) and the layer names (:mod:`pruning.naming`)
read them. While the trace is followed, groups are drafts in a union-find (:class:`GroupBuilder`), because a
residual sum merges groups that were separate until then; :meth:`GroupBuilder.freeze` turns the drafts into
the frozen groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ChannelGraph", "ChannelGroup", "Consumer", "Draft", "GroupBuilder"]


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


@dataclass
class Draft:
    """A group while the trace is followed: lists that grow, and merge when a residual sum joins two groups."""

    channels: int
    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    summed: bool = False
    blocked: list[str] = field(default_factory=list)


class GroupBuilder:
    """Union-find over draft groups: ``union`` merges groups that were separate until then."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.drafts: list[Draft] = []

    def new(self, channels: int, *, blocked: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.drafts.append(Draft(channels=channels, blocked=[blocked] if blocked else []))
        return len(self.parent) - 1

    def find(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def draft(self, index: int) -> Draft:
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

    def freeze(self, order: Mapping[str, int]) -> tuple[list[ChannelGroup], dict[int, int]]:
        """The merged groups, ordered by their first producer (``order``: module -> execution position; every
        module list sorted by it), and the index into that list of every draft id."""

        def position(module: str) -> int:
            return order.get(module, len(order))

        def first_producer(root: int) -> int:
            return min([position(m) for m in self.drafts[root].producers] or [len(order)])

        roots = sorted({self.find(i) for i in range(len(self.parent))}, key=first_producer)
        index = {root: i for i, root in enumerate(roots)}
        groups = []
        for root in roots:
            d = self.drafts[root]
            groups.append(ChannelGroup(
                channels=d.channels, producers=tuple(sorted(d.producers, key=position)),
                norms=tuple(sorted(d.norms, key=position)), depthwise=tuple(sorted(d.depthwise, key=position)),
                consumers=tuple(sorted(d.consumers, key=lambda c: position(c.module))),
                summed=d.summed, blocked="; ".join(d.blocked) or None,
            ))
        return groups, {i: index[self.find(i)] for i in range(len(self.parent))}
