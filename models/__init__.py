"""Model architectures, the registry that builds them by name, and the one path from a ``model.arch`` string to a
model (:func:`build_arch`: registered names, ``torchvision:<builder>``, ``timm:<name>``, ``<module>:<callable>``).

Importing the package registers every architecture: the CIFAR VGG-16-BN and ResNets, and the
torchvision ImageNet wrappers.
"""

from models.api import get_model, get_model_builder, list_models, model_options, register_model
from models.resnet_cifar import CifarResNet, resnet20, resnet32, resnet44, resnet56, resnet110
from models.torchvision_models import tv_mobilenet_v2, tv_resnet18, tv_resnet34
from models.vgg_cifar import VGGCifar, vgg16_bn_cifar

from models.sources import BuiltModel, arch_options, build_arch, check_arch  # isort: skip (after every registration)

__all__ = [
    "BuiltModel",
    "CifarResNet",
    "VGGCifar",
    "arch_options",
    "build_arch",
    "check_arch",
    "get_model",
    "get_model_builder",
    "list_models",
    "model_options",
    "register_model",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "tv_mobilenet_v2",
    "tv_resnet18",
    "tv_resnet34",
    "vgg16_bn_cifar",
]
