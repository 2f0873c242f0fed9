"""From a validated config to live objects: device, seeds, data loaders and the model.

This is the boundary where the config object is turned into plain keyword arguments; the packages below
(``models``, ``pruning``, ``utils.data.datasets``) never see a config.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models import arch_options, build_arch
from utils.checkpoint.diagnose import first_line
from utils.checkpoint.format import is_toolkit_checkpoint
from utils.checkpoint.load import (
    LoadedModel,
    load_state_dict_strict,
    load_toolkit_checkpoint,
    read_checkpoint_file,
    unwrap_state_dict,
)
from utils.config.schema import ExperimentConfig
from utils.core import distributed
from utils.core.errors import UserError
from utils.data.datasets import build_datasets, default_mean_std
from utils.data.device import build_device_loaders
from utils.data.loaders import auto_workers, build_loaders
from utils.report.visdom_logger import VisdomLogger


def select_device(gpu: int | None) -> torch.device:
    """``cuda:N`` for ``--gpu N`` (an error if that GPU does not exist: never a silent CPU fallback), else CPU.

    Started by torchrun with several processes, this joins them (:func:`utils.core.distributed.start`): each process
    then trains on ``cuda:LOCAL_RANK`` with ``--gpu``, on the CPU without."""
    if distributed.launched() is not None:
        return distributed.start(gpu)
    if gpu is None:
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpu < 0 or gpu >= count:
        if count:
            raise UserError(f"--gpu {gpu}: this machine has {count} CUDA device(s), numbered 0..{count - 1}; pick one "
                            "of those, or leave out --gpu to use the CPU")
        why = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
               else "none is visible: check the driver and CUDA_VISIBLE_DEVICES")
        raise UserError(f"--gpu {gpu}: this machine has no CUDA device ({why}); leave out --gpu to use the CPU")
    torch.backends.cudnn.benchmark = True
    return torch.device(f"cuda:{gpu}")


def make_visdom(cfg: ExperimentConfig, enabled: bool, title_prefix: str = "") -> Any:
    """The visdom logger for ``cfg.visdom`` (a no-op when not ``enabled``)."""
    v = cfg.visdom

    enabled = enabled and distributed.is_main()  # one rank plots
    return VisdomLogger(enabled=enabled, host=v.host, port=v.port, env=v.env or cfg.name, title_prefix=title_prefix)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Data:
    num_classes: int
    input_size: tuple[int, int, int]  # C, H, W the model sees
    train_loader: Any
    test_loader: Any
    trace_size: tuple[int, int, int] | None = None  # C, H, W the model is traced with: model.input_size, or input_size

    def __post_init__(self) -> None:
        if self.trace_size is None:
            self.trace_size = self.input_size


def build_data(cfg: ExperimentConfig, *, train: bool, device: torch.device | None = None,
               channels_last: bool = False) -> Data:
    """Datasets and loaders for ``cfg.data`` (no training split is touched when ``train`` is False): DataLoaders, or
    with ``data.loader: "gpu"`` the splits held on ``device`` (:mod:`utils.data.device`). Under torchrun each rank
    gets its share of every step and of the test set (:mod:`utils.core.distributed`)."""
    d = cfg.data
    device = device or torch.device("cpu")
    rank, world = distributed.rank(), distributed.world_size()
    if train and world > 1:
        distributed.split_batch(d.batch_size, world)
    mean, std = default_mean_std(d.name)
    bundle = build_datasets(d.name, d.root, mean=d.mean or mean, std=d.std or std, train=train, download=d.download,
                            image_size=d.image_size, decode=d.decode, skip_bad_images=d.skip_bad_images)
    if d.loader == "gpu":
        train_loader, test_loader = build_device_loaders(bundle, batch_size=d.batch_size, seed=cfg.seed, device=device,
                                                         test_batch_size=d.test_batch_size,
                                                         channels_last=channels_last, rank=rank, world=world)
    else:
        launch = distributed.launched()
        workers = d.workers if d.workers is not None else auto_workers(launch.local_world_size if launch else 1)
        train_loader, test_loader = build_loaders(bundle, batch_size=d.batch_size, workers=workers, seed=cfg.seed,
                                                  test_batch_size=d.test_batch_size,
                                                  pin_memory=device.type == "cuda", rank=rank, world=world)
    trace_size = tuple(cfg.model.input_size) if cfg.model.input_size is not None else bundle.input_size
    return Data(num_classes=bundle.num_classes, input_size=bundle.input_size, train_loader=train_loader,
                test_loader=test_loader, trace_size=trace_size)  # type: ignore[arg-type]


def requested_options(cfg: ExperimentConfig, num_classes: int) -> dict[str, Any]:
    """The builder keyword arguments the config asks for (unset options keep the builder's defaults). The dataset's
    ``num_classes`` goes to every model that takes it; a user's network that takes no ``num_classes`` is built as it
    is (the forward-pass check then counts its outputs), unless ``model.num_classes`` asks for a count."""
    m = cfg.model
    options: dict[str, Any] = {}
    if m.num_classes is not None or "num_classes" in arch_options(m.arch):
        options["num_classes"] = m.num_classes or num_classes
    for key in ("shortcut", "classifier"):
        if getattr(m, key) is not None:
            options[key] = getattr(m, key)
    if m.pretrained:
        options["pretrained"] = True
    return options


def _check_options_match(cfg: ExperimentConfig, arch: dict[str, Any]) -> None:
    """Model options set in the config must agree with the architecture a checkpoint of this tool brings along:
    the checkpoint wins, and a ``model.num_classes`` it silently overrode would be a surprise later."""
    defaults = arch_options(arch["name"])
    for option in ("num_classes", "shortcut", "classifier"):
        wanted = getattr(cfg.model, option)
        if wanted is None or option not in defaults:
            continue
        held = arch["options"].get(option, defaults[option])
        if (list(held) if isinstance(held, list | tuple) else held) != wanted:
            raise UserError(f"model.{option}: {json.dumps(wanted)}, but {cfg.model.checkpoint} holds a model with "
                            f"{option} {json.dumps(held)}; a checkpoint of this tool brings its own architecture: "
                            f"leave model.{option} out or pick another checkpoint")


def build_model(cfg: ExperimentConfig, num_classes: int) -> LoadedModel:
    """The model ``cfg.model`` describes, with weights from ``model.checkpoint`` or torchvision when asked.

    A checkpoint of this tool brings its own architecture (a pruned model's widths) and masks; any other
    file is read as a state dict for the architecture the config names.
    """
    m = cfg.model
    obj = read_checkpoint_file(m.checkpoint) if m.checkpoint is not None else None
    if is_toolkit_checkpoint(obj):
        loaded = load_toolkit_checkpoint(m.checkpoint, expect_arch=m.arch, ckpt=obj, num_classes=num_classes)
        _check_options_match(cfg, loaded.arch)
        return loaded
    options = requested_options(cfg, num_classes)
    if options.get("num_classes", num_classes) < num_classes:  # labels beyond the outputs: an IndexError in the loss
        raise UserError(f"model.num_classes: {options['num_classes']} is fewer than the {num_classes} classes of "
                        f"data.name {cfg.data.name!r}; leave model.num_classes out (it defaults to the dataset's) or "
                        f"set it to at least {num_classes}")
    built = build_arch(m.arch, options)  # messages name model.arch or the model.<option>
    if obj is not None:
        load_state_dict_strict(built.model, unwrap_state_dict(obj, m.checkpoint), source=str(m.checkpoint))
    return LoadedModel(model=built.model, arch={"name": m.arch, "options": built.options}, masks=None, checkpoint=None)


# A model that cannot take the data's images is found by one forward pass before the run directory is made, not by a
# shape error in the first training step. A pass rather than a size each model declares: it holds for every model,
# a filter-pruned one or one yet to be written included, for too large inputs as well (VGG-16's classifier expects
# the 1x1 map of a 32..63 px input), and it cannot drift from the code. Its cost: one batch of one image, in eval mode
# without gradients (no running statistics move, no random number is drawn: the run is unchanged); the search for
# the sizes that do work runs only when the pass fails, and up to SIZE_SEARCH_LIMIT (a model that takes no size up to
# it is broken for another reason, and its own error is the one to show).
SIZE_SEARCH_LIMIT = 1024


def _forward(model: nn.Module, size: tuple[int, ...]) -> tuple[Any, Exception | None]:
    """What one forward pass of a zero image of ``size`` (C, H, W) through ``model`` returns, or its error."""
    parameter = next(model.parameters(), None)
    image = torch.zeros(1, *size, device=parameter.device if parameter is not None else None)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(image), None
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, AssertionError) as exc:  # shape mismatches, "Output size is too small", and
        return None, exc  # the size checks of torch._assert (torchvision's VisionTransformer: "Wrong image height!")
    finally:
        model.train(training)


def _fails_at(model: nn.Module, channels: int, side: int) -> Exception | None:
    """The error of one forward pass of a ``side`` x ``side`` zero image through ``model``, or None when it runs."""
    return _forward(model, (channels, side, side))[1]


def _edge(model: nn.Module, channels: int, working: int, failing: int) -> int:
    """The working size next to a failing one, by bisection between ``working`` and ``failing`` (either order)."""
    while abs(failing - working) > 1:
        middle = (working + failing) // 2
        if _fails_at(model, channels, middle) is None:
            working = middle
        else:
            failing = middle
    return working


def _working_sizes(model: nn.Module, channels: int, side: int) -> tuple[int, int | None] | None:
    """The smallest size ``model`` takes and, when the failing ``side`` is above it, the largest below ``side``
    (doubling, then bisection); None when no size up to SIZE_SEARCH_LIMIT works."""
    probe = 1
    while _fails_at(model, channels, probe) is not None:
        if probe >= SIZE_SEARCH_LIMIT:
            return None
        probe *= 2
    smallest = probe if probe == 1 else _edge(model, channels, probe, probe // 2)
    if side < smallest:
        return smallest, None
    works, fails = smallest, side
    while 2 * works < fails:
        if _fails_at(model, channels, 2 * works) is None:
            works *= 2
        else:
            fails = 2 * works
    return smallest, _edge(model, channels, works, fails)


def check_input_size(model: nn.Module, input_size: tuple[int, int, int], cfg: ExperimentConfig) -> None:
    """Raise the UserError naming ``data.image_size`` when ``model`` cannot take the data's images (see above)."""
    channels, side = input_size[0], input_size[-1]
    error = _fails_at(model, channels, side)
    if error is None:
        return
    sizes = _working_sizes(model, channels, side)
    if sizes is None:  # no size works: not a question of the size, a bug with its own traceback
        raise error
    smallest, largest = sizes
    what = (str(error).strip().splitlines() or [type(error).__name__])[0]
    given = f"data.image_size {side}" if cfg.data.image_size is not None else f"data.image_size (not set; {side})"
    if largest is None:
        takes = f"the smallest size it takes is {smallest}: set data.image_size to {smallest}"
    else:
        takes = f"it takes sizes {smallest} to {largest}: set data.image_size in that range"
    raise UserError(f"{given}: model.arch {cfg.model.arch!r} cannot take {side}x{side} images ({what}); {takes}")


def check_model(model: nn.Module, data: Data, cfg: ExperimentConfig) -> None:
    """Before the run directory: ``model`` takes ``model.input_size`` (when set; the size pruning traces it with) and
    the data's images (:func:`check_input_size`), and returns class scores, a ``(batch, classes)`` tensor with at
    least the dataset's classes (a user's network returns what it returns)."""
    arch, size = cfg.model.arch, data.trace_size
    if size != data.input_size:
        if size[0] != data.input_size[0]:
            raise UserError(f"model.input_size: {list(size)} has {size[0]} channel(s), but the images of data.name "
                            f"{cfg.data.name!r} have {data.input_size[0]}; set its first entry to "
                            f"{data.input_size[0]}")
        error = _forward(model, size)[1]
        if error is not None:
            raise UserError(f"model.input_size: model.arch {arch!r} cannot take one input of {list(size)} "
                            f"({first_line(error)}); set model.input_size to the [C, H, W] it takes, or remove it "
                            f"(the data's images are {list(data.input_size)})")
    check_input_size(model, data.input_size, cfg)
    output = _forward(model, size)[0]
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != 1:
        what = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else \
            f"a {type(output).__name__}"
        raise UserError(f"model.arch {arch!r}: the model returns {what} for one image; it must return the class "
                        "scores, a tensor of shape (batch, classes)")
    if output.shape[1] < data.num_classes:
        raise UserError(f"model.arch {arch!r}: the model predicts {output.shape[1]} classes, but data.name "
                        f"{cfg.data.name!r} has {data.num_classes}; give it at least {data.num_classes} outputs "
                        "(model.num_classes, or its own num_classes)")
