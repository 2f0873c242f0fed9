"""VGG-16 with BatchNorm for CIFAR, the network of Li et al. 2017, "Pruning Filters for Efficient ConvNets".

Li et al. (§4.1, Table 2) take Zagoruyko's CIFAR VGG-16: 13 conv3x3 layers, five 2x2 max-pools
(32x32 input -> 1x1x512), BatchNorm after every conv and after the first linear layer, no Dropout,
and a small classifier ``Linear(512, 512) - BN - ReLU - Linear(512, 10)``. That gives their
Table 1 figures: 1.50e7 parameters and 3.13e8 FLOPs (multiply-adds).

Design decisions:

* Convs have no bias: the BatchNorm after each conv has its own shift, so a conv bias is a
  redundant parameter, and a filter-pruning step would only have one more tensor to slice.
  (With bias the count changes by 4,224 parameters, 0.03%.)
* ``classifier`` lists the hidden linear widths; every hidden layer is ``Linear - BN1d - ReLU``,
  as Li et al. do for their one hidden layer. ``classifier=(4096, 4096)`` gives the ImageNet-style
  head (33.7M parameters, a 131.5 MB float32 state dict) that older pruning repositories use.
* Every layer has its own name so that a pruning config can say ``conv7`` and code can find
  ``features.conv7``: ``features.{conv,bn,relu}1..13`` and ``features.pool1..5``, then
  ``classifier.{fc,bn,relu}1..k`` and the output layer ``classifier.fc{k+1}``.
* ReLUs are not in place, so forward hooks that record a BN or conv output (activation-based
  pruning criteria) see the value before the ReLU overwrote it.
* The builder makes the full-width network only. A physically filter-pruned VGG is rebuilt from the
  per-module sizes stored in its checkpoint (``arch["shapes"]``, applied by
  :func:`pruning.surgery.apply_shapes`), the one way any pruned architecture is rebuilt.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from models.api import register_model
from utils.core.errors import UserError

# Output channels of the 13 convs; "M" is a 2x2 max-pool. (Simonyan & Zisserman configuration D.)
# fmt: off
VGG16_PLAN: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
# fmt: on
NUM_CONVS = sum(1 for item in VGG16_PLAN if item != "M")


class VGGCifar(nn.Module):
    """VGG-16-BN for 32x32 inputs with per-layer names (``features.conv1`` ... ``features.conv13``)."""

    # What pruning needs to know (models/api.py): 32x32 images (five pools leave the 1x1 map the first
    # linear layer is sized for); the convs numbered conv1 ... conv13.
    input_size: ClassVar[tuple[int, int, int]] = (3, 32, 32)
    layer_naming: ClassVar[str] = "numbered"

    def __init__(self, *, num_classes: int, classifier: Sequence[int]) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels, conv_index, pool_index = 3, 0, 0
        for item in VGG16_PLAN:
            if item == "M":
                pool_index += 1
                layers[f"pool{pool_index}"] = nn.MaxPool2d(kernel_size=2, stride=2)
                continue
            out_channels = int(item)
            conv_index += 1
            layers[f"conv{conv_index}"] = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
            layers[f"bn{conv_index}"] = nn.BatchNorm2d(out_channels)
            layers[f"relu{conv_index}"] = nn.ReLU()
            in_channels = out_channels
        self.features = nn.Sequential(layers)

        head: OrderedDict[str, nn.Module] = OrderedDict()
        # Five pools take 32x32 to 1x1, so the first linear layer sees exactly the last conv's channels.
        in_features = in_channels
        for index, hidden in enumerate(classifier, start=1):
            head[f"fc{index}"] = nn.Linear(in_features, hidden)
            head[f"bn{index}"] = nn.BatchNorm1d(hidden)
            head[f"relu{index}"] = nn.ReLU()
            in_features = hidden
        head[f"fc{len(classifier) + 1}"] = nn.Linear(in_features, num_classes)
        self.classifier = nn.Sequential(head)
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming (fan_out) for convs and small normal linears: what the filter-pruning reference
        # implementations (Liu et al.'s rethinking-network-pruning VGG) train from.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

    def conv_layer_names(self) -> list[str]:
        """Qualified names of the 13 convs in input order (``features.conv1`` ... ``features.conv13``)."""
        return [f"features.conv{index}" for index in range(1, NUM_CONVS + 1)]


def _check_classifier(classifier: Sequence[int]) -> tuple[int, ...]:
    if isinstance(classifier, (str, bytes)) or not hasattr(classifier, "__iter__"):
        raise UserError(f"classifier: expected a list of hidden layer widths such as [512], got {classifier!r}")
    hidden = tuple(classifier)
    for value in hidden:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"classifier: every hidden width must be a positive integer, got {value!r}")
    return hidden


@register_model()
def vgg16_bn_cifar(*, num_classes: int = 10, classifier: Sequence[int] = (512,)) -> VGGCifar:
    """VGG-16-BN for CIFAR as in Li et al. 2017 (1.5e7 parameters, 3.13e8 FLOPs at the defaults).

    ``classifier``: hidden linear widths (``[]`` for a single linear layer, ``[4096, 4096]`` for the
    ImageNet-style head).
    """
    return VGGCifar(num_classes=num_classes, classifier=_check_classifier(classifier))
