"""Kill `stratalens run` half-way, re-run it: the store ends with the rows of a clean run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from actors.models import probe_layers
from storage import EmbeddingStore, embeddings_table
from storage import schema as S
from tests.integration.conftest import small_spec

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-c", "from jobs.cli import app; app()"]
LAYERS = probe_layers("small_cnn")


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*CLI, *args],
        cwd=Path(__file__).parents[2],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so the kill takes its Ray processes too
        **kwargs,
    )


def wait_for_first_commit(
    store: EmbeddingStore, process: subprocess.Popen, table: str, timeout: float = 240
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.exists(table):
            return
        if process.poll() is not None:
            pytest.fail(f"run ended before it was killed:\n{process.stdout.read()}")
        time.sleep(0.1)
    pytest.fail(f"nothing was committed to {table} in time")


def table_rows(store: EmbeddingStore) -> dict[str, int]:
    """Visible rows of every table of the store (a table still being created has none)."""
    rows = {}
    for table in store.list_tables():
        ds = store.dataset(table)
        rows[table] = 0 if ds is None else ds.count_rows()
    return rows


def run_to_end(*args: str, timeout: float = 600) -> str:
    process = cli(*args)
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def clean_rows(tmp_path_factory) -> dict[str, int]:
    """Rows per table after one uninterrupted run of the spec the tests kill."""
    root = tmp_path_factory.mktemp("clean")
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(small_spec(name="killed")))
    store = EmbeddingStore(str(root / "store"))
    run_to_end("run", str(spec_path), "--store", store.root)
    rows = table_rows(store)
    layers = {embeddings_table("killed", "small_cnn", layer) for layer in LAYERS}
    fixed = {S.SAMPLES, S.EXPERIMENTS, S.RUNS, S.CLUSTERINGS, S.METRICS, S.PAIRS}
    assert set(rows) == layers | fixed
    empty = sorted(table for table, n in rows.items() if n == 0)
    assert not empty, f"a clean run left {empty} empty, so comparing with it proves little"
    return rows


def assert_units_whole(store: EmbeddingStore) -> None:
    """Every committed embeddings unit holds all rows of its split, once."""
    samples = store.read(S.SAMPLES, columns=["dataset_id", "split"]).to_pandas()
    split_sizes = samples.groupby(["dataset_id", "split"]).size()
    for layer in LAYERS:
        table = embeddings_table("killed", "small_cnn", layer)
        if not store.exists(table):
            continue
        rows = store.read(
            table, columns=["unit_key", "dataset_id", "split", "run_id", "epoch", "sample_index"]
        ).to_pandas()
        assert not rows.duplicated(["run_id", "epoch", "split", "sample_index"]).any()
        for (key, dataset_id, split), n in (
            rows.groupby(["unit_key", "dataset_id", "split"]).size().items()
        ):
            assert n == split_sizes[(dataset_id, split)], key


@pytest.mark.parametrize(
    "kill_after",
    [
        pytest.param(embeddings_table("killed", "small_cnn", LAYERS[0]), id="while-training"),
        # the same protocol at a later stage; slow, so opt-in (-m slow)
        pytest.param(S.CLUSTERINGS, id="while-clustering", marks=pytest.mark.slow),
    ],
)
def test_killed_run_resumes_to_the_same_complete_store(tmp_path, kill_after, clean_rows):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(small_spec(name="killed")))
    store = EmbeddingStore(str(tmp_path / "store"))

    first = cli("run", str(spec_path), "--store", store.root)
    wait_for_first_commit(store, first, kill_after)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert_units_whole(store)
    if store.exists(S.CLUSTERINGS):  # every committed clustering unit holds all its rows
        per_unit = store.read(S.CLUSTERINGS, columns=["unit_key"]).to_pandas().unit_key
        assert (per_unit.value_counts() == 5 * 2).all()  # 5 superclasses x 2 factors
    killed_rows = table_rows(store)
    assert set(killed_rows) <= set(clean_rows)
    assert all(n <= clean_rows[table] for table, n in killed_rows.items()), killed_rows
    # The last stage's table is short, so the second run has work to do.
    undone = {table for table, n in clean_rows.items() if killed_rows.get(table, 0) < n}
    assert S.PAIRS in undone, f"the kill left no work undone: {killed_rows}"

    run_to_end("run", str(spec_path), "--store", store.root)
    assert_units_whole(store)
    assert table_rows(store) == clean_rows
    clusterings = store.read(
        S.CLUSTERINGS, columns=["unit_key", "scope", "overclustering_factor"]
    ).to_pandas()
    assert len(clusterings) == 4 * len(LAYERS) * 2 * 5 * 2
    assert not clusterings.duplicated().any()
    metrics = store.read(
        S.METRICS, columns=["unit_key", "scope", "n_clusters", "metric"]
    ).to_pandas()
    assert not metrics.duplicated().any()
    versions = {t: store.version(t) for t in store.list_tables()}

    output = run_to_end("run", str(spec_path), "--store", store.root, timeout=300)
    assert "nothing new" in output
    assert {t: store.version(t) for t in store.list_tables()} == versions

    run_to_end("run", str(spec_path), "--store", store.root, "--fresh")
    assert table_rows(store) == clean_rows
    assert_units_whole(store)
