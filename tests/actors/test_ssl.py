"""The two-view losses against their formulas written out by hand, the views, the trainer."""

import math

import numpy as np
import pytest
import torch

from actors.datasets import DatasetConfig, build_dataset, image_loader
from actors.datasets.synthetic import write_cifar
from actors.models import ModelError, create_model
from actors.ssl import (
    SslConfig,
    TwoViewModel,
    TwoViews,
    batched_view,
    nt_xent_loss,
    supcon_loss,
    two_view_loss,
    vicreg_loss,
    view_transform,
)
from actors.training import Trainer, TrainingConfig
from jobs.spec import ExperimentSpec, SpecError
from services.metrics import ncc_accuracy

DIGITS = DatasetConfig("digits", "coarse")
SMALL = {"train_per_subclass": 4, "test_per_subclass": 4}  # shapes


def tiny_pair(n=5, d=3, seed=0):
    rng = np.random.RandomState(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d))


# -- VICReg ------------------------------------------------------------------------
def vicreg_by_loops(a, b, lam, mu, nu):
    n, d = a.shape
    invariance = sum((a[i, j] - b[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def variance(z):
        total = 0.0
        for j in range(d):
            mean = sum(z[i, j] for i in range(n)) / n
            var = sum((z[i, j] - mean) ** 2 for i in range(n)) / (n - 1)
            total += max(0.0, 1.0 - math.sqrt(var + 1e-4))
        return total / d

    def covariance(z):
        means = [sum(z[i, j] for i in range(n)) / n for j in range(d)]
        total = 0.0
        for j in range(d):
            for k in range(d):
                if j != k:
                    c = sum((z[i, j] - means[j]) * (z[i, k] - means[k]) for i in range(n))
                    total += (c / (n - 1)) ** 2
        return total / d

    return (
        lam * invariance
        + mu * (variance(a) + variance(b)) / 2
        + nu * (covariance(a) + covariance(b))
    )


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 3.0, 0.5)])
def test_vicreg_against_its_terms_written_as_loops(weights):
    a, b = tiny_pair()
    a[:, 0] *= 0.1  # a dimension with std below 1, so the variance hinge is active
    lam, mu, nu = weights
    loss = vicreg_loss(
        torch.tensor(a),
        torch.tensor(b),
        invariance_weight=lam,
        variance_weight=mu,
        covariance_weight=nu,
    )
    assert math.isclose(loss.item(), vicreg_by_loops(a, b, lam, mu, nu), rel_tol=1e-5)


def test_vicreg_is_zero_only_where_its_three_terms_are():
    # identical views with unit-variance, uncorrelated dimensions: invariance and
    # covariance vanish, and the variance hinge is nearly so (std slightly above 1)
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) * 1.5
    assert vicreg_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert vicreg_loss(z, z + 0.1).item() == pytest.approx(25 * 0.01, rel=1e-5)


# -- SimCLR and SupCon ---------------------------------------------------------------
def cosine(u, v):
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def contrastive_by_loops(a, b, labels, t):
    """Khosla et al.'s L_out over the 2N views: SimCLR when every label is distinct."""
    z = np.concatenate([a, b])
    y = list(labels) + list(labels)
    total = 0.0
    for i in range(len(z)):
        denominator = sum(math.exp(cosine(z[i], z[k]) / t) for k in range(len(z)) if k != i)
        positives = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        total += -sum(
            math.log(math.exp(cosine(z[i], z[p]) / t) / denominator) for p in positives
        ) / len(positives)
    return total / len(z)


def test_simclr_against_an_explicit_loop_over_pairs():
    a, b = tiny_pair(n=4, d=3)
    loss = nt_xent_loss(torch.tensor(a), torch.tensor(b), temperature=0.5)
    assert math.isclose(loss.item(), contrastive_by_loops(a, b, range(4), 0.5), rel_tol=1e-6)


def test_supcon_against_its_published_formula():
    a, b = tiny_pair(n=6, d=4, seed=1)
    labels = [0, 1, 0, 2, 1, 0]
    loss = supcon_loss(torch.tensor(a), torch.tensor(b), torch.tensor(labels), temperature=0.1)
    assert math.isclose(loss.item(), contrastive_by_loops(a, b, labels, 0.1), rel_tol=1e-6)
    # with every label distinct it is SimCLR's loss
    distinct = supcon_loss(torch.tensor(a), torch.tensor(b), torch.arange(6), 0.1)
    torch.testing.assert_close(distinct, nt_xent_loss(torch.tensor(a), torch.tensor(b), 0.1))


def test_two_view_loss_picks_each_objective_and_its_temperature():
    a, b = (torch.tensor(v) for v in tiny_pair(n=4, d=3))
    config = SslConfig()
    assert two_view_loss("simclr", a, b, None, config) == nt_xent_loss(a, b, 0.5)
    labels = torch.tensor([0, 0, 1, 1])
    assert two_view_loss("supcon", a, b, labels, config) == supcon_loss(a, b, labels, 0.1)
    assert two_view_loss("vicreg", a, b, None, config) == vicreg_loss(a, b)
    with pytest.raises(ValueError, match="unknown two-view loss"):
        two_view_loss("byol", a, b, None, config)


# -- the model: backbone + projector ---------------------------------------------------
def test_gradients_reach_the_backbone_and_the_projector_but_not_the_head():
    torch.manual_seed(0)
    backbone = create_model("small_cnn", in_channels=1, num_classes=5)
    model = TwoViewModel(backbone, "small_cnn", "vicreg", (32, 16))
    x = torch.rand(8, 1, 8, 8)
    generator = torch.Generator().manual_seed(0)
    z = model(torch.cat([batched_view(x, generator, SslConfig()) for _ in range(2)]))
    assert z.shape == (16, 16)
    vicreg_loss(*z.chunk(2)).backward()
    for name in ("conv1.0.weight", "conv4.0.weight", "fc1.0.weight", "fc2.0.weight"):
        grad = backbone.get_submodule(name.rsplit(".", 1)[0]).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    assert backbone.head.weight.grad is None  # the untrained head
    # the probed layers are still the backbone's: the projector adds no module to it
    assert not any(n.startswith("projector") for n, _ in backbone.named_modules())


def test_an_arch_without_a_linear_head_is_refused():
    model = create_model("squeezenet1_0", in_channels=3, num_classes=3)
    with pytest.raises(ModelError, match="no linear classification head"):
        TwoViewModel(model, "squeezenet1_0", "simclr", (8,))


# -- the views --------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_batched_views_differ_and_are_reproducible(channels):
    x = torch.rand(16, channels, 12, 12)
    config = SslConfig(rotation=15)
    generator = torch.Generator().manual_seed(3)
    first, second = batched_view(x, generator, config), batched_view(x, generator, config)
    assert first.shape == second.shape == x.shape
    assert 0 <= first.min() and first.max() <= 1
    per_image = (first - second).flatten(1).abs().amax(dim=1)
    assert (per_image > 1e-3).all()  # every image's two views differ
    again = batched_view(x, torch.Generator().manual_seed(3), config)
    torch.testing.assert_close(again, first)


def test_file_datasets_make_two_views_in_the_loader_workers(tmp_path):
    root = write_cifar(tmp_path, "cifar10", 20, 10)
    data = build_dataset(DatasetConfig("cifar10", "coarse", options={"root": str(root)}))
    transform = TwoViews(view_transform(32, SslConfig()))
    loader = image_loader(
        data,
        "train",
        train=True,
        batch_size=4,
        workers=1,
        generator=torch.Generator().manual_seed(0),
        transform=transform,
    )
    x, positions = next(iter(loader))
    assert x.shape == (4, 2, 3, 32, 32) and positions.shape == (4,)
    assert ((x[:, 0] - x[:, 1]).flatten(1).abs().amax(dim=1) > 1e-3).all()
    with pytest.raises(ValueError, match="in-memory datasets take no per-sample transform"):
        build_dataset(DIGITS).torch_dataset("train", train=True, transform=transform)


# -- training -------------------------------------------------------------------------------
def test_a_label_free_run_reports_ncc_accuracy_of_the_penultimate_features():
    training = TrainingConfig(
        epochs=1, loss="simclr", optimizer="adamw", lr=1e-3, ssl={"projector": [64, 32]}
    )
    trainer = Trainer("small_cnn", DIGITS, training, seed=0, threads=1)
    trainer.train_to(1)
    features = {}
    for split in ("train", "test"):
        chunks = list(trainer.iter_layer_chunks(split, ("fc2",), 10_000))
        positions = np.concatenate([p for p, _ in chunks])
        features[split] = (
            np.concatenate([o["fc2"] for _, o in chunks]),
            trainer.data.superclass(split)[positions],
        )
    expected = ncc_accuracy(*features["train"], *features["test"])
    assert trainer.accuracy("test") == pytest.approx(expected, abs=1e-9)
    assert 0.2 < trainer.accuracy("test") <= 1  # 5 superclasses


def test_a_resumed_two_view_run_ends_with_the_same_weights():
    training = TrainingConfig(epochs=2, loss="vicreg", ssl={"projector": [32, 32]}, lr=0.01)
    straight = Trainer("small_cnn", DIGITS, training, seed=1, threads=1)
    straight.train_to(2)
    first = Trainer("small_cnn", DIGITS, training, seed=1, threads=1)
    first.train_to(1)
    state = first.state_dict()
    assert state["projector"] is not None
    resumed = Trainer("small_cnn", DIGITS, training, seed=1, threads=1)
    resumed.load_state_dict(state)
    resumed.train_to(2)
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value)


def test_spec_accepts_the_two_view_losses_and_names_bad_settings():
    base = {
        "name": "ssl",
        "datasets": [{"name": "digits", "hierarchy": "coarse"}],
        "archs": ["small_cnn"],
        "seeds": [0],
    }
    spec = ExperimentSpec.from_dict(
        base | {"training": {"loss": "vicreg", "ssl": {"projector": [64], "rotation": 10}}}
    )
    config = spec.training.config()
    assert config.two_view and config.ssl == SslConfig(projector=(64,), rotation=10)
    with pytest.raises(SpecError, match="training.ssl.projector: .*should all be positive"):
        ExperimentSpec.from_dict(base | {"training": {"loss": "simclr", "ssl": {"projector": [0]}}})
    with pytest.raises(SpecError, match="training.ssl.min_crop"):
        ExperimentSpec.from_dict(base | {"training": {"loss": "simclr", "ssl": {"min_crop": 0}}})
    with pytest.raises(SpecError, match="no linear classification head"):
        ExperimentSpec.from_dict(
            base
            | {
                "datasets": [{"name": "shapes", "hierarchy": "natural", "options": SMALL}],
                "archs": ["squeezenet1_0"],
                "training": {"loss": "supcon"},
            }
        )
