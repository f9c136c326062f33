"""Tests of ``MLPClassifier``: every activation / norm option, dropout, LightningCLI options, a real training run."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers.trainers import ON_CPU, tiny_trainer
from lightning.pytorch import seed_everything
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.models import MLPClassifier
from lightning_tricks.models.mlp import ActivationName, MLPNormName

_trainer = partial(tiny_trainer, **ON_CPU)  # quiet, CPU, no checkpoints, Lightning's default length


def forward_backward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    assert logits.shape == (x.shape[0], 10)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    return logits


@pytest.mark.parametrize("activation", ActivationName.__args__)
def test_every_activation_forward_backward(activation: str) -> None:
    model = MLPClassifier(hidden_sizes=[12, 8], activation=activation, input_size=16)
    forward_backward(model, torch.randn(4, 1, 4, 4))
    expected = {"identity": nn.Identity, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}.get(activation)
    if expected is not None:
        assert sum(isinstance(m, expected) for m in model.net) == 2


@pytest.mark.parametrize("norm", MLPNormName.__args__)
def test_every_norm_forward_backward(norm: str) -> None:
    model = MLPClassifier(hidden_sizes=[12, 8], norm=norm, dropout=0.2, input_size=16)
    model.train()
    forward_backward(model, torch.randn(4, 1, 4, 4))
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    kinds = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}
    if norm in kinds:
        assert sum(isinstance(m, kinds[norm]) for m in model.net) == 2
    assert all(parametrize.is_parametrized(m, "weight") for m in linears) == (norm == "weight")
    if norm == "weight":
        # weight = g * v / ||v|| row-wise: the magnitude is the parameter g, whatever the direction v.
        layer = linears[0]
        assert torch.allclose(layer.weight.norm(dim=1), layer.parametrizations.weight.original0.squeeze(1), atol=1e-6)
    if norm == "batch":
        assert linears[0].bias is None  # redundant before batch norm
    assert sum(isinstance(m, nn.Dropout) for m in model.net) == 2


def test_selu_uses_alpha_dropout_and_eval_is_deterministic() -> None:
    model = MLPClassifier(hidden_sizes=[8], activation="selu", dropout=0.5, input_size=16)
    assert any(isinstance(m, nn.AlphaDropout) for m in model.net)
    x = torch.randn(4, 1, 4, 4)
    model.eval()
    assert torch.equal(model(x), model(x))


def test_no_hidden_layer_is_logistic_regression() -> None:
    model = MLPClassifier(hidden_sizes=[], input_size=16)
    assert [type(m) for m in model.net] == [nn.Flatten, nn.Linear]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activation": "swish"}, r"`activation`.*'relu'.*'identity'\).*'swish'"),
        ({"norm": "group"}, r"`norm`.*\('none', 'batch', 'layer', 'weight'\).*'group'"),
        ({"dropout": 1.0}, r"`dropout`.*\[0\.0, 1\.0\).*1\.0"),
        ({"hidden_sizes": [8, 0]}, r"`hidden_sizes`.*\[8, 0\]"),
        ({"input_size": 0}, r"`input_size`"),
    ],
)
def test_invalid_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MLPClassifier(**kwargs)


def test_input_size_mismatch_is_a_clear_error() -> None:
    model = MLPClassifier(hidden_sizes=[8], input_size=16)
    with pytest.raises(ValueError, match=r"input_size=16.*\(1, 5, 5\).*25 features"):
        model.training_step((torch.zeros(2, 1, 5, 5), torch.tensor([0, 1])), 0)


def test_lightning_cli_sees_and_sets_every_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, constructor_options
) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-tricks"])  # LightningCLI must read only `args`
    args = [
        "--model.optimizer=sgd",
        "--model.hidden_sizes=[512,256]",
        "--model.norm=layer",
        "--model.activation=gelu",
        "--model.lr=0.05",
        "--model.lr_schedule=onecycle",
        "--model.label_smoothing=0.1",
        "--model.channels_last=true",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
    ]
    cli = LightningCLI(MLPClassifier, run=False, args=args, save_config_callback=None)
    assert {p.name for p in constructor_options(MLPClassifier)} <= set(cli.config.model.keys())
    model = cli.model
    assert isinstance(model, MLPClassifier)
    assert model.hparams.optimizer == "sgd" and model.hparams.hidden_sizes == [512, 256]
    assert model.hparams.norm == "layer" and model.hparams.lr == 0.05 and model.hparams.channels_last is True
    assert model.net[1].out_features == 512 and isinstance(model.net[2], nn.LayerNorm)
    with pytest.raises(SystemExit):  # a Literal option is checked by the parser too
        LightningCLI(MLPClassifier, run=False, args=["--model.optimizer=lbfgs"], save_config_callback=None)


def test_learns_fashion_mnist_subset(tmp_path: Path, fashion_subset: tuple[TensorDataset, TensorDataset]) -> None:
    train, val = fashion_subset
    seed_everything(0)
    model = MLPClassifier(hidden_sizes=[128], optimizer="adam", lr=2e-3)
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(model, DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=500))
    # 2000 images, 3 epochs (~95 Adam steps): such an MLP reaches about 0.78-0.80 on held-out Fashion-MNIST; chance
    # is 0.10 and a classifier stuck on one class scores 0.10. The 0.65 floor leaves room for seeds and BLAS
    # differences while failing any broken loss, label, optimizer or metric wiring.
    assert trainer.callback_metrics["val/acc"].item() > 0.65
    assert trainer.callback_metrics["val/loss"].item() < 1.0  # chance level is ln(10) = 2.30
