"""A user's own averaging or restoring callback, subclassing none of ours, takes part with EarlyStopping and EMA."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.models import ScriptedMetricModel
from helpers.trainers import WITH_VALIDATION, tiny_trainer
from torch import nn

from lightning_tricks.callbacks import EMA, EarlyStopping
from lightning_tricks.callbacks._protocols import HoldsAveragedWeights, RestoresBestWeights

_trainer = partial(tiny_trainer, **WITH_VALIDATION, enable_checkpointing=False)


class ConstantAverage(pl.Callback):
    """A user's averaging callback: its "average" is a copy of the module with every weight set to 0.25."""

    def __init__(self) -> None:
        self.average: nn.Module | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.average = copy.deepcopy(pl_module)
        with torch.no_grad():
            for p in self.average.parameters():
                p.fill_(0.25)

    def averaged_module(self) -> nn.Module | None:
        return self.average


class RestoreInitial(pl.Callback):
    """A user's restoring callback: puts the weights the fit started with back when training ends."""

    def __init__(self, restore: bool) -> None:
        self.restore = restore
        self.initial: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = copy.deepcopy(pl_module.state_dict())

    def will_restore(self) -> bool:
        return self.restore

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore:
            pl_module.load_state_dict(self.initial)


def test_the_protocols_recognize_callbacks_by_their_method() -> None:
    assert isinstance(ConstantAverage(), HoldsAveragedWeights) and not isinstance(
        ConstantAverage(), RestoresBestWeights
    )
    assert isinstance(RestoreInitial(True), RestoresBestWeights)
    assert isinstance(EMA(), HoldsAveragedWeights) and isinstance(EarlyStopping("x"), RestoresBestWeights)


def test_early_stopping_keeps_a_user_callbacks_averaged_weights(tmp_path: Path) -> None:
    model = ScriptedMetricModel([3.0, 1.0, 2.0])
    average, stop = ConstantAverage(), EarlyStopping("val_metric", patience=5, restore_best_weights=True)
    _trainer(tmp_path, [average, stop], max_epochs=3).fit(model)
    assert stop.best_epoch == 1
    assert all(torch.equal(p, torch.full_like(p, 0.25)) for p in model.parameters())  # the average, restored
    assert not torch.equal(model.validated[2]["layer.weight"], torch.full_like(model.layer.weight, 0.25))


@pytest.mark.parametrize("restore", [True, False])
def test_ema_leaves_the_module_to_a_user_callback_that_restores(tmp_path: Path, restore: bool) -> None:
    model = ScriptedMetricModel([3.0, 2.0])
    restorer, ema = RestoreInitial(restore), EMA(decay=0.5)
    _trainer(tmp_path, [restorer, ema], max_epochs=2).fit(model)  # EMA's on_train_end runs after the restore
    average = ema.averaged_module()
    assert average is not None
    for name, value in model.state_dict().items():
        expected = restorer.initial[name] if restore else average.state_dict()[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
    assert not torch.equal(restorer.initial["layer.weight"], average.state_dict()["layer.weight"])
