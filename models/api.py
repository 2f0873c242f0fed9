"""Model registry: every architecture is built by name from the experiment file.

A builder registers itself with :func:`register_model`; :func:`get_model` builds a registered name. The
registry is the project's one :class:`~utils.core.registry.Registry`, so adding an architecture touches
only the file that defines it, and the error for an unknown name always lists the names that exist. A
``model.arch`` string (a registered name, or ``torchvision:``, ``timm:``, ``<module>:<callable>``) is built by
:func:`models.sources.build_arch`, which calls :func:`get_model` for registered names.

Builders take keyword-only options. That lets the registry read each builder's options and
defaults from its signature (:func:`model_options`) and reject a misspelt option with a message
that lists the real ones, instead of letting ``**kwargs`` swallow a typo.

What the pruning library needs to know about an architecture is declared on the model class, so that
:mod:`pruning` never imports a model class: ``input_size`` (``(C, H, W)`` of one example input, used to
trace shapes; undeclared: ImageNet's 3x224x224) and ``layer_naming`` (the scheme of the layer names users
write in ``prune.layers``: ``"numbered"`` or ``"blocks"``, see :mod:`pruning.naming`). A user's own network
may declare them too; in a run, ``model.input_size`` or else the data's image size is what the model is traced
and checked with (``pruner_exp.py --list-layers``, which loads no data, falls back on the declared size).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from utils.core.errors import UserError
from utils.core.registry import Registry

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


def _check_builder(name: str, builder: Callable[..., nn.Module]) -> None:
    """Every option keyword-only with a default: a positional parameter would make :func:`model_options` and
    the option check in :func:`get_model` lie. Programming errors, so ``TypeError``, not ``UserError``."""
    for param in inspect.signature(builder).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"model builder {name!r}: parameter {param.name!r} must be keyword-only")
        if param.default is inspect.Parameter.empty:
            raise TypeError(f"model builder {name!r}: option {param.name!r} needs a default")


_MODELS: Registry[Callable[..., nn.Module]] = Registry("model", check=_check_builder)


def register_model(name: str | None = None) -> Callable[[Builder], Builder]:
    """Register a keyword-only model builder under ``name`` (default: the function's name).

    The builder's signature is checked once, at import time; a name registered twice is a ``ValueError``.
    """
    return _MODELS.register(name)  # type: ignore[return-value]


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return _MODELS.names()


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The registered builder function of model ``name`` (for introspection; build with :func:`get_model`)."""
    return _MODELS.get(name)


def model_options(name: str) -> dict[str, Any]:
    """The options model ``name`` takes, with their defaults (read from the builder's signature)."""
    params = inspect.signature(get_model_builder(name)).parameters.values()
    return {param.name: param.default for param in params}


def get_model(name: str, **options: Any) -> nn.Module:
    """Build model ``name`` with ``options``; unknown names and options are :class:`UserError`.

    The option message starts with the option's own name so that the config loader can prefix the
    dotted key (``model.``) and the file name, giving ``run.json: model.shortcutt: ...``.
    """
    builder = get_model_builder(name)
    accepted = model_options(name)
    for option in options:
        if option not in accepted:
            takes = ", ".join(accepted) if accepted else "no options"
            raise UserError(f"{option}: not an option of model {name!r}; it takes {takes}")
    return builder(**options)
