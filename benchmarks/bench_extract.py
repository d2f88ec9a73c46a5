"""`stratalens bench extract`: extracting every default layer into Lance vs the forward pass alone.

On a generated JPEG tree (``write_image_tree``; ``--images`` held-out images of
64 px, 8 classes), with a randomly initialised ResNet-18 (``training.epochs: 0``,
a probe-only run; the cost of a forward pass does not depend on the weights):

- ``forward_images_per_s``: the model's forward pass alone (``model(x)``, eval,
  no grad) over the loader extraction uses (same batch size, workers, transforms);
- ``extract_images_per_s``: ``TrainerWorker.extract`` of all 9 default layers
  (``layer1.0`` .. ``layer4.1``, ``avgpool``), i.e. the traced feature extractor,
  global average pooling, copies to NumPy, Arrow rows, Lance fragments, plus the
  commit of each layer's unit, into a fresh store each pass;
- ``extract_vs_forward``: their ratio (asked: >= 0.9; ``_cpu``: the same from
  this process's CPU seconds, which other jobs on the machine disturb less),
  and where the extra time
  goes: ``write_fragments_s`` (Arrow rows are built before, Lance writes here),
  ``commit_s``, and ``readout_s``: the rest beyond the forward pass (feature
  extractor, pooling, device-to-host copies, row building).

The two are timed in ``REPEATS`` back-to-back pairs, so both see the same load
on a shared machine: the ratio is the median over pairs, the seconds are the
pair with the median ratio's. Usage:
python benchmarks/bench_extract.py [--json] [--quick] [--images N]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from common import parse_args, report  # benchmarks/ is on sys.path

from actors.datasets import DatasetConfig, batches
from actors.datasets.synthetic import write_image_tree
from actors.models import default_layers
from actors.training import TrainingConfig
from actors.workers import RunPlan, TrainerWorker, embedding_unit_key
from storage import EmbeddingStore

ARCH = "resnet18"
CLASSES = [f"class{i}" for i in range(8)]
IMAGE_SIZE = 64
THREADS = 2  # the machine's cores
WORKERS = 1  # loader processes: JPEG decoding of 64 px images is cheap next to the forward
BATCH = 256
REPEATS = 5
SPLIT = "val"


def make_tree(root: Path, n_images: int) -> DatasetConfig:
    per_class = max(1, n_images // len(CLASSES))
    write_image_tree(root, CLASSES, {"train": 1, SPLIT: per_class}, size=IMAGE_SIZE)
    hierarchy = root / "hierarchy.json"
    hierarchy.write_text(json.dumps({"even": CLASSES[::2], "odd": CLASSES[1::2]}))
    options = {"root": str(root), "hierarchy_file": str(hierarchy), "image_size": IMAGE_SIZE}
    return DatasetConfig("imagefolder", "natural", options=options)


def worker_for(data: DatasetConfig, store_root: Path) -> TrainerWorker:
    plan = RunPlan(
        "bench",
        ARCH,
        data,
        TrainingConfig(epochs=0, eval_batch_size=BATCH),
        seed=0,
        splits=("train", SPLIT),
        loader_workers=WORKERS,
    )
    return TrainerWorker(EmbeddingStore(str(store_root)), plan, threads=THREADS)


@torch.no_grad()
def forward_pass(worker: TrainerWorker) -> tuple[int, float, float]:
    """Images, wall seconds and this process's CPU seconds of a forward-only pass."""
    trainer = worker.trainer
    model = trainer.extraction_model.eval()
    start, cpu = time.perf_counter(), time.process_time()
    n = 0
    for x, _ in batches(trainer._loader(SPLIT, train=False, batch_size=BATCH)):
        model(trainer._to_device(x))
        n += len(x)
    return n, time.perf_counter() - start, time.process_time() - cpu


def timed(method, totals: dict, name: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def extract_pass(worker: TrainerWorker, store_root: Path) -> tuple[int, float, float, dict]:
    """Rows per layer, wall seconds, CPU seconds and the write/commit seconds of an extraction."""
    store = EmbeddingStore(str(store_root))
    worker.store = store
    totals: dict[str, float] = {}
    store.write_fragments = timed(store.write_fragments, totals, "write_fragments_s")
    run_id = worker.plan.run_id
    keys = {embedding_unit_key(run_id, 0, layer, SPLIT) for layer in default_layers(ARCH)}
    start, cpu = time.perf_counter(), time.process_time()
    pending = worker.extract(0, keys)
    commit_start = time.perf_counter()
    for unit in pending:
        store.commit(unit)
    totals["commit_s"] = time.perf_counter() - commit_start
    rows = sum(unit.n_rows for unit in pending) // len(keys)
    return rows, time.perf_counter() - start, time.process_time() - cpu, totals


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv, images=2048)
    repeats = REPEATS
    if args.quick:
        args.images, repeats = 128, 1
    results = {"arch": ARCH, "image_px": IMAGE_SIZE, "threads": THREADS, "workers": WORKERS}
    with tempfile.TemporaryDirectory(prefix="stratalens-bench-extract-") as tmp:
        tmp = Path(tmp)
        data = make_tree(tmp / "tree", args.images)
        worker = worker_for(data, tmp / "store-0")
        forward_pass(worker)  # warm-ups: first-touch allocations, the traced extractor
        extract_pass(worker, tmp / "store-warm-up")
        pairs = []
        cpu_ratios = []
        for repeat in range(repeats):
            n_forward, forward_s, forward_cpu = forward_pass(worker)
            store = tmp / f"store-{repeat + 1}"
            n_extract, extract_s, extract_cpu, totals = extract_pass(worker, store)
            assert n_forward == n_extract, (n_forward, n_extract)
            pairs.append((forward_s / extract_s, forward_s, extract_s, totals))
            cpu_ratios.append(forward_cpu / extract_cpu)
        pairs.sort(key=lambda pair: pair[0])
        ratio, forward_s, extract_s, totals = pairs[len(pairs) // 2]
        results["images"] = n_forward
        results["layers"] = len(default_layers(ARCH))
        results["pairs"] = repeats
        results["forward_s"] = forward_s
        results["extract_s"] = extract_s
        results["forward_images_per_s"] = n_forward / forward_s
        results["extract_images_per_s"] = n_extract / extract_s
        results["extract_vs_forward"] = ratio
        results["extract_vs_forward_min"] = pairs[0][0]
        results["extract_vs_forward_max"] = pairs[-1][0]
        # CPU seconds of this process (the loader's worker is the same in both): steadier
        # than wall time when other people's jobs share the cores
        results["extract_vs_forward_cpu"] = sorted(cpu_ratios)[len(cpu_ratios) // 2]
        results |= totals
        results["readout_s"] = extract_s - forward_s - sum(totals.values())
    return report(results, args.json)


if __name__ == "__main__":
    main()
