"""The stratalens store: Lance tables under one root URI. Never imports ray or torch."""

import os

# Workers append fragments to tables the committer may not have created yet, which
# Lance reports with a warning per write; keep its log to errors unless asked. Set
# before any module of this package imports lance.
os.environ.setdefault("LANCE_LOG", "error")

from storage.schema import embeddings_table  # noqa: E402
from storage.store import EmbeddingStore, PendingUnit, StoreError, embedding_matrix

DEFAULT_STORE = "./stratalens-store"

__all__ = [
    "DEFAULT_STORE",
    "EmbeddingStore",
    "PendingUnit",
    "StoreError",
    "embedding_matrix",
    "embeddings_table",
]
