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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from actors.clustering import METHODS
from actors.datasets import DatasetConfig, HierarchicalDataset, build_dataset, list_datasets
from actors.models import FLOAT_BYTES, layer_dims, model_entry
from actors.training import LOSSES, TrainingConfig, build_model
from jobs.archs import (
    MAPPING_ITEM,
    NAME_ITEM,
    ArchItem,
    ArchSpec,
    as_arch,
    register_stored_archs,
)
from jobs.grid import GridSpec, expand, training_overrides

DEFAULT_MAX_BYTES_PER_SAMPLE = 256 * 1024
__all__ = ["ArchSpec", "ExperimentSpec", "SpecError", "load_dataset", "register_stored_archs"]


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


class SslSpec(_Strict):
    """The two-view losses (vicreg, simclr, supcon): projector, weights, view augmentations."""

    projector: list[int] = Field(
        default_factory=lambda: [512, 128],
        min_length=1,
        description="widths of the projector MLP on the penultimate features (not probed)",
    )
    temperature: float | None = Field(
        None, gt=0, description="simclr / supcon temperature; default 0.5 / 0.1"
    )
    invariance_weight: float = Field(25.0, ge=0, description="VICReg lambda")
    variance_weight: float = Field(25.0, ge=0, description="VICReg mu")
    covariance_weight: float = Field(1.0, ge=0, description="VICReg nu")
    min_crop: float = Field(0.3, gt=0, le=1, description="smallest area kept by a random crop")
    rotation: float = Field(0.0, ge=0, le=180, description="largest random rotation, degrees")
    flip: bool | None = Field(None, description="random horizontal flips; default: RGB only")
    colour_jitter: float = Field(0.4, ge=0, le=1, description="colour jitter strength (RGB)")

    @field_validator("projector")
    @classmethod
    def _widths(cls, value: list[int]) -> list[int]:
        if any(d < 1 for d in value):
            raise ValueError(f"projector widths {value} should all be positive")
        return value


class TrainingSpec(_Strict):
    """How each model is trained on superclass labels (``epochs: 0``: probe only)."""

    epochs: int = Field(
        12, ge=0, description="0 trains nothing: the arch's weights (or its init) are probed"
    )
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.1, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="SGD with Nesterov momentum")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0, description="linear warm-up, then a cosine decay")
    loss: str = Field(
        "softmax_ce",
        description="softmax_ce | squared_error | sigmoid_ce | label_smoothing | cosine_softmax"
        " | supcon (superclass labels, two views) | vicreg | simclr (two views, no labels)",
    )
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="for loss label_smoothing")
    cosine_temperature: float = Field(0.05, gt=0, description="for loss cosine_softmax")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the head's input")
    augment: bool = Field(
        False, description="random crops (padding 1/8 of the side) and horizontal flips"
    )
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="keep an EMA of the weights (per step) and extract it"
    )
    bn_momentum: float | None = Field(
        None, gt=0, le=1, description="BatchNorm momentum (1 - decay; the paper's 0.99 is 0.01)"
    )
    eval_batch_size: int = Field(512, ge=1, description="batch size of extraction passes")
    checkpoint_every: int = Field(
        1, ge=0, description="save a checkpoint every N epochs under the store root (0: never)"
    )
    keep_checkpoints: int = Field(
        1, ge=0, description="newest checkpoints kept per run (besides the probe epochs')"
    )
    ssl: SslSpec = Field(default_factory=SslSpec, description="for the two-view losses")

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


REPRESENTATION_METRICS = ("ncc", "cdnv", "nc1", "nc2", "clp")
CONSISTENCY_METRICS = ("ari", "ami", "nmi", "cka", "cka_debiased", "mknn")  # jobs/compare.py
INTRACLASS_METRICS = ("c1", "c2", "c3", "c4")


class MetricsSpec(_Strict):
    """What the score stage computes."""

    clustering: list[str] = Field(
        default_factory=lambda: ["ami", "purity", "ari", "nmi"],
        description="scores of each clustering against the true subclasses",
    )
    representation: list[str] = Field(
        default_factory=lambda: ["ncc", "cdnv"],
        description="per-layer measures (superclass and subclass labels): ncc, cdnv, nc1, nc2; "
        "clp: Cluster-and-Linear-Probe accuracy (clustering.methods[0]) next to a linear probe "
        "on the subclasses, and the subclass distance matrix",
    )
    consistency: list[str] = Field(
        default_factory=lambda: ["ari"],
        description="scores between every pair of seeds, for every pair of layers: of their "
        "clusterings (ari, ami, nmi) or their embeddings (cka, cka_debiased, mknn)",
    )

    intraclass: list[str] = Field(
        default_factory=list,
        description="intraclass clustering measures c1-c4 (Carbonnelle & De Vleeschouwer) "
        "of each run on its training split, over every probed layer",
    )

    @field_validator("intraclass")
    @classmethod
    def _intraclass(cls, value: list[str]) -> list[str]:
        return _known(value, INTRACLASS_METRICS, "intraclass metric")

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
    max_bytes_per_sample: int | None = Field(
        DEFAULT_MAX_BYTES_PER_SAMPLE,
        ge=1,
        description="refuse an arch whose probed layers would store more bytes per sample "
        "(per epoch and split); null: no limit (`stratalens run --force` skips it too)",
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

    trainer_workers: int | None = Field(
        None,
        ge=1,
        description="processes that train one model together (DDP with Ray Train); default: "
        "trainer_gpus when above 1 (one GPU each, NCCL), else 1; on CPUs they use gloo",
    )

    @model_validator(mode="after")
    def _gpu(self) -> ResourcesSpec:
        if self.trainer_gpus > 1 and self.trainer_gpus != int(self.trainer_gpus):
            raise ValueError(
                f"resources.trainer_gpus = {self.trainer_gpus:g} above 1 means one DDP process "
                "per GPU, so it should be a whole number"
            )
        if self.ddp_workers > 1 and self.trainer_gpus not in (0, self.ddp_workers):
            raise ValueError(
                f"resources.trainer_workers = {self.ddp_workers} DDP processes take one GPU "
                f"each, so trainer_gpus should be {self.ddp_workers} (or 0 to train on CPUs), "
                f"not {self.trainer_gpus:g}"
            )
        if self.device == "cuda" and self.trainer_gpus == 0:
            raise ValueError(
                "resources.device is 'cuda' but resources.trainer_gpus is 0, and Ray hides "
                "the GPUs from trainers that reserve none; set trainer_gpus: 1"
            )
        return self

    @property
    def ddp_workers(self) -> int:
        """Processes that train one model together (1: no DDP)."""
        if self.trainer_workers is not None:
            return self.trainer_workers
        return int(self.trainer_gpus) if self.trainer_gpus > 1 else 1

    @property
    def extractor_gpus(self) -> float:
        """GPUs of the actor that extracts (and, without DDP, trains) one run."""
        return min(1.0, self.trainer_gpus) if self.ddp_workers > 1 else self.trainer_gpus

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
    archs: list[ArchItem] = Field(
        min_length=1,
        description="models: a name (`stratalens models`) or a mapping {name, key, weights, "
        "layers, pool, tokens, options, load_head}",
    )
    seeds: list[int] = Field(min_length=1)
    grid: GridSpec | None = Field(
        None,
        description="hyper-parameter values (lr, batch_size, weight_decay, dropout, augment, "
        "epochs, width); each archs item trains once per combination, under its own arch key",
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    probe_epochs: list[int] | None = Field(
        None, description="epochs after which layers are extracted; default: the last epoch"
    )
    clustering: ClusteringSpec = Field(default_factory=ClusteringSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    study: str | None = Field(
        None,
        description="a reproduction (services.findings.STUDIES): the report checks the "
        "paper's finding on this experiment",
    )

    @field_validator("study")
    @classmethod
    def _study(cls, value: str | None) -> str | None:
        from services.findings import STUDIES

        if value is not None and value not in STUDIES:
            raise ValueError(f"unknown study {value!r}; choose one of {sorted(STUDIES)}")
        return value

    @field_validator("archs")
    @classmethod
    def _archs(cls, value: list[str | ArchSpec]) -> list[str | ArchSpec]:
        for item in value:
            if isinstance(item, str):
                model_entry(item)
        keys = [as_arch(item).stored_key for item in value]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise ValueError(
                    f"archs items {keys.index(key)} and {i} are both stored as {key!r}; "
                    "remove the repeat or give each item its own key"
                )
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds {value} repeat a value; list each seed once")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ExperimentSpec:
        epochs = self.training.epochs
        if self.grid is not None and self.grid.epochs and self.probe_epochs:
            raise ValueError(
                "grid.epochs probes each run after its own last epoch, so probe_epochs "
                "cannot be set too; remove one"
            )
        for arch in self.arch_specs:
            self.training_for(arch.stored_key)  # each grid point's training is valid
        bad = [e for e in self.epochs_to_probe if not 0 <= e <= epochs]
        if bad:
            raise ValueError(f"probe_epochs {bad} are outside 0..training.epochs={epochs}")
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
            force = bool((info.context or {}).get("force"))
            _check_data_parallel(self.training, self.resources)
            for arch in self.arch_specs:
                training = self.training_for(arch.stored_key)
                _check_models(dataset, [arch], training, self.storage, force)
        return self

    @property
    def epochs_to_probe(self) -> list[int]:
        if self.probe_epochs:
            return sorted(set(self.probe_epochs))
        return [self.training.epochs]

    @property
    def arch_specs(self) -> list[ArchSpec]:
        """Every item of ``archs`` as an :class:`ArchSpec` (a plain name has defaults);
        with a ``grid``, one per item and grid point, each under its own key."""
        return [arch for arch, _ in self._expanded]

    @property
    def _expanded(self) -> list[tuple[ArchSpec, dict]]:
        return expand([as_arch(item) for item in self.archs], self.grid)

    def grid_point(self, key: str) -> dict:
        """The hyper-parameters of the grid point stored under arch key ``key`` ({} if none)."""
        return next(point for arch, point in self._expanded if arch.stored_key == key)

    def training_for(self, key: str) -> TrainingSpec:
        """The training of the runs stored under arch key ``key``: the spec's ``training``
        with the key's grid point applied."""
        overrides = training_overrides(self.grid_point(key))
        if not overrides:
            return self.training
        return TrainingSpec.model_validate({**self.training.model_dump(), **overrides})

    def probe_epochs_for(self, key: str) -> list[int]:
        """The epochs probed in the runs of arch key ``key`` (a grid's epochs: its last)."""
        if self.grid is not None and self.grid.epochs:
            return [self.training_for(key).epochs]
        return self.epochs_to_probe

    def arch(self, key: str) -> ArchSpec:
        """The item stored under arch key ``key``."""
        return next(a for a in self.arch_specs if a.stored_key == key)

    def register_arch_keys(self) -> None:
        """Let ``actors.models.probe_layers(key)`` answer for every item's arch key."""
        for arch in self.arch_specs:
            arch.register()

    @property
    def experiment_id(self) -> str:
        return self.name

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_yaml(cls, path: str | Path, *, force: bool = False) -> ExperimentSpec:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"spec file {str(path)!r} does not exist; pass the path of a YAML spec")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpecError(f"{path} is not valid YAML ({exc}); fix the syntax") from exc
        return cls.from_dict(data, source=str(path), force=force)

    @classmethod
    def from_dict(
        cls, data: object, *, source: str = "spec", force: bool = False
    ) -> ExperimentSpec:
        """Validate ``data``; ``force`` skips ``storage.max_bytes_per_sample``."""
        if not isinstance(data, dict):
            raise SpecError(
                f"{source} should be a YAML mapping of fields, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data, context={"force": force})
        except ValidationError as exc:
            raise SpecError(f"{source}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """One line per problem: ``field.path: message``."""
    parts = []
    for error in exc.errors():
        where = ".".join(
            str(p)
            for p in error["loc"]
            if p not in (NAME_ITEM, MAPPING_ITEM) and not str(p).startswith("function-")
        )
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


def _check_models(
    dataset: DatasetSpec,
    archs: list[ArchSpec],
    training: TrainingSpec,
    storage: StorageSpec,
    force: bool,
) -> None:
    """Each arch runs on the dataset's images, its weights fit, its layers fit the byte limit.

    Models are built on the meta device: nothing is allocated or computed.
    """
    data = load_dataset(dataset)
    shape = data.input_shape()
    n_classes = data.hierarchy.n_superclasses
    for arch in archs:
        config = arch.config()
        dims = layer_dims(config, shape, n_classes)
        build_model(config, training.config(), shape=shape, num_classes=n_classes, device="meta")
        stored = sum(dims.values()) * FLOAT_BYTES[storage.embedding_dtype]
        limit = storage.max_bytes_per_sample
        if limit is not None and stored > limit and not force:
            raise ValueError(
                f"arch {arch.stored_key!r} would store {stored:,} bytes per sample "
                f"({len(dims)} layers of {dataset.name}/{dataset.hierarchy} images "
                f"{shape[1]}x{shape[2]}), over storage.max_bytes_per_sample = {limit:,}; "
                "probe fewer layers, raise the limit, or pass --force"
            )


def _check_data_parallel(training: TrainingSpec, resources: ResourcesSpec) -> None:
    """DDP splits each batch evenly and hands the weights over through checkpoints."""
    workers = resources.ddp_workers
    if workers == 1 or training.epochs == 0:
        return
    if training.batch_size % workers:
        raise ValueError(
            f"training.batch_size = {training.batch_size} does not split evenly over "
            f"{workers} DDP processes; make it a multiple of {workers}"
        )
    if training.checkpoint_every == 0:
        raise ValueError(
            "training.checkpoint_every is 0, but DDP runs hand their weights to extraction "
            "through checkpoints; set it to 1 or more"
        )
