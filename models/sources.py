"""From a ``model.arch`` string to a model: the one code path for every form of the name.

The forms (told apart by :mod:`utils.core.archform`, which the torch-free config validation uses too):

- a registered name (``resnet20``): :func:`models.api.get_model`;
- ``torchvision:<builder>``: any of torchvision's classification builders (:mod:`models.torchvision_models`);
- ``timm:<name>``: ``timm.create_model``, when the optional package timm is installed;
- ``<python.module>:<callable>``: the user's own network, imported from the working directory or ``PYTHONPATH``
  and called with ``num_classes=`` when it takes that keyword; it must return an ``nn.Module``.

:func:`build_arch` builds; it returns the options that rebuild the same architecture without weights, which a
checkpoint stores as ``arch = {"name": <arch>, "options": ...}``, so a checkpoint of any form reloads through the
same function (a ``module:callable`` one needs its module importable at load time). Every mistake is one
:class:`UserError` whose message begins with the key it is about: ``name_key`` (``model.arch`` in an experiment file,
``arch.name`` in a checkpoint) for the name, ``option_key`` + ``.<option>`` for an option.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torch import nn

from models.api import get_model, list_models, model_options
from models.torchvision_models import IMAGENET_CLASSES, build_torchvision, classification_builders

# A checkpoint's torchvision options: builder_options are what torchvision's builder set from the weights.
TORCHVISION_OPTIONS = ("num_classes", "pretrained", "builder_options")
from utils.core.archform import ARCH_FORMS, MODULE, REGISTERED, TIMM, TORCHVISION, ArchForm, parse_arch
from utils.core.errors import UserError
from utils.core.tvguard import torchvision

__all__ = ["BuiltModel", "arch_options", "build_arch", "check_arch"]

# This project's own top-level packages: a user module of one of these names is shadowed by them.
_OWN_PACKAGES = ("models", "pruning", "utils", "tests", "bench")


@dataclass
class BuiltModel:
    model: nn.Module
    options: dict[str, Any]  # what rebuilds the architecture without weights (a checkpoint's arch["options"])


def _form(arch: str, name_key: str) -> ArchForm:
    try:
        return parse_arch(arch)
    except ValueError as exc:
        raise UserError(f"{name_key}: {arch!r} is not a model name ({exc}); expected {ARCH_FORMS}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _near(name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {' or '.join(near)}?" if near else ""


# --------------------------------------------------------------------------------------------------- timm


def _timm(arch: str, name_key: str) -> ModuleType:
    """The optional package timm, or the UserError that says how to install it."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise UserError(f"{name_key}: {arch!r} needs the optional package timm, which is not installed; run `pip "
                        "install timm`, or pick a torchvision:<builder> or registered model") from None
    except Exception as exc:  # installed, but made for another torch: whatever its import raises
        raise UserError(f"{name_key}: {arch!r} needs the optional package timm, which is installed but does not "
                        f"import ({_first_line(exc)}); run `pip install -U timm`") from exc


def _check_timm(arch: str, name: str, name_key: str) -> ModuleType:
    timm = _timm(arch, name_key)
    if not timm.is_model(name):
        raise UserError(f"{name_key}: unknown timm model {name!r}{_near(name, list(timm.list_models()))} "
                        "(python -c 'import timm; print(timm.list_models())' lists them)")
    return timm


def _build_timm(arch: str, name: str, options: dict[str, Any], keys: tuple[str, str]) -> BuiltModel:
    timm = _check_timm(arch, name, keys[0])
    unknown = [option for option in options if option not in ("num_classes", "pretrained")]
    if unknown:
        raise UserError(f"{keys[1]}.{unknown[0]}: not an option of model {arch!r}; it takes num_classes, pretrained")
    pretrained = bool(options.get("pretrained", False))
    kwargs = {"num_classes": options["num_classes"]} if options.get("num_classes") is not None else {}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # timm fetches weights through huggingface_hub or torch.hub: any of their errors
        if not pretrained:
            raise
        raise UserError(f"{keys[1]}.pretrained: timm could not load the weights of {name} ({_first_line(exc)}); timm "
                        "keeps downloaded weights in the Hugging Face cache ($HF_HOME/hub, by default "
                        "~/.cache/huggingface/hub): copy them there from a machine that has them, set "
                        "model.pretrained to false, or give the weights file as model.checkpoint") from exc
    return BuiltModel(model, {"num_classes": _outputs_of(model, kwargs.get("num_classes"))})


def _outputs_of(model: nn.Module, asked: int | None) -> int | None:
    """The classes a timm model predicts: what was asked, else what timm's model says (its ``num_classes``)."""
    return asked if asked is not None else getattr(model, "num_classes", None)


# --------------------------------------------------------------------------------------------------- module:callable


def _working_directory_on_path() -> None:
    """``python pruner_exp.py`` puts the script's folder first on ``sys.path``, not the working directory, from
    which a user's module is expected to import (as under ``python -m``). Appended: it shadows nothing installed."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _import_module(arch: str, name: str, name_key: str) -> ModuleType:
    _working_directory_on_path()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            file = name.replace(".", os.sep) + ".py"
            raise UserError(f"{name_key}: {arch!r}: no module named {name!r} in the working directory "
                            f"({os.getcwd()}) or on PYTHONPATH; run from the folder that holds {file}, or add that "
                            "folder to PYTHONPATH") from None
        raise UserError(f"{name_key}: {arch!r}: importing module {name} raised {_first_line(exc)}; install what it "
                        "imports, or fix the module") from None
    except (Exception, SystemExit) as exc:  # the user's code: whatever it raises while it is imported
        raise UserError(f"{name_key}: {arch!r}: importing module {name} raised {_first_line(exc)}; fix the "
                        "module") from exc


def _user_callable(arch: str, form: ArchForm, name_key: str) -> Callable[..., Any]:
    module = _import_module(arch, form.name, name_key)
    found: Any = module
    for part in form.attr.split("."):
        if not hasattr(found, part):
            where = getattr(module, "__file__", None) or form.name
            shadow = (f" (that is this toolkit's own package {form.name.split('.')[0]!r}: rename yours)"
                      if form.name.split(".")[0] in _OWN_PACKAGES else "")
            defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                             and getattr(v, "__module__", None) == module.__name__)
            listing = f"; it defines {', '.join(defined[:12])}" if defined else ""
            raise UserError(f"{name_key}: {arch!r}: module {form.name} ({where}){shadow} has no attribute "
                            f"{form.attr!r}{listing}")
        found = getattr(found, part)
    if not callable(found):
        raise UserError(f"{name_key}: {arch!r}: {form.name}.{form.attr} is a {type(found).__name__}, not callable; "
                        "name a function or nn.Module class that returns the network")
    return found


def _parameters(fn: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """The keyword parameters ``fn`` takes, with their defaults (``None`` for none), and whether it takes any
    keyword (``**kwargs``, or a signature that cannot be read)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}, True
    named = {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in params
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _build_user(arch: str, form: ArchForm, options: dict[str, Any], keys: tuple[str, str]) -> BuiltModel:
    fn = _user_callable(arch, form, keys[0])
    accepted, takes_any = _parameters(fn)
    for option in options:
        if not takes_any and option not in accepted:
            takes = ", ".join(accepted) or "no keyword arguments"
            raise UserError(f"{keys[1]}.{option}: {arch} takes no {option} parameter (it takes {takes}); leave "
                            f"{keys[1]}.{option} out, or add a {option} keyword to {form.attr}")
    try:
        model = fn(**options)
    except Exception as exc:  # the user's code
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise UserError(f"{keys[0]}: calling {arch}({given}) raised {_first_line(exc)}; fix {form.attr} in "
                        f"{form.name}") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"{keys[0]}: {arch} returned a {type(model).__name__}, not a torch.nn.Module; make "
                        f"{form.attr} return the network")
    return BuiltModel(model, {k: v for k, v in options.items() if k != "pretrained"})


# --------------------------------------------------------------------------------------------------- the one path


def _check_torchvision(builder: str, name_key: str) -> None:
    if builder in classification_builders():
        return
    if builder in torchvision.models.list_models():
        raise UserError(f"{name_key}: torchvision:{builder} is not an image-classification model; torchvision:"
                        "<builder> takes the classifiers of torchvision.models (not detection, segmentation, video "
                        "or optical flow)")
    raise UserError(f"{name_key}: unknown torchvision classification model {builder!r}"
                    f"{_near(builder, classification_builders())} (torchvision.models.list_models("
                    "module=torchvision.models) lists them)")


def check_arch(arch: str, *, name_key: str = "model.arch") -> None:
    """A UserError when ``arch`` names no model that can be built here; nothing is built (a ``module:callable``
    name imports its module)."""
    form = _form(arch, name_key)
    if form.kind == REGISTERED and arch not in list_models():
        raise UserError(f"{name_key}: unknown model {arch!r}; known models: {', '.join(list_models())}; or "
                        "torchvision:<builder>, timm:<name>, <python.module>:<callable>")
    if form.kind == TORCHVISION:
        _check_torchvision(form.name, name_key)
    elif form.kind == TIMM:
        _check_timm(arch, form.name, name_key)
    elif form.kind == MODULE:
        _user_callable(arch, form, name_key)


def arch_options(arch: str, *, name_key: str = "model.arch") -> dict[str, Any]:
    """The options a model ``arch`` takes, with their defaults (``None``: the model decides): a registered model's
    from its builder's signature, ``num_classes`` and ``pretrained`` for torchvision and timm, a user callable's
    keyword parameters (with ``num_classes`` when it takes ``**kwargs``)."""
    check_arch(arch, name_key=name_key)
    form = parse_arch(arch)
    if form.kind == REGISTERED:
        return model_options(arch)
    if form.kind == TORCHVISION:
        return {"num_classes": IMAGENET_CLASSES, "pretrained": False}
    if form.kind == TIMM:
        return {"num_classes": None, "pretrained": False}
    named, takes_any = _parameters(_user_callable(arch, form, name_key))
    return {"num_classes": None, **named} if takes_any else named


def build_arch(arch: str, options: Mapping[str, Any], *, name_key: str = "model.arch",
               option_key: str = "model") -> BuiltModel:
    """Build model ``arch`` with ``options`` (``num_classes``, ``pretrained``, a registered builder's own); see the
    module docstring for the forms and the keys in messages."""
    check_arch(arch, name_key=name_key)
    form = parse_arch(arch)
    if form.kind == REGISTERED:
        return _build_registered(arch, options, option_key)
    built = _build_outside(arch, form, dict(options), (name_key, option_key))
    if getattr(built.model, "layer_naming", None) is None:  # models/api.py: what a model declares for pruning
        built.model.layer_naming = "modules"  # no numbering convention outside the registry: module names
    return built


def _build_registered(arch: str, options: Mapping[str, Any], option_key: str) -> BuiltModel:
    try:
        model = get_model(arch, **options)
    except UserError as exc:  # the registry's message begins with the option's name
        raise UserError(f"{option_key}.{exc}") from None
    return BuiltModel(model, {k: v for k, v in options.items() if k != "pretrained"})


def _build_outside(arch: str, form: ArchForm, options: dict[str, Any], keys: tuple[str, str]) -> BuiltModel:
    """A model from torchvision, timm or the user's own code."""
    option_key = keys[1]
    if form.kind == TORCHVISION:
        unknown = [k for k in options if k not in TORCHVISION_OPTIONS]
        if unknown:
            raise UserError(f"{option_key}.{unknown[0]}: not an option of model {arch!r}; it takes num_classes, "
                            "pretrained")
        try:
            model, rebuild = build_torchvision(form.name, label=arch, **options)
        except UserError as exc:  # "pretrained: ..."
            raise UserError(f"{option_key}.{exc}") from None
        except TypeError as exc:  # builder_options it does not take (a hand-edited checkpoint)
            raise UserError(f"{option_key}.builder_options: torchvision's {form.name} does not take them "
                            f"({_first_line(exc)})") from None
        return BuiltModel(model, rebuild)
    if form.kind == TIMM:
        return _build_timm(arch, form.name, options, keys)
    return _build_user(arch, form, options, keys)
