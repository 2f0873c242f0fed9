"""The input-size check both entry scripts run before the run directory is made (``utils.app.setup.check_input_size``):
one forward pass of a zero image, which must change nothing, and on failure a search for the sizes that work.
The error lines through the real scripts are rows of ``tests/test_bad_inputs.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import get_model
from utils.app.setup import check_input_size
from utils.config.validate import from_dict
from utils.core.errors import UserError


def _cfg(arch: str, image_size: int | None = None):
    data = {"name": "imagefolder"} if image_size is None else {"name": "imagefolder", "image_size": image_size}
    return from_dict({"name": "t", "model": {"arch": arch}, "data": data})


def test_the_check_draws_no_random_number_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10).train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_input_size(model, (3, 32, 32), _cfg("resnet20", 32))
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())  # BN statistics did not move


def test_vgg_takes_32_to_63_pixels_and_the_message_says_so():
    """VGG-16's five pools need 32 px; its classifier is sized for their 1x1 map, which 64 px makes 2x2. (Between
    the start and the end of each message: the first line of torch's own error, whose wording is torch's.)"""
    model = get_model("vgg16_bn_cifar", num_classes=10)
    for fits in (32, 63):
        check_input_size(model, (3, fits, fits), _cfg("vgg16_bn_cifar", fits))
    for side, image_size, start, end in (
            (8, 8, "data.image_size 8: model.arch 'vgg16_bn_cifar' cannot take 8x8 images (",
             "); the smallest size it takes is 32: set data.image_size to 32"),
            (224, None, "data.image_size (not set; 224): model.arch 'vgg16_bn_cifar' cannot take 224x224 images (",
             "); it takes sizes 32 to 63: set data.image_size in that range")):
        with pytest.raises(UserError) as info:
            check_input_size(model, (3, side, side), _cfg("vgg16_bn_cifar", image_size))
        message = str(info.value)
        assert message.startswith(start) and message.endswith(end) and "\n" not in message, message


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a bug, whatever the size")


def test_a_model_that_takes_no_size_keeps_its_own_error():
    """No size up to the search limit works: not a question of the size, and no UserError hides the bug."""
    with pytest.raises(RuntimeError, match="a bug, whatever the size"):
        check_input_size(_Broken(), (3, 32, 32), _cfg("resnet20", 32))
