"""What a model costs to store and run, so a pruned model can be compared with its original.

``profile_model(model, (3, 32, 32))`` gives ``{"params", "macs", "size_kb", "latency_ms"}`` and
``reduction(before, after)`` turns two profiles into percent savings. Every number here is counted from
the model as it is, dense: a model whose pruned weights are only masked (set to zero) has the same
parameters, MACs, file size and latency as the original. Only physical removal (smaller layers) shows up;
how many weights are zero is :func:`pruning.sparsity.sparsity_report`'s business.

MACs are counted by PyTorch's own :class:`torch.utils.flop_counter.FlopCounterMode` rather than by a
hand-written hook table, so any layer that reaches a convolution or matrix-multiply kernel is counted,
whatever module wraps it. FlopCounterMode reports FLOPs as ``2 * multiply-accumulates`` for every op it
knows; :func:`count_macs` halves that. What it counts, and hence what MACs here mean:

* counted: convolutions (``aten.convolution`` and its cuDNN/slow variants: grouped, depthwise, transposed;
  every output position times the whole kernel, padding included) and matrix products (``aten.mm``,
  ``addmm``, ``bmm``, ``baddbmm``: ``nn.Linear``, ``@``), plus the scaled-dot-product attention kernels;
* not counted: bias additions (``addmm`` and conv bias are not in the formula), BatchNorm, ReLU and other
  activations, pooling, residual additions, padding/shortcut copies, softmax and every other elementwise
  op. That is the convention of the papers this tool reproduces (He et al. 2016, Li et al. 2017 count the
  multiply-adds of convs and linears), and it gives their figures: ResNet-20 40.55M (shortcut A),
  ResNet-56 125.5M, VGG-16-BN (CIFAR) 313.5M, matching Li et al.'s 3.13e8.
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from numbers import Real
from typing import Any

import torch
from torch import nn

from utils.checkpoint.format import model_size_kb

__all__ = [
    "SETTINGS_KEYS",
    "count_macs",
    "count_params",
    "default_batch_sizes",
    "measure_latency",
    "model_size_kb",
    "profile_model",
    "reduction",
]

# Batch sizes timed when the caller names none: 1 is the on-line (one request) latency, the large one the
# throughput regime. 64 on CPU because a batch of 256 through VGG-16 takes seconds per call on a 2-core
# machine; 256 on a GPU, the usual CIFAR evaluation batch, where smaller batches underuse the device.
CPU_BATCH_SIZES: tuple[int, ...] = (1, 64)
CUDA_BATCH_SIZES: tuple[int, ...] = (1, 256)
# Numbers in a profile that describe how it was measured, not what the model costs: reduction() skips them.
SETTINGS_KEYS = frozenset({"num_threads"})


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them, trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def _cpu_attention_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """Scaled dot-product attention on the CPU (torch counts its CUDA kernels, not this one): ``q k^T`` and the
    product with ``v``, ``2 * 2 * B * h * L * S * d`` FLOPs."""
    batch, heads, length, width = query
    return 4 * batch * heads * length * key[-2] * width


_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def count_macs(model: nn.Module, input_size: Sequence[int], *, device: torch.device | str | None = None) -> int:
    """Multiply-accumulates of one forward pass of a batch of 1 image of ``input_size`` = (C, H, W).

    Counted by :class:`~torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2); see the module docstring
    for which ops that includes. The pass runs in eval mode under ``no_grad`` (BatchNorm1d rejects a batch
    of 1 in training mode, and a training pass would update the running statistics), and each module's
    training flag is restored afterwards. ``device`` defaults to where the model lives.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device, dtype = _placement(model, device)
    x = torch.zeros(1, *_check_input_size(input_size), device=device, dtype=dtype)
    # nn.MultiheadAttention's eval fast path is one fused op the counter does not know (it would count 0 MACs for
    # attention); the standard path computes the same in ops it counts.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with _inference(model), FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
            model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    flops = counter.get_total_flops()
    assert flops % 2 == 0, f"FlopCounterMode counted an odd number of FLOPs ({flops}); MACs would not be whole"
    return flops // 2


def default_batch_sizes(device: torch.device | str) -> tuple[int, ...]:
    """The batch sizes :func:`measure_latency` times when given none (see ``CPU_BATCH_SIZES``)."""
    return CUDA_BATCH_SIZES if torch.device(device).type == "cuda" else CPU_BATCH_SIZES


def measure_latency(model: nn.Module, input_size: Sequence[int], *, batch_sizes: Sequence[int] | None = None,
                    device: torch.device | str | None = None, min_run_time: float = 1.0, warmup: int = 3,
                    num_threads: int | None = None) -> dict[int, float]:
    """Median wall time of one forward pass, in milliseconds per batch, for each batch size.

    Timed with :class:`torch.utils.benchmark.Timer`: ``blocked_autorange`` repeats the call in blocks until
    ``min_run_time`` seconds have been spent and reports the median block, which is robust to the odd
    slow call; its timer synchronises the accelerator, so GPU times are of finished work. ``warmup``
    untimed calls per batch size come first (allocator, cuDNN algorithm choice, oneDNN primitive caches).

    ``num_threads`` defaults to ``torch.get_num_threads()``, i.e. what a real run uses; the Timer's own
    default of 1 thread would understate what the CPU can do. On a machine shared with other busy
    processes multi-threaded CPU timings are unreliable (threads wait at barriers for a core: a ResNet-20
    forward measured 600 ms with 2 threads and 3 ms with 1 on a loaded 2-core box); pass
    ``num_threads=1`` there, and compare only timings taken on the same device with the same threads.
    The model must already be on ``device`` (default: where it is); it is not moved.
    """
    from torch.utils import benchmark

    device, dtype = _placement(model, device)
    shape = _check_input_size(input_size)
    sizes = tuple(batch_sizes) if batch_sizes is not None else default_batch_sizes(device)
    if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if min_run_time <= 0:
        raise ValueError(f"min_run_time must be positive (seconds), got {min_run_time}")
    threads = torch.get_num_threads() if num_threads is None else num_threads
    latencies: dict[int, float] = {}
    with _inference(model):
        for batch_size in sizes:
            # A private generator: profiling between training phases must not shift the global RNG stream.
            x = torch.randn(batch_size, *shape, dtype=dtype, generator=torch.Generator().manual_seed(0)).to(device)
            for _ in range(warmup):
                model(x)
            # Timer runs the statement in this thread, so the surrounding no_grad applies to it.
            timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads)
            measurement = timer.blocked_autorange(min_run_time=min_run_time)
            latencies[batch_size] = measurement.median * 1e3
    return latencies


def compare_latency(models: Mapping[str, nn.Module], input_size: Sequence[int], *,
                    device: torch.device | str | None = None, batch_sizes: Sequence[int] | None = None,
                    rounds: int = 3, min_run_time: float = 0.5, num_threads: int | None = None) -> dict[str, Any]:
    """Latency of several models measured side by side: ``rounds`` passes, each timing every model in turn,
    and the median per model and batch size. Load on the machine then affects all models alike, so their ratio
    is trustworthy even where absolute CPU timings drift (see :func:`measure_latency`).

    Returns ``{name: {"latency_ms": {"1": ms, ...}, "device": ..., "num_threads": ...}}``.
    """
    threads = torch.get_num_threads() if num_threads is None else num_threads
    samples: dict[str, dict[int, list[float]]] = {name: {} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times = measure_latency(model, input_size, batch_sizes=batch_sizes, device=device,
                                    min_run_time=min_run_time, num_threads=threads)
            for batch_size, ms in times.items():
                samples[name].setdefault(batch_size, []).append(ms)
    return {name: {"latency_ms": {str(b): statistics.median(v) for b, v in per_batch.items()},
                   "device": _device_name(_placement(models[name], device)[0]), "num_threads": threads}
            for name, per_batch in samples.items()}


def profile_model(model: nn.Module, input_size: Sequence[int], *, device: torch.device | str | None = None,
                  latency: bool = True, batch_sizes: Sequence[int] | None = None, min_run_time: float = 1.0,
                  num_threads: int | None = None) -> dict[str, Any]:
    """Parameters, MACs (batch 1), state-dict size and (optionally) latency of ``model``, as plain JSON data.

    ``{"params": int, "macs": int, "size_kb": float}``, plus with ``latency``:
    ``"latency_ms": {"1": ms, "64": ms}`` (string keys so the dict survives a JSON round trip unchanged),
    ``"device"`` and ``"num_threads"`` (a latency means nothing without the machine it was measured on).
    See :func:`measure_latency` for the timing options.
    """
    device, _ = _placement(model, device)
    profile: dict[str, Any] = {
        "params": count_params(model),
        "macs": count_macs(model, input_size, device=device),
        "size_kb": model_size_kb(model),
    }
    if latency:
        threads = torch.get_num_threads() if num_threads is None else num_threads
        times = measure_latency(model, input_size, batch_sizes=batch_sizes, device=device,
                                min_run_time=min_run_time, num_threads=threads)
        profile["latency_ms"] = {str(batch_size): ms for batch_size, ms in times.items()}
        profile["device"] = _device_name(device)
        profile["num_threads"] = threads
    return profile


def reduction(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Percent reduction ``(before - after) / before * 100`` for every number in both profiles.

    Nested dicts (``latency_ms``) are compared key by key. Keys present in only one profile (latency
    measured for one model only, different batch sizes), non-numbers (``device``) and measurement
    settings (``SETTINGS_KEYS``: ``num_threads``) are left out, so the result says exactly what was
    compared. A negative value is a growth. ``before == 0`` is only meaningful when ``after`` is 0 too
    (0% change); otherwise it is a ValueError.
    """
    result: dict[str, Any] = {}
    for key, old in before.items():
        if key not in after or key in SETTINGS_KEYS:
            continue
        new = after[key]
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            nested = reduction(old, new)
            if nested:
                result[key] = nested
        elif _is_number(old) and _is_number(new):
            if old == 0:
                if new != 0:
                    raise ValueError(f"reduction of {key!r}: before is 0 and after is {new}; no percentage exists")
                result[key] = 0.0
            else:
                result[key] = (old - new) / old * 100.0
    return result


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but a flag is not a cost to reduce.
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(input_size)
    if len(size) != 3 or any(not isinstance(d, int) or d < 1 for d in size):
        raise ValueError(f"input_size must be (channels, height, width) of positive integers, got {input_size!r}")
    return size  # type: ignore[return-value]


def _placement(model: nn.Module, device: torch.device | str | None) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype to feed ``model`` with; a ``device`` the model is not on is an error
    (moving the model here would silently move the caller's model and its optimizer's parameters)."""
    tensors = [*model.parameters(), *model.buffers()]
    model_device = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())
    if device is None:
        return model_device, dtype
    device = torch.device(device)
    if tensors and not _same_device(device, model_device):
        raise ValueError(f"the model is on {model_device} but device={device} was asked for; "
                         f"move it first with model.to({str(device)!r})")
    return device, dtype


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" are the same device when 0 is the current one.
    if a.type != b.type:
        return False
    if a.type == "cuda":
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index is None or b.index is None or a.index == b.index


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.machine()})"


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for the duration, then every module's own training flag back.

    Per module, not just ``model.train(was_training)``: a caller may have frozen some BatchNorms in
    eval mode inside a model in training mode, and profiling must not undo that.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
