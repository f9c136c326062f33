"""Tests of ``InceptionClassifier``: block branches and shapes, options, LightningCLI, a Trainer run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.models import InceptionClassifier
from lightning_tricks.models.inception import InceptionBlock


def kernel_sizes(module: nn.Module) -> list[int]:
    return [m.kernel_size[0] for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(("factorize", "wide"), [(True, [1, 3, 3]), (False, [1, 5])])
def test_block_has_four_branches_concatenated(factorize: bool, wide: list[int]) -> None:
    block = InceptionBlock(6, 4, factorize_5x5=factorize)
    assert kernel_sizes(block.branch1x1) == [1]
    assert kernel_sizes(block.branch3x3) == [1, 3]
    assert kernel_sizes(block.branch5x5) == wide
    assert isinstance(block.branch_pool[0], nn.MaxPool2d) and kernel_sizes(block.branch_pool) == [1]
    assert all(isinstance(m, nn.BatchNorm2d) for m in [block.branch1x1.bn, block.branch3x3[1].bn])
    x = torch.randn(2, 6, 7, 7)
    out = block(x)
    assert out.shape == (2, 16, 7, 7) and block.out_channels == 16
    assert torch.equal(out[:, :4], block.branch1x1(x))  # branch outputs are stacked in order along channels
    assert torch.equal(out[:, 12:], block.branch_pool(x))
    assert out.min() >= 0  # every branch ends in BN + ReLU


def test_stages_downsample_and_forward_backward() -> None:
    model = InceptionClassifier(stages=[1, 1, 1], width=2, stem_channels=4, dropout=0.1)
    x = torch.randn(2, 1, 28, 28)
    features = model.net[:-4](x)
    assert features.shape == (2, 4 * 2 * 4, 7, 7)  # 4 branches x (2 * 2**2) channels; 28 -> 14 -> 7
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.net) == 2
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_stem_pool_halves_the_resolution_before_the_first_stage() -> None:
    model = InceptionClassifier(stages=[1, 1], width=2, stem_channels=4, stem_pool=True)
    x = torch.randn(2, 1, 28, 28)
    assert model.net[:2](x).shape == (2, 4, 14, 14)
    assert model.net[:-4](x).shape == (2, 4 * 2 * 2, 7, 7)  # 28 -> 14 (stem pool) -> 7 (between stages)
    model(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stages": [0]}, r"`stages`.*\[0\]"),
        ({"width": 0}, r"`width`"),
        ({"stem_channels": -1}, r"`stem_channels`"),
        ({"dropout": -0.1}, r"`dropout`"),
        ({"lr_schedule": "linear"}, r"`lr_schedule`.*'linear'"),
        ({"stem_pool": 1}, r"`stem_pool`.*1"),
    ],
)
def test_invalid_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InceptionClassifier(**kwargs)


def test_lightning_cli_sees_every_option_and_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, constructor_options
) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-tricks"])  # LightningCLI must read only `args`
    args = ["--model.stages=[1]", "--model.width=2", "--model.stem_channels=4", "--model.factorize_5x5=false"]
    trainer_args = [f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.max_steps=2"]
    cli = LightningCLI(InceptionClassifier, run=False, args=args + trainer_args, save_config_callback=None)
    assert {p.name for p in constructor_options(InceptionClassifier)} <= set(cli.config.model.keys())
    model = cli.model
    assert 5 in kernel_sizes(model)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    cli.trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert isinstance(cli.trainer, Trainer) and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
