"""The state of one channel trace (:class:`TraceContext`) and what the rules of :mod:`pruning.channel_rules` share:
the recorded shape of a node, and how a node is named in messages."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import fx, nn

from pruning.groups import Record, UnitBuilder
from pruning.unit_ids import along_axis

__all__ = ["TraceContext", "arrays", "node_shape", "what", "where"]


def node_shape(node: Any) -> tuple[int, ...] | None:
    """The output shape the shape pass recorded for ``node`` (None: not a node, or not a tensor)."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def where(node: fx.Node) -> str:
    """The module a node belongs to, for messages (``layer2.0.shortcut``)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack), None) or "the model's own forward"


def what(node: fx.Node, module: nn.Module | None) -> str:  # ``Conv2d layer1.0.conv1``
    if module is not None:
        return f"{type(module).__name__} {node.target}"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{name} in {where(node)}"


def arrays(value: Any) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in arrays(v)]
    return []


class TraceContext:
    """The state of one trace: the ids of every tensor so far, the union-find of units, and every module dimension
    that carries them (:class:`~pruning.groups.Record`)."""

    def __init__(self, builder: UnitBuilder, root: nn.Module) -> None:
        self.b = builder
        self.root = root
        self.info: dict[fx.Node, Any] = {}
        self.records: list[Record] = []
        self.params: list[tuple[str, np.ndarray, int]] = []  # (name, ids of every element, position)
        self.convs: list[str] = []  # every Conv2d call, in execution order
        self.linears: list[str] = []
        self.grouped: set[str] = set()
        self.position = 0

    def ids(self, arg: Any) -> np.ndarray | None:
        """The ids of tensor ``arg``; a tensor the trace does not follow gets one fresh blocked id."""
        value = self.info.get(arg) if isinstance(arg, fx.Node) else None
        if isinstance(value, np.ndarray):
            return value
        shape = node_shape(arg)
        if shape is None:
            return None
        return self.fresh(len(shape), "its channels come from a value the channel analysis does not follow")

    def fresh(self, ndim: int, reason: str) -> np.ndarray:
        return self.b.new(1, blocked=reason).reshape((1,) * ndim)

    def blocked_like(self, ids: np.ndarray, reason: str) -> np.ndarray:
        """Fresh blocked ids laid out as ``ids`` (one per channel), so a blocked group still counts its channels."""
        return self.b.new(ids.size, blocked=reason).reshape(ids.shape)

    def tie(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for a, b in pairs:
            self.b.union_arrays(a, b)

    def along(self, arg: Any, axis: int) -> np.ndarray:
        """The 1-D ids along ``axis`` of tensor ``arg`` (a weight is applied along it)."""
        shape = node_shape(arg)
        ids = self.ids(arg)
        column, ties = along_axis(ids, axis % len(shape), shape[axis])
        self.tie(ties)
        return column

    def record(self, module: str, role: str, ids: np.ndarray, dim: int = 0) -> None:
        self.records.append(Record(module, role, np.asarray(ids, dtype=np.int64), self.position, dim))

    def block_inputs(self, node: fx.Node, reason: str) -> None:
        for arg in node.all_input_nodes:
            for ids in arrays(self.info.get(arg)):
                self.b.block(ids, reason)

    def unknown(self, node: fx.Node, module: nn.Module | None = None) -> Any:
        reason = f"its channels go through {what(node, module)}, which the channel analysis does not follow"
        self.block_inputs(node, reason)
        shape = node_shape(node)
        if shape is None:
            return None
        # An output shaped like an input keeps that input's layout; anything else is one blocked id.
        like = next((ids for arg in node.all_input_nodes if node_shape(arg) == shape
                     for ids in [self.info.get(arg)] if isinstance(ids, np.ndarray)), None)
        return self.fresh(len(shape), reason) if like is None else self.blocked_like(like, reason)
