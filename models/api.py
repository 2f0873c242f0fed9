"""Model registry: every architecture is built by name from the experiment file.

A builder registers itself with :func:`register_model`; callers build with :func:`get_model`. This
replaces an if/elif chain over names (as torchvision's ``models/_api.py`` and timm's
``create_model`` do), so adding an architecture touches only the file that defines it, and the
error for an unknown name can always list the names that exist.

Builders take keyword-only options. That lets the registry read each builder's options and
defaults from its signature (:func:`model_options`) and reject a misspelt option with a message
that lists the real ones, instead of letting ``**kwargs`` swallow a typo.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from utils.core.errors import UserError

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | None = None) -> Callable[[Builder], Builder]:
    """Register a keyword-only model builder under ``name`` (default: the function's name).

    Registration checks the builder's signature once, at import time, because a positional
    parameter would make :func:`model_options` and the option check in :func:`get_model` lie.
    These are programming errors, so they raise ``TypeError``/``ValueError``, not ``UserError``.
    """

    def decorator(builder: Builder) -> Builder:
        key = builder.__name__ if name is None else name
        if key in _MODELS:
            raise ValueError(f"model {key!r} is registered twice ({_MODELS[key].__module__} and {builder.__module__})")
        for param in inspect.signature(builder).parameters.values():
            if param.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"model builder {key!r}: parameter {param.name!r} must be keyword-only")
            if param.default is inspect.Parameter.empty:
                raise TypeError(f"model builder {key!r}: option {param.name!r} needs a default")
        _MODELS[key] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The registered builder function of model ``name`` (for introspection; build with :func:`get_model`)."""
    try:
        return _MODELS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


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


def check_widths(widths: Any, *, count: int, what: str) -> list[int] | None:
    """Validate a builder's ``widths`` option: ``None`` or ``count`` positive ints (one per ``what``).

    ``widths`` is how a physically pruned architecture is rebuilt from its checkpoint, so a wrong
    length must fail here with the expected count rather than as a shape error deep in ``forward``.
    """
    if widths is None:
        return None
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__"):
        raise UserError(f"widths: expected a list of {count} positive integers (one per {what}), got {widths!r}")
    values = list(widths)
    if len(values) != count:
        raise UserError(f"widths: expected {count} integers (one per {what}), got {len(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise UserError(f"widths: every width must be a positive integer, got {value!r}")
    return [int(value) for value in values]
