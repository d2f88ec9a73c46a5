"""The experiment spec: YAML in, validated pydantic model, JSON schema out.

Every problem is reported as one sentence naming the field, the bad value and
what would be accepted, before any work starts.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from actors.clustering import METHODS
from actors.datasets import DatasetConfig, HierarchicalDataset, build_dataset, list_datasets
from actors.models import list_models
from actors.training import LOSSES, TrainingConfig


class SpecError(ValueError):
    """The spec is invalid; the message says what to change."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    """One dataset and the hierarchy that defines its superclasses."""

    name: str = Field(
        description="registered dataset: digits, shapes, imagefolder, imagenet, cifar10, cifar100"
    )
    hierarchy: str = Field(
        description="e.g. digits: coarse | shuffled; imagenet: breeds-living17[-shuffled]; "
        "`stratalens hierarchy NAME` prints one"
    )
    hierarchy_seed: int = Field(0, description="seed of the subclass -> superclass shuffle")
    options: dict = Field(
        default_factory=dict,
        description="dataset-specific options: root, hierarchy_file, image_size, thumbnails, ...",
    )

    @model_validator(mode="after")
    def _known(self) -> DatasetSpec:
        known = list_datasets()
        if self.name not in known:
            raise ValueError(f"unknown dataset {self.name!r}; choose one of {sorted(known)}")
        if self.hierarchy not in known[self.name]:
            raise ValueError(
                f"dataset {self.name!r} has no hierarchy {self.hierarchy!r}; "
                f"choose one of {list(known[self.name])}"
            )
        return self

    def config(self) -> DatasetConfig:
        return DatasetConfig(self.name, self.hierarchy, self.hierarchy_seed, dict(self.options))


class TrainingSpec(_Strict):
    """SGD with momentum on superclass labels, cosine schedule after a linear warm-up."""

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    loss: str = "softmax_ce"

    @field_validator("loss")
    @classmethod
    def _loss(cls, value: str) -> str:
        if value not in LOSSES:
            raise ValueError(f"unknown loss {value!r}; choose one of {list(LOSSES)}")
        return value

    def config(self) -> TrainingConfig:
        return TrainingConfig(**self.model_dump())


class ClusteringSpec(_Strict):
    """How each layer is clustered: k = subclasses x overclustering factor."""

    methods: list[str] = Field(default_factory=lambda: ["ward", "kmeans"], min_length=1)
    overclustering_factors: list[int] = Field(default_factory=lambda: [1], min_length=1)
    scope: Literal["superclass", "all"] = Field(
        "superclass", description="cluster within each superclass (the paper) or the whole split"
    )
    split: str = Field(
        "heldout",
        description="the split clustered: heldout (each dataset's test/val split), train, "
        "or a split name",
    )
    random_state: int = 0
    backend: str = Field("auto", description="auto | scipy | torch | sklearn | cuml")

    @model_validator(mode="after")
    def _backend(self) -> ClusteringSpec:
        from actors.clustering import select_backend

        if self.backend != "auto":
            for method in self.methods:
                select_backend(self.backend, method=method)
        return self

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown clustering method(s) {unknown}; choose from {list(METHODS)}")
        return value

    @field_validator("overclustering_factors")
    @classmethod
    def _factors(cls, value: list[int]) -> list[int]:
        bad = [f for f in value if not 1 <= f <= 10]
        if bad:
            raise ValueError(f"overclustering factors {bad} are outside 1..10")
        return sorted(set(value))


REPRESENTATION_METRICS = ("ncc", "cdnv", "nc1", "nc2")
CONSISTENCY_METRICS = ("ari", "ami", "nmi")


class MetricsSpec(_Strict):
    """What the score stage computes."""

    clustering: list[str] = Field(
        default_factory=lambda: ["ami", "purity", "ari", "nmi"],
        description="scores of each clustering against the true subclasses",
    )
    representation: list[str] = Field(
        default_factory=lambda: ["ncc", "cdnv"],
        description="per-layer measures (superclass and subclass labels): ncc, cdnv, nc1, nc2",
    )
    consistency: list[str] = Field(
        default_factory=lambda: ["ari"],
        description="scores between every pair of seeds' clusterings, for every pair of layers",
    )

    @field_validator("clustering")
    @classmethod
    def _clustering(cls, value: list[str]) -> list[str]:
        from services.metrics import SCORES_FROM_CONTINGENCY

        return _known(value, sorted(SCORES_FROM_CONTINGENCY), "clustering metric")

    @field_validator("representation")
    @classmethod
    def _representation(cls, value: list[str]) -> list[str]:
        return _known(value, REPRESENTATION_METRICS, "representation metric")

    @field_validator("consistency")
    @classmethod
    def _consistency(cls, value: list[str]) -> list[str]:
        return _known(value, CONSISTENCY_METRICS, "consistency metric")


def _known(value: list[str], allowed, what: str) -> list[str]:
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; choose from {list(allowed)}")
    return value


class StorageSpec(_Strict):
    """How embeddings are stored."""

    embedding_dtype: Literal["float32", "float16"] = Field(
        "float32", description="float16 halves the bytes; reads return float32"
    )


class ResourcesSpec(_Strict):
    """Ray resource requests per worker."""

    trainer_cpus: float = Field(1, gt=0)
    trainer_gpus: float = Field(0, ge=0)
    worker_cpus: float = Field(1, gt=0)
    worker_gpus: float = Field(
        0, ge=0, description="GPUs per clustering/scoring task (cuML, torch Ward)"
    )
    worker_memory_gb: float | None = Field(
        None,
        gt=0,
        description="memory of one clustering worker (GiB); `stratalens plan` and `run` refuse "
        "a spec whose largest fit needs more; default: what the machine has available",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loader_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader processes per trainer that decode images (file-backed datasets; "
        "the built-in ones load in-process); default: trainer_cpus",
    )

    @property
    def workers(self) -> int:
        """DataLoader worker processes per trainer."""
        if self.loader_workers is not None:
            return self.loader_workers
        return max(1, int(self.trainer_cpus))


class ExperimentSpec(_Strict):
    """A probing study: which models, datasets and seeds, and how to probe them."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="experiment id in the store"
    )
    datasets: list[DatasetSpec] = Field(min_length=1)
    archs: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    probe_epochs: list[int] | None = Field(
        None, description="epochs after which layers are extracted; default: the last epoch"
    )
    clustering: ClusteringSpec = Field(default_factory=ClusteringSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @field_validator("archs")
    @classmethod
    def _archs(cls, value: list[str]) -> list[str]:
        unknown = [a for a in value if a not in list_models()]
        if unknown:
            raise ValueError(f"unknown arch(s) {unknown}; choose from {list_models()}")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds {value} repeat a value; list each seed once")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        epochs = self.training.epochs
        bad = [e for e in self.epochs_to_probe if not 1 <= e <= epochs]
        if bad:
            raise ValueError(f"probe_epochs {bad} are outside 1..training.epochs={epochs}")
        ids = [d.config().dataset_id for d in self.datasets]
        if len(set(ids)) != len(ids):
            raise ValueError("datasets lists the same dataset and hierarchy twice; remove one")
        for dataset in self.datasets:
            if dataset.hierarchy == "none" and self.clustering.scope != "all":
                raise ValueError(
                    f"dataset {dataset.name!r} with hierarchy 'none' has one class per "
                    "superclass; set clustering.scope: all"
                )
            _check_cluster_sizes(dataset, self.clustering)
        return self

    @property
    def epochs_to_probe(self) -> list[int]:
        return sorted(set(self.probe_epochs or [self.training.epochs]))

    @property
    def experiment_id(self) -> str:
        return self.name

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentSpec:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"spec file {str(path)!r} does not exist; pass the path of a YAML spec")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpecError(f"{path} is not valid YAML ({exc}); fix the syntax") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: object, *, source: str = "spec") -> ExperimentSpec:
        if not isinstance(data, dict):
            raise SpecError(
                f"{source} should be a YAML mapping of fields, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"{source}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """One line per problem: ``field.path: message``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


@lru_cache(maxsize=16)
def _cached_dataset(config_json: str) -> HierarchicalDataset:
    data = json.loads(config_json)
    return build_dataset(DatasetConfig(**data))


_DATASET_LOADER: ContextVar[Callable[[DatasetSpec], HierarchicalDataset] | None] = ContextVar(
    "dataset_loader", default=None
)


@contextlib.contextmanager
def datasets_loaded_by(loader: Callable[[DatasetSpec], HierarchicalDataset]) -> Iterator[None]:
    """Within the block, :func:`load_dataset` (spec validation included) calls ``loader``.

    ``stratalens plan --assume-counts`` uses it to validate and plan a spec whose
    images live elsewhere (a cluster's volume).
    """
    token = _DATASET_LOADER.set(loader)
    try:
        yield
    finally:
        _DATASET_LOADER.reset(token)


def load_dataset(spec: DatasetSpec) -> HierarchicalDataset:
    """Build (once per process) the dataset a spec names: its index and labels, no images."""
    loader = _DATASET_LOADER.get()
    if loader is not None:
        return loader(spec)
    return _cached_dataset(json.dumps(spec.model_dump(mode="json"), sort_keys=True))


def _check_cluster_sizes(dataset: DatasetSpec, clustering: ClusteringSpec) -> None:
    """k = subclasses x factor must not exceed the samples being clustered."""
    data = load_dataset(dataset)
    data.thumbnail_splits()  # checks options.thumbnails before anything runs
    split = data.resolve_split(clustering.split)
    superclass = data.superclass(split)
    per_super = data.hierarchy.subclasses_per_superclass()
    factor = max(clustering.overclustering_factors)
    if clustering.scope == "all":
        groups = [(len(superclass), int(per_super.sum()), "the whole split")]
    else:
        sizes = np.bincount(superclass, minlength=len(per_super))
        groups = [
            (int(sizes[s]), int(per_super[s]), f"superclass {s}") for s in range(len(per_super))
        ]
    for n_samples, n_sub, label in groups:
        if n_sub * factor > n_samples:
            raise ValueError(
                f"k = {n_sub} subclasses x factor {factor} = {n_sub * factor} exceeds the "
                f"{n_samples} {split} samples of {label} in {dataset.name}/"
                f"{dataset.hierarchy}; lower overclustering_factors"
            )
