"""Magnitude weight pruning: exact thresholds, exact sparsity, masks held through fine-tuning, tables.

Thresholds are checked against an independent NumPy computation (sort the concatenated ``|w|``,
take the k-th smallest), never against the implementation's own ``kthvalue`` path.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pruning import (
    SCOPES,
    MaskKeeper,
    apply_masks,
    compute_masks,
    prunable_weights,
    prune_weights,
    sparsity_report,
)
from utils.core.errors import UserError
from utils.core.tvguard import torchvision
from utils.report.tables import format_layer_table, format_sweep_table


class SmallNet(nn.Module):
    """Conv (plain, depthwise, pointwise) + BatchNorm + two linear layers: every kind the pruner handles."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        x = torch.relu(self.pw(x)).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


CONV = ["conv1.weight", "dw.weight", "pw.weight"]
FC = ["fc1.weight", "fc2.weight"]


def make_net(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    net = SmallNet()
    with torch.no_grad():  # BN statistics that are not the defaults, so "untouched" means something
        for bn in (net.bn1, net.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return net


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def reference_threshold(tensors: list[torch.Tensor], percent: float) -> tuple[float, int]:
    """k-th smallest |w| over the tensors (0 when k == 0) by a full NumPy sort, and k."""
    values = np.sort(np.concatenate([np.abs(t.detach().numpy()).ravel() for t in tensors]))
    k = round(percent * values.size)
    if k > 0:  # np.partition agrees with the sort: a check on the reference itself
        assert np.partition(values, k - 1)[k - 1] == values[k - 1]
    return (float(values[k - 1]) if k else 0.0), k


def pruned_count(masks: dict[str, torch.Tensor], names: list[str]) -> int:
    return sum(int((~masks[name]).sum()) for name in names)


# --- which weights -------------------------------------------------------------------------------------------------


def test_prunable_weights_are_conv_and_linear_weights_only():
    net = make_net()
    found = prunable_weights(net)
    assert list(found) == CONV + FC
    expected = {**dict.fromkeys(CONV, "conv"), **dict.fromkeys(FC, "fc")}
    assert {name: kind for name, (kind, _) in found.items()} == expected
    for name, (_, param) in found.items():
        assert param is params(net)[name]


def test_shared_weight_is_listed_once():
    fc = nn.Linear(4, 4)
    net = nn.Sequential(fc, nn.ReLU(), fc)
    assert list(prunable_weights(net)) == ["0.weight"]
    assert list(compute_masks(net, 0.5, "layer").masks) == ["0.weight"]


# --- thresholds and exact counts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [0.1, 0.3, 0.5, 0.77, 0.9])
def test_layer_type_thresholds_match_numpy(percent):
    net = make_net()
    result = compute_masks(net, percent, "layer_type")
    assert set(result.thresholds) == {"conv", "fc"}
    for kind, names in (("conv", CONV), ("fc", FC)):
        expected, k = reference_threshold([params(net)[n] for n in names], percent)
        assert result.thresholds[kind] == expected
        assert pruned_count(result.masks, names) == k


@pytest.mark.parametrize("percent", [0.1, 0.5, 0.9])
def test_global_threshold_matches_numpy_and_is_shown_per_kind(percent):
    net = make_net()
    result = compute_masks(net, percent, "global")
    expected, k = reference_threshold([params(net)[n] for n in CONV + FC], percent)
    assert result.thresholds == {"global": expected, "conv": expected, "fc": expected}
    assert pruned_count(result.masks, CONV + FC) == k


@pytest.mark.parametrize("percent", [0.1, 0.5, 0.9])
def test_layer_thresholds_match_numpy(percent):
    net = make_net()
    result = compute_masks(net, percent, "layer")
    assert list(result.thresholds) == CONV + FC
    for name in CONV + FC:
        expected, k = reference_threshold([params(net)[name]], percent)
        assert result.thresholds[name] == expected
        assert pruned_count(result.masks, [name]) == k


@pytest.mark.parametrize("scope", SCOPES)
def test_pruned_weights_are_exactly_those_at_or_below_threshold(scope):
    net = make_net()
    result = compute_masks(net, 0.6, scope)
    for name in CONV + FC:
        key = name if scope == "layer" else ("conv" if name in CONV else "fc")
        magnitude = params(net)[name].detach().abs()
        mask = result.masks[name]
        assert mask.dtype == torch.bool and mask.shape == magnitude.shape
        # continuous random weights have no ties, so the mask is exactly |w| > threshold
        assert torch.equal(mask, magnitude > result.thresholds[key])


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("percent", [0.25, 0.5, 0.8])
def test_achieved_sparsity_is_exactly_k_over_n(scope, percent):
    net = make_net()
    prune_weights(net, percent=percent, scope=scope)
    report = sparsity_report(net)
    groups = {"layer": [[n] for n in CONV + FC], "global": [CONV + FC], "layer_type": [CONV, FC]}[scope]
    for names in groups:
        numel = sum(report["layers"][n]["numel"] for n in names)
        assert sum(report["layers"][n]["zeros"] for n in names) == round(percent * numel)
    for kind, names in (("conv", CONV), ("fc", FC)):
        numel = sum(report["layers"][n]["numel"] for n in names)
        zeros = sum(report["layers"][n]["zeros"] for n in names)
        assert report[kind] == zeros / numel


@pytest.mark.parametrize("scope", SCOPES)
def test_ties_still_prune_exactly_k(scope):
    net = make_net()
    with torch.no_grad():  # magnitudes in {0.25, 0.5, 0.75, 1}: thousands of ties at every threshold
        for name in CONV + FC:
            w = params(net)[name]
            w.copy_((torch.randint(1, 5, w.shape) / 4) * torch.where(torch.rand(w.shape) < 0.5, -1.0, 1.0))
    percent = 0.37
    result = compute_masks(net, percent, scope)
    groups = {"layer": {n: [n] for n in CONV + FC}, "global": {"global": CONV + FC},
              "layer_type": {"conv": CONV, "fc": FC}}[scope]
    for key, names in groups.items():
        flat = torch.cat([params(net)[n].detach().abs().flatten() for n in names])
        kept = torch.cat([result.masks[n].flatten() for n in names])
        threshold, k = reference_threshold([params(net)[n] for n in names], percent)
        assert result.thresholds[key] == threshold
        assert int((~kept).sum()) == k
        assert (flat[~kept] <= threshold).all() and (flat[kept] >= threshold).all()
        # among the tied entries, the pruned ones come first in index order
        tied = (flat == threshold).nonzero().flatten()
        tied_pruned = ~kept[tied]
        assert torch.equal(tied_pruned, torch.sort(tied_pruned.int(), descending=True, stable=True).values.bool())


@pytest.mark.parametrize("scope", SCOPES)
def test_pruning_twice_is_idempotent(scope):
    net = make_net()
    first = prune_weights(net, percent=0.6, scope=scope)
    weights = {n: p.detach().clone() for n, p in params(net).items()}
    second = prune_weights(net, percent=0.6, scope=scope)
    for name in CONV + FC:
        assert torch.equal(first.masks[name], second.masks[name])
    for name, value in params(net).items():
        assert torch.equal(value, weights[name])


def test_idempotent_when_many_weights_are_already_zero():
    net = make_net()
    with torch.no_grad():
        for name in CONV + FC:
            params(net)[name].masked_fill_(torch.rand(params(net)[name].shape) < 0.7, 0.0)
    first = prune_weights(net, percent=0.4, scope="layer_type")
    second = prune_weights(net, percent=0.4, scope="layer_type")
    assert first.thresholds == {"conv": 0.0, "fc": 0.0}
    for name in CONV + FC:
        assert torch.equal(first.masks[name], second.masks[name])


def test_biases_and_batchnorm_are_never_touched():
    net = make_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prune_weights(net, percent=0.9, scope="global")
    for key, value in net.state_dict().items():
        if key in CONV + FC:
            assert not torch.equal(value, before[key])
        else:
            assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("scope", SCOPES)
def test_thresholds_increase_with_the_ratio(scope):
    net = make_net()
    ratios = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99]
    results = [compute_masks(net, p, scope).thresholds for p in ratios]
    for key in results[0]:
        values = [r[key] for r in results]
        assert values == sorted(values), key
        assert values[-1] > values[0]


def test_percent_zero_prunes_nothing():
    net = make_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for scope in SCOPES:
        result = prune_weights(net, percent=0, scope=scope)
        assert all(mask.all() for mask in result.masks.values())
        assert set(result.thresholds.values()) == {0.0}
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


def test_k_is_python_round_of_percent_times_n():
    """Halves go to the even integer (Python's round): 0.25 * 10 = 2.5 prunes 2;
    0.15 * 10 = 1.5000000000000002 prunes 2."""
    layer = nn.Linear(5, 2, bias=False)
    assert pruned_count(compute_masks(layer, 0.25, "layer").masks, ["weight"]) == 2
    assert pruned_count(compute_masks(layer, 0.15, "layer").masks, ["weight"]) == 2
    assert pruned_count(compute_masks(layer, 0.96, "layer").masks, ["weight"]) == 10


def test_compute_masks_does_not_modify_the_model():
    net = make_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    compute_masks(net, 0.5, "global")
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


def test_absent_kind_has_no_threshold_key():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3))
    assert set(compute_masks(net, 0.5, "layer_type").thresholds) == {"conv"}
    assert set(compute_masks(net, 0.5, "global").thresholds) == {"global", "conv"}
    assert set(sparsity_report(net)) == {"conv", "total", "layers"}


# --- errors and the registry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [1.5, 1, 1.0, -0.1, float("nan"), True, "0.5", None])
def test_out_of_range_percent_is_a_user_error(percent):
    with pytest.raises(UserError) as info:
        compute_masks(make_net(), percent, "layer_type")
    assert str(info.value) == f"prune.percent: expected a number in [0, 1), got {percent!r}"


def test_percent_message_is_exact():
    with pytest.raises(UserError) as info:
        prune_weights(make_net(), percent=1.5, scope="global")
    assert str(info.value) == "prune.percent: expected a number in [0, 1), got 1.5"


def test_unknown_scope_is_a_user_error_listing_scopes():
    with pytest.raises(UserError) as info:
        compute_masks(make_net(), 0.5, "per_layer")
    assert str(info.value) == "prune.scope: expected one of layer_type, global, layer, got 'per_layer'"


def test_model_without_prunable_weights_is_a_user_error():
    with pytest.raises(UserError, match="no nn.Conv2d or nn.Linear weights"):
        compute_masks(nn.Sequential(nn.BatchNorm2d(3)), 0.5, "global")


# --- MaskKeeper ----------------------------------------------------------------------------------------------------


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 3, 8, 8, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd_nesterov_wd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                                 weight_decay=5e-4),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2),
}


def pruned_net(percent: float = 0.5) -> tuple[SmallNet, dict[str, torch.Tensor]]:
    net = make_net()
    return net, prune_weights(net, percent=percent, scope="layer_type").masks


def assert_pruned_zero(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        values = params(model)[name].detach()[~mask]
        assert torch.equal(values, torch.zeros_like(values)), name
        assert not torch.signbit(values).any(), f"{name}: -0.0 where +0.0 expected"


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_mask_keeper_holds_pruned_weights_at_zero(make_optimizer):
    net, masks = pruned_net()
    start = {n: p.detach().clone() for n, p in params(net).items()}
    optimizer = make_optimizer(net)
    MaskKeeper(net, masks).attach(optimizer)
    train(net, optimizer, steps=15)
    assert_pruned_zero(net, masks)
    changed = {name: params(net)[name].detach() != start[name] for name in masks}
    kept = sum(int(mask.sum()) for mask in masks.values())
    assert sum(int((changed[name] & mask).sum()) for name, mask in masks.items()) > 0.5 * kept
    for name, mask in masks.items():
        state = optimizer.state[params(net)[name]].values()
        buffers = [b for b in state if torch.is_tensor(b) and b.shape == mask.shape]
        assert buffers, name
        for buffer in buffers:
            # clean optimizer state at pruned positions: detaching later cannot revive them by momentum
            assert (buffer[~mask] == 0).all(), name
            # every kept weight the optimizer had something for moved (a dead ReLU channel under plain Adam has not)
            assert changed[name][mask & (buffer != 0)].all(), name


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_without_keeper_pruned_weights_drift(make_optimizer):
    """The control for the test above: fine-tuning does revive pruned weights when nothing holds them."""
    net, masks = pruned_net()
    optimizer = make_optimizer(net)
    train(net, optimizer, steps=3)
    assert any((params(net)[name].detach()[~mask] != 0).any() for name, mask in masks.items())


def test_masks_round_trip_through_a_checkpoint_and_resume_keeps_them_zero(tmp_path):
    net, masks = pruned_net(0.7)
    optimizer = OPTIMIZERS["sgd_nesterov_wd"](net)
    keeper = MaskKeeper(net, masks).attach(optimizer)
    train(net, optimizer, steps=5)
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": net.state_dict(), "optimizer": optimizer.state_dict(), "masks": keeper.state_dict()},
               path)

    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint["masks"]) == set(masks)
    for name, mask in checkpoint["masks"].items():
        assert mask.dtype == torch.bool and torch.equal(mask, masks[name])

    resumed = SmallNet()
    resumed.load_state_dict(checkpoint["state_dict"], strict=True)
    resumed_optimizer = OPTIMIZERS["sgd_nesterov_wd"](resumed)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    MaskKeeper.from_state_dict(resumed, checkpoint["masks"]).attach(resumed_optimizer)
    train(resumed, resumed_optimizer, steps=5, seed=2)
    assert_pruned_zero(resumed, masks)


@pytest.mark.parametrize("bad", ["unknown", "shape", "dtype"])
def test_mismatched_masks_are_a_user_error(bad):
    net, masks = pruned_net()
    masks = dict(masks)
    if bad == "unknown":
        masks["layer9.conv.weight"] = masks.pop("pw.weight")
    elif bad == "shape":
        masks["fc1.weight"] = masks["fc1.weight"].t().contiguous()
    else:
        masks["fc1.weight"] = masks["fc1.weight"].float()
    with pytest.raises(UserError, match="^checkpoint masks do not match the model: "):
        MaskKeeper.from_state_dict(net, masks)
    with pytest.raises(UserError, match="^checkpoint masks do not match the model: "):
        apply_masks(net, masks)


def test_detach_removes_the_hooks():
    net, masks = pruned_net()
    optimizer = OPTIMIZERS["sgd_nesterov_wd"](net)
    keeper = MaskKeeper(net, masks).attach(optimizer)
    train(net, optimizer, steps=2)
    assert_pruned_zero(net, masks)
    keeper.detach()
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    train(net, optimizer, steps=2)
    assert any((params(net)[name].detach()[~mask] != 0).any() for name, mask in masks.items())


def test_attach_zeroes_weights_and_zero_pruned_grads_cleans_before_clipping():
    net, masks = pruned_net()
    with torch.no_grad():  # e.g. weights loaded from a dense checkpoint
        for p in net.parameters():
            p.add_(1.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    keeper = MaskKeeper(net, masks).attach(optimizer)
    assert_pruned_zero(net, masks)
    nn.functional.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    keeper.zero_pruned_grads()
    for name, mask in masks.items():
        assert (params(net)[name].grad[~mask] == 0).all()


def test_keeper_state_dict_is_a_copy_on_cpu():
    net, masks = pruned_net()
    keeper = MaskKeeper(net, masks)
    state = keeper.state_dict()
    state["fc1.weight"].fill_(True)
    assert torch.equal(keeper.masks["fc1.weight"], masks["fc1.weight"])
    assert all(mask.device.type == "cpu" and mask.dtype == torch.bool for mask in state.values())


# --- property test: random conv nets, random ratios ----------------------------------------------------------------


@st.composite
def conv_nets(draw: st.DrawFn) -> nn.Module:
    layers: list[nn.Module] = []
    channels = draw(st.integers(1, 6))
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(1, 8))
        groups = channels if draw(st.booleans()) and out % channels == 0 else 1  # sometimes depthwise
        layers.append(nn.Conv2d(channels, out, draw(st.integers(1, 5)), groups=groups))
        layers.append(nn.BatchNorm2d(out))
        channels = out
    layers += [nn.Flatten(), nn.Linear(channels, draw(st.integers(1, 12)))]
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return nn.Sequential(*layers)


ratios = st.floats(0, 0.99, allow_nan=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=conv_nets(), percent=ratios, scope=st.sampled_from(SCOPES))
def test_property_achieved_sparsity_matches_request(net, percent, scope):
    result = prune_weights(net, percent=percent, scope=scope)
    report = sparsity_report(net, result.masks)
    weights = prunable_weights(net)
    groups = ({name: [name] for name in weights} if scope == "layer" else
              {"global": list(weights)} if scope == "global" else
              {kind: [n for n, (k, _) in weights.items() if k == kind] for kind in ("conv", "fc")})
    for names in groups.values():
        numel = sum(report["layers"][n]["numel"] for n in names)
        zeros = sum(report["layers"][n]["zeros"] for n in names)
        assert abs(zeros - percent * numel) <= 1
        assert zeros == round(percent * numel)
    for layer in report["layers"].values():
        assert layer["zeros"] == layer["masked"]


@settings(max_examples=60, deadline=None)
@given(net=conv_nets(), a=ratios, b=ratios, scope=st.sampled_from(SCOPES))
def test_property_thresholds_monotonic_in_ratio(net, a, b, scope):
    low, high = sorted((a, b))
    t_low = compute_masks(net, low, scope).thresholds
    t_high = compute_masks(net, high, scope).thresholds
    assert set(t_low) == set(t_high)
    for key in t_low:
        assert t_low[key] <= t_high[key]


@settings(max_examples=60, deadline=None)
@given(net=conv_nets(), percent=ratios, scope=st.sampled_from(SCOPES))
def test_property_pruning_twice_is_idempotent(net, percent, scope):
    first = prune_weights(net, percent=percent, scope=scope)
    weights = {name: p.detach().clone() for name, p in net.named_parameters()}
    second = prune_weights(net, percent=percent, scope=scope)
    assert first.masks.keys() == second.masks.keys()
    for name, mask in first.masks.items():
        assert torch.equal(mask, second.masks[name]), name
    for name, p in net.named_parameters():
        assert torch.equal(p, weights[name]), name


# --- tables --------------------------------------------------------------------------------------------------------


def test_sweep_table_matches_the_published_format():
    rows = [
        {"prune_percent": 0.3, "top1": 91.24, "thresholds": {"conv": 0.02981, "fc": 0.2789}},
        {"prune_percent": 0.4, "top1": 90.2449, "thresholds": {"conv": 0.04114, "fc": 0.35123}},
    ]
    assert format_sweep_table(92.1, rows) == (
        "| ratio | Baseline | 0.3 | 0.4 |\n"
        "|---|---|---|---|\n"
        "| top1 (without fine-tune) | 92.10 | 91.24 | 90.24 |\n"
        "| conv threshold | 0 | 2.98e-02 | 4.11e-02 |\n"
        "| fc threshold | 0 | 2.79e-01 | 3.51e-01 |"
    )


def test_sweep_table_fine_tuned_row_and_layer_scope():
    net = make_net()
    layer = compute_masks(net, 0.5, "layer")
    rows = [
        {"prune_percent": 0.5, "top1": 80.0, "thresholds": layer.thresholds, "top1_finetuned": 91.456},
        {"prune_percent": 0.7, "top1": 70.0, "thresholds": {"conv": 0.1}, "scope": "layer_type"},
    ]
    assert format_sweep_table(92.0, rows) == (
        "| ratio | Baseline | 0.5 | 0.7 |\n"
        "|---|---|---|---|\n"
        "| top1 (without fine-tune) | 92.00 | 80.00 | 70.00 |\n"
        "| conv threshold | 0 | per layer | 1.00e-01 |\n"
        "| fc threshold | 0 | per layer | - |\n"
        "| top1 (fine-tuned) | 92.00 | 91.46 | - |"
    )


def test_sparsity_report_counts_actual_zeros_and_layer_table():
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(2, 5))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8]).view(2, 1, 2, 2))
        net[2].weight.copy_(torch.arange(1.0, 11).view(5, 2))
        net[0].bias.zero_()  # biases are not counted
    result = prune_weights(net, percent=0.3, scope="layer_type")  # k = round(2.4) = 2 conv, round(3.0) = 3 fc
    with torch.no_grad():
        net[2].weight[4, 1] = 0.0  # a zero the mask did not make: counted, as it is in the weights
    report = sparsity_report(net, result.masks)
    assert report["conv"] == 2 / 8 and report["fc"] == 4 / 10 and report["total"] == 6 / 18
    assert report["layers"]["2.weight"] == {"kind": "fc", "numel": 10, "zeros": 4, "sparsity": 0.4, "masked": 3}
    assert format_layer_table(report) == (
        "| layer | kind | weights | zeros | sparsity |\n"
        "|---|---|---|---|---|\n"
        "| 0.weight | conv | 8 | 2 | 25.00% |\n"
        "| 2.weight | fc | 10 | 4 | 40.00% |\n"
        "| all conv | conv | 8 | 2 | 25.00% |\n"
        "| all fc | fc | 10 | 4 | 40.00% |\n"
        "| total |  | 18 | 6 | 33.33% |"
    )


# --- scale sanity (timing is printed, not asserted) ----------------------------------------------------------------


def resnet34_sized_convs() -> nn.Module:
    """The conv and fc weight shapes of torchvision's ResNet-34 (21.8M weights), without its forward."""
    shapes = [(64, 3, 7, 7)] + [(64, 64, 3, 3)] * 6
    for cin, cout, blocks in ((64, 128, 4), (128, 256, 6), (256, 512, 3)):
        shapes += [(cout, cin, 3, 3), (cout, cout, 3, 3), (cout, cin, 1, 1)] + [(cout, cout, 3, 3)] * (2 * blocks - 2)
    layers: list[nn.Module] = [nn.Conv2d(i, o, k, bias=False, device="meta") for o, i, k, _ in shapes]
    layers.append(nn.Linear(512, 1000, device="meta"))
    model = nn.Sequential(*layers).to_empty(device="cpu")  # skip kaiming init: randn below is all we need
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return model


@pytest.mark.slow
def test_compute_masks_at_resnet34_scale():
    model = resnet34_sized_convs()
    weights = prunable_weights(model)
    n_conv = sum(p.numel() for kind, p in weights.values() if kind == "conv")
    n_fc = sum(p.numel() for kind, p in weights.values() if kind == "fc")
    assert n_conv + n_fc == 21_779_648
    for scope in SCOPES:
        start = time.perf_counter()
        result = compute_masks(model, 0.5, scope)
        print(f"compute_masks(ResNet-34 sized, 21.8M weights, scope={scope}): {time.perf_counter() - start:.2f} s")
        pruned = sum(int((~m).sum()) for m in result.masks.values())
        if scope == "global":
            assert pruned == round(0.5 * (n_conv + n_fc))
        elif scope == "layer_type":
            assert pruned == round(0.5 * n_conv) + round(0.5 * n_fc)


def test_attention_input_projections_are_weights_to_prune() -> None:
    """nn.MultiheadAttention keeps its q/k/v projection as a parameter, not a Linear: it is an fc weight too."""
    model = torchvision.models.vit_b_16(image_size=32, num_classes=10)
    weights = prunable_weights(model)
    name = "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"
    assert weights[name][0] == "fc" and name.replace("in_proj_weight", "out_proj.weight") in weights
    result = prune_weights(model, percent=0.5)
    kept = result.masks[name].float().mean().item()  # one threshold for all fc weights: about half go here too
    assert 0.3 < kept < 0.7 and torch.equal(model.get_parameter(name) == 0, ~result.masks[name])
