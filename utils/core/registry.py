"""One registry class for every name an experiment file picks: models, datasets, importance criteria, pruning
methods and their schedules.

A registry replaces an if/elif chain over names (as torchvision's ``register_model``/``get_model`` and timm's
``create_model`` do): adding an entry touches only the file that defines it, and an unknown name is an error that
lists the names that exist. Torch-free, so the config boundary can use it before ``torch`` is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from utils.core.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind (``what``: ``"model"``, ``"dataset"``...) registered under unique names.

    ``check`` (optional) validates an entry when it is registered; it raises for a programming error (a builder
    whose signature breaks the registry's contract), so such mistakes fail at import time, not in a user's run.
    """

    def __init__(self, what: str, *, check: Callable[[str, T], None] | None = None) -> None:
        self.what = what
        self._check = check
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (default: its ``__name__``)."""

        def decorator(entry: T) -> T:
            self.add(name if name is not None else entry.__name__, entry)  # type: ignore[attr-defined]
            return entry

        return decorator

    def add(self, name: str, entry: T) -> None:
        """Register ``entry`` under ``name``; a name registered twice is a programming error (ValueError)."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        if self._check is not None:
            self._check(name, entry)
        self._entries[name] = entry

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name is a :class:`UserError` listing the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.what} {name!r}; known {self.what}s: {', '.join(self.names())}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
