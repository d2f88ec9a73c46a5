"""Values derived from one version of a table, remembered within a byte budget.

A version of a Lance table never changes, so what is computed from it (a sorted map of
its rows, a copy of its key columns) stays right for as long as it is kept. A
:class:`VersionCache` keeps such values for the most recently asked keys (a
:func:`storage.tables.version_key` plus whatever else the value depends on) until their
bytes together reach its budget; a value that would not fit the budget on its own is
not built, and that answer is remembered too, so that a large table costs one row count.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar


class _Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


V = TypeVar("V", bound=_Sized)
TOO_LARGE_ENTRIES = 256  # keys remembered as too large for the budget


class VersionCache(Generic[V]):
    """Values with an ``nbytes``, least recently asked dropped first beyond ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._values: OrderedDict[Hashable, V] = OrderedDict()
        self._too_large: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, estimate: Callable[[], int], build: Callable[[], V]) -> V | None:
        """The value of ``key``, built by ``build`` when not kept; None when ``estimate``
        (its bytes, asked only before a build) exceeds the budget. Two threads asking for
        a missing key at once may both build it; the values are equal."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            if key in self._too_large:
                return None
        if estimate() > self.budget:
            with self._lock:
                self._too_large[key] = None
                while len(self._too_large) > TOO_LARGE_ENTRIES:
                    self._too_large.popitem(last=False)
            return None
        value = build()
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while self._values and self.nbytes > self.budget:  # the new value too, if need be
                self._values.popitem(last=False)
        return value

    @property
    def nbytes(self) -> int:
        """Bytes of the values kept."""
        return sum(value.nbytes for value in self._values.values())

    def __len__(self) -> int:
        return len(self._values)
