"""Each loss on a tiny batch against its formula; optimisers, schedule, EMA, head changes."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from actors.datasets import DatasetConfig
from actors.losses import (
    HEAD_LOSSES,
    CosineLinear,
    add_head_dropout,
    loss_function,
    set_batchnorm_momentum,
    use_cosine_head,
)
from actors.models import ModelError, create_model
from actors.optim import ModelEma, build_optimizer, cosine_warmup_scale
from actors.training import Trainer, TrainingConfig

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
Y = torch.tensor([0, 2])


def log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def by_hand(name: str) -> float:
    z, y = LOGITS.numpy().astype(np.float64), Y.numpy()
    onehot = np.eye(3)[y]
    if name in ("softmax_ce", "cosine_softmax"):
        return float(-log_softmax(z)[np.arange(2), y].mean())
    if name == "squared_error":
        return float(((z - onehot) ** 2).mean())
    if name == "sigmoid_ce":
        p = 1 / (1 + np.exp(-z))
        return float(-(onehot * np.log(p) + (1 - onehot) * np.log(1 - p)).sum() / 2)
    if name == "label_smoothing":
        eps = 0.1
        target = onehot * (1 - eps) + eps / 3
        return float(-(target * log_softmax(z)).sum(axis=1).mean())
    raise AssertionError(name)


@pytest.mark.parametrize("name", HEAD_LOSSES)
def test_each_loss_on_a_tiny_batch(name):
    logits = LOGITS.clone().requires_grad_(True)
    loss = loss_function(name, label_smoothing=0.1)(logits, Y)
    assert math.isclose(loss.item(), by_hand(name), rel_tol=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_cosine_head_gives_cosines_over_the_temperature():
    torch.manual_seed(0)
    model = create_model("small_cnn", in_channels=1, num_classes=3)
    use_cosine_head(model, "small_cnn", temperature=0.05)
    assert isinstance(model.head, CosineLinear) and "head.bias" not in model.state_dict()
    x = torch.randn(4, 64)
    w = model.head.weight
    expected = (x @ w.T) / (x.norm(dim=1, keepdim=True) * w.norm(dim=1)) / 0.05
    torch.testing.assert_close(model.head(x), expected)
    assert model.head(x).abs().max() <= 1 / 0.05 + 1e-4


def test_dropout_before_the_head_only_in_training():
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=3, num_classes=3)
    plain = copy.deepcopy(model)
    add_head_dropout(model, "resnet18", 0.5)
    seen = {}
    for net in (model, plain):
        net.fc.register_forward_hook(lambda m, inputs, out, net=net: seen.update({net: inputs[0]}))
    x = torch.randn(2, 3, 32, 32)
    model.train(), plain.train()
    model(x), plain(x)
    dropped = (seen[model] == 0) & (seen[plain] != 0)
    assert 0.3 < dropped.float().mean() < 0.7  # about half, the rest scaled by 2
    kept = seen[model] != 0
    torch.testing.assert_close(seen[model][kept], 2 * seen[plain][kept])
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x), plain(x))  # no dropout when evaluating
    assert list(model.state_dict()) == list(plain.state_dict())


def test_heads_are_required_for_cosine_and_dropout():
    model = create_model("squeezenet1_0", in_channels=3, num_classes=3)
    with pytest.raises(ModelError, match="no linear classification head"):
        use_cosine_head(model, "squeezenet1_0", 0.05)


def test_batchnorm_momentum():
    model = create_model("resnet18", in_channels=3, num_classes=3)
    set_batchnorm_momentum(model, 0.01)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}


def test_optimisers():
    model = nn.Linear(3, 2)
    sgd = build_optimizer(
        model, "sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, betas=(0.9, 0.99)
    )
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    adamw = build_optimizer(
        model, "adamw", lr=1e-3, momentum=0.9, nesterov=False, weight_decay=0.1, betas=(0.9, 0.99)
    )
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.1
    assert adamw.defaults["betas"] == (0.9, 0.99)


def test_cosine_schedule_with_warmup():
    scales = [cosine_warmup_scale(s, warmup_steps=5, total_steps=20) for s in range(20)]
    assert scales[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert scales[5] == 1.0 and all(a >= b for a, b in zip(scales[5:], scales[6:], strict=False))
    assert 0 < scales[-1] < 0.05


def test_ema_follows_the_decay_formula():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 7
    ema.update(model)
    state = ema.state_dict()
    torch.testing.assert_close(state["0.weight"], 0.9 * start["0.weight"] + 0.1 * model[0].weight)
    assert state["1.num_batches_tracked"] == 7  # integers are copied
    assert not ema.module.training


DIGITS = DatasetConfig("digits", "coarse")


@pytest.mark.parametrize(
    "recipe",
    [
        {"loss": "sigmoid_ce"},
        {"loss": "cosine_softmax", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1},
        {"loss": "label_smoothing", "dropout": 0.3, "ema_decay": 0.9, "nesterov": True},
    ],
)
def test_recipes_train(recipe):
    trainer = Trainer("small_cnn", DIGITS, TrainingConfig(epochs=2, **recipe), seed=0, threads=1)
    trainer.train_to(2)
    assert trainer.accuracy("test") > 0.4  # chance is 0.2
    if recipe.get("ema_decay"):
        assert trainer.extraction_model is not trainer.model
