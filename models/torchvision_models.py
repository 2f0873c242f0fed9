"""torchvision's classification models: three under this project's registry, and any as ``torchvision:<builder>``.

These wrap torchvision's own builders (never a copy of the architecture), so torchvision's
pretrained weights and any checkpoint made for ``torchvision.models.<arch>()`` load with strict keys.
:func:`build_torchvision` is the one way both build them (:mod:`models.sources` resolves ``torchvision:<builder>``).

Pretrained weights come through torchvision's weights API, which downloads into
``$TORCH_HOME/hub/checkpoints``. The machines this project runs on are often offline, where that
download fails with a long ``URLError`` traceback that does not say where the file should be. So the
expected file path is computed first and a failed download or read becomes one :class:`UserError`
that names the path and the ways out.
"""

from __future__ import annotations

import inspect
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from models.api import register_model
from utils.core.errors import UserError
from utils.core.tvguard import torchvision

IMAGENET_CLASSES = 1000


def classification_builders() -> list[str]:
    """torchvision's image-classification builders (``torchvision:<builder>``): those of ``torchvision.models``
    itself, not of its ``detection``, ``segmentation``, ``video``, ``optical_flow`` or ``quantization`` modules."""
    return torchvision.models.list_models(module=torchvision.models)


def expected_weights_file(weights: torchvision.models.WeightsEnum) -> Path:
    """The file ``torch.hub.load_state_dict_from_url`` reads for ``weights`` (a torchvision ``Weights``)."""
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _with_weights(label: str, builder: Callable[..., nn.Module], weights: Any, options: dict[str, Any]) -> nn.Module:
    """``builder(weights=weights, **options)``, a missing or unreadable weights file one UserError that names it."""
    path = expected_weights_file(weights)
    was_there = path.is_file()
    try:
        return builder(weights=weights, **options)
    # URLError/HTTPError/timeouts are OSErrors; a hash mismatch or a bad zip is a RuntimeError.
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if was_there:
            raise UserError(
                f"pretrained: cannot read the {label} weights {path} ({reason}); delete the file so that it is "
                f"downloaded again, or set model.checkpoint to a local weights file instead"
            ) from exc
        raise UserError(
            f"pretrained: the {label} weights are not in {path} and could not be downloaded ({reason}); "
            f"place {weights.url} at that path, or set TORCH_HOME to a folder whose hub/checkpoints/ holds it, "
            f"or set model.checkpoint to a local weights file instead"
        ) from exc


def _reference(builder: Callable[..., nn.Module], num_classes: int, options: dict[str, Any]) -> nn.Module:
    """The model ``builder`` makes without weights: on the meta device (no memory, no initialisation time) where
    the builder allows it (RegNet's does not), else on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet's and Inception's notes on their default initialisation
        try:
            with torch.device("meta"):
                return builder(weights=None, num_classes=num_classes, **options)
        except (NotImplementedError, RuntimeError):
            return builder(weights=None, num_classes=num_classes, **options)


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str) or (
        isinstance(value, tuple | list) and all(_plain(v) for v in value))


def _options_set_by_weights(model: nn.Module, reference: nn.Module) -> dict[str, Any]:
    """The builder options torchvision set from the weights (GoogLeNet's and Inception's ``transform_input``, the
    ``image_size`` of ViT-H/14's 518-pixel weights), read back from the model: the constructor parameters the model
    keeps as attributes, whose values differ from those of the model built without weights. A checkpoint records
    them, so that the model rebuilt from it without the weights computes the same function."""
    found = {}
    for name in inspect.signature(type(model).__init__).parameters:
        if name in ("self", "num_classes") or not hasattr(model, name) or not hasattr(reference, name):
            continue
        value, default = getattr(model, name), getattr(reference, name)
        if _plain(value) and _plain(default) and value != default:
            found[name] = value
    return found


def _replace_classifier(model: nn.Module, classes: int, num_classes: int) -> list[str]:
    """Replace every linear or conv layer with ``classes`` outputs (the classifier; Inception's and GoogLeNet's
    auxiliary ones too) by a new one, initialised as PyTorch initialises a layer, with ``num_classes`` outputs."""
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and module.out_features == classes:
            new: nn.Module = nn.Linear(module.in_features, num_classes, bias=module.bias is not None)
        elif isinstance(module, nn.Conv2d) and module.out_channels == classes and module.groups == 1:
            new = nn.Conv2d(module.in_channels, num_classes, module.kernel_size, module.stride, module.padding,
                            module.dilation, bias=module.bias is not None)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
        replaced.append(name)
    return replaced


def _first_difference(model: nn.Module, reference: nn.Module) -> str | None:
    """The first state-dict entry whose name or shape differs between the two models, or None."""
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    theirs = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    for key in list(ours) + [k for k in theirs if k not in ours]:
        if ours.get(key) != theirs.get(key):
            return f"{key}: {ours.get(key, 'absent')} with the weights, {theirs.get(key, 'absent')} without"
    return None


def build_torchvision(arch: str, *, label: str, num_classes: int = IMAGENET_CLASSES, pretrained: bool = False,
                      builder_options: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """torchvision's builder ``arch`` (``label`` names it in messages) and the options that rebuild it without
    weights (what a checkpoint records: ``num_classes``, and as ``builder_options`` the builder's options that the
    weights set).

    ``pretrained`` loads the builder's ``DEFAULT`` weights through torchvision's weights API. Weights made for
    another number of classes than ``num_classes`` (ImageNet's 1000) are loaded into the model as torchvision
    builds it, then its classifier layer is replaced by a new one with ``num_classes`` outputs: the usual start of
    fine-tuning, and the model has the shapes ``arch`` has without weights, so its checkpoints rebuild.
    """
    builder = torchvision.models.get_model_builder(arch)
    options = dict(builder_options or {})
    if not pretrained:
        model = builder(weights=None, num_classes=num_classes, **options)
        return model, {"num_classes": num_classes, **({"builder_options": options} if options else {})}
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    classes = len(weights.meta["categories"])
    model = _with_weights(label, builder, weights, options)
    reference = _reference(builder, num_classes, options)
    set_by_weights = _options_set_by_weights(model, reference)
    if set_by_weights:
        options = {**options, **set_by_weights}
        reference = _reference(builder, num_classes, options)
    if num_classes != classes:
        replaced = ", ".join(_replace_classifier(model, classes, num_classes)) or "no layer"
        print(f"note: model.pretrained: the {label} weights predict {classes} classes; {replaced} replaced by a new, "
              f"randomly initialised layer of {num_classes} outputs (train it before pruning)")
    difference = _first_difference(model, reference)
    if difference is not None:
        raise UserError(f"pretrained: the {label} weights make a model that this tool cannot rebuild from its "
                        f"checkpoints ({difference}); set model.pretrained to false, or model.num_classes to {classes}")
    return model, {"num_classes": num_classes, **({"builder_options": options} if options else {})}


@register_model()
def tv_resnet18(*, num_classes: int = IMAGENET_CLASSES, pretrained: bool = False) -> nn.Module:
    """torchvision ResNet-18; ``pretrained`` loads ``ResNet18_Weights.DEFAULT``."""
    return build_torchvision("resnet18", label="tv_resnet18", num_classes=num_classes, pretrained=pretrained)[0]


@register_model()
def tv_resnet34(*, num_classes: int = IMAGENET_CLASSES, pretrained: bool = False) -> nn.Module:
    """torchvision ResNet-34; ``pretrained`` loads ``ResNet34_Weights.DEFAULT``."""
    return build_torchvision("resnet34", label="tv_resnet34", num_classes=num_classes, pretrained=pretrained)[0]


@register_model()
def tv_mobilenet_v2(*, num_classes: int = IMAGENET_CLASSES, pretrained: bool = False) -> nn.Module:
    """torchvision MobileNetV2; ``pretrained`` loads ``MobileNet_V2_Weights.DEFAULT``."""
    return build_torchvision("mobilenet_v2", label="tv_mobilenet_v2", num_classes=num_classes,
                             pretrained=pretrained)[0]
