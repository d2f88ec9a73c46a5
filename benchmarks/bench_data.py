"""`stratalens bench data`: the streaming data path, measured in one run.

On a generated JPEG tree (``write_image_tree``; 64 px images, 8 classes):

- ``loader_vs_imagefolder``: images/s of stratalens' loader (``image_loader``:
  torchvision.io decoding, transforms.v2) over images/s of
  ``torchvision.datasets.ImageFolder`` (PIL decoding) + ``DataLoader``, with the
  same worker processes, batch size and transforms after decoding, for the
  training and the evaluation transforms; best of ``REPEATS`` passes each,
  the two loaders taking turns so that load on the machine hits both alike;
  images/s per worker core are printed too;
- ``peak_rss_ratio``: peak RSS (VmHWM) of one process that trains one epoch and
  extracts every probed layer of both splits of ``--large`` images into Lance
  fragments (``TrainerWorker.extract``, loading in-process), over the same with
  ``--small`` images. Memory that does not grow with the data gives ~1.0.

Usage: python benchmarks/bench_data.py [--json] [--quick] [--small N] [--large N]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import parse_args, report  # benchmarks/ is on sys.path
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from actors.datasets import DatasetConfig, build_dataset, image_loader
from actors.datasets.synthetic import write_image_tree
from actors.datasets.transforms import image_transform

CLASSES = [f"class{i}" for i in range(8)]
IMAGE_SIZE = 64  # generated and transformed size
WORKERS = 2  # the machine's cores
BATCH = 64
REPEATS = 5
HELDOUT_FRACTION = 0.2

EXTRACT_SCRIPT = """
import json, sys
from actors.datasets import DatasetConfig
from actors.training import TrainingConfig
from actors.workers import RunPlan, TrainerWorker, embedding_unit_key
from storage import EmbeddingStore

root, hierarchy_file, store_root, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = {"root": root, "hierarchy_file": hierarchy_file, "image_size": size}
plan = RunPlan(
    "bench", "small_cnn", DatasetConfig("imagefolder", "natural", options=options),
    TrainingConfig(epochs=1, batch_size=64), seed=0, splits=("train", "val"),
)
worker = TrainerWorker(EmbeddingStore(store_root), plan, threads=1)
keys = {
    embedding_unit_key(plan.run_id, 1, layer, split)
    for layer in worker.trainer.probe_layers
    for split in plan.splits
}
pending = worker.extract(1, keys)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({
    "peak_kib": int(status["VmHWM"].split()[0]),
    "rows": sum(unit.n_rows for unit in pending),
    "images": sum(worker.trainer.data.num_samples(s) for s in plan.splits),
}))
"""


def make_tree(root: Path, n_images: int) -> tuple[Path, Path]:
    """A JPEG tree of ``n_images`` (train + val) and a hierarchy file of two superclasses."""
    per_class = n_images // len(CLASSES)
    heldout = max(1, int(per_class * HELDOUT_FRACTION))
    write_image_tree(root, CLASSES, {"train": per_class - heldout, "val": heldout}, size=IMAGE_SIZE)
    hierarchy = root / "hierarchy.json"
    hierarchy.write_text(json.dumps({"even": CLASSES[::2], "odd": CLASSES[1::2]}))
    return root, hierarchy


def images_per_second(loaders: dict) -> dict[str, float]:
    """Best of ``REPEATS`` full passes of each loader, taking turns pass by pass."""
    best = dict.fromkeys(loaders, float("inf"))
    counts = {}
    for _ in range(REPEATS):
        for name, loader in loaders.items():
            start = time.perf_counter()
            counts[name] = sum(len(images) for images, _ in loader)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: counts[name] / best[name] for name in loaders}


def bench_throughput(root: Path, hierarchy: Path) -> dict:
    options = {"root": str(root), "hierarchy_file": str(hierarchy), "image_size": IMAGE_SIZE}
    data = build_dataset(DatasetConfig("imagefolder", "natural", options=options))
    results = {}
    for train in (True, False):
        name = "train" if train else "eval"
        ours = image_loader(data, "train", train=train, batch_size=BATCH, workers=WORKERS)
        reference = DataLoader(
            ImageFolder(
                str(root / "train"),
                transform=v2.Compose([v2.PILToTensor(), image_transform(IMAGE_SIZE, train=train)]),
            ),
            batch_size=BATCH,
            shuffle=train,
            num_workers=WORKERS,
            prefetch_factor=2,
        )
        rates = images_per_second({"ours": ours, "reference": reference})
        ours_rate, reference_rate = rates["ours"], rates["reference"]
        results[f"{name}_images_per_s"] = ours_rate
        results[f"{name}_images_per_s_per_core"] = ours_rate / WORKERS
        results[f"{name}_imagefolder_images_per_s"] = reference_rate
        results[f"{name}_loader_vs_imagefolder"] = ours_rate / reference_rate
    return results


def extraction_peak(root: Path, hierarchy: Path, store: Path, size: int = IMAGE_SIZE) -> dict:
    """Peak RSS of a child process that trains one epoch and extracts every layer."""
    out = subprocess.run(
        [sys.executable, "-c", EXTRACT_SCRIPT, str(root), str(hierarchy), str(store), str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv, small=2000, large=20000)
    if args.quick:
        args.small, args.large = 160, 480
    torch.set_num_threads(1)
    results = {"workers": WORKERS, "image_px": IMAGE_SIZE}
    with tempfile.TemporaryDirectory(prefix="stratalens-bench-data-") as tmp:
        tmp = Path(tmp)
        small = make_tree(tmp / "small", args.small)
        results |= bench_throughput(*small)
        large = make_tree(tmp / "large", args.large)
        for name, tree in (("small", small), ("large", large)):
            measured = extraction_peak(*tree, tmp / f"store-{name}")
            results[f"{name}_images"] = measured["images"]
            results[f"{name}_rows_extracted"] = measured["rows"]
            results[f"{name}_peak_rss_mib"] = measured["peak_kib"] / 1024
        results["peak_rss_ratio"] = results["large_peak_rss_mib"] / results["small_peak_rss_mib"]
    return report(results, args.json)


if __name__ == "__main__":
    main()
