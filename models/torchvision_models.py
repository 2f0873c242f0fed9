"""torchvision ImageNet models under this project's registry.

These wrap torchvision's own builders (never a copy of the architecture), so torchvision's
pretrained weights and any checkpoint made for ``torchvision.models.<arch>()`` load with strict keys.

Pretrained weights come through torchvision's weights API, which downloads into
``$TORCH_HOME/hub/checkpoints``. The machines this project runs on are often offline, where that
download fails with a long ``URLError`` traceback that does not say where the file should be. So the
expected file path is computed first and a failed download or read becomes one :class:`UserError`
that names the path and the ways out.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from models.api import register_model
from utils.core.errors import UserError
from utils.core.tvguard import torchvision

IMAGENET_CLASSES = 1000


def expected_weights_file(weights: torchvision.models.WeightsEnum) -> Path:
    """The file ``torch.hub.load_state_dict_from_url`` reads for ``weights`` (a torchvision ``Weights``)."""
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _build(name: str, arch: str, weights_enum: str, *, num_classes: int, pretrained: bool) -> nn.Module:
    builder = getattr(torchvision.models, arch)
    if not pretrained:
        return builder(weights=None, num_classes=num_classes)
    if num_classes != IMAGENET_CLASSES:
        raise UserError(
            f"num_classes: the pretrained {name} weights have {IMAGENET_CLASSES} classes, got {num_classes}; "
            f"set model.num_classes to {IMAGENET_CLASSES} or model.pretrained to false"
        )
    weights = getattr(torchvision.models, weights_enum).DEFAULT
    path = expected_weights_file(weights)
    was_there = path.is_file()
    try:
        return builder(weights=weights)
    # URLError/HTTPError/timeouts are OSErrors; a hash mismatch or a bad zip is a RuntimeError.
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if was_there:
            raise UserError(
                f"pretrained: cannot read the {name} weights {path} ({reason}); delete the file so that it is "
                f"downloaded again, or set model.checkpoint to a local weights file instead"
            ) from exc
        raise UserError(
            f"pretrained: the {name} weights are not in {path} and could not be downloaded ({reason}); "
            f"place {weights.url} at that path, or set TORCH_HOME to a folder whose hub/checkpoints/ holds it, "
            f"or set model.checkpoint to a local weights file instead"
        ) from exc


@register_model()
def tv_resnet18(*, num_classes: int = IMAGENET_CLASSES, pretrained: bool = False) -> nn.Module:
    """torchvision ResNet-18; ``pretrained`` loads ``ResNet18_Weights.DEFAULT``."""
    return _build("tv_resnet18", "resnet18", "ResNet18_Weights", num_classes=num_classes, pretrained=pretrained)


@register_model()
def tv_resnet34(*, num_classes: int = IMAGENET_CLASSES, pretrained: bool = False) -> nn.Module:
    """torchvision ResNet-34; ``pretrained`` loads ``ResNet34_Weights.DEFAULT``."""
    return _build("tv_resnet34", "resnet34", "ResNet34_Weights", num_classes=num_classes, pretrained=pretrained)


@register_model()
def tv_mobilenet_v2(*, num_classes: int = IMAGENET_CLASSES, pretrained: bool = False) -> nn.Module:
    """torchvision MobileNetV2; ``pretrained`` loads ``MobileNet_V2_Weights.DEFAULT``."""
    return _build(
        "tv_mobilenet_v2", "mobilenet_v2", "MobileNet_V2_Weights", num_classes=num_classes, pretrained=pretrained
    )
