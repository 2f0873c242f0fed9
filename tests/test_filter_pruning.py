"""L1-norm filter pruning with physical removal (Li et al. 2017): properties, not just "it runs".

* Every registered model: before any retraining, the physically pruned model computes exactly what the
  *original* model computes with the removed channels forced to zero (forward hooks on the original),
  it trains, and it survives a checkpoint round trip through the file alone.
* The removed filters are the smallest by an independent NumPy L1 computation; ``greedy`` differs from
  ``independent`` on a constructed case and matches a hand computation.
* The sizes of Li et al.'s pruned networks (Table 1) come out: VGG-16 parameters and FLOPs, ResNet-56
  pruned-A/B and ResNet-34 pruned-A/B/C FLOP reductions.
* Every user mistake is one clear UserError.

torchvision models run at 64x64 to stay fast; the same size is used for tracing (``example_input``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import get_model, list_models
from pruning import (
    ChannelGraph,
    FilterPruneResult,
    analyse,
    apply_shapes,
    default_example_input,
    filters_to_remove,
    l1_filter_norms,
    layer_names,
    prunable_layers,
    prune_filters,
    pruned_shapes,
)
from utils.checkpoint.format import make_checkpoint, model_size_kb
from utils.checkpoint.load import build_model_from_arch, load_toolkit_checkpoint
from utils.core.errors import UserError
from utils.core.files import atomic_torch_save


def _size(name: str) -> int:
    return 64 if name.startswith("tv_") else 32


def _example(name: str) -> torch.Tensor:
    return torch.zeros(1, 3, _size(name), _size(name))


def _options(name: str) -> dict[str, object]:
    return {"num_classes": 10} if name.startswith("tv_") else {}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(model: nn.Module, size: int) -> int:
    """Multiply-accumulates of one image, as Li et al. count FLOPs (conv and linear layers)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() // 2


def _randomise_norms(model: nn.Module, seed: int = 0, size: int | None = None) -> None:
    """BatchNorm scales and shifts away from the defaults (so a BN shift leaking through a removed channel
    shows in the comparison), then running statistics measured on random images (``size``), so activations
    keep their scale through 110 layers instead of growing to 1e9 where no absolute tolerance means much."""
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    with torch.no_grad():
        for module in norms:
            n = module.num_features
            module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
        if size is not None:
            for module in norms:
                module.reset_running_stats()
                module.momentum = None  # a plain average over the calibration batches
            model.train()
            model(torch.randn(8, 3, size, size, generator=gen))
            for module in norms:
                module.momentum = 0.1
    model.eval()


def _build(name: str, **options: object) -> nn.Module:
    torch.manual_seed(0)
    model = get_model(name, **{**_options(name), **options})
    _randomise_norms(model, size=_size(name))
    return model


@contextmanager
def masked_equivalent(model: nn.Module, graph: ChannelGraph, result: FilterPruneResult) -> Iterator[None]:
    """The original ``model`` with the removed channels forced to zero, for as long as the context lasts.

    Where the zero goes matters: zeroing a conv's output is not enough, because its BatchNorm adds
    ``beta - gamma * mean / std`` back (and in MobileNetV2 the depthwise conv's BatchNorm does it again).
    So every module of the group that *writes* the channel (the producer convs, the BatchNorms, the
    depthwise convs) has the channel zeroed at its output; after the last of them only ReLU, pooling,
    residual sums of equally zeroed operands and the consumers follow, which is exactly "the channel
    is gone".
    """
    handles = []
    for layer, removed in result.removed.items():
        if not removed:
            continue
        group = graph.group_of(result.modules[layer])
        index = torch.tensor(removed)

        def zero(_module: nn.Module, _inputs: object, output: torch.Tensor,
                 index: torch.Tensor = index) -> torch.Tensor:
            output = output.clone()
            output[:, index] = 0.0
            return output

        for name in group.producers + group.norms + group.depthwise:
            handles.append(model.get_submodule(name).register_forward_hook(zero))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _spread(layers: list[str]) -> list[str]:
    """First, middle and last of ``layers``: the first/last conv of VGG (so the linear layer shrinks),
    block-first convs across all ResNet stages, MobileNetV2 blocks from the stem to the last one."""
    return list(dict.fromkeys([layers[0], layers[len(layers) // 2], layers[-1]]))


# Extra cases beyond "every registered model": residual groups pruned as a whole (shortcut B, and
# torchvision's stage 1 whose group includes the stem conv and its max-pool, and stage 4 feeding fc).
CASES = [(name, {}, None) for name in list_models()] + [
    ("resnet20", {"shortcut": "B"}, ["layer2.residual", "conv2", "conv18"]),
    ("tv_resnet18", {}, ["layer1.residual", "layer4.residual", "conv10"]),
]


CASE_IDS = ["-".join([name, *(f"{key}{value}" for key, value in options.items()), *(layers or [])])
            for name, options, layers in CASES]


@pytest.mark.parametrize(("name", "options", "layers"), CASES, ids=CASE_IDS)
def test_pruned_equals_masked_original_trains_and_reloads(name: str, options: dict, layers: list[str] | None,
                                                          tmp_path: Path) -> None:
    original = _build(name, **options)
    example = _example(name)
    graph = analyse(original, example)
    names = layer_names(original, graph)
    if layers is None:
        free = [n for n in names.layers if graph.group_of(names.module(n)).prunable_alone]
        layers = _spread(free)
    pruned = copy.deepcopy(original)
    result = prune_filters(pruned, layers=layers, ratios=[0.5], example_input=example)

    assert result.masks == {}
    assert set(result.removed) >= set(layers) - set(names.selectors)
    for layer, (before, after) in result.widths.items():
        assert after == before - filters_to_remove(before, 0.5) and len(result.removed[layer]) == before - after
        assert pruned.get_submodule(result.modules[layer]).out_channels == after
    assert _num_params(pruned) < _num_params(original)

    x = torch.randn(4, 3, _size(name), _size(name), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_pruned = pruned(x)
        out_original = original(x)
        with masked_equivalent(original, graph, result):
            out_reference = original(x)
    assert (out_original - out_reference).abs().max() > 1e-3  # the masking changed something
    assert (out_pruned - out_reference).abs().max().item() < 1e-4

    # It trains: every parameter gets a finite gradient and SGD moves it.
    pruned.train()
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.01, momentum=0.9)
    loss = F.cross_entropy(pruned(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for pname, param in pruned.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in pruned.state_dict().items())
    pruned.eval()

    # Checkpoint: data only (arch with shapes), rebuilt from the file alone, same outputs.
    arch = {"name": name, "options": {**_options(name), **options}, "shapes": result.shapes}
    path = tmp_path / "pruned.pth"
    atomic_torch_save(make_checkpoint(model=pruned, arch=arch, config={}), path)
    loaded = load_toolkit_checkpoint(path, expect_arch=name)
    loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), pruned(x))


# --------------------------------------------------------------------------- which channels move together


def test_groups_of_hand_checked_layers() -> None:
    """A few groups spelt out by hand from the architectures' source."""
    vgg = analyse(get_model("vgg16_bn_cifar"), _example("vgg16_bn_cifar"))
    first, last = vgg.group_of("features.conv1"), vgg.group_of("features.conv13")
    assert (first.producers, first.norms, [c.module for c in first.consumers]) == \
        (("features.conv1",), ("features.bn1",), ["features.conv2"])
    assert [(c.module, c.kind, c.spatial) for c in last.consumers] == [("classifier.fc1", "linear", 1)]
    assert first.prunable_alone and last.prunable_alone

    resnet_b = analyse(get_model("resnet20", shortcut="B"), _example("resnet20"))
    block = resnet_b.group_of("layer2.1.conv1")
    assert (block.producers, block.norms, [c.module for c in block.consumers]) == \
        (("layer2.1.conv1",), ("layer2.1.bn1",), ["layer2.1.conv2"])
    stage2 = resnet_b.group_of("layer2.0.conv2")
    assert set(stage2.producers) == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2", "layer2.2.conv2"}
    assert set(stage2.norms) == {"layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2", "layer2.2.bn2"}
    assert {c.module for c in stage2.consumers} == {"layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1",
                                                      "layer3.0.downsample.0"}
    assert stage2.summed and stage2.prunable and not stage2.prunable_alone

    resnet_a = analyse(get_model("resnet20"), _example("resnet20"))
    assert "layer2.0.shortcut" in (resnet_a.group_of("layer1.0.conv2").blocked or "")
    assert not resnet_a.group_of("layer3.2.conv2").prunable  # stage 3 receives the padded stage-2 output

    mobile = analyse(get_model("tv_mobilenet_v2"), _example("tv_mobilenet_v2"))
    hidden = mobile.group_of("features.3.conv.0.0")
    assert hidden.depthwise == ("features.3.conv.1.0",)
    assert hidden.norms == ("features.3.conv.0.1", "features.3.conv.1.1")
    assert [c.module for c in hidden.consumers] == ["features.3.conv.2"] and hidden.prunable_alone
    stem = mobile.group_of("features.0.0")  # block 1 has no expansion conv: its hidden channels are the stem's
    assert stem.depthwise == ("features.1.conv.0.0",) and stem.prunable_alone


def test_linear_after_flatten_gets_the_spatial_factor() -> None:
    """A linear layer after flatten of a C x H x W map owns H*W features per channel."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.fc = nn.Linear(6 * 4 * 4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
            return self.fc(x.view(x.size(0), -1))

    torch.manual_seed(0)
    net = Net()
    _randomise_norms(net)
    example = torch.zeros(1, 3, 8, 8)
    graph = analyse(net, example)
    assert [(c.module, c.spatial) for c in graph.group_of("conv").consumers] == [("fc", 16)]
    pruned = copy.deepcopy(net)
    result = prune_filters(pruned, layers=["conv1"], channels=[2], example_input=example)
    assert pruned.fc.in_features == 4 * 16
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), masked_equivalent(net, graph, result):
        assert torch.allclose(pruned(x), net(x), atol=1e-5)


def test_untraceable_model_is_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else self.conv(-x)

    with pytest.raises(UserError, match=r"torch\.fx.*Branchy does not trace"):
        prune_filters(Branchy(), layers=["conv1"], channels=[1], example_input=torch.zeros(1, 3, 8, 8))


class Concatenated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


class Chunked(nn.Module):
    """A module called twice (shared weights): what it reads and writes is blocked, whatever op comes before."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.a(x).chunk(2, dim=1)
        return self.b(2 * first) + self.b(second / 2)


def test_shared_modules_block_the_groups_they_touch() -> None:
    with pytest.raises(UserError, match=r"conv1 \(a\) cannot be pruned: .*module b is called more than once"):
        prune_filters(Chunked(), layers=["conv1"], channels=[1], example_input=torch.zeros(1, 3, 4, 4))


def test_cat_offsets_follow_each_producer() -> None:
    torch.manual_seed(0)
    net, x = Concatenated().eval(), torch.randn(2, 3, 4, 4)
    graph = analyse(net, x)
    second = graph.group_of("b")
    assert [(c.module, c.kind) for c in second.consumers] == [("head", "conv")]
    assert second.member("head", "conv_in").index == tuple((4 + c,) for c in range(4))  # offset 4 in the cat
    original = copy.deepcopy(net)
    result = prune_filters(net, layers=["b"], channels=[2], example_input=x)
    assert net.head.in_channels == 6 and net.b.out_channels == 2
    with masked_equivalent(original, graph, result):
        torch.testing.assert_close(net(x), original(x), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- user-facing names


def test_layer_names_per_model() -> None:
    vgg = prunable_layers(get_model("vgg16_bn_cifar"))
    assert vgg == {f"conv{i}": f"features.conv{i}" for i in range(1, 14)}
    assert layer_names(get_model("vgg16_bn_cifar")).resolve("features.conv5") == ["conv5"]

    r56 = prunable_layers(get_model("resnet56"))
    assert len(r56) == 55 and r56["conv1"] == "conv1"
    # Li et al.'s sensitive ResNet-56 layers are the first convs of blocks 8, 9, 10, 17, 19, 27.
    assert [r56[f"conv{i}"] for i in (16, 18, 20, 34, 38, 54)] == [
        "layer1.7.conv1", "layer1.8.conv1", "layer2.0.conv1", "layer2.7.conv1", "layer3.0.conv1", "layer3.8.conv1"]
    assert r56["conv55"] == "layer3.8.conv2"
    names = layer_names(get_model("resnet56"))
    assert names.selectors["layer2"] == tuple(f"conv{i}" for i in range(20, 37, 2))
    assert list(prunable_layers(get_model("resnet56"), alone=True)) == [f"conv{i}" for i in range(2, 55, 2)]

    r34 = layer_names(get_model("tv_resnet34"), example_input=_example("tv_resnet34"))
    assert len(r34.layers) == 33  # downsample 1x1 convs are not numbered
    assert [r34.layers[f"conv{i}"] for i in (2, 8, 16, 28, 33)] == [
        "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1", "layer4.2.conv2"]
    assert r34.selectors["layer3.residual"] == (
        "conv17", "layer3.0.downsample.0", "conv19", "conv21", "conv23", "conv25", "conv27")
    assert r34.resolve("layer1.0.conv1") == ["conv2"] and r34.resolve("layer3.0.downsample.0") == [
        "layer3.0.downsample.0"]

    mobile = layer_names(get_model("tv_mobilenet_v2"), example_input=_example("tv_mobilenet_v2"))
    assert list(mobile.layers) == [f"block{i}" for i in range(1, 18)]
    assert mobile.layers["block1"] == "features.0.0" and mobile.layers["block5"] == "features.5.conv.0.0"
    assert mobile.resolve("features.5") == ["block5"] and mobile.resolve("features.18.0") == ["features.18.0"]


def test_default_example_input_sizes() -> None:
    assert default_example_input(get_model("vgg16_bn_cifar")).shape == (1, 3, 32, 32)
    assert default_example_input(get_model("resnet20")).shape == (1, 3, 32, 32)
    assert default_example_input(get_model("tv_resnet18")).shape == (1, 3, 224, 224)


def test_stage_selector_and_skip() -> None:
    model = get_model("resnet56")
    result = prune_filters(model, layers=["layer1", "layer3"], ratios=[0.5, 0.25], skip=["conv16", "conv38"])
    assert set(result.widths) == {f"conv{i}" for i in range(2, 19, 2)} - {"conv16"} | \
        {f"conv{i}" for i in range(38, 55, 2)} - {"conv38"}
    assert result.widths["conv2"] == (16, 8) and result.widths["conv40"] == (64, 48)
    assert model.layer1.get_submodule("7").conv1.out_channels == 16  # conv16 skipped


# --------------------------------------------------------------------------- how filters are scored


def test_removed_filters_have_the_smallest_l1_norms() -> None:
    model = _build("vgg16_bn_cifar")
    ratios = {3: 0.3, 5: 0.5, 12: 0.75}
    weights = {i: model.get_submodule(f"features.conv{i}").weight.detach().numpy().copy() for i in ratios}
    result = prune_filters(model, layers=[f"conv{i}" for i in ratios], ratios=list(ratios.values()))
    for i, weight in weights.items():
        norms = np.abs(weight.astype(np.float64)).sum(axis=(1, 2, 3))
        n = weight.shape[0]
        k = n - int(n * (1 - ratios[i]))  # the reference code's num_keep = int(n * (1 - r))
        assert result.removed[f"conv{i}"] == sorted(np.argsort(norms, kind="stable")[:k].tolist())


def test_residual_group_is_ranked_by_the_sum_over_its_producers() -> None:
    model = _build("resnet20", shortcut="B")
    producers = ["layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2", "layer3.2.conv2"]
    total = sum(np.abs(model.get_submodule(p).weight.detach().numpy().astype(np.float64)).sum(axis=(1, 2, 3))
                for p in producers)
    result = prune_filters(model, layers=["layer3.residual"], channels=[20])
    expected = sorted(np.argsort(total, kind="stable")[:20].tolist())
    assert all(result.removed[layer] == expected for layer in ("conv15", "layer3.0.downsample.0", "conv17", "conv19"))
    assert model.fc.in_features == 44 and model.layer3[2].bn2.num_features == 44


class TwoConvs(nn.Module):
    """conv1 (3->4) and conv2 (4->3) with 1x1 kernels, so L1 norms are easy to do by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1, bias=False)
        self.conv2 = nn.Conv2d(4, 3, 1, bias=False)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            # conv1 filter L1 norms 1, 10, 2, 10: channels 0 and 2 go when two are removed.
            self.conv1.weight.copy_(torch.tensor([[1.0, 0, 0], [5, 5, 0], [0, 2, 0], [0, 0, 10]])[:, :, None, None])
            self.conv2.weight.copy_(torch.tensor([[5.0, 1, 5, 1], [0, 3, 0, 3], [1, 2.5, 1, 2.5]])[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_greedy_leaves_out_kernels_of_removed_channels() -> None:
    """conv2's filters: all inputs 12, 6, 7; without the inputs 0 and 2 removed from conv1: 2, 6, 5.
    Independent removes filter 1 (6 is the smallest of 12, 6, 7), greedy filter 0 (2 of 2, 6, 5)."""
    example = torch.zeros(1, 3, 4, 4)
    independent, greedy = TwoConvs(), TwoConvs()
    assert l1_filter_norms(independent.conv2.weight).tolist() == [12, 6, 7]
    assert l1_filter_norms(independent.conv2.weight, ignore_in_channels=[0, 2]).tolist() == [2, 6, 5]
    a = prune_filters(independent, layers=["conv1", "conv2"], channels=[2, 1], example_input=example)
    b = prune_filters(greedy, layers=["conv1", "conv2"], channels=[2, 1], strategy="greedy", example_input=example)
    assert a.removed == {"conv1": [0, 2], "conv2": [1]}
    assert b.removed == {"conv1": [0, 2], "conv2": [0]}
    # The survivors are the right slices: conv2 keeps rows 0, 2 (independent) of columns 1, 3.
    assert independent.conv2.weight[:, :, 0, 0].tolist() == [[1, 1], [2.5, 2.5]]
    assert greedy.conv2.weight[:, :, 0, 0].tolist() == [[3, 3], [2.5, 2.5]]
    assert independent.fc.in_features == 2


def test_surgery_keeps_dtype_mode_and_requires_grad() -> None:
    model = TwoConvs().double().train()
    model.conv1.weight.requires_grad_(False)
    prune_filters(model, layers=["conv1"], channels=[1], example_input=torch.zeros(1, 3, 4, 4, dtype=torch.float64))
    assert model.conv1.weight.dtype == torch.float64 and model.conv2.weight.dtype == torch.float64
    assert model.conv1.training and not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad
    assert (model.conv1.out_channels, model.conv2.in_channels) == (3, 3)


# --------------------------------------------------------------------------- shapes in checkpoints


def test_shapes_are_plain_data_and_rebuild_the_pruned_model() -> None:
    model = get_model("tv_mobilenet_v2", num_classes=10)
    result = prune_filters(model, layers=["block2", "block17", "features.18.0"], ratios=[0.5],
                           example_input=_example("tv_mobilenet_v2"))
    shapes = result.shapes
    assert shapes == pruned_shapes(model)
    assert shapes["features.17.conv.1.0"] == {"type": "Conv2d", "in_channels": 480, "out_channels": 480,
                                              "groups": 480}
    assert shapes["classifier.1"] == {"type": "Linear", "in_features": 640, "out_features": 10}
    assert all(isinstance(v, (str, int)) for spec in shapes.values() for v in spec.values())
    rebuilt = build_model_from_arch({"name": "tv_mobilenet_v2", "options": {"num_classes": 10}, "shapes": shapes})
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_bad_shapes_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"arch\.shapes: layer9\.conv: the model has no such module"):
        apply_shapes(get_model("resnet20"), {"layer9.conv": {"type": "Conv2d", "in_channels": 1, "out_channels": 1,
                                                             "groups": 1}})
    with pytest.raises(UserError, match="a BatchNorm2d but the model a Conv2d"):
        apply_shapes(get_model("resnet20"), {"conv1": {"type": "BatchNorm2d", "num_features": 3}})
    with pytest.raises(UserError, match="out_channels must be a positive integer"):
        apply_shapes(get_model("resnet20"), {"conv1": {"type": "Conv2d", "in_channels": 3, "out_channels": 0,
                                                       "groups": 1}})


# --------------------------------------------------------------------------- Li et al.'s networks (Table 1)

VGG_A = {"layers": ["conv1", "conv8", "conv9", "conv10", "conv11", "conv12", "conv13"], "channels": [32] + [256] * 6}


def test_vgg16_pruned_a_matches_li_et_al() -> None:
    model = get_model("vgg16_bn_cifar")
    assert (_num_params(model), _macs(model, 32)) == (14_987_722, 313_463_808)
    prune_filters(model, **VGG_A)
    params, macs = _num_params(model), _macs(model, 32)
    assert (params, macs) == (5_397_034, 206_279_680)
    assert params == pytest.approx(5.4e6, rel=0.01) and macs == pytest.approx(2.06e8, rel=0.01)  # Table 1


def test_vgg16_imagenet_style_head_state_dict_size() -> None:
    model = get_model("vgg16_bn_cifar", classifier=[4096, 4096])
    assert model_size_kb(model) == pytest.approx(131_606, abs=1)
    prune_filters(model, **VGG_A)
    assert model_size_kb(model) == pytest.approx(90_546, abs=1)


RESNET56 = {
    # Li et al. §4.2: block-first convs only, skipping the sensitive layers; ratios per stage.
    "A": ({"layers": ["layer1", "layer2", "layer3"], "ratios": [0.1], "skip": ["conv16", "conv20", "conv38", "conv54"]},
          10.4, 773_336),
    "B": ({"layers": ["layer1", "layer2", "layer3"], "ratios": [0.6, 0.3, 0.1],
           "skip": ["conv16", "conv18", "conv20", "conv34", "conv38", "conv54"]}, 27.6, 735_712),
}


@pytest.mark.parametrize("variant", sorted(RESNET56))
def test_resnet56_pruned_flops_reduction(variant: str) -> None:
    spec, paper_percent, params = RESNET56[variant]
    model = get_model("resnet56")
    before = _macs(model, 32)
    prune_filters(model, **spec)
    reduction = 100 * (1 - _macs(model, 32) / before)
    assert reduction == pytest.approx(paper_percent, abs=0.1)
    assert _num_params(model) == params


SKIP_34 = ["conv2", "conv8", "conv14", "conv16", "conv26", "conv28", "conv30", "conv32"]
RESNET34 = {
    # Li et al. §4.3: skip the sensitive block-first convs; A: 30% in stages 1-3; B: 50/60/40%;
    # C: the identity shortcuts and second convs of stage 3 (its residual group) by 20%.
    "A": ({"layers": ["layer1", "layer2", "layer3"], "ratios": [0.3], "skip": SKIP_34}, 15.5),
    "B": ({"layers": ["layer1", "layer2", "layer3"], "ratios": [0.5, 0.6, 0.4], "skip": SKIP_34}, 24.2),
    "C": ({"layers": ["layer3.residual"], "ratios": [0.2]}, 7.5),
}


@pytest.mark.parametrize("variant", sorted(RESNET34))
def test_resnet34_pruned_flops_reduction(variant: str) -> None:
    spec, paper_percent = RESNET34[variant]
    model = get_model("tv_resnet34")
    before = _macs(model, 224)
    prune_filters(model, **spec, example_input=torch.zeros(1, 3, 224, 224))
    reduction = 100 * (1 - _macs(model, 224) / before)
    assert reduction == pytest.approx(paper_percent, abs=0.2)


# --------------------------------------------------------------------------- user mistakes


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("resnet20", {"layers": ["conv99"], "ratios": [0.5]},
         r"prune\.layers: unknown layer 'conv99'; valid names: conv1, conv2, .*\(19 names\); layer1, layer2"),
        ("resnet20", {"layers": ["layer1"], "ratios": [0.5], "skip": ["nope"]}, r"prune\.skip: unknown layer 'nope'"),
        ("vgg16_bn_cifar", {"layers": ["conv1"], "channels": [64]},
         r"^conv1 has 64 filters; prune\.channels asks to remove 64, at most 63 can go$"),
        ("vgg16_bn_cifar", {"layers": ["conv2"], "channels": [100]}, r"conv2 has 64 filters.*at most 63 can go"),
        ("vgg16_bn_cifar", {"layers": ["conv1"], "ratios": [0.99]},
         r"conv1 has 64 filters; prune\.ratios asks to remove 64 \(ratio 0\.99 of 64\), at most 63 can go"),
        ("vgg16_bn_cifar", {"layers": ["conv1"], "channels": [1], "ratios": [0.5]},
         "exactly one of them .both are set"),
        ("vgg16_bn_cifar", {"layers": ["conv1"]}, "exactly one of them .neither is set"),
        ("vgg16_bn_cifar", {"layers": ["conv1", "conv2", "conv3"], "channels": [1, 2]},
         r"prune\.channels: give one value for all of prune\.layers or one per entry \(3\), got 2"),
        ("vgg16_bn_cifar", {"layers": ["conv1"], "ratios": [1.0]}, r"prune\.ratios: fractions must be in \[0, 1\)"),
        ("vgg16_bn_cifar", {"layers": ["conv1"], "channels": [-1]}, r"prune\.channels: filter counts must be"),
        ("vgg16_bn_cifar", {"layers": ["conv1"], "ratios": [0.5], "strategy": "smart"}, r"prune\.strategy: expected"),
        ("resnet56", {"layers": ["layer1", "conv2"], "ratios": [0.5]}, "conv2 is listed twice"),
        ("resnet20", {"layers": ["conv3"], "ratios": [0.5]},
         (r"conv3 \(layer1\.0\.conv2\) feeds a residual sum together with conv1, conv5, conv7 and cannot be "
          r"pruned: the zero-padding shortcut layer2\.0\.shortcut")),
        ("tv_resnet34", {"layers": ["conv3"], "ratios": [0.5]},
         (r"conv3 \(layer1\.0\.conv2\) feeds a residual sum together with conv1, conv5, conv7: their filters can "
          r"only be removed together.*'layer1\.residual'")),
        ("resnet20-B", {"layers": ["conv9", "conv11", "conv13", "layer2.0.downsample.0"],
                        "ratios": [0.5, 0.5, 0.5, 0.4]},
         r"the coupled layers conv9, layer2\.0\.downsample\.0, conv11, conv13 must remove the same amount"),
    ],
)
def test_user_mistakes_are_one_line_errors(name: str, kwargs: dict, message: str) -> None:
    arch, _, shortcut = name.partition("-")
    model = get_model(arch, **({"shortcut": shortcut} if shortcut else {}))
    before = {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=message) as info:
        prune_filters(model, **kwargs, example_input=_example(arch))
    assert "\n" not in str(info.value)
    assert {k: v.shape for k, v in model.state_dict().items()} == before  # nothing was touched


def test_empty_layers_means_every_layer_free_alone() -> None:
    model = get_model("resnet20")
    result = prune_filters(model, ratios=[0.25])
    assert list(result.widths) == [f"conv{i}" for i in range(2, 19, 2)]
    with pytest.raises(UserError, match="prune.layers is empty"):
        prune_filters(get_model("resnet20"), ratios=[0.25, 0.5])
