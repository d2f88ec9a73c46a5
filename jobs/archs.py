"""Items of a spec's ``archs``: a model name or a mapping saying how to start and read it.

Each item is stored under an arch key (table names ``embeddings/<experiment>/<key>/<layer>``,
run ids): the name for a plain name, else the item's ``key``, else
``<name>-<hash of the item>``, so two items of one model with other weights or
layers never share tables.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from actors.models import ModelConfig, config_layers, model_entry, register_arch_key

ARCH_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ARCH_KEY_HASH_CHARS = 8


class ArchSpec(BaseModel):
    """A model to train or probe: a registered name and, optionally, how to start and read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="a name from `stratalens models`, e.g. resnet50, vit_b_16")
    key: str | None = Field(
        None,
        pattern=ARCH_KEY_PATTERN,
        description="what it is stored under (table names, run ids); default: the name, or "
        "name-<hash> when any other field is set",
    )
    weights: str | None = Field(
        None,
        description="local state_dict or checkpoint file the model starts from (path#entry "
        "picks a checkpoint entry, e.g. #ema); nothing is downloaded",
    )
    layers: list[str] | None = Field(
        None,
        min_length=1,
        description="probed layers: node names of `stratalens layers NAME --nodes`; "
        "default: the arch's default set",
    )
    pool: Literal["avg", "max"] = Field("avg", description="global pooling of conv maps")
    tokens: Literal["cls", "mean"] = Field(
        "cls", description="token sequences (ViT): the CLS token or the mean over tokens"
    )
    options: dict = Field(
        default_factory=dict, description="builder options, e.g. ViT's num_layers, hidden_dim"
    )
    load_head: bool = Field(
        True, description="false: keep the model's own head instead of the file's"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        model_entry(value)
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str | None) -> str | None:
        if value is not None:
            from actors.models import read_state_dict

            read_state_dict(value)  # exists and is readable (memory-mapped, cheap)
        return value

    @model_validator(mode="after")
    def _layers(self) -> ArchSpec:
        config_layers(self.config())
        return self

    def config(self) -> ModelConfig:
        return ModelConfig(
            name=self.name,
            weights=self.weights,
            layers=None if self.layers is None else tuple(self.layers),
            pool=self.pool,
            tokens=self.tokens,
            options=dict(self.options),
            load_head=self.load_head,
        )

    @property
    def is_plain(self) -> bool:
        """Only a name: stored under the name itself."""
        return self == ArchSpec(name=self.name)

    @property
    def stored_key(self) -> str:
        """The arch key of the store's table names and run ids."""
        if self.key:
            return self.key
        if self.is_plain:
            return self.name
        blob = json.dumps(self.model_dump(mode="json", exclude={"key"}), sort_keys=True)
        return f"{self.name}-{hashlib.sha1(blob.encode()).hexdigest()[:ARCH_KEY_HASH_CHARS]}"

    def probe_layers(self) -> tuple[str, ...]:
        return config_layers(self.config())

    def register(self) -> None:
        """Let ``actors.models.probe_layers(key)`` answer for this item's arch key."""
        register_arch_key(self.stored_key, self.probe_layers())


# An archs item is a name or a mapping; the tag keeps errors to the branch the item is.
NAME_ITEM, MAPPING_ITEM = "name-item", "mapping-item"
ArchItem = Annotated[
    Union[Annotated[str, Tag(NAME_ITEM)], Annotated[ArchSpec, Tag(MAPPING_ITEM)]],  # noqa: UP007
    Discriminator(lambda v: NAME_ITEM if isinstance(v, str) else MAPPING_ITEM),
]


def as_arch(item: str | ArchSpec) -> ArchSpec:
    return ArchSpec(name=item) if isinstance(item, str) else item


def register_stored_archs(spec_json: str) -> None:
    """Register the arch keys of a stored spec (its ``experiments`` row) for layer lookups.

    Items are rebuilt without validation: a weights file need not exist any more.
    A ``grid`` expands each item into its grid points' keys.
    """
    from jobs.grid import GridSpec, expand, stored_archs

    data = json.loads(spec_json)
    grid = GridSpec.model_validate(data["grid"]) if data.get("grid") else None
    for arch, _ in expand(stored_archs(data), grid):
        arch.register()
