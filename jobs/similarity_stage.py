"""The score stage's representation similarity between seeds: CKA and mutual k-NN.

When a spec's ``metrics.consistency`` lists ``cka``, ``cka_debiased`` or ``mknn``,
the score stage runs one :class:`SimilarityUnit` per (dataset, arch, probe epoch):
every layer of every seed against every layer of every other seed, on the clustered
split, computed by :func:`jobs.compare.embedding_matrices` (each layer table
scanned once per seed for CKA; mknn streamed, see :mod:`jobs.compare`). Its rows go
to ``pairs`` like the cross-seed ARI, with scope ``all``, method ``embedding`` and
overclustering factor 0, under one unit key, so a killed stage resumes per unit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pyarrow as pa

from jobs.compare import (
    EMBEDDING_METHOD,
    EMBEDDING_METRICS,
    MKNN_K,
    CompareUnit,
    Side,
    embedding_groups,
    embedding_matrices,
    embedding_records,
)
from storage import EmbeddingStore, PendingUnit
from storage import schema as S


@dataclass(frozen=True)
class SimilarityUnit:
    """Representation similarity between every pair of seeds of one (dataset, arch, epoch)."""

    experiment_id: str
    dataset_id: str
    arch: str
    epoch: int
    split: str
    runs: tuple[tuple[str, int], ...]  # (run_id, seed)
    metrics: tuple[str, ...]  # among EMBEDDING_METRICS
    k: int = MKNN_K

    @property
    def unit_key(self) -> str:
        return (
            f"pairs/{self.experiment_id}/{self.dataset_id}/{self.arch}/epoch{self.epoch}/"
            f"{self.split}/{EMBEDDING_METHOD}"
        )


def similarity_metrics(metrics) -> tuple[str, ...]:
    """The representation-similarity metrics among a spec's consistency metrics."""
    return tuple(m for m in metrics if m in EMBEDDING_METRICS)


def score_similarity(store: EmbeddingStore, unit: SimilarityUnit) -> list[PendingUnit]:
    """Every metric of ``unit`` between seeds A < B, for every (layer A, layer B)."""
    import torch

    sides = [
        Side(unit.experiment_id, unit.arch, unit.dataset_id, seed, unit.epoch, run_id, unit.split)
        for run_id, seed in sorted(unit.runs, key=lambda r: r[1])
    ]
    compare_units = [
        CompareUnit(a, b, metric)
        for a, b in itertools.combinations(sides, 2)
        for metric in unit.metrics
    ]
    (group,) = embedding_groups(store, compare_units)
    device = "cuda" if torch.cuda.is_available() else None
    matrices = embedding_matrices(store, group, unit.k, device)
    records = [r for u in compare_units for r in embedding_records(u, group.layers, matrices)]
    table = pa.Table.from_pylist(records, schema=S.PAIRS_SCHEMA.remove(0))
    return [store.write_fragments(S.PAIRS, unit.unit_key, table)]
