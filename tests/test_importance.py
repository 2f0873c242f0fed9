"""Each filter-importance criterion ranks as an independent NumPy computation of its definition does, on a small conv
net, and filter pruning removes exactly the lowest-ranked filters (ties to the lower index)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pruning import analyse, prune_filters
from pruning.importance import group_scores, list_importances
from utils.core.errors import UserError


class Net(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2, plus a shortcut conv3 -> bn3 added to it (a residual group)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv3, self.bn3 = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.bn3(self.conv3(x)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = Net()
    for bn in (net.bn1, net.bn2, net.bn3):
        nn.init.uniform_(bn.weight, -1.0, 1.0)
    return net.eval()


def _filters(conv: nn.Conv2d) -> np.ndarray:
    return conv.weight.detach().double().numpy().reshape(conv.out_channels, -1)


def _fpgm(conv: nn.Conv2d) -> np.ndarray:
    f = _filters(conv)
    return np.array([sum(math.dist(f[i], f[j]) for j in range(len(f))) for i in range(len(f))])


INDEPENDENT = {
    "l1": lambda conv, bn: np.abs(_filters(conv)).sum(axis=1),
    "l2": lambda conv, bn: np.sqrt((_filters(conv) ** 2).sum(axis=1)),
    "fpgm": lambda conv, bn: _fpgm(conv),
    "bn_scale": lambda conv, bn: np.abs(bn.weight.detach().double().numpy()),
}


@pytest.mark.parametrize("importance", sorted(INDEPENDENT))
def test_scores_equal_an_independent_computation(importance: str) -> None:
    net = _net()
    graph = analyse(net, torch.zeros(1, 3, 6, 6))
    one = INDEPENDENT[importance](net.conv1, net.bn1)
    np.testing.assert_allclose(group_scores(net, graph.group_of("conv1"), importance=importance).numpy(), one,
                               rtol=1e-12)
    # A residual group: every producer votes, the scores add (for bn_scale, the scales of both BatchNorms).
    both = INDEPENDENT[importance](net.conv2, net.bn2) + INDEPENDENT[importance](net.conv3, net.bn3)
    np.testing.assert_allclose(group_scores(net, graph.group_of("conv2"), importance=importance).numpy(), both,
                               rtol=1e-12)


@pytest.mark.parametrize("importance", sorted(INDEPENDENT))
def test_pruning_removes_the_lowest_ranked_filters(importance: str) -> None:
    net = _net()
    expected = np.argsort(INDEPENDENT[importance](net.conv1, net.bn1), kind="stable")[:3]
    result = prune_filters(net, layers=["conv1"], channels=[3], importance=importance,
                           example_input=torch.zeros(1, 3, 6, 6))
    assert result.removed["conv1"] == sorted(expected.tolist()) and net.conv1.out_channels == 5


def test_random_is_the_runs_seed_and_nothing_else() -> None:
    x = torch.zeros(1, 3, 6, 6)
    removed = []
    for seed in (0, 0, 1):
        net = _net()
        torch.manual_seed(seed)
        removed.append(prune_filters(net, layers=["conv1"], ratios=[0.5], importance="random",
                                     example_input=x).removed["conv1"])
    assert removed[0] == removed[1] != removed[2] and len(removed[0]) == 4


def test_bn_scale_without_a_batchnorm_and_an_unknown_criterion_are_one_line_each() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(UserError, match=r"bn_scale ranks channels by their BatchNorm's scale, and the channels of 0 "
                                        r"go through none; choose another criterion"):
        prune_filters(net, layers=["0"], channels=[1], importance="bn_scale", example_input=torch.zeros(1, 3, 4, 4))
    with pytest.raises(UserError, match=r"unknown filter importance 'l3'; known filter importances: "
                                        + ", ".join(list_importances())):
        prune_filters(net, layers=["0"], channels=[1], importance="l3", example_input=torch.zeros(1, 3, 4, 4))
