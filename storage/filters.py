"""Build Lance SQL filter strings from equality conditions, with safe quoting."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def sql_literal(value: Any) -> str:
    """Render one Python scalar as a SQL literal."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("'", "''")
    return f"'{text}'"


def where(**conditions: Any) -> str | None:
    """AND together ``column = value`` (or ``column IN (...)`` for lists) conditions.

    ``None`` values are skipped, so optional query arguments pass straight through.

    >>> where(split="test", seed=[0, 1], epoch=None)
    "split = 'test' AND seed IN (0, 1)"
    """
    parts = []
    for column, value in conditions.items():
        if value is None:
            continue
        if isinstance(value, Iterable) and not isinstance(value, str | bytes):
            values = list(value)
            parts.append(f"{column} IN ({', '.join(sql_literal(v) for v in values)})")
        else:
            parts.append(f"{column} = {sql_literal(value)}")
    return " AND ".join(parts) if parts else None
