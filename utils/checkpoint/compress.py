"""Compressed checkpoints: a weight-pruned model is only smaller on disk when its zeros are not stored.

``torch.save`` writes every element of a tensor, so a model with 90% of its weights at zero takes as many bytes
as the dense one. Here each tensor of a state dict is stored in the smallest of three encodings:

``dense``
    the tensor as it is (BatchNorm statistics, biases, integer buffers such as ``num_batches_tracked``, and any
    tensor too small or too full for the others to save bytes);
``bitmask``
    one bit per element saying which elements are non-zero, packed eight to a byte (little-endian bit order:
    element ``8 * j + i`` is bit ``i`` of byte ``j``, what ``numpy.packbits(..., bitorder="little")`` writes),
    plus the non-zero values in flat (row-major) order;
``indices``
    for each non-zero value the number of zeros skipped since the previous one (the first counts from the
    start), in the narrowest integer type that holds the longest run (uint8, int16, int32 or int64), plus the
    values. Flat index ``i_k = sum_{j <= k} (gap_j + 1) - 1``.

A bitmask costs ``n / 8`` bytes whatever the sparsity; gaps cost one byte (uint8) or two (int16) per non-zero
value, so they win once fewer than about one element in eight (uint8) or sixteen (int16) is non-zero. The choice
is made per tensor by counting bytes (:func:`encoded_sizes`), including a fixed cost per stored tensor that
keeps small tensors dense, and recorded in the entry.

"Non-zero" means *any bit set*: only ``+0.0`` (and integer/bool zero) is left out, so ``-0.0`` and NaNs are
stored as values and every tensor comes back bit for bit (``torch.equal`` and equal bytes). Magnitude pruning
writes ``+0.0`` (:func:`pruning.masks.apply_masks` uses ``masked_fill_``), so its zeros are the ones omitted.
Bool tensors store no values at all: every non-zero bool is True.

``fp16=True`` stores float32/float64 values in half precision (lossy: about three significant digits; values
round-trip to the original dtype). A tensor whose finite values exceed half precision's range (65504) keeps
its precision rather than turning into infinities. Without ``fp16`` the round trip is exact.

Everything is tensors, dicts, lists, strings, ints and bools, so files load with ``torch.load(weights_only=True)``.

A compressed *checkpoint* (:func:`save_compressed`) is an ordinary checkpoint of this tool (see
:mod:`utils.checkpoint.format`) whose ``state_dict`` and ``masks`` are compressed and which has a ``compressed``
key; :func:`expand_checkpoint` turns it back into an ordinary one. A mask that is exactly the non-zero
pattern of its (decompressed) weight, as after pruning, is stored as a reference to that weight: no bytes.
By default the optimizer, scheduler and RNG states are left out: a compressed checkpoint is for keeping,
shipping, evaluating and pruning further, not for ``--resume`` (``keep_training_state=True`` keeps them,
uncompressed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from utils.checkpoint.format import is_toolkit_checkpoint
from utils.core.errors import UserError
from utils.core.files import atomic_write_bytes, checkpoint_bytes

__all__ = ["ENCODINGS", "SPARSE_FORMAT", "SPARSE_VERSION", "compress_checkpoint", "compress_state_dict",
           "compression_report", "decompress_state_dict", "encoded_sizes", "expand_checkpoint",
           "format_compression_report", "is_compressed_checkpoint", "is_compressed_state_dict",
           "save_compressed"]

SPARSE_FORMAT = "prune-toolkit-sparse-state-dict"
SPARSE_VERSION = 1
ENCODINGS = ("dense", "bitmask", "indices")
MASK_FROM_WEIGHT = "weight_pattern"  # mask entries only: the mask is the non-zero pattern of the named weight

# What torch.save adds for each tensor of an entry beyond its bytes: the pickled rebuild call of a view (storage
# reference, offset, size, stride), about 70 bytes with torch 2.13 (measured: a second tensor in an entry adds 69).
# A storage of its own would cost about 320 (zip record, 64-byte alignment); entries share one per dtype (_pooled).
# Tiny tensors stay dense because of it.
TENSOR_OVERHEAD_BYTES = 64

# Element sizes whose bits can be read as a same-size integer, to find non-zero elements bit by bit.
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# Gap types, narrowest first: (type, largest run of zeros it can hold).
_GAP_TYPES = ((torch.uint8, 255), (torch.int16, 2**15 - 1), (torch.int32, 2**31 - 1), (torch.int64, 2**63 - 1))
_HALF_MAX = torch.finfo(torch.float16).max
_TO_HALF = (torch.float32, torch.float64)  # fp16=True: the dtypes stored in half precision


# ------------------------------------------------------------------------------------------------------ tensors


def _sparsifiable(t: torch.Tensor) -> bool:
    """Whether ``t``'s zeros can be found bit by bit: bool, integers and real floats (not complex, quantized)."""
    if t.dtype == torch.bool:
        return True
    return not (t.is_complex() or t.is_quantized or t.element_size() not in _INT_OF_SIZE)


def _nonzero_flags(flat: torch.Tensor) -> torch.Tensor:
    """True where an element of the 1-d contiguous ``flat`` has any bit set (so -0.0 and NaN count)."""
    if flat.dtype == torch.bool:
        return flat.clone()
    if flat.is_floating_point():
        flat = flat.view(_INT_OF_SIZE[flat.element_size()])
    return flat != 0


def _pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """1-d bool -> uint8, eight flags a byte, little-endian bit order (numpy.packbits(bitorder="little"))."""
    padded = torch.cat([flags, flags.new_zeros((-flags.numel()) % 8)]).view(-1, 8).to(torch.uint8)
    return (padded << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    return ((packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).view(-1)[:count].bool()


def _gap_type(max_gap: int) -> torch.dtype:
    return next(dtype for dtype, limit in _GAP_TYPES if max_gap <= limit)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_of(name: Any, where: str) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"{where}: unknown dtype {name!r}; the file is corrupt or from a newer version of the tool")
    return dtype


def _stored_values(values: torch.Tensor, fp16: bool) -> torch.Tensor:
    """``values`` as they are stored: in half precision when asked and when that loses no range."""
    if not fp16 or values.dtype not in _TO_HALF or values.numel() == 0:
        return values
    finite = values[torch.isfinite(values)]
    if finite.numel() and float(finite.abs().max()) > _HALF_MAX:
        return values  # would become inf: keep this tensor's precision
    return values.to(torch.float16)


def encoded_sizes(t: torch.Tensor, *, fp16: bool = False) -> dict[str, int]:
    """Bytes each encoding would take for ``t`` (payload plus :data:`TENSOR_OVERHEAD_BYTES` per stored tensor).

    ``{"dense": ..., "bitmask": ..., "indices": ...}``; the sparse ones only for tensors whose zeros can be found
    (bool, integer, real float). ``fp16`` counts float32/float64 values at two bytes.
    """
    item = 2 if fp16 and t.dtype in _TO_HALF else t.element_size()
    n = t.numel()
    sizes = {"dense": TENSOR_OVERHEAD_BYTES + n * item}
    if not _sparsifiable(t):
        return sizes
    flat = t.detach().reshape(-1).contiguous()
    positions = _nonzero_flags(flat).nonzero().view(-1)
    values_bytes = 0 if t.dtype == torch.bool else TENSOR_OVERHEAD_BYTES + positions.numel() * item
    sizes["bitmask"] = TENSOR_OVERHEAD_BYTES + math.ceil(n / 8) + values_bytes
    gaps = torch.diff(positions, prepend=positions.new_full((1,), -1)) - 1
    gap_item = _gap_type(int(gaps.max()) if gaps.numel() else 0).itemsize
    sizes["indices"] = TENSOR_OVERHEAD_BYTES + positions.numel() * gap_item + values_bytes
    return sizes


def _compress_tensor(t: torch.Tensor, fp16: bool) -> dict[str, Any]:
    t = t.detach().cpu()
    entry: dict[str, Any] = {"encoding": "dense", "shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
    sizes = encoded_sizes(t, fp16=fp16)
    encoding = min(sizes, key=lambda name: (sizes[name], ENCODINGS.index(name)))  # ties: the simpler one
    if encoding == "dense":
        dense = t.contiguous()
        if dense.untyped_storage().nbytes() != dense.nbytes:
            dense = dense.clone()  # a view would save its whole storage
        entry["values"] = _stored_values(dense, fp16)
        return entry
    flat = t.reshape(-1).contiguous()
    flags = _nonzero_flags(flat)
    entry["encoding"] = encoding
    if t.dtype != torch.bool:
        entry["values"] = _stored_values(flat[flags], fp16)
    if encoding == "bitmask":
        entry["mask"] = _pack_bits(flags)
    else:
        positions = flags.nonzero().view(-1)
        gaps = torch.diff(positions, prepend=positions.new_full((1,), -1)) - 1
        entry["gaps"] = gaps.to(_gap_type(int(gaps.max()) if gaps.numel() else 0))
    return entry


def _tensor(entry: Any, name: str, key: str, where: str) -> torch.Tensor:
    value = entry.get(key) if isinstance(entry, Mapping) else None
    if not isinstance(value, torch.Tensor):
        raise UserError(f"{where}: tensor {name!r} has no {key!r} tensor; the file is corrupt")
    return value


def _decompress_tensor(entry: Any, name: str, where: str) -> torch.Tensor:
    if not isinstance(entry, Mapping) or entry.get("encoding") not in ENCODINGS:
        encoding = entry.get("encoding") if isinstance(entry, Mapping) else type(entry).__name__
        raise UserError(f"{where}: tensor {name!r} has unknown encoding {encoding!r}; the file is corrupt or from a "
                        f"newer version of the tool (this one reads {', '.join(ENCODINGS)})")
    dtype = _dtype_of(entry.get("dtype"), f"{where}: tensor {name!r}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise UserError(f"{where}: tensor {name!r} has an invalid shape {shape!r}; the file is corrupt")
    n = math.prod(shape)
    if entry["encoding"] == "dense":
        dense = _tensor(entry, name, "values", where)
        if list(dense.shape) != shape:
            raise UserError(f"{where}: tensor {name!r} has shape {list(dense.shape)}, expected {shape}; corrupt file")
        return dense.to(dtype, copy=True)  # a copy: not a view that would keep the whole pool alive
    if entry["encoding"] == "bitmask":
        packed = _tensor(entry, name, "mask", where)
        if packed.dtype != torch.uint8 or packed.numel() != math.ceil(n / 8):
            raise UserError(f"{where}: tensor {name!r}: the bitmask does not fit the shape {shape}; corrupt file")
        flags = _unpack_bits(packed.view(-1), n)
        positions = flags.nonzero().view(-1)
    else:
        gaps = _tensor(entry, name, "gaps", where).view(-1)
        if gaps.is_floating_point() or gaps.dtype == torch.bool or (gaps.numel() and int(gaps.min()) < 0):
            raise UserError(f"{where}: tensor {name!r}: invalid index gaps; the file is corrupt")
        positions = torch.cumsum(gaps.to(torch.int64) + 1, 0) - 1
        if positions.numel() and int(positions[-1]) >= n:
            raise UserError(f"{where}: tensor {name!r}: indices beyond the shape {shape}; the file is corrupt")
    if dtype == torch.bool:
        out = torch.zeros(n, dtype=torch.bool)
        out[positions] = True
        return out.view(shape)
    values = _tensor(entry, name, "values", where).view(-1)
    if values.numel() != positions.numel():
        raise UserError(f"{where}: tensor {name!r}: {values.numel()} values for {positions.numel()} non-zero "
                        "positions; the file is corrupt")
    # Scattered as same-size integers: bit for bit, and for every dtype (index_put has no uint16/32/64 kernel).
    bits = _INT_OF_SIZE[dtype.itemsize]
    out = torch.zeros(n, dtype=bits)
    out[positions] = values.to(dtype).contiguous().view(bits)
    return out.view(dtype).view(shape)


# -------------------------------------------------------------------------------------------------- state dicts


def _entries(state_dict: Mapping[str, torch.Tensor], fp16: bool) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"compress_state_dict: {name!r} is a {type(tensor).__name__}, not a tensor")
        entries[name] = _compress_tensor(tensor, fp16)
    return entries


def _pooled(entries: dict[str, Any], fp16: bool) -> dict[str, Any]:
    """The compressed state dict of ``entries``, their tensors turned into views of one buffer per dtype.

    torch.save writes a storage once however many views use it (and torch.load restores the views), so the
    file pays the cost of a storage (about 320 bytes: zip record, alignment) once per dtype, not once per tensor:
    a pruned ResNet-20 would otherwise pay ~30 KB of it, on its ~100 small BatchNorm tensors.
    """
    parts: dict[torch.dtype, list[tuple[dict[str, Any], str, torch.Tensor]]] = {}
    for entry in entries.values():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                parts.setdefault(value.dtype, []).append((entry, key, value))
    for members in parts.values():
        pool = torch.cat([value.reshape(-1) for _, _, value in members])
        offset = 0
        for entry, key, value in members:
            entry[key] = pool[offset:offset + value.numel()].view(value.shape)
            offset += value.numel()
    return {"format": SPARSE_FORMAT, "version": SPARSE_VERSION, "fp16": bool(fp16), "tensors": entries}


def compress_state_dict(state_dict: Mapping[str, torch.Tensor], *, fp16: bool = False) -> dict[str, Any]:
    """``state_dict`` with each tensor in its smallest encoding (see the module docstring).

    Returns ``{"format": SPARSE_FORMAT, "version": 1, "fp16": fp16, "tensors": {name: entry}}`` in the state
    dict's order; an entry is ``{"encoding", "shape", "dtype"}`` plus ``values`` (not for bool sparse
    encodings), ``mask`` (bitmask) or ``gaps`` (indices), all views of one buffer per dtype (see :func:`_pooled`).
    Tensors are read on the CPU; tied tensors (two names, one storage) are stored once per name.
    """
    return _pooled(_entries(state_dict, fp16), fp16)


def is_compressed_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == SPARSE_FORMAT


def _check_sparse(obj: Any, where: str) -> Mapping[str, Any]:
    if not is_compressed_state_dict(obj):
        raise UserError(f"{where}: not a compressed state dict (no format {SPARSE_FORMAT!r})")
    if obj.get("version") != SPARSE_VERSION:
        raise UserError(f"{where}: compressed state dict version {obj.get('version')!r} is not supported (this "
                        f"version of the tool reads {SPARSE_VERSION}); use the tool version that wrote it")
    if not isinstance(obj.get("tensors"), Mapping):
        raise UserError(f"{where}: the compressed state dict has no tensors; the file is corrupt")
    return obj["tensors"]


def decompress_state_dict(obj: Any, *, source: str = "compressed state dict") -> dict[str, torch.Tensor]:
    """The ordinary state dict (CPU tensors of the original dtypes and shapes) that ``obj`` compresses.

    ``source`` names the file in the :class:`UserError` for a corrupt or unknown entry.
    """
    tensors = _check_sparse(obj, source)
    return {name: _decompress_tensor(entry, name, source) for name, entry in tensors.items()}


def _encoded_bytes(entry: Mapping[str, Any]) -> int:
    return sum(v.nbytes for v in entry.values() if isinstance(v, torch.Tensor))


def compression_report(state_dict: Mapping[str, torch.Tensor], *, fp16: bool = False,
                       compressed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """How ``state_dict`` compresses: per tensor and in total, the totals measured on torch.save's bytes.

    ``{"fp16", "dense_bytes", "compressed_bytes", "ratio" (compressed / dense), "encodings": {encoding: count},
    "tensors": {name: {"encoding", "dtype", "numel", "nonzero", "dense_bytes", "encoded_bytes"}}}``, where a
    tensor's bytes are its payload (element bytes, no container overhead) and the totals are the sizes of
    ``torch.save(state_dict)`` and ``torch.save(compressed)``. Pass ``compressed`` when it is already at hand.
    """
    if compressed is None:
        compressed = compress_state_dict(state_dict, fp16=fp16)
    entries = _check_sparse(compressed, "compression_report")
    tensors: dict[str, Any] = {}
    for name, tensor in state_dict.items():
        entry = entries[name]
        flat = tensor.detach().reshape(-1).contiguous()
        nonzero = int(_nonzero_flags(flat).sum()) if _sparsifiable(tensor) else tensor.numel()
        tensors[name] = {"encoding": entry["encoding"], "dtype": entry["dtype"], "numel": tensor.numel(),
                         "nonzero": nonzero, "dense_bytes": tensor.nbytes, "encoded_bytes": _encoded_bytes(entry)}
    dense = len(checkpoint_bytes({k: v.detach().cpu() for k, v in state_dict.items()}))
    packed = len(checkpoint_bytes(compressed))
    counts = {name: sum(1 for t in tensors.values() if t["encoding"] == name) for name in ENCODINGS}
    return {"fp16": bool(compressed.get("fp16")), "dense_bytes": dense, "compressed_bytes": packed,
            "ratio": packed / dense if dense else 1.0, "encodings": counts, "tensors": tensors}


def format_compression_report(report: Mapping[str, Any], *, top: int = 10) -> str:
    """A short markdown summary of a :func:`compression_report` (or :func:`save_compressed`) report: the totals
    and the ``top`` largest tensors with their encodings."""
    lines = [f"state dict: {report['dense_bytes']:,} bytes dense -> {report['compressed_bytes']:,} bytes compressed "
             f"({100 * report['ratio']:.1f}%{', fp16 values' if report['fp16'] else ''}); encodings: "
             + ", ".join(f"{name} {count}" for name, count in report["encodings"].items())]
    if "file_bytes" in report:
        lines.append(f"checkpoint file: {report['dense_file_bytes']:,} bytes as an ordinary checkpoint -> "
                     f"{report['file_bytes']:,} bytes ({report['path']})")
    largest = sorted(report["tensors"].items(), key=lambda item: -item[1]["dense_bytes"])[:top]
    lines += ["",
              "| tensor | elements | non-zero | encoding | bytes dense | bytes stored |", "|---|---|---|---|---|---|"]
    for name, t in largest:
        lines.append(f"| {name} | {t['numel']:,} | {t['nonzero']:,} | {t['encoding']} | {t['dense_bytes']:,} | "
                     f"{t['encoded_bytes']:,} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- checkpoints

_TRAINING_STATE = ("optimizer", "scheduler", "rng", "progress")  # what only --resume needs


def _compress_masks(masks: Mapping[str, torch.Tensor], packed_state: Mapping[str, Any]) -> dict[str, Any]:
    """Masks as a compressed state dict; a mask equal to the non-zero pattern of its decompressed weight (what
    pruning leaves) becomes a reference to that weight."""
    out = _entries(masks, fp16=False)
    for name, mask in masks.items():
        entry = packed_state["tensors"].get(name)
        if entry is None or mask.dtype != torch.bool:
            continue
        weight = _decompress_tensor(entry, name, "compress_checkpoint")
        pattern = _nonzero_flags(weight.reshape(-1)) if _sparsifiable(weight) else None
        if weight.shape == mask.shape and pattern is not None and torch.equal(pattern, mask.cpu().reshape(-1)):
            out[name] = {"encoding": MASK_FROM_WEIGHT, "shape": list(mask.shape), "dtype": "bool", "param": name}
    return _pooled(out, fp16=False)


def _expand_masks(obj: Any, state_dict: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    tensors = dict(_check_sparse(obj, where))
    derived = {}
    for name, entry in list(tensors.items()):
        if isinstance(entry, Mapping) and entry.get("encoding") == MASK_FROM_WEIGHT:
            weight = state_dict.get(entry.get("param"))
            if weight is None:
                raise UserError(f"{where}: mask {name!r} refers to a missing weight {entry.get('param')!r}; the file "
                                "is corrupt")
            derived[name] = _nonzero_flags(weight.reshape(-1).contiguous()).view(weight.shape)
            del tensors[name]
    plain = decompress_state_dict({**obj, "tensors": tensors}, source=where)
    return {name: derived[name] if name in derived else plain[name] for name in obj["tensors"]}


def compress_checkpoint(checkpoint: Mapping[str, Any], *, fp16: bool = False,
                        keep_training_state: bool = False) -> dict[str, Any]:
    """The checkpoint dict (:func:`utils.checkpoint.format.make_checkpoint`) with ``state_dict`` and ``masks``
    compressed and ``compressed = {"version", "fp16", "training_state"}`` added; without ``keep_training_state`` the
    optimizer, scheduler and RNG states become None (see the module docstring)."""
    if not is_toolkit_checkpoint(checkpoint):
        raise UserError("compress_checkpoint: not a checkpoint of this tool (no 'format' key); compress a plain "
                        "state dict with compress_state_dict")
    if is_compressed_checkpoint(checkpoint):
        raise UserError("compress_checkpoint: the checkpoint is already compressed")
    packed_state = compress_state_dict(checkpoint["state_dict"], fp16=fp16)
    out = {**checkpoint, "state_dict": packed_state}
    if checkpoint.get("masks"):
        out["masks"] = _compress_masks(checkpoint["masks"], packed_state)
    if not keep_training_state:
        out.update({key: None for key in _TRAINING_STATE if key in out})
    out["compressed"] = {"version": SPARSE_VERSION, "fp16": bool(fp16), "training_state": bool(keep_training_state)}
    return out


def is_compressed_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj.get("compressed")) and is_compressed_state_dict(obj.get("state_dict"))


def expand_checkpoint(obj: Mapping[str, Any], *, source: str | Path = "checkpoint") -> dict[str, Any]:
    """An ordinary checkpoint dict from a compressed one (anything else is returned unchanged, as a dict).

    The state dict and masks come back as plain tensors and the ``compressed`` key is gone, so the result loads
    like any checkpoint (:func:`utils.checkpoint.load.load_toolkit_checkpoint` with ``ckpt=``). What it was is kept as
    ``expanded_from = {"version", "fp16", "training_state"}``: with ``training_state`` False the optimizer, scheduler
    and RNG states are None, so ``--resume`` should refuse it. ``source`` names the file in errors.
    """
    if not is_compressed_checkpoint(obj):
        return dict(obj)
    where = str(source)
    state_dict = decompress_state_dict(obj["state_dict"], source=where)
    out = {key: value for key, value in obj.items() if key != "compressed"}
    out["state_dict"] = state_dict
    out["expanded_from"] = dict(obj["compressed"]) if isinstance(obj["compressed"], Mapping) else {}
    if obj.get("masks"):
        out["masks"] = _expand_masks(obj["masks"], state_dict, where)
    return out


def save_compressed(path: str | Path, checkpoint: Mapping[str, Any], *, fp16: bool = False,
                    keep_training_state: bool = False) -> dict[str, Any]:
    """Write ``checkpoint`` compressed (:func:`compress_checkpoint`) to ``path`` atomically; return the report.

    The report is :func:`compression_report` of the state dict plus ``path``, ``file_bytes`` (the file written)
    and ``dense_file_bytes`` (the same checkpoint, same fields kept, written uncompressed).
    """
    packed = compress_checkpoint(checkpoint, fp16=fp16, keep_training_state=keep_training_state)
    report = compression_report(checkpoint["state_dict"], compressed=packed["state_dict"])
    dense = {**checkpoint, **{key: None for key in _TRAINING_STATE if key in checkpoint and not keep_training_state}}
    report["dense_file_bytes"] = len(checkpoint_bytes(dense))
    report["file_bytes"] = atomic_write_bytes(path, checkpoint_bytes(packed))
    report["path"] = str(path)
    return report


