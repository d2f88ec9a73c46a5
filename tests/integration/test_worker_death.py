"""A trainer killed with SIGKILL (an OOM kill, a preempted pod) costs its units, not the run."""

import os
import signal
import time

import pytest
import ray
import yaml

from jobs.pipeline import WorkerLostError, _result
from storage import EmbeddingStore
from tests.integration.ray_cluster import alive, descendants, processes_titled
from tests.integration.test_resume import assert_units_whole, cli, run_to_end, table_rows

pytestmark = pytest.mark.integration
SPEC = {
    "name": "killed",  # the name assert_units_whole reads
    "datasets": [{"name": "digits", "hierarchy": "coarse"}],
    "archs": ["small_cnn"],
    "seeds": [0, 1],
    "training": {"epochs": 2, "batch_size": 64, "lr": 0.1},
    "probe_epochs": [1, 2],
    "clustering": {"methods": ["ward", "kmeans"], "overclustering_factors": [1, 2]},
}


def unit_keys(store: EmbeddingStore) -> dict[str, list[str]]:
    """Every table's unit keys, sorted, with repeats (a unit stored twice shows twice)."""
    return {
        table: sorted(store.read(table, columns=["unit_key"]).column("unit_key").to_pylist())
        for table in store.list_tables()
    }


def kill_a_trainer_mid_extract(run, timeout: float = 300) -> int:
    """SIGKILL one ``TrainerWorker`` of ``run``'s own Ray while it trains or extracts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.poll() is not None:
            pytest.fail(f"the run ended before a trainer was killed:\n{run.stdout.read()}")
        ours = descendants({run.pid})
        busy = [p for p in processes_titled("ray::TrainerWorker.extract") if p in ours]
        if busy:
            os.kill(busy[0], signal.SIGKILL)
            return busy[0]
        time.sleep(0.05)
    pytest.fail("no TrainerWorker.extract process appeared in time")


@pytest.mark.slow  # two runs of the pipeline, about 2 min on 2 cores
def test_killed_trainer_is_restarted_and_the_run_completes_once(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    clean = EmbeddingStore(str(tmp_path / "clean"))
    run_to_end("run", str(spec_path), "--store", clean.root)

    store = EmbeddingStore(str(tmp_path / "store"))
    run = cli("run", str(spec_path), "--store", store.root)
    try:
        killed = kill_a_trainer_mid_extract(run)
        output, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert not alive(killed)
    assert run.returncode == 0, output
    assert "ActorDiedError" not in output
    assert table_rows(store) == table_rows(clean)
    assert unit_keys(store) == unit_keys(clean)
    assert_units_whole(store)


def test_a_worker_lost_for_good_is_one_sentence(local_ray):
    @ray.remote(max_restarts=0)
    class Doomed:
        def work(self):
            os._exit(1)  # as a SIGKILL: no exception, the process is gone

    with pytest.raises(WorkerLostError) as lost:
        _result("train + extract", Doomed.remote().work.remote())
    message = str(lost.value)
    assert message.startswith("a Ray worker of the 'train + extract' stage died (ActorDiedError")
    assert message.endswith("run the same command again to resume")
    assert "\n" not in message
