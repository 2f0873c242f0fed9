"""What a channel group is: channels that can only be removed together, and where each of them sits in each module.

:func:`pruning.dependency.analyse` returns a :class:`ChannelGraph` of :class:`ChannelGroup` objects; the surgery
(:mod:`pruning.surgery`), the scoring (:mod:`pruning.importance`) and the layer names (:mod:`pruning.naming`)
read them.

While the model is traced, every channel a conv or linear layer writes gets a *unit* id, and the ops that tie
channels together (a residual sum, a BatchNorm, a depthwise conv, a per-channel gate) merge ids in a union-find
(:class:`UnitBuilder`). A unit is what can be removed: everything that must go with one channel. Most units are
one channel of one layer; a unit of a grouped conv's input is a whole conv group of channels. Units that touch the
same modules in the same way form a :class:`ChannelGroup` (a conv's output channels, or a residual stream), and
each module of the group says, per unit, which of its positions the unit occupies (:class:`Member`): channel ``c``
of a plain conv is position ``c``; after ``torch.cat`` it sits at an offset; after ``flatten`` it owns ``H*W``
input features of the linear layer; after a channel shuffle, a permuted position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["READERS", "ROLES", "WRITERS", "ChannelGraph", "ChannelGroup", "Consumer", "Member", "Record", "UnitBuilder",
           "freeze", "written_and_read"]

WRITERS = ("conv_out", "linear_out", "heads")
"""Roles whose rows are filters that write a unit's channels: what importance criteria rank (producers). A unit of
``heads`` is one attention head (:mod:`pruning.attention`)."""
READERS = ("conv_in", "linear_in")
"""Roles that read a unit's channels through their weights' input dimension (consumers)."""
ROLES = (*WRITERS, *READERS, "grouped", "norm", "param")
"""``grouped``: a conv with ``groups > 1`` (depthwise included); its input and output channels of one conv group
are one unit, so it loses whole conv groups. ``norm``: a BatchNorm. ``param``: a parameter used directly in the
forward pass (a layer scale, a class token), sliced along ``Member.dim``."""


@dataclass(frozen=True)
class Member:
    """One module dimension that carries a group's channels: ``index[u]`` are the positions unit ``u`` occupies
    along it (the weight's output rows for ``conv_out``/``linear_out``/``grouped``/``norm``, its input columns for
    ``conv_in``/``linear_in``, dimension ``dim`` of the parameter named ``module`` for ``param``)."""

    module: str
    role: str
    index: tuple[tuple[int, ...], ...]
    dim: int = 0

    def positions(self, units: Sequence[int]) -> list[int]:
        """The positions of ``units``, sorted."""
        return sorted(p for u in units for p in self.index[u])


@dataclass(frozen=True)
class Consumer:
    """A module whose *input* dimension carries a group's channels (a view of a reader :class:`Member`).

    ``kind`` is ``"conv"`` (input channels of a ``groups == 1`` conv) or ``"linear"`` (input features of a linear
    layer); ``spatial`` is how many input positions one channel occupies (``H*W`` after ``flatten``).
    """

    module: str
    kind: str
    spatial: int = 1


@dataclass(frozen=True)
class ChannelGroup:
    """Channels (units) that can only be removed together, with the same indices, from all of its members.

    ``producers`` write the channels (their output filters are what is ranked and removed; a squeeze-and-excitation
    gate that scales them is one too); ``norms`` (BatchNorm) and ``depthwise`` (grouped) convs carry them through;
    ``consumers`` read them. ``summed`` says the channels go through a residual sum, so none of the producers of the
    sum may be pruned alone. ``blocked`` is why the group may not be pruned at all (``None``: it may, as a whole).
    """

    channels: int
    members: tuple[Member, ...]
    summed: bool = False
    blocked: str | None = None

    def _modules(self, *roles: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.module for m in self.members if m.role in roles))

    @property
    def producers(self) -> tuple[str, ...]:
        return self._modules(*WRITERS)

    @property
    def norms(self) -> tuple[str, ...]:
        return self._modules("norm")

    @property
    def depthwise(self) -> tuple[str, ...]:
        return self._modules("grouped")

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        return tuple(Consumer(m.module, m.role.removesuffix("_in"), len(m.index[0]))
                     for m in self.members if m.role in READERS)

    @property
    def prunable(self) -> bool:
        """Whether the group may be pruned (as a whole: every producer loses the same channels)."""
        return self.blocked is None and bool(self.producers)

    @property
    def prunable_alone(self) -> bool:
        """Whether it may be pruned without the layers of a residual sum (False when it feeds one)."""
        return self.prunable and not self.summed

    def filters_per_unit(self, producer: str) -> int:
        """How many of ``producer``'s filters (output channels, or heads) one channel of the group is: 1, except
        where a grouped conv or a channel shuffle ties several into one unit."""
        member = self.member(producer, *WRITERS)
        return len(member.index[0]) if member is not None and member.index else 1

    def member(self, module: str, *roles: str) -> Member | None:
        """The member of ``module`` in one of ``roles`` (any role when none given), if the group has one."""
        return next((m for m in self.members if m.module == module and (not roles or m.role in roles)), None)

    def modules(self) -> tuple[str, ...]:
        """Every module (or parameter) that changes shape when the group loses channels."""
        return tuple(dict.fromkeys(m.module for m in self.members))


@dataclass(frozen=True)
class ChannelGraph:
    """The result of :func:`analyse`: the groups plus, for every conv and linear layer, which groups it reads and
    writes."""

    groups: list[ChannelGroup]
    convs: list[str]  # every Conv2d module, in execution order
    reads: dict[str, tuple[int, ...]]  # conv/linear -> indices of the groups of its input channels
    writes: dict[str, tuple[int, ...]]  # conv/linear -> indices of the groups of its output channels
    grouped: frozenset[str] = frozenset()  # convs with groups > 1 (depthwise included)
    linears: tuple[str, ...] = ()  # every Linear module, in execution order

    def group_of(self, producer: str) -> ChannelGroup:
        """The one group ``producer`` writes (a layer whose channels split into several groups, as after a
        channel shuffle, has no single group: ``ValueError``)."""
        written = self.writes[producer]
        if len(written) != 1:
            raise ValueError(f"{producer} writes {len(written)} channel groups, not one")
        return self.groups[written[0]]

    def alone(self, producer: str) -> bool:
        """Whether every group ``producer`` writes may be pruned without the other layers of a residual sum."""
        written = self.writes.get(producer, ())
        return bool(written) and all(self.groups[i].prunable_alone for i in written)

    def is_depthwise(self, conv: str) -> bool:
        """Whether ``conv`` is a grouped conv (depthwise included): it carries channels rather than writing them."""
        return conv in self.grouped


class UnitBuilder:
    """Union-find over unit ids, with the reasons a unit is blocked and whether it goes through a residual sum."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.blocked: dict[int, list[str]] = {}  # root -> reasons
        self.summed: set[int] = set()  # ids (not necessarily roots) that went through a residual sum

    def new(self, count: int, *, blocked: str | None = None) -> np.ndarray:
        """``count`` fresh unit ids."""
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        ids = np.arange(start, start + count, dtype=np.int64)
        if blocked:
            for i in ids.tolist():
                self.blocked[i] = [blocked]
        return ids

    def find(self, index: int) -> int:
        parent = self.parent
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if b in self.blocked:
            reasons = self.blocked.setdefault(a, [])
            reasons += [r for r in self.blocked.pop(b) if r not in reasons]
        self.parent[b] = a
        return a

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        """Tie ``a[i]`` to ``b[i]`` for every ``i`` (same shapes)."""
        for x, y in set(zip(a.ravel().tolist(), b.ravel().tolist(), strict=True)):
            if x != y:
                self.union(x, y)

    def block(self, ids: np.ndarray, reason: str) -> None:
        for root in {self.find(i) for i in np.unique(ids).tolist()}:
            reasons = self.blocked.setdefault(root, [])
            if reason not in reasons:
                reasons.append(reason)

    def roots(self) -> np.ndarray:
        """The root of every id, fully compressed."""
        parent = np.asarray(self.parent, dtype=np.int64)
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                return parent
            parent = up


@dataclass(frozen=True)
class Record:
    """A member while the trace is followed: the raw unit id at every position of a module dimension."""

    module: str
    role: str
    ids: np.ndarray
    position: int  # the node's execution position, for ordering
    dim: int = 0


_ONE_UNIT = ("its channels form a single unit (a channel shuffle, a grouped conv or a size written into the graph "
             "ties them, or there is one): they can only be removed all together")


def freeze(builder: UnitBuilder, records: Sequence[Record]) -> tuple[list[ChannelGroup], list[np.ndarray]]:
    """The groups, ordered by their first producer (else their first member), and for every record the group index
    of each of its positions."""
    roots = builder.roots()
    blocked = {int(roots[i]): reasons for i, reasons in builder.blocked.items()}
    summed = {int(roots[i]) for i in builder.summed}
    per_record = [roots[r.ids] for r in records]
    signature: dict[int, list[tuple[int, int]]] = {}
    for k, rec_roots in enumerate(per_record):
        values, counts = np.unique(rec_roots, return_counts=True)
        for root, count in zip(values.tolist(), counts.tolist(), strict=True):
            signature.setdefault(root, []).append((k, count))
    classes: dict[tuple, list[int]] = {}
    for root, sig in signature.items():
        classes.setdefault((tuple(sig), root in blocked, root in summed), []).append(root)
    groups = []
    for (sig, _, is_summed), members_roots in classes.items():
        writers = [k for k, _ in sig if records[k].role in WRITERS]
        lead = min(writers or [k for k, _ in sig], key=lambda k: records[k].position)
        # Units in the order of their first position in the lead member: channel c of a plain conv is unit c.
        first = {}
        for p, root in enumerate(per_record[lead].tolist()):
            first.setdefault(root, p)
        units = sorted(members_roots, key=first.__getitem__)
        # Groups without producers (the model's input) go last.
        groups.append((records[lead].position if writers else len(records) + records[lead].position, units, sig,
                       is_summed))
    groups.sort(key=lambda g: (g[0], g[1][0]))
    unit_of = {}
    for gi, (_, units, _, _) in enumerate(groups):
        for u, root in enumerate(units):
            unit_of[root] = (gi, u)
    frozen = []
    for gi, (_, units, sig, is_summed) in enumerate(groups):
        members = []
        for k, _ in sorted(sig, key=lambda s: (records[s[0]].position, s[0])):
            index: list[list[int]] = [[] for _ in units]
            for p, root in enumerate(per_record[k].tolist()):
                g, u = unit_of[root]
                if g == gi:
                    index[u].append(p)
            rec = records[k]
            members.append(Member(rec.module, rec.role, tuple(tuple(i) for i in index), rec.dim))
        reasons = [r for root in units for r in blocked.get(root, ())]
        if len(units) == 1 and not reasons:  # nothing can go without emptying the layers
            reasons = [_ONE_UNIT]
        frozen.append(ChannelGroup(channels=len(units), members=tuple(members), summed=is_summed,
                                   blocked="; ".join(dict.fromkeys(reasons)) or None))
    group_index = [np.asarray([unit_of[int(r)][0] if int(r) in unit_of else -1 for r in rec_roots.tolist()],
                              dtype=np.int64) for rec_roots in per_record]
    return frozen, group_index


def written_and_read(records: Sequence[Record], group_index: Sequence[np.ndarray]
                     ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """``(writes, reads)``: for every conv and linear layer, the groups of its output and of its input positions."""
    writes: dict[str, tuple[int, ...]] = {}
    reads: dict[str, tuple[int, ...]] = {}
    for rec, groups in zip(records, group_index, strict=True):
        found = tuple(dict.fromkeys(g for g in groups.tolist() if g >= 0))
        if rec.role in (*WRITERS, "grouped"):
            writes[rec.module] = found
        if rec.role in (*READERS, "grouped"):
            reads[rec.module] = found
    return writes, reads

