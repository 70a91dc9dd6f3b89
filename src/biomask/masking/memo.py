"""A thread-safe memo: each value computed once, by whoever asks first.

Masking shares values at two scopes: per batch between the columns of that batch (the
entity offsets two ``date_shift`` columns both need, :class:`~biomask.masking.registry.BatchMemo`)
and per run between every operator of every table (the text lexicon,
:meth:`~biomask.masking.services.RunServices.shared`). Both ask the same of it: the first
caller computes, the others wait for that result instead of repeating the work, also when
they run on different threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Memo"]

V = TypeVar("V")


class Memo:
    """Values by key, each computed once (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Any, threading.Lock] = {}
        self._values: dict[Any, Any] = {}

    def get(self, key: Any, compute: Callable[[], V]) -> V:
        """The value stored under ``key``, computing it with ``compute()`` the first time."""
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                self._values[key] = compute()
            value: V = self._values[key]
            return value

    def put(self, key: Any, value: Any) -> None:
        """Offer a value that others may use (:meth:`peek`)."""
        with self._lock:
            self._values.setdefault(key, value)

    def peek(self, key: Any) -> Any | None:
        """The value stored under ``key``, or None (never computes anything)."""
        with self._lock:
            return self._values.get(key)
