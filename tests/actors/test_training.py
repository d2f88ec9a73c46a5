import numpy as np
import torch

from actors.datasets import DatasetConfig
from actors.training import Trainer, TrainingConfig

DIGITS = DatasetConfig("digits", "coarse")


def test_training_learns_superclasses():
    trainer = Trainer("small_cnn", DIGITS, TrainingConfig(epochs=3, lr=0.1), seed=0, threads=1)
    assert trainer.train_to(3) == 3
    assert trainer.accuracy("test") > 0.6  # chance is 0.2


def test_same_seed_same_model_other_seed_other_model():
    weights = []
    for seed in (0, 0, 1):
        trainer = Trainer("small_cnn", DIGITS, TrainingConfig(epochs=1), seed=seed, threads=1)
        trainer.train_to(1)
        weights.append(torch.cat([p.flatten() for p in trainer.model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1])
    assert not torch.allclose(weights[0], weights[2])


def test_layer_chunks_cover_the_split_in_order_and_give_the_accuracy():
    trainer = Trainer("small_cnn", DIGITS, TrainingConfig(epochs=1), seed=0, threads=1)
    trainer.train_to(1)
    chunks = list(trainer.iter_layer_chunks("test", ("conv1", "fc2"), rows_per_chunk=100))
    index = np.concatenate([i for i, _ in chunks])
    np.testing.assert_array_equal(index, np.arange(trainer.data.num_samples("test")))
    assert all(len(i) <= 100 and out["fc2"].shape == (len(i), 64) for i, out in chunks)
    # the pass remembered the superclass accuracy; a fresh evaluation agrees
    remembered = trainer.accuracy("test")
    trainer._accuracy.clear()
    assert trainer.accuracy("test") == remembered


def test_chunks_equal_a_direct_forward_pass():
    trainer = Trainer("small_cnn", DIGITS, TrainingConfig(epochs=1), seed=0, threads=1)
    (positions, outputs), *_ = trainer.iter_layer_chunks("test", ("fc2",), rows_per_chunk=64)
    images = torch.from_numpy(trainer.data.images["test"][positions])
    trainer.model.eval()
    with torch.no_grad():
        x = trainer.model.pool(
            trainer.model.conv4(
                trainer.model.conv3(trainer.model.conv2(trainer.model.conv1(images)))
            )
        )
        expected = trainer.model.fc2(trainer.model.fc1(x)).numpy()
    np.testing.assert_allclose(outputs["fc2"], expected, rtol=1e-5, atol=1e-6)
