"""Tests for :mod:`utils.report.profile`: costs checked against hand computations and the papers' figures.

MACs from FlopCounterMode are compared with an independent count (forward hooks over Conv2d/Linear with
the textbook formulas) on every registered architecture and on physically pruned widths, so a change in
how PyTorch counts, or a layer the counter misses, fails here rather than skewing a reported reduction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import utils.checkpoint.format
from models import get_model, list_models
from tests.pruned import rebuilt_pruned
from utils.report.profile import (
    CPU_BATCH_SIZES,
    CUDA_BATCH_SIZES,
    count_macs,
    count_params,
    default_batch_sizes,
    measure_latency,
    model_size_kb,
    profile_model,
    reduction,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Counting does not depend on threads, and on a small machine shared with other busy processes
    # two threads wait at barriers for a core: 1 thread runs these forwards ~10x faster there.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _input_size(name: str) -> tuple[int, int, int]:
    # torchvision models downsample 32x; 64x64 keeps them fast and still leaves a 2x2 final map.
    return (3, 64, 64) if name.startswith("tv_") else (3, 32, 32)


def _hook_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """MACs of convs and linears at batch 1 by the textbook formulas, independent of FlopCounterMode."""
    macs = 0

    def count(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            # Each output value takes (in_channels / groups) * kh * kw multiply-adds.
            kh, kw = module.kernel_size
            macs += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for handle in handles:
            handle.remove()
    return macs


# --------------------------------------------------------------------------- parameters and size


def test_count_params_of_a_tiny_net() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(10, 5))
    # conv 8*3*3*3 + 8 bias, BN weight+bias 2*8 (running stats are buffers), linear 10*5 + 5.
    assert count_params(net) == (216 + 8) + 16 + (50 + 5)


def test_model_size_is_the_checkpoint_helper() -> None:
    assert model_size_kb is utils.checkpoint.format.model_size_kb  # reused, not a second implementation
    net = nn.Linear(256, 256)
    # float32 weights and bias, plus torch.save's zip framing (a few KB at most).
    payload_kb = (256 * 256 + 256) * 4 / 1024
    assert payload_kb < model_size_kb(net) < payload_kb + 4


# --------------------------------------------------------------------------- MACs


def test_conv_macs_match_a_hand_computation() -> None:
    # Conv2d(3, 8, 3, padding=1) on 3x8x8: 64 output positions x 8 filters x 3*3*3 weights each.
    assert count_macs(nn.Conv2d(3, 8, 3, padding=1), (3, 8, 8)) == 8 * 3 * 9 * 64 == 13_824


def test_grouped_conv_macs_match_a_hand_computation() -> None:
    # Each of the 8 filters sees 4 / 2 = 2 input channels.
    assert count_macs(nn.Conv2d(4, 8, 3, padding=1, groups=2), (4, 8, 8)) == 8 * 2 * 9 * 64


def test_linear_macs_exclude_the_bias() -> None:
    class Flat(nn.Module):
        def __init__(self, bias: bool) -> None:
            super().__init__()
            self.fc = nn.Linear(10, 5, bias=bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    # 5 outputs x 10 inputs; the bias (addmm) and no bias (mm) count the same.
    assert count_macs(Flat(bias=True), (1, 1, 10)) == count_macs(Flat(bias=False), (1, 1, 10)) == 50


def test_elementwise_layers_cost_nothing() -> None:
    # BN, ReLU, pooling and additions are not in FlopCounterMode's table: the module docstring says so.
    net = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
    assert count_macs(net, (3, 8, 8)) == 0


@pytest.mark.parametrize("name", list_models())
def test_macs_equal_an_independent_count_for_every_model(name: str) -> None:
    model = get_model(name)
    assert count_macs(model, _input_size(name)) == _hook_macs(model, _input_size(name))


@pytest.mark.parametrize(
    ("name", "options", "widths"),
    [
        ("resnet20", {"shortcut": "B"}, None),  # 1x1 downsample convs are counted too
        ("resnet56", {}, [5] * 9 + [11] * 9 + [23] * 9),  # a physically filter-pruned ResNet-56
        ("vgg16_bn_cifar", {"classifier": [4096, 4096]}, None),
        ("vgg16_bn_cifar", {}, [32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256, 256]),
    ],
)
def test_macs_equal_an_independent_count_for_variants(name: str, options: dict, widths: list[int] | None) -> None:
    model = get_model(name, **options) if widths is None else rebuilt_pruned(name, widths, **options)
    assert count_macs(model, (3, 32, 32)) == _hook_macs(model, (3, 32, 32))


@pytest.mark.parametrize(
    ("name", "options", "exact", "paper"),
    [
        # He et al. 2016 option A; Li et al. 2017 Table 1/2 give 1.25e8 (ResNet-56), 2.53e8 (ResNet-110),
        # 3.13e8 (VGG-16) multiply-adds. The exact values pin the count down against drift.
        ("resnet20", {}, 40_551_040, 40.55e6),
        ("resnet56", {}, 125_485_696, 1.25e8),
        ("resnet110", {}, 252_887_680, 2.53e8),
        ("vgg16_bn_cifar", {}, 313_463_808, 3.13e8),
        ("vgg16_bn_cifar", {"classifier": [4096, 4096]}, 332_111_872, 3.32e8),
    ],
)
def test_macs_match_the_papers(name: str, options: dict, exact: int, paper: float) -> None:
    macs = count_macs(get_model(name, **options), (3, 32, 32))
    assert macs == exact
    assert macs == pytest.approx(paper, rel=0.01)


def test_count_macs_restores_every_module_mode_and_leaves_bn_statistics_alone() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Linear(6, 2), nn.BatchNorm1d(2))
    net.train()
    net[4].eval()  # a frozen BN inside a training model must stay frozen
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # In training mode BatchNorm1d rejects a batch of 1, so this also proves eval mode was used.
    assert count_macs(net, (3, 2, 2)) == 12 * 6 + 6 * 2
    assert [m.training for m in net] == [True, True, True, True, False]
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.is_grad_enabled()


def test_count_macs_of_a_trained_mode_model_with_grad_tracking_builds_no_graph() -> None:
    net = nn.Linear(4, 4)
    count_macs(net, (1, 1, 4))
    assert net.weight.grad is None


def test_bad_input_size_and_device_are_value_errors() -> None:
    with pytest.raises(ValueError, match="channels, height, width"):
        count_macs(nn.Conv2d(3, 3, 1), (32, 32))
    with pytest.raises(ValueError, match="move it first"):
        count_macs(nn.Conv2d(3, 3, 1), (3, 4, 4), device="meta")


# --------------------------------------------------------------------------- latency


def test_default_batch_sizes_depend_on_the_device() -> None:
    assert default_batch_sizes("cpu") == CPU_BATCH_SIZES == (1, 64)
    assert default_batch_sizes(torch.device("cuda")) == CUDA_BATCH_SIZES == (1, 256)


def test_latency_is_positive_and_grows_with_the_batch() -> None:
    model = get_model("resnet20")
    model.train()
    # One thread: multi-threaded CPU timings are unreliable when other processes share the cores.
    times = measure_latency(model, (3, 32, 32), batch_sizes=(1, 64), min_run_time=0.05, warmup=1, num_threads=1)
    assert list(times) == [1, 64]
    assert all(math.isfinite(ms) and ms > 0 for ms in times.values())
    # 64 images are 64x the arithmetic of one; even with better batching the call must take longer.
    assert times[64] > times[1]
    assert model.training


def test_latency_leaves_the_global_rng_alone() -> None:
    model = nn.Linear(2, 2)  # building it draws from the RNG; timing it must not
    state = torch.get_rng_state()
    measure_latency(model, (1, 1, 2), batch_sizes=(1,), min_run_time=0.01, warmup=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_latency_rejects_bad_batch_sizes() -> None:
    with pytest.raises(ValueError, match="batch_sizes"):
        measure_latency(nn.Linear(2, 2), (1, 1, 2), batch_sizes=(0,))


# --------------------------------------------------------------------------- profile and reduction


def test_profile_without_latency() -> None:
    model = get_model("resnet20")
    profile = profile_model(model, (3, 32, 32), latency=False)
    assert profile == {"params": 269_722, "macs": 40_551_040, "size_kb": model_size_kb(model)}


def test_profile_with_latency_survives_json() -> None:
    profile = profile_model(nn.Conv2d(3, 4, 3), (3, 8, 8), batch_sizes=(1, 2), min_run_time=0.01, num_threads=1)
    assert set(profile) == {"params", "macs", "size_kb", "latency_ms", "device", "num_threads"}
    assert set(profile["latency_ms"]) == {"1", "2"}
    assert profile["num_threads"] == 1
    assert json.loads(json.dumps(profile)) == profile


def test_pruned_model_profile_shows_the_reduction() -> None:
    full = profile_model(get_model("vgg16_bn_cifar"), (3, 32, 32), latency=False)
    half = profile_model(rebuilt_pruned("vgg16_bn_cifar", [32, 32, 64, 64, 128, 128, 128] + [256] * 6),
                         (3, 32, 32), latency=False)
    saved = reduction(full, half)
    assert set(saved) == {"params", "macs", "size_kb"}
    # Halving every conv width quarters the conv MACs (the first conv's input, 3 channels, stays: half).
    assert saved["macs"] == pytest.approx(75.0, abs=0.5)
    # Conv weights quarter; the head's 512->512 layer only halves (its output width is not pruned).
    assert 74 < saved["params"] < 75
    assert saved["size_kb"] == pytest.approx(saved["params"], abs=0.5)  # the file is the float32 weights


def test_reduction_math() -> None:
    before = {"params": 200, "macs": 1000, "size_kb": 10.0, "latency_ms": {"1": 2.0, "64": 8.0},
              "device": "cpu (x86_64)", "num_threads": 2}
    after = {"params": 100, "macs": 250, "size_kb": 12.5, "latency_ms": {"1": 1.0, "64": 2.0},
             "device": "cpu (x86_64)", "num_threads": 2}
    assert reduction(before, after) == {
        "params": 50.0,
        "macs": 75.0,
        "size_kb": -25.0,  # growth is a negative reduction
        "latency_ms": {"1": 50.0, "64": 75.0},
    }  # device (a string) and num_threads (a setting, not a cost) are not compared


def test_reduction_compares_only_shared_numbers() -> None:
    before = {"params": 10, "latency_ms": {"1": 4.0, "64": 8.0}, "flag": True}
    after = {"params": 10, "latency_ms": {"1": 1.0, "256": 3.0}, "flag": False, "macs": 3}
    assert reduction(before, after) == {"params": 0.0, "latency_ms": {"1": 75.0}}
    assert reduction({"macs": 1}, {"params": 1}) == {}


def test_reduction_from_zero() -> None:
    assert reduction({"macs": 0}, {"macs": 0}) == {"macs": 0.0}
    with pytest.raises(ValueError, match="'macs'"):
        reduction({"macs": 0}, {"macs": 5})


def test_attention_macs_are_counted_in_eval_mode() -> None:
    """nn.MultiheadAttention's eval fast path is one fused op; its MACs are counted all the same: the q, k, v and
    output projections (4 L E^2) and the two products of the L x L attention (2 L^2 E)."""

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = x[:, 0]  # (N, L, E)
            return self.attn(tokens, tokens, tokens, need_weights=False)[0]

    length, dim = 6, 16
    assert count_macs(Tokens(), (1, length, dim)) == 4 * length * dim * dim + 2 * length * length * dim
    assert torch.backends.mha.get_fastpath_enabled()  # left as it was
