"""Tests of ``ResNetClassifier``: layout, shapes, zero-init residual, options, LightningCLI, a Trainer run."""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers.trainers import ON_CPU, tiny_trainer
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.resnet import BasicBlock

from lightning_tricks.models import ResNetClassifier

_trainer = partial(tiny_trainer, **ON_CPU)  # quiet, CPU, no checkpoints, Lightning's default length


def test_default_is_the_resnet18_layout() -> None:
    model = ResNetClassifier()
    blocks = [m for m in model.net if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    assert [b.conv1.out_channels for b in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [b.stride for b in blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    stem = model.net[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)  # small-image stem
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    # torchvision's resnet18 has 11.69 M parameters; ours differs only in the 3x3 1-channel stem and 10-class head.
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.17e6, rel=0.01)


def test_tiny_forward_backward_and_resolution() -> None:
    model = ResNetClassifier(stages=[1, 1, 1], width=4, dropout=0.1)
    x = torch.randn(2, 1, 28, 28)
    features = model.net[:-4](x)  # before pool / flatten / dropout / linear
    assert features.shape == (2, 16, 7, 7)  # 28 -> 28 -> 14 -> 7
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_stem_pool_halves_the_resolution_before_the_first_stage() -> None:
    model = ResNetClassifier(stages=[1, 1, 1], width=4, stem_pool=True)
    assert isinstance(model.net[3], nn.MaxPool2d) and model.net[3].kernel_size == 2
    x = torch.randn(2, 1, 28, 28)
    assert model.net[:4](x).shape == (2, 4, 14, 14)
    assert model.net[:-4](x).shape == (2, 16, 4, 4)  # 28 -> 14 -> 14 -> 7 -> 4
    model(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_zero_init_residual_makes_every_block_start_as_identity_plus_shortcut() -> None:
    model = ResNetClassifier(stages=[2], width=4, zero_init_residual=True).eval()
    blocks = [m for m in model.net if isinstance(m, BasicBlock)]
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    x = torch.relu(torch.randn(2, 4, 8, 8))  # non-negative, like a block input after ReLU
    assert torch.allclose(blocks[1](x), x)  # residual branch contributes 0: relu(0 + x) = x
    plain = ResNetClassifier(stages=[2], width=4)
    assert all(torch.all(b.bn2.weight == 1) for b in plain.net if isinstance(b, BasicBlock))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stages": []}, r"`stages`.*\[\]"),
        ({"stages": [2, 0]}, r"`stages`.*\[2, 0\]"),
        ({"width": 0}, r"`width`"),
        ({"dropout": 1.5}, r"`dropout`.*1\.5"),
        ({"optimizer": "sgdm"}, r"`optimizer`.*'sgdm'"),
        ({"stem_pool": "yes"}, r"`stem_pool`.*'yes'"),
    ],
)
def test_invalid_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ResNetClassifier(**kwargs)


def test_lightning_cli_sees_every_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, constructor_options) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-tricks"])  # LightningCLI must read only `args`
    args = ["--model.stages=[1,1]", "--model.width=8", "--model.zero_init_residual=true", "--model.optimizer=nesterov"]
    cli = LightningCLI(ResNetClassifier, run=False, args=[*args, "--trainer.logger=false"], save_config_callback=None)
    names = {p.name for p in constructor_options(ResNetClassifier)}
    assert names <= set(cli.config.model.keys())
    assert cli.model.hparams.stages == [1, 1] and cli.model.hparams.optimizer == "nesterov"
    assert cli.model.net[0].out_channels == 8


def test_channels_last_is_left_off_on_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """channels_last=True trains on the CPU in the default format: torch 2.14's oneDNN hangs (2 threads) or dies
    with SIGBUS (1 thread) in the backward of a channels-last 1x1 stride-2 conv with < 8 input channels on AVX2
    (oneDNN #6035); width=4 has exactly such a downsampling conv, so the test would hang if it ran channels-last."""
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    model = ResNetClassifier(stages=[1, 1], width=4, channels_last=True, optimizer="momentum", lr=0.05)
    before = model.net[0].weight.detach().clone()
    trainer = _trainer(tmp_path, max_steps=2)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    assert "channels_last=True): left off on 'cpu'" in caplog.text
    conv = next(m for m in model.net.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(before, model.net[0].weight)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_channels_last_is_applied_for_cuda() -> None:
    """On CUDA the weights and inputs go channels-last (checked without a GPU: only the format, no backward)."""
    model = ResNetClassifier(stages=[1, 1], width=4, channels_last=True)
    model.prepare_net(torch.device("cuda"))
    conv = next(m for m in model.net.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model._channels_last_active
