"""`stratalens compare`: layer x layer scores between any two runs over the same data.

A *side* is one run at one probe epoch. Every pair of sides that share a dataset and
a clustered split is compared: seeds, archs of one experiment, different experiments,
and probe epochs of one run. Each (side A, side B, metric) is one unit of the
``pairs`` table (key ``compare/<metric>/<run A>/epoch<e>/<run B>/epoch<e>``), so a
compare that stops part-way resumes where it stopped.

- ``ari``, ``ami``, ``nmi``: between the stored clusterings of every layer of A and
  every layer of B, for every (scope, method, overclustering factor) both sides have;
- ``cka``, ``cka_debiased``: linear CKA of the stored embeddings, streamed: every
  layer table is scanned once per side, whatever the number of pairs, into one
  :class:`~services.metrics.CKAAccumulator` (torch, on CUDA when present);
- ``mknn``: mutual k-NN alignment (exact, cosine), each (side, layer) streamed once
  when it fits ``services.metrics.similarity.KNN_QUERY_BYTES`` (512 MiB of float64:
  50,000 x 1,342 dims), else in query blocks of that size (blocks + 1 scans).

Embedding scores need both sides to hold the same samples (matched by
``sample_index``); anything else is refused with one sentence. Rows are read in the
first side's stored order: tables stored in it are scanned, the others taken by row
id block by block (never read whole), so memory does not grow with the samples.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from actors.models import probe_layers
from services.metrics import CKAAccumulator, knn_overlap, pairwise_scores, streamed_neighbours
from storage import EmbeddingStore, PendingUnit, embedding_matrix
from storage import schema as S
from storage.filters import where
from storage.memory import return_large_buffers_to_the_os
from storage.schema import ROW_ID
from storage.vectors import take_vectors

CLUSTERING_METRICS = ("ari", "ami", "nmi")
EMBEDDING_METRICS = ("cka", "cka_debiased", "mknn")
COMPARE_METRICS = CLUSTERING_METRICS + EMBEDDING_METRICS
CKA_BATCH_ROWS = 4096  # rows of every (side, layer) held at once while accumulating CKA
CKA_READAHEAD = 1  # batches Lance decodes ahead of each of the (side, layer) streams
MKNN_K = 10
EMBEDDING_SCOPE = "all"  # scope / method / factor of embedding-score rows
EMBEDDING_METHOD = "embedding"
_FIELDS = S.PAIRS_SCHEMA.remove(0)


class CompareError(ValueError):
    """A compare that cannot run as asked (unknown experiment, mismatched data, ...)."""


@dataclass(frozen=True, order=True)
class Side:
    """One run at one probe epoch, on the split its clusterings were made of."""

    experiment_id: str
    arch: str
    dataset_id: str
    seed: int
    epoch: int
    run_id: str
    split: str

    @property
    def key(self) -> str:
        return f"{self.run_id}/epoch{self.epoch}"


@dataclass(frozen=True)
class CompareUnit:
    """One metric between every layer of side ``a`` and every layer of side ``b``."""

    a: Side
    b: Side
    metric: str

    @property
    def unit_key(self) -> str:
        return f"compare/{self.metric}/{self.a.key}/{self.b.key}"


# -- what to compare ---------------------------------------------------------------
def list_sides(
    store: EmbeddingStore,
    experiments: list[str],
    *,
    archs: list[str] | None = None,
    epochs: list[int] | None = None,
) -> list[Side]:
    """Every (run, probe epoch) of ``experiments`` with clusterings, filtered by arch and epoch."""
    known = set(store.read(S.EXPERIMENTS, columns=["experiment_id"]).column(0).to_pylist())
    unknown = [e for e in experiments if e not in known]
    if unknown:
        raise CompareError(
            f"unknown experiment(s) {unknown} in store {store.root!r}; stored are "
            f"{sorted(known) or 'none'} (see `stratalens ls`)"
        )
    runs = store.read(
        S.RUNS,
        columns=["run_id", "experiment_id", "arch", "dataset_id", "seed"],
        filter=where(experiment_id=experiments),
    ).to_pylist()
    stored_archs = sorted({r["arch"] for r in runs})
    if archs:
        missing = [a for a in archs if a not in stored_archs]
        if missing:
            raise CompareError(
                f"arch(s) {missing} have no finished runs in {experiments}; "
                f"choose from {stored_archs}"
            )
        runs = [r for r in runs if r["arch"] in archs]
    rows = store.read(
        S.CLUSTERINGS,
        columns=["run_id", "epoch", "split"],
        filter=where(run_id=[r["run_id"] for r in runs]) if runs else "false",
    )
    probed = set(zip(*(rows.column(c).to_pylist() for c in rows.column_names), strict=True))
    stored_epochs = sorted({e for _, e, _ in probed})
    if epochs:
        missing = [e for e in epochs if e not in stored_epochs]
        if missing:
            raise CompareError(
                f"epoch(s) {missing} were not probed in {experiments}; choose from {stored_epochs}"
            )
    by_run = {r["run_id"]: r for r in runs}
    return sorted(
        Side(
            experiment_id=by_run[run_id]["experiment_id"],
            arch=by_run[run_id]["arch"],
            dataset_id=by_run[run_id]["dataset_id"],
            seed=int(by_run[run_id]["seed"]),
            epoch=int(epoch),
            run_id=run_id,
            split=split,
        )
        for run_id, epoch, split in probed
        if not epochs or epoch in epochs
    )


def compare_units(sides: list[Side], metrics: tuple[str, ...]) -> list[CompareUnit]:
    """Every pair of sides over the same (dataset, split), once, for every metric.

    Several experiments must each share a dataset and split with another one.
    """
    unknown = [m for m in metrics if m not in COMPARE_METRICS]
    if unknown or not metrics:
        raise CompareError(
            f"unknown compare metric(s) {unknown or metrics}; choose from {list(COMPARE_METRICS)}"
        )
    groups: dict[tuple[str, str], list[Side]] = {}
    for side in sides:
        groups.setdefault((side.dataset_id, side.split), []).append(side)
    experiments = sorted({s.experiment_id for s in sides})
    if len(experiments) > 1:
        data = {
            e: sorted({g for g, members in groups.items() for s in members if s.experiment_id == e})
            for e in experiments
        }
        for experiment in experiments:
            partners = {
                s.experiment_id
                for g in data[experiment]
                for s in groups[g]
                if s.experiment_id != experiment
            }
            if not partners:
                raise CompareError(
                    f"experiment {experiment!r} shares no dataset and split with the others "
                    f"(its (dataset, split) are {data[experiment]}, theirs "
                    f"{sorted({g for e in experiments if e != experiment for g in data[e]})}); "
                    "compare experiments over the same data"
                )
    units = [
        CompareUnit(a, b, metric)
        for members in groups.values()
        for a, b in itertools.combinations(sorted(members), 2)
        for metric in metrics
    ]
    if not units:
        raise CompareError(
            f"the {len(sides)} run(s) and epoch(s) selected form no pair over the same dataset "
            "and split; select at least two seeds, archs, epochs or experiments"
        )
    return units


# -- the driver -----------------------------------------------------------------
def run_compare(
    store: EmbeddingStore,
    experiments: list[str],
    *,
    archs: list[str] | None = None,
    epochs: list[int] | None = None,
    metrics: tuple[str, ...] = ("ari", "cka"),
    k: int = MKNN_K,
    device: str | None = None,
) -> tuple[int, int]:
    """Compute and commit every pending compare unit; (units committed, units already there)."""
    units = compare_units(list_sides(store, experiments, archs=archs, epochs=epochs), metrics)
    done = store.committed_keys(S.PAIRS)
    pending = [u for u in units if u.unit_key not in done]
    if not pending:
        return 0, len(units)
    # Everything that can refuse the compare is checked before the first commit.
    clustering = list(
        _clustering_units(store, [u for u in pending if u.metric in CLUSTERING_METRICS])
    )
    groups = embedding_groups(store, [u for u in pending if u.metric in EMBEDDING_METRICS])
    _add_side_b_columns(store)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else None
    committed = sum(int(store.commit(unit)) for unit in clustering)
    for unit in _embedding_units(store, groups, k, device):
        committed += int(store.commit(unit))
    store.optimize(S.PAIRS)
    return committed, len(units) - len(pending)


def _add_side_b_columns(store: EmbeddingStore) -> None:
    """Give a ``pairs`` table written before side-B columns existed those columns.

    Its rows are cross-seed pairs within one experiment, arch and epoch, so side B's
    keys are side A's.
    """
    ds = store.dataset(S.PAIRS)
    if ds is not None:
        missing = {k: v for k, v in S.PAIRS_SIDE_B.items() if k not in ds.schema.names}
        if missing:
            ds.add_columns(missing)


def _record(unit: CompareUnit, layer_a, layer_b, scope, method, factor, value) -> dict:
    a, b = unit.a, unit.b
    return {
        "experiment_id": a.experiment_id,
        "dataset_id": a.dataset_id,
        "arch": a.arch,
        "epoch": a.epoch,
        "split": a.split,
        "scope": scope,
        "method": method,
        "overclustering_factor": factor,
        "run_a": a.run_id,
        "seed_a": a.seed,
        "layer_a": layer_a,
        "run_b": b.run_id,
        "seed_b": b.seed,
        "layer_b": layer_b,
        "metric": unit.metric,
        "value": float(value),
        "experiment_b": b.experiment_id,
        "arch_b": b.arch,
        "epoch_b": b.epoch,
    }


def _pending_unit(store: EmbeddingStore, unit: CompareUnit, records: list[dict]) -> PendingUnit:
    table = pa.Table.from_pylist(records, schema=_FIELDS)
    return store.write_fragments(S.PAIRS, unit.unit_key, table)


# -- ARI / AMI / NMI between clusterings ----------------------------------------------
def _clusterings(store: EmbeddingStore, side: Side) -> dict[tuple, dict[str, dict]]:
    """(scope, method, factor) -> layer -> row of the side's clusterings."""
    rows = store.read(
        S.CLUSTERINGS,
        columns=["layer", "scope", "method", "overclustering_factor", "sample_index", "labels"],
        filter=where(run_id=side.run_id, epoch=side.epoch, split=side.split),
    ).to_pylist()
    out: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        key = (row["scope"], row["method"], row["overclustering_factor"])
        out.setdefault(key, {})[row["layer"]] = row
    return out


def _clustering_units(store: EmbeddingStore, units: list[CompareUnit]) -> Iterator[PendingUnit]:
    by_pair: dict[tuple[Side, Side], list[CompareUnit]] = {}
    for unit in units:
        by_pair.setdefault((unit.a, unit.b), []).append(unit)
    for (a, b), members in by_pair.items():
        metrics = tuple(u.metric for u in members)
        rows_a, rows_b = _clusterings(store, a), _clusterings(store, b)
        records: dict[str, list[dict]] = {m: [] for m in metrics}
        for key in sorted(set(rows_a) & set(rows_b)):
            layers_a = _ordered(a.arch, rows_a[key])
            layers_b = _ordered(b.arch, rows_b[key])
            labelings = _labelings_by_sample(
                [rows_a[key][layer] for layer in layers_a]
                + [rows_b[key][layer] for layer in layers_b],
                f"clusterings of {a.key} and {b.key} in scope {key[0]!r}",
            )
            scores = pairwise_scores(labelings, metrics)
            for unit in members:
                for (i, la), (j, lb) in itertools.product(
                    enumerate(layers_a), enumerate(layers_b, start=len(layers_a))
                ):
                    records[unit.metric].append(
                        _record(unit, la, lb, *key, scores[unit.metric][i, j])
                    )
        if not records[metrics[0]]:
            raise CompareError(
                f"runs {a.key} and {b.key} have no clusterings of the same scope, method and "
                "factor; cluster both with one method and factor first"
            )
        for unit in members:
            yield _pending_unit(store, unit, records[unit.metric])


def _ordered(arch: str, layers) -> list[str]:
    """``layers`` in the arch's probe order (input to output), unknown names last."""
    try:
        known = probe_layers(arch)
    except ValueError:  # an arch no longer registered: name order
        known = ()
    order = {name: i for i, name in enumerate(known)}
    return sorted(layers, key=lambda name: (order.get(name, len(order)), name))


def _labelings_by_sample(rows: list[dict], what: str) -> list[np.ndarray]:
    """Every clustering's labels in sample_index order; refuse differing sample sets."""
    labelings, reference = [], None
    for row in rows:
        index = np.asarray(row["sample_index"])
        order = np.argsort(index)
        if reference is None:
            reference = index[order]
        elif not np.array_equal(reference, index[order]):
            raise CompareError(
                f"{what} cover different samples; ARI/AMI need the same samples on both sides"
            )
        labelings.append(np.asarray(row["labels"])[order])
    return labelings


# -- CKA / mutual k-NN between embeddings ---------------------------------------------
def _stored_layers(store: EmbeddingStore, side: Side) -> list[str]:
    prefix = f"{S.EMBEDDINGS_PREFIX}/{side.experiment_id}/{side.arch}/"
    stored = [t[len(prefix) :] for t in store.list_tables() if t.startswith(prefix)]
    if not stored:
        raise CompareError(
            f"run {side.key} has no stored embeddings; run its spec to extract them first"
        )
    return _ordered(side.arch, stored)


def side_sample_index(store: EmbeddingStore, side: Side, layer: str) -> np.ndarray:
    """The ``sample_index`` column of one side's layer, in stored row order."""
    rows = store.embeddings(
        side.experiment_id,
        side.arch,
        layer,
        columns=["sample_index"],
        run_id=side.run_id,
        epoch=side.epoch,
        split=side.split,
    )
    return rows.column(0).to_numpy()


@dataclass(frozen=True)
class _Taken:
    """Where a (side, layer) stored out of the reference order keeps the reference's
    samples: their row ids, in reference order, valid for ``version`` of its table."""

    version: int
    row_ids: np.ndarray


def _sample_orders(
    store: EmbeddingStore, sides: list[Side], layers
) -> dict[tuple[Side, str], _Taken | None]:
    """How to read each (side, layer) in the reference order, the stored row order of
    the first side's first layer: None where its rows are in that order (a scan), else
    a :class:`_Taken`. Raises if the sample sets differ.

    Each (side, layer)'s sample_index and row ids come from one read of one version."""
    reference, orders = None, {}
    for side in sides:
        for layer in layers[side]:
            ds = store.layer_dataset(side.experiment_id, side.arch, layer)
            rows = store.row_ids(
                ds, where(run_id=side.run_id, epoch=side.epoch, split=side.split), ["sample_index"]
            )
            index = rows.column("sample_index").to_numpy()
            if reference is None:
                reference = (side, index, np.argsort(index, kind="stable"))
                orders[(side, layer)] = None
                continue
            ref_side, ref_index, ref_order = reference
            order = np.argsort(index, kind="stable")
            if (index[order][1:] == index[order][:-1]).any():
                raise CompareError(
                    f"{side.key} {layer} holds a sample_index more than once in its "
                    f"{side.split} rows; rewrite that run (`stratalens run --fresh`)"
                )
            if not np.array_equal(index[order], ref_index[ref_order]):
                raise CompareError(
                    f"{side.key} {layer} holds {len(index)} {side.split} samples and "
                    f"{ref_side.key} {len(ref_index)}, not the same sample_index set; "
                    "CKA and mknn need the same samples on both sides"
                )
            if np.array_equal(index, ref_index):
                orders[(side, layer)] = None
            else:  # the reference's t-th sample sits at row at[t] of this side
                at = order[np.searchsorted(index[order], ref_index)]
                orders[(side, layer)] = _Taken(ds.version, rows.column(ROW_ID).to_numpy()[at])
    return orders


def _layer_stream(store: EmbeddingStore, side: Side, layer: str) -> Iterator[np.ndarray]:
    """The side's rows of one layer, in stored order, ``CKA_BATCH_ROWS`` rows at a time.

    Lance reads at most ``CKA_READAHEAD`` batches ahead: a compare holds one stream per
    (side, layer) open at once.
    """
    ds = store.layer_dataset(side.experiment_id, side.arch, layer)
    batches = store.scan(
        ds,
        [S.EMBEDDING],
        where(run_id=side.run_id, epoch=side.epoch, split=side.split),
        CKA_BATCH_ROWS,
        batch_readahead=CKA_READAHEAD,
    )
    held, n_held = [], 0
    for batch in batches:
        held.append(embedding_matrix(pa.Table.from_batches([batch])))
        n_held += batch.num_rows
        while n_held >= CKA_BATCH_ROWS:
            block = np.concatenate(held) if len(held) > 1 else held[0]
            yield block[:CKA_BATCH_ROWS]
            held, n_held = [block[CKA_BATCH_ROWS:]], n_held - CKA_BATCH_ROWS
    if n_held:
        yield np.concatenate(held)


def _taken_stream(store: EmbeddingStore, side: Side, layer: str, taken: _Taken):
    """The side's rows of one layer in reference order, ``CKA_BATCH_ROWS`` at a time,
    read by row id (:func:`storage.vectors.take_vectors`) from the version the ids are of."""
    ds = store.layer_dataset(side.experiment_id, side.arch, layer, version=taken.version)
    for start in range(0, len(taken.row_ids), CKA_BATCH_ROWS):
        yield take_vectors(ds, taken.row_ids[start : start + CKA_BATCH_ROWS])


def _aligned_batches(store, sides, layers, orders) -> Iterator[list[list[np.ndarray]]]:
    """Batches [side][layer] -> (rows, d) of the same samples on every side and layer.

    Rows come in the reference order (see :func:`_sample_orders`): tables that store
    them so are scanned, the others taken by row id block by block; either way each
    table is read once, ``CKA_BATCH_ROWS`` rows of every (side, layer) at a time.
    """
    return_large_buffers_to_the_os()  # else glibc's heap grows with the batches read
    streams = [
        [
            _layer_stream(store, s, layer)
            if orders[(s, layer)] is None
            else _taken_stream(store, s, layer, orders[(s, layer)])
            for layer in layers[s]
        ]
        for s in sides
    ]
    yield from (
        [list(side_blocks) for side_blocks in blocks]
        for blocks in zip(
            *(zip(*side_streams, strict=True) for side_streams in streams), strict=True
        )
    )


@dataclass
class _Group:
    """The embedding units over one (dataset, split), with what reading them needs."""

    units: list[CompareUnit]
    sides: list[Side]
    layers: dict[Side, list[str]]
    orders: dict[tuple[Side, str], _Taken | None]  # see _sample_orders


def embedding_groups(store: EmbeddingStore, units: list[CompareUnit]) -> list[_Group]:
    """Units grouped by (dataset, split); refuses sides without the same samples."""
    by_data: dict[tuple[str, str], list[CompareUnit]] = {}
    for unit in units:
        by_data.setdefault((unit.a.dataset_id, unit.a.split), []).append(unit)
    groups = []
    for members in by_data.values():
        sides = sorted({u.a for u in members} | {u.b for u in members})
        layers = {side: _stored_layers(store, side) for side in sides}
        groups.append(_Group(members, sides, layers, _sample_orders(store, sides, layers)))
    return groups


def layer_pair_cka(
    store: EmbeddingStore, a: Side, b: Side, *, debiased: bool = False, device=None
) -> tuple[list[str], list[str], np.ndarray]:
    """Linear CKA of every stored layer of side ``a`` with every layer of side ``b``.

    Streams each layer table once per side (what ``compare`` does for ``cka``).

    Returns
    -------
    (layers of a, layers of b, float64 array (n_layers_a, n_layers_b))
    """
    (group,) = embedding_groups(store, [CompareUnit(a, b, "cka")])
    acc = CKAAccumulator(2, device=device)
    for batch in _aligned_batches(store, group.sides, group.layers, group.orders):
        acc.update(batch)
    i, j = group.sides.index(a), group.sides.index(b)
    matrix = acc.result(i, j, debiased=debiased) if i < j else acc.result(j, i, debiased=debiased).T
    return group.layers[a], group.layers[b], matrix


def embedding_matrices(
    store: EmbeddingStore, group: _Group, k: int = MKNN_K, device=None
) -> dict[tuple[Side, Side, str], np.ndarray]:
    """(side A, side B, metric) -> layers of A x layers of B, for every unit of ``group``.

    CKA: every layer table scanned once per side into one accumulator (all pairs of
    the group). mknn: each (side, layer)'s exact neighbours from
    :func:`~services.metrics.streamed_neighbours` (one scan when the layer fits
    ``KNN_QUERY_BYTES``), kept as (n, k) sample indices until every pair is scored.
    """
    sides, layers = group.sides, group.layers
    at = {side: i for i, side in enumerate(sides)}
    matrices: dict[tuple[Side, Side, str], np.ndarray] = {}
    cka = [u for u in group.units if u.metric in ("cka", "cka_debiased")]
    if cka:
        pairs = sorted({(at[u.a], at[u.b]) for u in cka})
        acc = CKAAccumulator(len(sides), pairs, device=device)
        for batch in _aligned_batches(store, sides, layers, group.orders):
            acc.update(batch)
        for u in cka:
            result = acc.result(at[u.a], at[u.b], debiased=u.metric == "cka_debiased")
            matrices[(u.a, u.b, u.metric)] = result
    mknn = [u for u in group.units if u.metric == "mknn"]
    if mknn:
        needed = sorted({u.a for u in mknn} | {u.b for u in mknn})
        neighbours = {
            (s, layer): _neighbour_samples(store, s, layer, k)
            for s in needed
            for layer in layers[s]
        }
        for u in mknn:
            matrices[(u.a, u.b, "mknn")] = np.array(
                [
                    [
                        knn_overlap(neighbours[(u.a, la)], neighbours[(u.b, lb)])
                        for lb in layers[u.b]
                    ]
                    for la in layers[u.a]
                ]
            )
    return matrices


def _neighbour_samples(store: EmbeddingStore, side: Side, layer: str, k: int) -> np.ndarray:
    """(n, k) sample_index of the k nearest neighbours of each sample, rows by sample_index.

    The layer is streamed (:func:`~services.metrics.streamed_neighbours`); besides its
    bounded query block this holds the layer's sample_index column and (n, k) int64.
    """
    return_large_buffers_to_the_os()
    index = side_sample_index(store, side, layer)
    positions = streamed_neighbours(lambda: _layer_stream(store, side, layer), len(index), k)
    samples = index[positions][np.argsort(index)]
    samples.sort(axis=1)
    return samples


def _embedding_units(
    store: EmbeddingStore, groups: list[_Group], k: int, device
) -> Iterator[PendingUnit]:
    for group in groups:
        matrices = embedding_matrices(store, group, k, device)
        for u in group.units:
            yield _pending_unit(store, u, embedding_records(u, group.layers, matrices))


def embedding_records(
    unit: CompareUnit, layers: dict[Side, list[str]], matrices: dict
) -> list[dict]:
    """The ``pairs`` rows of one embedding unit: every (layer of A, layer of B)."""
    matrix = matrices[(unit.a, unit.b, unit.metric)]
    return [
        _record(unit, la, lb, EMBEDDING_SCOPE, EMBEDDING_METHOD, 0, matrix[i, j])
        for i, la in enumerate(layers[unit.a])
        for j, lb in enumerate(layers[unit.b])
    ]
