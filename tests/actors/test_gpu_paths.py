"""The trainer's CUDA paths (bf16 autocast, channels_last); skipped without CUDA."""

import numpy as np
import pytest
import torch

from actors.datasets import DatasetConfig
from actors.training import Trainer, TrainingConfig

pytestmark = pytest.mark.gpu
SHAPES = DatasetConfig("shapes", "natural", options={"train_per_subclass": 20})


def test_cuda_training_and_extraction():
    trainer = Trainer(
        "resnet18", SHAPES, TrainingConfig(epochs=1, ema_decay=0.9), seed=0, device="cuda"
    )
    assert trainer.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer._autocast().fast_dtype == torch.bfloat16
    trainer.train_to(1)
    layers = trainer.probe_layers
    (positions, features), *_ = trainer.iter_layer_chunks("test", layers, 10_000)
    assert len(positions) == trainer.data.num_samples("test")
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in features.values())
    assert trainer.accuracy("test") > 0.2


def test_cuda_state_round_trip():
    config = TrainingConfig(epochs=2)
    first = Trainer("resnet18", SHAPES, config, seed=0, device="cuda")
    first.train_to(1)
    resumed = Trainer("resnet18", SHAPES, config, seed=0, device="cuda")
    resumed.load_state_dict(first.state_dict())
    resumed.train_to(2)
    assert resumed.epoch == 2 and resumed.state_dict()["rng"]["cuda"]
