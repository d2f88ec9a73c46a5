"""Writers killed at any point leave nothing visible; 8 concurrent writers commit every row once."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from storage import EmbeddingStore, embeddings_table
from storage import schema as S

TABLE = embeddings_table("exp", "net", "fc")
DIM = 16

# A writer process: writes one unit in several batches, pausing at the named point.
WRITER = textwrap.dedent(
    """
    import os, signal, sys, time
    import numpy as np, pyarrow as pa
    from storage import EmbeddingStore, embeddings_table
    from storage import schema as S

    root, key, start, stop_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = EmbeddingStore(root)
    table = embeddings_table("exp", "net", "fc")

    def batches():
        for b in range(4):
            n = 50
            values = np.random.rand(n, DIM).astype(np.float32)
            yield pa.record_batch({
                "experiment_id": ["exp"] * n, "run_id": [key] * n, "dataset_id": ["d"] * n,
                "arch": ["net"] * n, "seed": pa.array(np.zeros(n, np.int32)),
                "epoch": pa.array(np.ones(n, np.int32)), "split": ["test"] * n,
                "sample_index": pa.array(np.arange(start + b * n, start + (b + 1) * n)),
                "subclass": pa.array(np.zeros(n, np.int32)),
                "superclass": pa.array(np.zeros(n, np.int32)),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), DIM),
            })
            if stop_at == "mid-write" and b == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    if stop_at == "before-write":
        os.kill(os.getpid(), signal.SIGKILL)
    unit = store.write_fragments(table, key, batches(), S.embeddings_schema(DIM))
    if stop_at == "before-commit":
        os.kill(os.getpid(), signal.SIGKILL)
    store.commit(unit)
    """
).replace("DIM", str(DIM))


def run_writer(root: str, key: str, start: int, stop_at: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", WRITER, root, key, str(start), stop_at],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    return result.returncode


def test_writers_killed_at_random_points_leave_only_whole_units(store):
    rng = np.random.RandomState(0)
    points = ["before-write", "mid-write", "before-commit", "never"]
    committed = set()
    for unit in range(12):
        stop_at = points[rng.randint(len(points))] if unit else "never"
        code = run_writer(store.root, f"u{unit}", 200 * unit, stop_at)
        if stop_at == "never":
            assert code == 0
            committed.add(f"u{unit}")
        else:
            assert code == -signal.SIGKILL
        assert store.committed_keys(TABLE) == committed
        rows = store.read(TABLE, columns=["unit_key", "sample_index"]).to_pandas()
        assert (rows.unit_key.value_counts() == 200).all()  # every visible unit is whole
        assert not rows.sample_index.duplicated().any()
    # a killed unit is simply redone, once
    killed = next(f"u{u}" for u in range(12) if f"u{u}" not in committed)
    assert run_writer(store.root, killed, 200 * int(killed[1:]), "never") == 0
    assert run_writer(store.root, killed, 200 * int(killed[1:]), "never") == 0
    rows = store.read(TABLE, columns=["unit_key"]).to_pandas()
    assert (rows.unit_key == killed).sum() == 200


@pytest.mark.integration
def test_eight_concurrent_ray_writers_commit_every_row_once(store, local_ray):
    import ray

    @ray.remote(num_cpus=0.25)
    def write(store: EmbeddingStore, start: int):
        n = 100
        values = np.random.default_rng(start).random((n, DIM), dtype=np.float32)
        rows = S.embedding_rows(
            values,
            sample_index=np.arange(start, start + n),
            subclass=np.zeros(n),
            superclass=np.zeros(n),
            experiment_id="exp",
            run_id=f"r{start}",
            dataset_id="d",
            arch="net",
            seed=0,
            epoch=1,
            split="test",
        )
        return store.write_fragments(TABLE, f"unit{start}", rows, S.embeddings_schema(DIM))

    starts = [100 * w for w in range(8)]
    for attempt in range(2):  # the second round re-runs every unit: nothing may be added
        units = ray.get([write.remote(store, s) for s in starts])
        results = [store.commit(u) for u in units]
        assert results == [attempt == 0] * 8
    index = store.read(TABLE, columns=["sample_index"]).column(0).to_numpy()
    assert sorted(index) == list(range(800))
