"""A small name -> builder registry shared by models, heads, margins and datasets."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (and short aliases) to builder callables.

    Registering a name twice is an error, not a warning: two builders behind one name would
    make `create("x")` depend on import order.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str | None = None, *, aliases: tuple[str, ...] = ()
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a builder under `name` (default: its `__name__`)."""

        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            for n in (key, *aliases):
                if n in self._builders or n in self._aliases:
                    raise KeyError(f"{self.kind} {n!r} is already registered")
            self._builders[key] = fn
            for alias in aliases:
                self._aliases[alias] = key
            return fn

        return decorator

    def resolve(self, name: str) -> str:
        """Return the canonical name for `name` or an alias; raise KeyError with suggestions."""
        if name in self._builders:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = sorted([*self._builders, *self._aliases])
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(known)})")

    def get(self, name: str) -> Callable[..., T]:
        return self._builders[self.resolve(name)]

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the object registered as `name` (or an alias) with `kwargs`."""
        return self.get(name)(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        """Canonical names matching a shell-style `pattern`, sorted."""
        return sorted(n for n in self._builders if fnmatch.fnmatch(n, pattern))

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        return name in self._builders or name in self._aliases
