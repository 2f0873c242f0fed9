"""Hypothesis properties of filter pruning on random small plain conv nets.

* The physically pruned model computes what the original computes with the removed channels zeroed
  (``masked_equivalent`` from test_filter_pruning), and every layer keeps ``n - ceil(r * n)`` filters;
  a ratio that would empty a layer is a UserError.
* ``channels=0`` changes nothing: same parameters, bitwise equal outputs.
* The removed filters are the smallest by a NumPy L1 norm, ties to the lower index (stable argsort),
  for both strategies (``greedy`` leaves out the kernels on the previous layer's removed channels).

Weight-pruning idempotence is already covered by test_weight_pruning.test_pruning_twice_is_idempotent.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pruning import analyse, filters_to_remove, prunable_layers, prune_filters
from tests.test_filter_pruning import masked_equivalent
from utils.core.errors import UserError

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class PlainNet(nn.Module):
    def __init__(self, widths: list[int], kernels: list[int], norm: bool, pool: bool, size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for width, k in zip(widths, kernels, strict=True):
            layers.append(nn.Conv2d(in_ch, width, k, padding=k // 2, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU())
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool else nn.Identity()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch * (1 if pool else size * size), 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


@st.composite
def nets(draw: st.DrawFn, integer_weights: bool = False) -> tuple[nn.Module, torch.Tensor]:
    depth = draw(st.integers(2, 4))
    widths = draw(st.lists(st.integers(2, 12), min_size=depth, max_size=depth))
    kernels = draw(st.lists(st.sampled_from([1, 3]), min_size=depth, max_size=depth))
    norm, pool = draw(st.booleans()), draw(st.booleans())
    size = draw(st.sampled_from([8, 12, 16]))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    model = PlainNet(widths, kernels, norm, pool, size)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.5)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            elif integer_weights and isinstance(module, nn.Conv2d):
                # few distinct values: many exactly tied L1 norms
                module.weight.copy_(torch.randint(-2, 3, module.weight.shape, generator=gen).float())
    model.eval()
    return model, torch.randn(3, 3, size, size, generator=gen)


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.features if isinstance(m, nn.Conv2d)]


@SETTINGS
@given(net=nets(), data=st.data())
def test_pruned_equals_masked_original_with_ceil_widths(net, data):
    original, x = net
    free = list(prunable_layers(original, x[:1], alone=True))
    assert free  # every conv of a plain net may be pruned alone
    ratios = [data.draw(st.floats(0, 0.9, allow_nan=False), label=f"ratio {name}") for name in free]
    widths = {name: original.get_submodule(module).out_channels
              for name, module in prunable_layers(original, x[:1], alone=True).items()}
    pruned = copy.deepcopy(original)
    if any(filters_to_remove(widths[n], r) > widths[n] - 1 for n, r in zip(free, ratios, strict=True)):
        with pytest.raises(UserError, match="at most"):
            prune_filters(pruned, layers=free, ratios=ratios, example_input=x[:1])
        return
    graph = analyse(original, x[:1])
    result = prune_filters(pruned, layers=free, ratios=ratios, example_input=x[:1])
    for name, r in zip(free, ratios, strict=True):
        n = widths[name]
        assert n - math.ceil(r * n - 1e-9) == n - filters_to_remove(n, r)  # the documented rounding
        assert result.widths[name] == (n, n - math.ceil(r * n - 1e-9))
        assert pruned.get_submodule(result.modules[name]).out_channels == n - len(result.removed[name])
    pruned.eval()
    with torch.no_grad():
        out_pruned = pruned(x)
        with masked_equivalent(original, graph, result):
            out_reference = original(x)
    assert out_pruned.shape == out_reference.shape
    assert (out_pruned - out_reference).abs().max().item() < 1e-4


@SETTINGS
@given(net=nets(), strategy=st.sampled_from(["independent", "greedy"]))
def test_removing_zero_channels_changes_nothing(net, strategy):
    original, x = net
    pruned = copy.deepcopy(original)
    result = prune_filters(pruned, channels=[0], strategy=strategy, example_input=x[:1])
    assert all(removed == [] for removed in result.removed.values())
    assert all(before == after for before, after in result.widths.values())
    before, after = original.state_dict(), pruned.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(pruned(x), original(x))


@SETTINGS
@given(net=nets(integer_weights=True), strategy=st.sampled_from(["independent", "greedy"]), data=st.data())
def test_removed_filters_are_the_smallest_l1_stable_ties(net, strategy, data):
    original, x = net
    names = list(prunable_layers(original, x[:1], alone=True))
    convs = _convs(original)
    assert len(names) == len(convs)
    counts = [data.draw(st.integers(0, conv.out_channels - 1), label=f"remove {name}")
              for name, conv in zip(names, convs, strict=True)]
    weights = [conv.weight.detach().numpy().astype(np.float64) for conv in convs]
    result = prune_filters(copy.deepcopy(original), layers=names, channels=counts, strategy=strategy,
                           example_input=x[:1])
    previous: list[int] = []
    for name, w, count in zip(names, weights, counts, strict=True):
        if strategy == "greedy" and previous:
            w = np.delete(w, previous, axis=1)
        norms = np.abs(w).reshape(w.shape[0], -1).sum(axis=1)
        expected = sorted(np.argsort(norms, kind="stable")[:count].tolist())
        assert result.removed[name] == expected, (name, norms.tolist())
        previous = expected
