"""Named registries of pluggable parts (losses, poolings, index backends, funnel operations)."""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name, in registration order (PyTorch-BigGraph's ``PluginRegistry``).

    ``provider`` names the module that registers the built-in entries; it is imported at the first
    lookup, so a module low in the layers (the config) can validate names without importing it first.
    """

    def __init__(self, kind: str, provider: str | None = None):
        self.kind, self._provider, self._entries = kind, provider, {}

    def _load(self) -> dict[str, T]:
        if self._provider is not None:
            provider, self._provider = self._provider, None
            importlib.import_module(provider)
        return self._entries

    def register(self, name: str, entry: T, replace: bool = False) -> T:
        """Add ``entry`` under ``name``; a name already taken is an error unless ``replace``."""
        entries = self._load()
        if name in entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered; pass replace=True to replace it")
        entries[name] = entry
        return entry

    def register_as(self, name: str, replace: bool = False) -> Callable[[T], T]:
        """Decorator form of :meth:`register`."""
        return lambda entry: self.register(name, entry, replace)

    def unregister(self, name: str) -> T:
        return self._load().pop(name)

    def get(self, name: str) -> T:
        """The entry under ``name``; an unknown name is a ``KeyError`` that lists the valid ones."""
        try:
            return self._load()[name]
        except KeyError:
            raise KeyError(self.unknown(name)) from None

    def unknown(self, name: object) -> str:
        """The message for an unknown name: what was asked for and the valid choices."""
        return f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}"

    def check(self, name: str) -> str:
        """``name`` itself when registered; a ``ValueError`` naming the valid ones otherwise (for validators)."""
        if name not in self._load():
            raise ValueError(self.unknown(name))
        return name

    def names(self) -> list[str]:
        return list(self._load())

    def items(self) -> list[tuple[str, T]]:
        return list(self._load().items())

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    @contextmanager
    def temporarily(self, name: str, entry: T) -> Iterator[T]:
        """Register ``entry`` for the duration of a ``with`` block, then restore what was there (tests)."""
        before = self._load().get(name)
        self.register(name, entry, replace=True)
        try:
            yield entry
        finally:
            if before is None:
                self._entries.pop(name, None)
            else:
                self._entries[name] = before


LOSSES: Registry = Registry("loss", provider="mixrec.model.functional")
POOLINGS: Registry = Registry("pooling", provider="mixrec.model.functional")
INDEX_BACKENDS: Registry = Registry("index kind", provider="mixrec.index")
FUNNEL_OPS: Registry = Registry("funnel operation", provider="mixrec.funnel.ops")
