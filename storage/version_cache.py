"""Values derived from one version of a table, remembered within a byte budget.

A version of a Lance table never changes, so what is computed from it (a sorted map of
its rows, a copy of its key columns) stays right for as long as it is kept. A
:class:`VersionCache` keeps such values for the most recently asked keys (a
:func:`storage.tables.version_key` plus whatever else the value depends on) until their
bytes together reach its budget; a value that would not fit the budget on its own is
not built, and that answer is remembered too, so that a large table costs one row count.
One thread builds a missing value while others asking for it wait: a layer's first
requests arriving together scan it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
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
        self._building: dict[Hashable, Future] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, estimate: Callable[[], int], build: Callable[[], V]) -> V | None:
        """The value of ``key``, built by ``build`` when not kept; None when it would not
        fit the budget: by ``estimate`` (its bytes, asked before a build) or, when the
        estimate fell short, by the built value (returned this once, not kept). A key is
        built by one thread at a time; others asking for it meanwhile wait for that build.
        """
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            if key in self._too_large:
                return None
            building = self._building.get(key)
            if building is None:
                self._building[key] = Future()
        if building is not None:
            return building.result()
        try:
            value = self._build(key, estimate, build)
        except BaseException as error:
            with self._lock:
                self._building.pop(key).set_exception(error)
            raise
        with self._lock:
            self._building.pop(key).set_result(value)
        return value

    def _build(
        self, key: Hashable, estimate: Callable[[], int], build: Callable[[], V]
    ) -> V | None:
        value = build() if estimate() <= self.budget else None
        with self._lock:
            if value is None or value.nbytes > self.budget:
                self._too_large[key] = None
                while len(self._too_large) > TOO_LARGE_ENTRIES:
                    self._too_large.popitem(last=False)
                return value
            self._values[key] = value
            while self.nbytes > self.budget:
                self._values.popitem(last=False)
        return value

    @property
    def nbytes(self) -> int:
        """Bytes of the values kept."""
        return sum(value.nbytes for value in self._values.values())

    def __len__(self) -> int:
        return len(self._values)
