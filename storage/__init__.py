"""The stratalens store: Lance tables under one root URI. Never imports ray or torch."""

from storage.schema import embeddings_table
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
