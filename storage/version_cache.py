"""Values derived from one version of a table, remembered within a budget.

A version of a Lance table never changes, so what is computed from it (a sorted map of
its rows, a copy of its key columns, the layout of its files, its vector index) stays
right for as long as it is kept. A :class:`VersionCache` keeps such values for the most
recently asked keys (a :func:`storage.tables.version_key` plus whatever else the value
depends on) until their sizes together reach its budget: bytes (``nbytes``, the
default) or entries (``size=one_entry``). A value that would not fit the budget on its
own is not kept, and that answer is remembered too, so that a large table costs one
row count (``estimate``) and is not read again. One thread builds a missing value while
others asking for it wait: a layer's first requests arriving together read it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

V = TypeVar("V")
TOO_LARGE_ENTRIES = 256  # keys remembered as too large for the budget


def nbytes(value: Any) -> int:
    """A value's size in bytes (its ``nbytes``)."""
    return value.nbytes


def one_entry(value: Any) -> int:
    """A value's size when the budget counts entries."""
    return 1


class VersionCache(Generic[V]):
    """Values, least recently asked dropped first beyond ``budget`` (sizes by ``size``)."""

    def __init__(self, budget: int, size: Callable[[V], int] = nbytes) -> None:
        self.budget = budget
        self._size = size
        self._values: OrderedDict[Hashable, V] = OrderedDict()
        self._too_large: OrderedDict[Hashable, None] = OrderedDict()
        self._building: dict[Hashable, Future] = {}
        self._lock = threading.Lock()

    def get(
        self,
        key: Hashable,
        build: Callable[[], V],
        estimate: Callable[[], int] | None = None,
    ) -> V | None:
        """The value of ``key``, built by ``build`` when not kept; None when it would not
        fit the budget: by ``estimate`` (its size, asked before a build) or, when the
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
            value = self._build(key, build, estimate)
        except BaseException as error:
            with self._lock:
                self._building.pop(key).set_exception(error)
            raise
        with self._lock:
            self._building.pop(key).set_result(value)
        return value

    def _build(
        self, key: Hashable, build: Callable[[], V], estimate: Callable[[], int] | None
    ) -> V | None:
        fits = estimate is None or estimate() <= self.budget
        value = build() if fits else None
        with self._lock:
            if not fits or self._size(value) > self.budget:
                self._too_large[key] = None
                while len(self._too_large) > TOO_LARGE_ENTRIES:
                    self._too_large.popitem(last=False)
                return value
            self._values[key] = value
            while self.used > self.budget:
                self._values.popitem(last=False)
        return value

    @property
    def used(self) -> int:
        """Size of the values kept, in the budget's unit."""
        return sum(self._size(value) for value in self._values.values())

    def __len__(self) -> int:
        return len(self._values)
