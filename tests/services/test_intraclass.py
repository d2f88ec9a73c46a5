"""Intraclass measures c1-c4 and the (granulated) Kendall coefficient on hand cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from actors.datasets.transforms import augment_batch
from actors.models import ModelConfig
from services.metrics.intraclass import (
    global_max_pool,
    granulated_kendall,
    intraclass_c1,
    intraclass_c2,
    intraclass_c3,
    intraclass_c4,
    kendall_tau,
)


def test_kendall_matches_scipy_without_ties():
    rng = np.random.default_rng(0)
    for n in (2, 5, 17):
        a, b = rng.normal(size=n), rng.normal(size=n)
        assert kendall_tau(a, b) == pytest.approx(kendalltau(a, b).statistic)


def test_kendall_counts_a_tied_pair_as_zero():
    # ordered pairs: (0,1) tie in accuracy -> 0; (0,2) and (1,2) concordant -> 4 of 6
    assert kendall_tau([1, 2, 3], [0.5, 0.5, 0.9]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 2, 3], [0.5, 0.5, 0.9]) != pytest.approx(
        kendalltau([1, 2, 3], [0.5, 0.5, 0.9]).statistic  # tau-b rescales ties
    )
    assert np.isnan(kendall_tau([1.0], [2.0]))


def test_granulated_kendall_by_hand():
    # axes: lr (a, b), width (4, 8), dropout (0, fixed: it never varies)
    H = [["a", 4, 0], ["b", 4, 0], ["a", 8, 0], ["b", 8, 0]]
    measure = [1.0, 2.0, 3.0, 4.0]
    accuracy = [0.5, 0.6, 0.9, 0.7]
    total, per_axis = granulated_kendall(measure, accuracy, H)
    # lr: width 4 -> (1,.5) vs (2,.6) concordant +1; width 8 -> (3,.9) vs (4,.7) -1: mean 0
    assert per_axis[0] == pytest.approx(0.0)
    # width: lr a -> (1,.5) vs (3,.9) +1; lr b -> (2,.6) vs (4,.7) +1: mean 1
    assert per_axis[1] == pytest.approx(1.0)
    assert np.isnan(per_axis[2])
    assert total == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same models"):
        granulated_kendall(measure, accuracy[:3], H)


def _hierarchy(clustered: bool, seed: int = 0):
    """4 superclasses x 2 subclasses, 30 samples each; two layers of 8 neurons.

    Each sample is its subclass's mean plus a little noise. In the collapsed
    network the two subclasses of a superclass share one mean (all variation is
    between classes); in the clustered one each subclass has its own.
    """
    rng = np.random.default_rng(seed)
    subclass = np.repeat(np.arange(8), 30)
    superclass = subclass // 2
    means = rng.normal(scale=3.0, size=(8, 16))
    if not clustered:
        means[1::2] = means[0::2]
    X = means[subclass] + rng.normal(scale=0.05, size=(len(subclass), 16))
    return [X[:, :8], X[:, 8:]], subclass, superclass


@pytest.mark.parametrize("measure", ["c1", "c2", "c3", "c4"])
def test_measures_are_higher_when_subclasses_are_clustered(measure):
    values = {}
    for clustered in (False, True):
        layers, subclass, superclass = _hierarchy(clustered)
        if measure == "c1":
            values[clustered] = intraclass_c1(layers, subclass, superclass, k=3)
        elif measure == "c2":
            values[clustered] = intraclass_c2(layers, subclass, superclass)
        elif measure == "c3":
            values[clustered] = intraclass_c3(layers, superclass, k=3)
        else:
            values[clustered] = intraclass_c4(layers, superclass)
    assert values[True] > values[False] + 0.1, values


def test_c1_of_a_perfectly_selective_neuron():
    # one neuron: subclass 0 at 1 +- 0, the rest of its superclass at -1 +- 0 ... plus spread
    subclass = np.array([0, 0, 1, 1])
    superclass = np.array([0, 0, 0, 0])
    neuron = np.array([[2.0], [4.0], [-2.0], [-4.0]])  # mu 3 vs -3, sigma 1 and 1
    # subclass 0: (3 - -3) / (1 + 1) = 3; subclass 1: -3; median of (3, -3) = 0
    assert intraclass_c1([neuron], subclass, superclass, k=1) == pytest.approx(0.0)
    two = np.hstack([neuron, -neuron])  # the second neuron is selective for subclass 1
    assert intraclass_c1([two], subclass, superclass, k=1) == pytest.approx(3.0)


def test_c3_by_hand():
    labels = np.array([0, 0, 1, 1])
    neuron = np.array([[0.0], [2.0], [10.0], [12.0]])
    # sigma per class 1, over the data sqrt(mean((x - 6)^2)) = sqrt(26)
    assert intraclass_c3([neuron], labels, k=1) == pytest.approx(1 / np.sqrt(26))


def test_global_max_pool_keeps_each_maps_maximum():
    maps = np.arange(2 * 3 * 4 * 4, dtype=float).reshape(2, 3, 4, 4)
    assert global_max_pool(maps).tolist() == maps.max(axis=(2, 3)).tolist()


def test_augment_batch_is_seeded_and_shifts_or_flips():
    x = torch.rand(16, 3, 8, 8)
    a = augment_batch(x, torch.Generator().manual_seed(0))
    b = augment_batch(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    # every output pixel is an input pixel or padding (zero)
    assert set(a.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_hooked_linear_pre_activation_is_not_overwritten_by_the_in_place_relu():
    config = ModelConfig(name="small_cnn", layers=("fc1.0", "fc2.0"), options={"width": 4})
    model = config.create(in_channels=1, num_classes=5, image_size=8).eval()
    x = torch.randn(8, 1, 8, 8)
    _, features = config.reader(model, config.layers)(x)
    with torch.no_grad():
        pooled = model.pool(model.conv4(model.conv3(model.conv2(model.conv1(x)))))
        expected = model.fc1[0](pooled)
    assert torch.allclose(features["fc1.0"], expected, atol=1e-6)
    assert (features["fc1.0"] < 0).any()  # a pre-activation, not the ReLU's output


def test_training_augment_changes_what_is_learned():
    from actors.datasets import DatasetConfig
    from actors.training import Trainer, TrainingConfig

    config = ModelConfig(name="small_cnn", options={"width": 4})
    weights = {}
    for augment in (False, True):
        training = TrainingConfig(epochs=1, checkpoint_every=0, augment=augment)
        trainer = Trainer(config, DatasetConfig("digits", "coarse"), training, seed=0)
        trainer.train_to(1)
        weights[augment] = trainer.model.conv1[0].weight.detach().clone()
    assert not torch.equal(weights[False], weights[True])
