"""The batched sensitivity evaluation equals pruning each copy physically and evaluating it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models.sources import build_arch
from pruning import prune_filters
from pruning.sensitivity import layer_sensitivity
from utils.train.engine import evaluate

CASES = [
    ("resnet20", {"shortcut": "A"}, 32, ["conv2", "conv12", "conv18"]),
    ("resnet20", {"shortcut": "B"}, 32, ["conv14"]),
    ("vgg16_bn_cifar", {}, 32, ["conv1", "conv13"]),
    ("tv_mobilenet_v2", {"num_classes": 10}, 64, ["block2", "block17"]),
    # A squeeze-and-excitation block's hidden width (its gate's filters go too) and a hidden Linear layer.
    ("torchvision:mobilenet_v3_small", {"num_classes": 10}, 32, ["features.4.block.0.0", "classifier.0"]),
]


def _randomised(name: str, options: dict, size: int) -> nn.Module:
    """A model with non-trivial BatchNorm statistics, so that a wrongly placed mask shows in the outputs."""
    torch.manual_seed(0)
    model = build_arch(name, options).model
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _loader(size: int, classes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, size, size, generator=generator), torch.randint(0, classes, (n,), generator=generator))
            for n in (6, 5)]  # a ragged last batch, as real loaders have


@pytest.mark.parametrize(("name", "options", "size", "layers"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_batched_ratios_equal_physically_pruned_copies(name, options, size, layers):
    model = _randomised(name, options, size)
    loader = _loader(size, 10)
    ratios = [0.25, 0.5, 0.9]
    device = torch.device("cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for layer in layers:
        points = layer_sensitivity(model, layer, ratios, loader, device, example_input=torch.zeros(1, 3, size, size))
        assert [p["ratio"] for p in points] == ratios
        for point in points:
            pruned = copy.deepcopy(model)
            result = prune_filters(pruned, layers=[layer], ratios=[point["ratio"]],
                                   example_input=torch.zeros(1, 3, size, size))
            expected = evaluate(pruned, loader, nn.CrossEntropyLoss(), device)
            assert point["kept"] == next(iter(result.widths.values()))[1]
            assert point["top1"] == pytest.approx(expected["top1"], abs=1e-9)
            assert point["top5"] == pytest.approx(expected["top5"], abs=1e-9)
            assert point["loss"] == pytest.approx(expected["loss"], abs=1e-4)
    # The analysis never modifies the model it measures.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
