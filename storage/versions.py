"""Versions of the store's tables: every commit is a Lance version; tags name them.

A tag keeps its version through ``compact``, and every reader takes
``version=`` (a number or a tag) to read a table as it was.
"""

from __future__ import annotations

import re

from storage.tables import StoreError, StoreTables

# Tag names Lance stores safely, none all digits (``version="12"`` reads as version 12).
TAG_NAME = re.compile(r"(?![0-9]+$)[A-Za-z0-9._-]+")


class StoreVersions(StoreTables):
    """The version and tag methods of :class:`storage.EmbeddingStore`."""

    def version(self, table: str) -> int | None:
        ds = self.dataset(table)
        return None if ds is None else ds.version

    def tag(self, table: str, name: str, version: int | None = None) -> int:
        """Name a version of ``table`` (default: the current one) so it can be read later.

        An existing tag of that name moves to the new version. ``compact`` keeps tagged
        versions.
        """
        _check_tag_name(name)
        ds = self.dataset(table)
        if ds is None:
            raise StoreError(f"table {table!r} does not exist in store {self.root!r}")
        version = ds.version if version is None else version
        if name in ds.tags.list():
            ds.tags.update(name, version)
        else:
            ds.tags.create(name, version)
        return version

    def tag_all(self, name: str) -> dict[str, int]:
        """Tag the current version of every table (a snapshot); {table: version}."""
        _check_tag_name(name)
        return {table: self.tag(table, name) for table in self.list_tables()}

    def tags(self) -> dict[str, dict[str, int]]:
        """Every tag in the store: {name: {table: version}}."""
        found: dict[str, dict[str, int]] = {}
        for table in self.list_tables():
            for name, info in self.dataset(table).tags.list().items():
                found.setdefault(name, {})[table] = info["version"]
        return dict(sorted(found.items()))


def _check_tag_name(name: str) -> None:
    if not TAG_NAME.fullmatch(name):
        raise StoreError(
            f"tag name {name!r} is not allowed; use ASCII letters, digits, '.', '-' or '_', "
            "and not only digits (those read as version numbers)"
        )
