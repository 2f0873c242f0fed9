"""CIFAR ResNets of He et al. 2016, §4.2: ResNet-20/32/44/56/110.

A 3x3 conv to 16 channels, three stages of ``n`` basic blocks with 16, 32 and 64 channels (the
first block of stages 2 and 3 halves the resolution), global average pooling and a linear ``fc``;
depth = 6n + 2.

Module names are exactly those of the chenyaofo/pytorch-cifar-models checkpoints
(``conv1, bn1, layer1..3.N.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}, fc``), so those load
without renaming. akamaster/pytorch_resnet_cifar10 calls the head ``linear``; that one rename is
declared in :attr:`CifarResNet.checkpoint_key_aliases` and applied by :mod:`utils.checkpoint.load`.

Shortcuts where the shape changes:

* ``"A"`` (the paper's CIFAR choice, akamaster's checkpoints): parameter-free; subsample with
  stride 2 and zero-pad the new channels, half on each side of the channel dimension exactly as
  akamaster does, so that his weights reproduce his accuracy.
* ``"B"`` (chenyaofo's checkpoints): a 1x1 conv with the block's stride plus BatchNorm, named
  ``downsample.0`` / ``downsample.1``; identity everywhere else.

The builders make the full-width network only. A filter-pruned one (narrower block convs) is rebuilt from
the per-module sizes stored in its checkpoint (``arch["shapes"]``, applied by
:func:`pruning.surgery.apply_shapes`), the one way any pruned architecture is rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.api import register_model
from utils.core.errors import UserError

STAGE_WIDTHS = (16, 32, 64)
SHORTCUTS = {"A": "parameter-free: subsample and zero-pad channels", "B": "1x1 conv + BatchNorm"}


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::stride, ::stride]`` with zero channels added on both sides.

    A named module rather than akamaster's ``LambdaLayer`` so that the model prints, pickles and
    can be recognised by pruning code that walks ``named_modules()``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        # akamaster pads planes // 4 on each side when planes == 2 * in_planes; this is the same split.
        self.pad_front = (planes - in_planes) // 2
        self.pad_back = planes - in_planes - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut."""

    def __init__(self, in_planes: int, planes: int, *, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_planes, planes, stride)
            else:
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        elif self.shortcut is not None:
            identity = self.shortcut(x)
        else:
            identity = x
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (He et al. 2016, §4.2)."""

    # Prefix renames applied to checkpoint keys before a strict load (akamaster's head is ``linear``).
    checkpoint_key_aliases: ClassVar[dict[str, str]] = {"linear.": "fc."}
    # What pruning needs to know (models/api.py): 32x32 images; Li et al.'s conv1, conv2, ... numbering.
    input_size: ClassVar[tuple[int, int, int]] = (3, 32, 32)
    layer_naming: ClassVar[str] = "numbered"

    def __init__(self, *, blocks_per_stage: int, num_classes: int, shortcut: str) -> None:
        super().__init__()
        self.shortcut_type = shortcut
        self.blocks_per_stage = blocks_per_stage
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        in_planes = STAGE_WIDTHS[0]
        for stage, planes in enumerate(STAGE_WIDTHS):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride=stride, shortcut=shortcut))
                in_planes = planes
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init as in the paper (and both reference implementations); BN starts as the identity.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)

    def blocks(self) -> list[tuple[str, BasicBlock]]:
        """``(qualified name, block)`` for every residual block in input order."""
        return [(name, module) for name, module in self.named_modules() if isinstance(module, BasicBlock)]

    def conv_layer_names(self) -> list[str]:
        """Qualified names of all convs in input order (shortcut convs after their block's ``conv2``)."""
        return [name for name, module in self.named_modules() if isinstance(module, nn.Conv2d)]

    def checkpoint_hint(self, missing: Sequence[str], unexpected: Sequence[str]) -> str | None:
        """Explain a key mismatch that has a known cause: the other shortcut option and/or another depth."""
        hints = []
        if self.shortcut_type == "A" and any(".downsample." in key for key in unexpected):
            hints.append(
                'the checkpoint has option-B shortcuts (1x1 conv + BN "downsample"): set model.shortcut to "B"'
            )
        if self.shortcut_type == "B" and any(".downsample." in key for key in missing):
            hints.append('the checkpoint has no shortcut convs (option A, parameter-free): set model.shortcut to "A"')
        absent = set(missing)
        checkpoint_blocks = _blocks_per_stage(
            [key for key in self.state_dict() if key not in absent] + list(unexpected)
        )
        if checkpoint_blocks and checkpoint_blocks != self.blocks_per_stage:
            theirs, ours = f"resnet{6 * checkpoint_blocks + 2}", f"resnet{6 * self.blocks_per_stage + 2}"
            hints.append(
                f"the checkpoint has {checkpoint_blocks} blocks per stage ({theirs}) but the model has "
                f"{self.blocks_per_stage} ({ours}): build {theirs} or use a {ours} checkpoint"
            )
        return "; ".join(hints) or None


def _blocks_per_stage(keys: Sequence[str]) -> int:
    """Largest block count in any stage among ``layerS.N.`` keys (0 when there are none)."""
    most = 0
    for key in keys:
        parts = key.split(".")
        if len(parts) > 2 and parts[0].startswith("layer") and parts[1].isdigit():
            most = max(most, int(parts[1]) + 1)
    return most


def _check_shortcut(shortcut: str) -> str:
    if shortcut not in SHORTCUTS:
        choices = " or ".join(f'"{key}" ({meaning})' for key, meaning in SHORTCUTS.items())
        raise UserError(f"shortcut: expected {choices}, got {shortcut!r}")
    return shortcut


def _build(depth: int, num_classes: int, shortcut: str) -> CifarResNet:
    return CifarResNet(blocks_per_stage=(depth - 2) // 6, num_classes=num_classes, shortcut=_check_shortcut(shortcut))


@register_model()
def resnet20(*, num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """ResNet-20 for CIFAR (0.27M parameters with shortcut A)."""
    return _build(20, num_classes, shortcut)


@register_model()
def resnet32(*, num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """ResNet-32 for CIFAR (0.46M parameters with shortcut A)."""
    return _build(32, num_classes, shortcut)


@register_model()
def resnet44(*, num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """ResNet-44 for CIFAR (0.66M parameters with shortcut A)."""
    return _build(44, num_classes, shortcut)


@register_model()
def resnet56(*, num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """ResNet-56 for CIFAR (0.85M parameters with shortcut A)."""
    return _build(56, num_classes, shortcut)


@register_model()
def resnet110(*, num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """ResNet-110 for CIFAR (1.7M parameters with shortcut A)."""
    return _build(110, num_classes, shortcut)
