"""From a validated config to live objects: device, seeds, data loaders and the model.

This is the boundary where the config object is turned into plain keyword arguments; the packages below
(``models``, ``pruning``, ``utils.data``) never see a config.
"""

from __future__ import annotations

import difflib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.config import ExperimentConfig
from utils.errors import UserError


def select_device(gpu: int | None) -> torch.device:
    """``cuda:N`` for ``--gpu N`` (an error if that GPU does not exist: never a silent CPU fallback), else CPU.

    Started by torchrun with several processes, this joins them (:func:`utils.distributed.start`): each process then
    trains on ``cuda:LOCAL_RANK`` with ``--gpu``, on the CPU without."""
    from utils import distributed

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
    from utils.visdom_logger import VisdomLogger

    v = cfg.visdom
    from utils import distributed

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


def build_data(cfg: ExperimentConfig, *, train: bool, device: torch.device | None = None,
               channels_last: bool = False) -> Data:
    """Datasets and loaders for ``cfg.data`` (no training split is touched when ``train`` is False): DataLoaders, or
    with ``data.loader: "gpu"`` the splits held on ``device`` (:mod:`utils.device_data`). Under torchrun each rank
    gets its share of every step and of the test set (:mod:`utils.distributed`)."""
    from utils import distributed
    from utils.data import build_datasets, build_loaders, default_mean_std

    d = cfg.data
    device = device or torch.device("cpu")
    rank, world = distributed.rank(), distributed.world_size()
    if train and world > 1:
        distributed.split_batch(d.batch_size, world)
    mean, std = default_mean_std(d.name)
    bundle = build_datasets(d.name, d.root, mean=d.mean or mean, std=d.std or std, train=train, download=d.download,
                            image_size=d.image_size, decode=d.decode)
    if d.loader == "gpu":
        from utils.device_data import build_device_loaders

        train_loader, test_loader = build_device_loaders(bundle, batch_size=d.batch_size, seed=cfg.seed, device=device,
                                                         test_batch_size=d.test_batch_size,
                                                         channels_last=channels_last, rank=rank, world=world)
    else:
        from utils.data import auto_workers

        launch = distributed.launched()
        workers = d.workers if d.workers is not None else auto_workers(launch.local_world_size if launch else 1)
        train_loader, test_loader = build_loaders(bundle, batch_size=d.batch_size, workers=workers, seed=cfg.seed,
                                                  test_batch_size=d.test_batch_size,
                                                  pin_memory=device.type == "cuda", rank=rank, world=world)
    return Data(num_classes=bundle.num_classes, input_size=bundle.input_size, train_loader=train_loader,
                test_loader=test_loader)


@dataclass
class LoadedModel:
    model: nn.Module
    arch: dict[str, Any]  # {"name": ..., "options": {...}}: enough to rebuild the model
    masks: dict[str, torch.Tensor] | None
    checkpoint: dict[str, Any] | None  # the tool's own checkpoint it came from, if any


def model_options(cfg: ExperimentConfig, num_classes: int) -> dict[str, Any]:
    """The builder keyword arguments the config asks for (unset options keep the builder's defaults)."""
    m = cfg.model
    options: dict[str, Any] = {"num_classes": m.num_classes or num_classes}
    for key in ("shortcut", "classifier"):
        if getattr(m, key) is not None:
            options[key] = getattr(m, key)
    if m.pretrained:
        options["pretrained"] = True
    return options


def build_model_from_arch(arch: dict[str, Any]) -> nn.Module:
    """Build the model ``arch`` describes: registry name and options, then, for a physically pruned model,
    the per-module sizes in ``arch["shapes"]`` (see :func:`pruning.surgery.pruned_shapes`)."""
    from models import get_model

    model = get_model(arch["name"], **arch["options"])
    if arch.get("shapes"):
        from pruning.surgery import apply_shapes

        apply_shapes(model, arch["shapes"])
    return model


def check_names(cfg: ExperimentConfig, source: str) -> None:
    """Check the registry names in the config (model, dataset, pruning method) before any work starts."""
    from models import list_models
    from utils.data import dataset_names
    from utils.pruner import runner_names

    for key, value, known in (("model.arch", cfg.model.arch, list_models()), ("data.name", cfg.data.name,
                              dataset_names()), ("prune.method", cfg.prune.method, runner_names())):
        if value not in known:
            near = _nearest(value, known)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            raise UserError(f"{source}: {key}: unknown name {value!r}; known: {', '.join(known)}{hint}")


def _nearest(value: str, known: list[str]) -> list[str]:
    """The known names most like ``value``: all of those that tie (``resnet21`` is as near ``resnet20`` as
    ``resnet32``, and naming one of them would be a guess)."""
    def score(name: str) -> float:
        return difflib.SequenceMatcher(None, value, name).ratio()

    near = difflib.get_close_matches(value, known, n=len(known))
    return sorted(n for n in near if score(n) == score(near[0]))


def _outputs(arch: dict[str, Any]) -> int:
    """How many classes a model of ``arch`` predicts (its builder's default when the options do not say)."""
    from models.registry import model_options as builder_options

    return int(arch["options"].get("num_classes", builder_options(arch["name"])["num_classes"]))


def load_toolkit_checkpoint(path: str | Path, *, expect_arch: str | None = None,
                            ckpt: dict[str, Any] | None = None, key: str = "--resume",
                            num_classes: int | None = None) -> LoadedModel:
    """Rebuild a model from a checkpoint of this tool: architecture (pruned widths included), weights, masks.

    ``key`` names where the path came from in messages about an unreadable file (``--resume`` when ``ckpt`` is not
    given: :func:`build_model` reads ``model.checkpoint`` itself and passes what it found). With ``num_classes``
    (the dataset's), a model that predicts fewer classes is an error here rather than an IndexError in the loss.
    """
    from models.loading import load_state_dict_strict, read_checkpoint_file
    from pruning.masks import validate_masks
    from utils.checkpoint import check_checkpoint

    ckpt = check_checkpoint(read_checkpoint_file(path, key=key) if ckpt is None else ckpt, path)
    arch = ckpt["arch"]
    if expect_arch is not None and arch["name"] != expect_arch:
        raise UserError(f"{path}: the checkpoint holds a {arch['name']} but model.arch is {expect_arch!r}; set "
                        f"model.arch to {arch['name']!r} or pick another checkpoint")
    if num_classes is not None and _outputs(arch) < num_classes:
        raise UserError(f"{path}: the checkpoint's {arch['name']} predicts {_outputs(arch)} classes but the dataset "
                        f"has {num_classes}; pick a checkpoint trained on this dataset, or check data.name and "
                        "data.root")
    model = build_model_from_arch(arch)
    load_state_dict_strict(model, ckpt["state_dict"], source=str(path))
    masks = ckpt.get("masks") or None
    if masks:
        validate_masks(model, masks)
    return LoadedModel(model=model, arch=arch, masks=masks, checkpoint=ckpt)


def _check_options_match(cfg: ExperimentConfig, arch: dict[str, Any]) -> None:
    """Model options set in the config must agree with the architecture a checkpoint of this tool brings along:
    the checkpoint wins, and a ``model.num_classes`` it silently overrode would be a surprise later."""
    from models.registry import model_options as builder_options

    defaults = builder_options(arch["name"])
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
    from models import get_model, list_models
    from models.loading import load_state_dict_strict, read_checkpoint_file, unwrap_state_dict
    from utils.checkpoint import is_toolkit_checkpoint

    m = cfg.model
    obj = read_checkpoint_file(m.checkpoint) if m.checkpoint is not None else None
    if is_toolkit_checkpoint(obj):
        loaded = load_toolkit_checkpoint(m.checkpoint, expect_arch=m.arch, ckpt=obj, num_classes=num_classes)
        _check_options_match(cfg, loaded.arch)
        return loaded
    options = model_options(cfg, num_classes)
    if options["num_classes"] < num_classes:  # labels beyond the outputs: an IndexError in the first loss
        raise UserError(f"model.num_classes: {options['num_classes']} is fewer than the {num_classes} classes of "
                        f"data.name {cfg.data.name!r}; leave model.num_classes out (it defaults to the dataset's) or "
                        f"set it to at least {num_classes}")
    if m.arch not in list_models():  # else the option re-wrapping below would read "model.unknown model ..."
        raise UserError(f"model.arch: unknown model {m.arch!r}; known models: {', '.join(list_models())}")
    try:
        model = get_model(m.arch, **options)
    except UserError as exc:  # the registry names the option; the user needs the config key
        raise UserError(f"model.{exc}") from None
    arch = {"name": m.arch, "options": {k: v for k, v in options.items() if k != "pretrained"}}
    if obj is not None:
        load_state_dict_strict(model, unwrap_state_dict(obj, m.checkpoint), source=str(m.checkpoint))
    return LoadedModel(model=model, arch=arch, masks=None, checkpoint=None)
