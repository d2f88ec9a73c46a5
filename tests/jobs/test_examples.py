"""The example specs (GPU-cluster recipes) validate with their data roots on generated fixtures."""

from pathlib import Path

import pytest
import torch
import yaml

from actors.datasets import DatasetConfig, build_hierarchy
from actors.datasets.synthetic import write_cifar, write_image_tree
from actors.models import ModelConfig
from jobs.spec import ExperimentSpec

BUILT_IN = {"digits", "shapes"}


def _built_in_only(path: Path) -> bool:
    return {d["name"] for d in yaml.safe_load(path.read_text())["datasets"]} <= BUILT_IN


SPECS = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
EXAMPLES = [p for p in SPECS if p.stem != "quickstart" and not _built_in_only(p)]
CPU_EXAMPLES = [p for p in SPECS if _built_in_only(p)]  # the quickstart and the CPU studies
VAL_PER_CLASS = 5  # k = 4 subclasses x factor 5 must fit in a superclass's held-out images


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("roots")
    # every ImageNet class (hierarchy none, examples/imagenet-val.yaml), each with a few images
    wnids = set(build_hierarchy(DatasetConfig("imagenet", "none")).ids)
    imagenet = write_image_tree(
        base / "imagenet", sorted(wnids), {"train": 1, "val": VAL_PER_CLASS}, size=8
    )
    cifar = write_cifar(base / "cifar", "cifar10", 20, 50)
    write_cifar(base / "cifar", "cifar100", 200, 500)  # 2 a class; 25 test images a superclass
    # torchvision's ImageNet ResNet-50 state_dict, shapes only (a stand-in for the real file)
    meta = ModelConfig("resnet50").create(in_channels=3, num_classes=1000, device="meta")
    weights = base / "resnet50.pth"
    torch.save(
        {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in meta.state_dict().items()}, weights
    )
    return {
        "imagenet": str(imagenet),
        "cifar10": str(cifar),
        "cifar100": str(cifar),
        "weights": str(weights),
    }


def test_there_are_recipes_for_the_papers_models():
    archs = set()
    for path in EXAMPLES:
        for item in yaml.safe_load(path.read_text())["archs"]:
            archs.add(item if isinstance(item, str) else item["name"])
    assert {"resnet50", "vgg16", "vgg16_bn_fc", "vgg16_ln", "vit_b_16", "cifar_resnet18"} <= archs


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_on_generated_roots(path, roots):
    data = yaml.safe_load(path.read_text())
    for dataset in data["datasets"]:
        dataset["options"]["root"] = roots[dataset["name"]]
    for item in data["archs"]:
        if isinstance(item, dict) and "weights" in item:
            item["weights"] = roots["weights"]
    spec = ExperimentSpec.from_dict(data, source=path.name)
    assert spec.resources.trainer_gpus >= 1 and spec.resources.device == "cuda"
    assert all(a.probe_layers() for a in spec.arch_specs)


@pytest.mark.parametrize("path", CPU_EXAMPLES, ids=lambda p: p.stem)
def test_cpu_example_validates_as_is(path):
    """The quickstart, and the one-command studies: a paper's finding, >= 3 seeds."""
    spec = ExperimentSpec.from_yaml(path)
    if path.stem.startswith("study_"):
        assert spec.study and len(spec.seeds) >= 3
    assert spec.resources.trainer_gpus == 0
    assert all(a.probe_layers() for a in spec.arch_specs)
