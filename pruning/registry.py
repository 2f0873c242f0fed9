"""Pruning-method registry: the experiment file names a method (``prune.method``), this finds it.

A method registers itself with :func:`register_method`; callers look it up with :func:`get_method`.
As with the model registry, this replaces an if/elif chain over names, so adding a method (filter
pruning, say) touches only the file that defines it, and an unknown name can list the real ones.

The contract a registered method follows (checked at registration where a signature can show it):

* It is a callable ``method(model, *, option=default, ...) -> PruneOutcome``: the model is the one
  positional parameter and every method-specific option (``percent``, ``scope``, ...) is
  keyword-only, so :func:`method_options` can read them and the config boundary can pass
  ``**options`` without handing library code the config object.
* It prunes ``model`` **in place**: masking zeroes weights, structural pruning replaces modules
  inside it (as Torch-Pruning does). The caller therefore never has to swap model objects.
* It returns an object with a ``masks`` attribute (:class:`PruneOutcome`): ``{parameter name: bool
  tensor, True = kept}`` for the weights that fine-tuning must hold at zero (give them to
  :class:`pruning.masks.MaskKeeper`), empty when the method leaves nothing masked (physical removal).
  Everything else on the outcome (thresholds, removed channels, ...) is method-specific.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import torch

from utils.core.errors import UserError


class PruneOutcome(Protocol):
    """What every pruning method returns: at least the masks that fine-tuning has to keep applied."""

    @property
    def masks(self) -> Mapping[str, torch.Tensor]:
        """``{parameter name: bool tensor}``, True = kept; empty when nothing stays masked."""
        ...


Method = TypeVar("Method", bound=Callable[..., PruneOutcome])

_METHODS: dict[str, Callable[..., PruneOutcome]] = {}


def register_method(name: str) -> Callable[[Method], Method]:
    """Register a pruning method under ``name`` (see the module docstring for the contract).

    A duplicate name or a signature that breaks the contract is a programming error, so it raises
    ``ValueError``/``TypeError`` at import time rather than a :class:`UserError` at run time.
    """

    def decorator(method: Method) -> Method:
        if name in _METHODS:
            raise ValueError(f"pruning method {name!r} is registered twice "
                             f"({_METHODS[name].__module__} and {method.__module__})")
        params = list(inspect.signature(method).parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if not params or params[0].kind not in positional:
            raise TypeError(f"pruning method {name!r}: the first parameter must be the model, positional")
        for param in params[1:]:
            if param.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"pruning method {name!r}: option {param.name!r} must be keyword-only")
        _METHODS[name] = method
        return method

    return decorator


def list_methods() -> list[str]:
    """Names of all registered pruning methods, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> Callable[..., PruneOutcome]:
    """The method registered as ``name``; an unknown name is a :class:`UserError` listing the known ones."""
    try:
        return _METHODS[name]
    except KeyError:
        raise UserError(f"unknown pruning method {name!r}; known methods: {', '.join(list_methods())}") from None


def method_options(name: str) -> dict[str, Any]:
    """The keyword options method ``name`` takes, with their defaults (``inspect.Parameter.empty`` if none)."""
    params = list(inspect.signature(get_method(name)).parameters.values())[1:]
    return {param.name: param.default for param in params}
