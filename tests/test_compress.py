"""Compressed checkpoints: exact round trips, the encoding each tensor gets, and a real pruned model on disk.

"Exact" is checked bit for bit (floats compared as integers of the same size), since ``torch.equal`` calls
-0.0 and +0.0 equal and NaN unequal to itself. The encoding choice is checked against sizes computed here
from the definition (bits, gaps, values), not against the module's own :func:`encoded_sizes`.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import get_model
from pruning import prune_weights
from utils.checkpoint.compress import (
    TENSOR_OVERHEAD_BYTES,
    compress_checkpoint,
    compress_state_dict,
    compression_report,
    decompress_state_dict,
    encoded_sizes,
    expand_checkpoint,
    format_compression_report,
    is_compressed_checkpoint,
    save_compressed,
)
from utils.checkpoint.format import TrainingState, make_checkpoint
from utils.checkpoint.load import check_checkpoint, load_checkpoint, load_compressed, load_toolkit_checkpoint
from utils.core.errors import UserError

SPARSITIES = (0.0, 0.5, 0.9, 0.99, 1.0)
SHAPES = ((), (0, 3), (1,), (7,), (3, 5), (16, 8, 3, 3), (2000,))
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32, torch.bool)
ARCH = {"name": "resnet20", "options": {"num_classes": 10}}
HALF_RTOL, HALF_ATOL = 2**-11, 2**-24  # half precision: 11 significant bits, smallest subnormal 2^-24


def bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` as integers of the same size (floats), so that equality means equal bytes."""
    sizes = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(sizes[t.element_size()]) if t.is_floating_point() else t


def assert_bit_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b))


def serialized(obj: object) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def sparse_tensor(shape: tuple[int, ...], dtype: torch.dtype, sparsity: float, seed: int = 0) -> torch.Tensor:
    """Random values of ``dtype`` with exactly round(sparsity * n) elements at zero; floats include -0.0, NaN, inf."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if dtype == torch.bool:
        t = torch.ones(n, dtype=torch.bool)
    elif dtype.is_floating_point:  # built in float64 (float8 has no masked_fill), cast at the end
        t = torch.randn(n, generator=g, dtype=torch.float64)
        t[t.to(dtype) == 0] = 1.0
        if n >= 7:
            t[1], t[3], t[5] = -0.0, float("nan"), float("-inf")  # kept: only +0.0 counts as zero
    else:
        info = torch.iinfo(dtype)
        t = torch.randint(max(info.min, -1000), min(info.max, 1000), (n,), generator=g)
        t[t == 0] = 1
    zeros = torch.randperm(n, generator=g)[: round(sparsity * n)]
    t[zeros] = 0
    t = t.to(dtype)
    return t.view(shape)


# ----------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_round_trip_is_bit_exact(dtype: torch.dtype, sparsity: float) -> None:
    state = {f"t{i}": sparse_tensor(shape, dtype, sparsity, seed=i) for i, shape in enumerate(SHAPES)}
    packed = compress_state_dict(state)
    restored = decompress_state_dict(torch.load(io.BytesIO(_bytes(packed)), weights_only=True))
    assert list(restored) == list(state)
    for name, tensor in state.items():
        assert_bit_equal(restored[name], tensor)


def _bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_negative_zero_and_nan_survive() -> None:
    t = torch.zeros(4096)
    t[10], t[20], t[30] = -0.0, float("nan"), 1.5
    packed = compress_state_dict({"w": t})
    assert packed["tensors"]["w"]["encoding"] == "indices"
    assert packed["tensors"]["w"]["values"].numel() == 3  # -0.0 has a bit set, so it is a stored value
    assert_bit_equal(decompress_state_dict(packed)["w"], t)


def test_non_contiguous_and_view_tensors() -> None:
    base = sparse_tensor((64, 64), torch.float32, 0.9)
    state = {"transposed": base.t(), "slice": base[3:9], "strided": base[:, ::3]}
    restored = decompress_state_dict(compress_state_dict(state))
    for name, tensor in state.items():
        assert_bit_equal(restored[name], tensor.contiguous())
        assert restored[name].untyped_storage().nbytes() == restored[name].nbytes  # owns its bytes


FLOATS = st.one_of(st.just(0.0), st.just(-0.0), st.floats(width=32, allow_nan=True, allow_infinity=True))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(FLOATS, min_size=1, max_size=300), zero_share=st.floats(0, 1), rows=st.integers(1, 3),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]))
def test_round_trip_property(values: list[float], zero_share: float, rows: int, dtype: torch.dtype) -> None:
    t = torch.tensor(values, dtype=torch.float32).to(dtype)
    t[: int(zero_share * t.numel())] = 0.0  # a run of zeros at the front, then whatever hypothesis drew
    t = t.repeat(rows).view(rows, -1)
    restored = decompress_state_dict(compress_state_dict({"x": t}))["x"]
    assert_bit_equal(restored, t)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-60000, 60000, width=32), min_size=1, max_size=300),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_fp16_round_trip_property(values: list[float], dtype: torch.dtype) -> None:
    t = torch.tensor(values, dtype=dtype)
    restored = decompress_state_dict(compress_state_dict({"x": t}, fp16=True))["x"]
    assert restored.dtype == dtype and restored.shape == t.shape
    torch.testing.assert_close(restored, t, rtol=HALF_RTOL, atol=HALF_ATOL)
    assert torch.equal(restored[t == 0], t[t == 0])  # zeros stay exactly zero


def test_fp16_keeps_precision_out_of_half_range() -> None:
    t = torch.tensor([1.0, 1e6, 0.0, 3.3])  # 1e6 would become inf in half precision
    packed = compress_state_dict({"big": t, "small": torch.full((300,), 0.1)}, fp16=True)
    assert packed["tensors"]["big"]["values"].dtype == torch.float32
    assert packed["tensors"]["small"]["values"].dtype == torch.float16
    assert_bit_equal(decompress_state_dict(packed)["big"], t)


def test_bitmask_layout_is_numpy_packbits_little() -> None:
    t = sparse_tensor((1001,), torch.float32, 0.5)
    entry = compress_state_dict({"w": t})["tensors"]["w"]
    assert entry["encoding"] == "bitmask"
    expected = np.packbits((bits(t) != 0).numpy(), bitorder="little")  # -0.0 at index 1 is kept
    assert np.array_equal(entry["mask"].numpy(), expected)
    assert_bit_equal(entry["values"], t[bits(t) != 0])


def test_gaps_are_zero_runs_between_values() -> None:
    t = torch.zeros(3000)
    positions = [0, 1, 300, 301, 2999]
    t[positions] = torch.arange(1.0, 6.0)
    entry = compress_state_dict({"w": t})["tensors"]["w"]
    assert entry["encoding"] == "indices"
    assert entry["gaps"].dtype == torch.int16  # the run of 2697 zeros does not fit uint8
    assert entry["gaps"].tolist() == [0, 0, 298, 0, 2697]


# ------------------------------------------------------------------------------------------------- encodings


def independent_sizes(t: torch.Tensor, item: int | None = None) -> dict[str, int]:
    """Bytes of each encoding from the definition: dense elements; packed bits + values; gaps + values."""
    item = item or t.element_size()
    flat = t.reshape(-1)
    nonzero = [i for i, v in enumerate(flat.tolist()) if v != 0]
    gaps = [b - a - 1 for a, b in zip([-1, *nonzero], nonzero, strict=False)]
    longest = max(gaps, default=0)
    gap_item = 1 if longest < 2**8 else 2 if longest < 2**15 else 4
    values = 0 if t.dtype == torch.bool else len(nonzero) * item + TENSOR_OVERHEAD_BYTES
    return {"dense": t.numel() * item + TENSOR_OVERHEAD_BYTES,
            "bitmask": math.ceil(t.numel() / 8) + values + TENSOR_OVERHEAD_BYTES,
            "indices": len(nonzero) * gap_item + values + TENSOR_OVERHEAD_BYTES}


@pytest.mark.parametrize(("shape", "dtype", "sparsity", "expected"), [
    ((64, 16, 3, 3), torch.float32, 0.5, "bitmask"),     # moderate sparsity: 1 bit per element beats gaps
    ((64, 16, 3, 3), torch.float32, 0.8, "bitmask"),
    ((64, 16, 3, 3), torch.float32, 0.9, "indices"),     # 1-byte gaps for 10% of the elements beat n/8 bytes
    ((64, 16, 3, 3), torch.float32, 0.99, "indices"),
    ((64, 16, 3, 3), torch.float32, 0.0, "dense"),       # nothing to leave out
    ((64, 16, 3, 3), torch.float16, 0.5, "bitmask"),
    ((64, 16, 3, 3), torch.bool, 0.5, "bitmask"),        # a mask: bits only, no values
    ((16,), torch.float32, 0.5, "dense"),                # a BatchNorm vector: too small to save anything
    ((), torch.int64, 0.0, "dense"),                     # num_batches_tracked
    ((100_000,), torch.float32, 0.999, "indices"),
])
def test_encoding_is_the_smallest(shape: tuple[int, ...], dtype: torch.dtype, sparsity: float,
                                  expected: str) -> None:
    t = sparse_tensor(shape, dtype, sparsity)
    if dtype.is_floating_point:
        t[t.isnan() | t.isinf()] = 1.0
        t[bits(t) == bits(torch.tensor(-0.0, dtype=dtype))] = 0.0  # the definition above treats -0.0 as zero
    sizes = independent_sizes(t)
    assert min(sizes, key=sizes.get) == expected
    assert encoded_sizes(t) == sizes
    entry = compress_state_dict({"t": t})["tensors"]["t"]
    assert entry["encoding"] == expected
    stored = sum(v.nbytes for v in entry.values() if isinstance(v, torch.Tensor))
    extra = TENSOR_OVERHEAD_BYTES * sum(isinstance(v, torch.Tensor) for v in entry.values())
    assert stored + extra == sizes[expected]


def test_fp16_sizes_count_two_bytes() -> None:
    t = sparse_tensor((4096,), torch.float32, 0.5)
    t[t.isnan() | t.isinf()] = 1.0
    t[bits(t) == bits(torch.tensor(-0.0))] = 0.0
    assert encoded_sizes(t, fp16=True) == independent_sizes(t, item=2)


def test_report_counts_and_measures() -> None:
    state = {"w": sparse_tensor((64, 64, 3, 3), torch.float32, 0.95), "b": torch.randn(64),
             "n": torch.tensor(3), "m": sparse_tensor((64, 64), torch.float32, 0.5)}
    report = compression_report(state)
    assert {name: t["encoding"] for name, t in report["tensors"].items()} == {
        "w": "indices", "b": "dense", "n": "dense", "m": "bitmask"}
    assert report["encodings"] == {"dense": 2, "bitmask": 1, "indices": 1}
    assert report["tensors"]["w"]["nonzero"] == int((state["w"] != 0).sum())
    assert report["dense_bytes"] == serialized(state)
    assert report["compressed_bytes"] == serialized(compress_state_dict(state))
    assert report["ratio"] == pytest.approx(report["compressed_bytes"] / report["dense_bytes"])
    text = format_compression_report(report)
    assert "indices" in text and f"{report['dense_bytes']:,}" in text


def test_corrupt_or_foreign_input_is_a_user_error() -> None:
    packed = compress_state_dict({"w": sparse_tensor((4096,), torch.float32, 0.95)})
    with pytest.raises(UserError, match="version 99"):
        decompress_state_dict({**packed, "version": 99})
    with pytest.raises(UserError, match="not a compressed state dict"):
        decompress_state_dict({"w": torch.zeros(3)})
    bad = {**packed, "tensors": {"w": {**packed["tensors"]["w"], "encoding": "zstd"}}}
    with pytest.raises(UserError, match="unknown encoding 'zstd'"):
        decompress_state_dict(bad)
    entry = packed["tensors"]["w"]
    bad = {**packed, "tensors": {"w": {**entry, "values": entry["values"][:-1]}}}
    with pytest.raises(UserError, match="corrupt"):
        decompress_state_dict(bad)


# ----------------------------------------------------------------------------------------- a real pruned model


def pruned_resnet20(percent: float) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10)
    with torch.no_grad():  # trained-looking BatchNorm statistics, so nothing is trivially zero or one
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.normal_(0, 0.1)
    result = prune_weights(model, percent=percent, scope="layer")
    return model.eval(), result.masks


@pytest.fixture(scope="module")
def pruned() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    return pruned_resnet20(0.9)


def test_pruned_resnet20_file_is_small_and_loads_exactly(pruned, tmp_path) -> None:
    model, masks = pruned
    dense_bytes = serialized(dict(model.state_dict()))  # as a checkpoint holds it (no module _metadata)
    ckpt = make_checkpoint(model=model, arch=ARCH, config={"name": "test"}, masks=masks, metrics={"top1": 1.0})
    path = tmp_path / "pruned.cpth"
    report = save_compressed(path, ckpt)
    assert report["dense_bytes"] == dense_bytes
    assert report["file_bytes"] == path.stat().st_size
    assert path.stat().st_size < dense_bytes / 5  # the whole checkpoint, masks and config included
    assert report["encodings"]["indices"] == len(masks)  # every 90%-sparse weight

    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert is_compressed_checkpoint(raw) and raw["compressed"]["fp16"] is False
    assert raw["optimizer"] is None and raw["rng"] is None  # training state left out by default
    assert all(e["encoding"] == "weight_pattern" for e in raw["masks"]["tensors"].values())  # masks cost nothing

    loaded = load_toolkit_checkpoint(path, ckpt=load_compressed(path))
    for name, tensor in model.state_dict().items():
        assert_bit_equal(loaded.model.state_dict()[name], tensor)
    assert set(loaded.masks) == set(masks) and all(torch.equal(loaded.masks[k], masks[k]) for k in masks)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), model(x))
    assert loaded.checkpoint["metrics"] == {"top1": 1.0} and "compressed" not in loaded.checkpoint
    assert loaded.checkpoint["expanded_from"] == {"version": 1, "fp16": False, "training_state": False}


def test_pruned_resnet20_fp16_is_smaller_and_close(pruned, tmp_path) -> None:
    model, masks = pruned
    ckpt = make_checkpoint(model=model, arch=ARCH, config={}, masks=masks)
    full = save_compressed(tmp_path / "full.cpth", ckpt)
    half = save_compressed(tmp_path / "half.cpth", ckpt, fp16=True)
    assert half["file_bytes"] < 0.75 * full["file_bytes"]
    loaded = load_toolkit_checkpoint(tmp_path / "half.cpth", ckpt=load_compressed(tmp_path / "half.cpth"))
    for name, tensor in model.state_dict().items():
        restored = loaded.model.state_dict()[name]
        assert restored.dtype == tensor.dtype
        torch.testing.assert_close(restored, tensor, rtol=HALF_RTOL, atol=HALF_ATOL)
        assert torch.equal(restored == 0, tensor == 0) or not tensor.is_floating_point()
    assert all(torch.equal(loaded.masks[k], masks[k]) for k in masks)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x), model(x), rtol=1e-2, atol=1e-2)


def test_sparser_is_smaller() -> None:
    sizes = []
    for percent in (0.5, 0.9):
        model, _ = pruned_resnet20(percent)
        sizes.append(compression_report(model.state_dict())["compressed_bytes"])
    assert sizes[1] < sizes[0] < serialized(model.state_dict()) * 0.6


def test_mask_that_differs_from_the_weight_pattern_is_stored(pruned) -> None:
    model, masks = pruned
    state = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {k: v.clone() for k, v in masks.items()}
    kept = masks["fc.weight"].nonzero()[0].tolist()
    state["fc.weight"][tuple(kept)] = 0.0  # a kept weight that happens to be exactly zero
    ckpt = {**make_checkpoint(model=model, arch=ARCH, config={}, masks=masks), "state_dict": state}
    packed = compress_checkpoint(ckpt)
    assert packed["masks"]["tensors"]["fc.weight"]["encoding"] != "weight_pattern"
    assert packed["masks"]["tensors"]["conv1.weight"]["encoding"] == "weight_pattern"
    expanded = expand_checkpoint(torch.load(io.BytesIO(_bytes(packed)), weights_only=True))
    assert all(torch.equal(expanded["masks"][k], masks[k]) for k in masks)
    assert all(torch.equal(expanded["state_dict"][k], state[k]) for k in state)


def test_training_state_kept_on_request(pruned, tmp_path) -> None:
    model, _ = pruned
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    ckpt = make_checkpoint(model=model, arch=ARCH, config={}, training=TrainingState(epoch=3, optimizer=optimizer))
    save_compressed(tmp_path / "c.cpth", ckpt, keep_training_state=True)
    back = load_compressed(tmp_path / "c.cpth")
    assert back["epoch"] == 3 and back["rng"] is not None
    momentum = [c["optimizer"]["state"][0]["momentum_buffer"] for c in (back, ckpt)]
    assert torch.equal(*momentum)
    with pytest.raises(UserError, match="already compressed"):
        compress_checkpoint(compress_checkpoint(ckpt))


def test_ordinary_checkpoints_pass_through(pruned, tmp_path) -> None:
    model, _ = pruned
    ckpt = make_checkpoint(model=model, arch=ARCH, config={})
    assert expand_checkpoint(ckpt) == ckpt
    torch.save(ckpt, tmp_path / "plain.pth")
    assert torch.equal(load_compressed(tmp_path / "plain.pth")["state_dict"]["fc.weight"], model.fc.weight)
    torch.save({"weights": 1}, tmp_path / "foreign.pth")
    with pytest.raises(UserError, match="not a checkpoint written by this tool"):
        load_compressed(tmp_path / "foreign.pth")


def test_checkpoint_machinery_reads_compressed_files(pruned, tmp_path) -> None:
    """``load_checkpoint`` / ``load_toolkit_checkpoint`` read compressed files once ``check_checkpoint`` expands
    them (the hook: ``return expand_checkpoint(obj, source=path) if is_compressed_checkpoint(obj) else obj``)."""
    model, masks = pruned
    path = tmp_path / "c.cpth"
    save_compressed(path, make_checkpoint(model=model, arch=ARCH, config={}, masks=masks))
    if is_compressed_checkpoint(check_checkpoint(torch.load(path, weights_only=True), path)):
        pytest.skip("utils.checkpoint.load.check_checkpoint does not expand compressed checkpoints yet")
    assert not is_compressed_checkpoint(load_checkpoint(path))
    loaded = load_toolkit_checkpoint(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), model(x))
