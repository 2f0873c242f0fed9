"""Which unit every element of a tensor belongs to, kept small: the arrays the channel trace passes along edges.

Every tensor of a traced model is described by an integer array of unit ids with one axis per tensor dimension
(:mod:`pruning.groups` says what a unit is). The array is *compact*: an axis along which the ids do not change has
size 1, so an (N, C, H, W) feature map is described by a (1, C, 1, 1) array and a flattened (N, C*H*W) one by a
(1, C*H*W) array in which every channel id repeats H*W times. Reshapes, permutes, concatenation and slicing are
done on these arrays with NumPy exactly as torch does them on the tensor, which is how a channel shuffle, an offset
inside ``torch.cat`` or a channels-last layout is followed without a rule of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["FULL_LIMIT", "along_axis", "compact", "expand", "varying"]

FULL_LIMIT = 1 << 23
"""The most elements an id array is expanded to (an op on a larger tensor whose channels need expanding is not
followed): 8M int64 ids are 64 MB, a few times the largest feature map of an ImageNet classifier at batch 1."""


def compact(full: np.ndarray) -> np.ndarray:
    """``full`` with every axis along which it is constant shrunk to size 1."""
    out = full
    for axis in range(full.ndim):
        if out.shape[axis] > 1:
            first = np.take(out, [0], axis=axis)
            if np.array_equal(np.broadcast_to(first, out.shape), out):
                out = first
    return np.ascontiguousarray(out)


def expand(ids: np.ndarray, shape: Sequence[int]) -> np.ndarray | None:
    """``ids`` broadcast to the tensor's real ``shape`` (None when that would be more than :data:`FULL_LIMIT`)."""
    if int(np.prod(shape, dtype=np.int64)) > FULL_LIMIT:
        return None
    return np.broadcast_to(ids, tuple(shape))


def varying(ids: np.ndarray) -> list[int]:
    """The axes along which the ids change."""
    return [axis for axis, size in enumerate(ids.shape) if size > 1]


def along_axis(ids: np.ndarray, axis: int, size: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The ids along ``axis`` as a 1-D array of ``size``, and the pairs of id arrays that must be tied for that to
    be true (a weight applied along ``axis`` is the same for every position of the other axes, so whatever varies
    along them is one unit per position of ``axis``)."""
    moved = np.moveaxis(ids, axis, 0).reshape(ids.shape[axis], -1)
    ties = [(moved[:, 0], moved[:, j]) for j in range(1, moved.shape[1])]
    column = moved[:, 0]
    if column.shape[0] == 1 and size > 1:
        column = np.repeat(column, size)
    return column, ties
