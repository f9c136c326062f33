"""The per-batch hooks a callback does not implement are kept out of Lightning's dispatch (``TrickCallback``)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from helpers.trainers import tiny_trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_tricks import callbacks
from lightning_tricks.callbacks._base import PER_BATCH_HOOKS

EXPORTED = [getattr(callbacks, name) for name in callbacks.__all__]


def _instance(cls: type[pl.Callback]) -> pl.Callback:
    return cls(monitor="val_loss") if cls is callbacks.EarlyStopping else cls()


@pytest.mark.parametrize("cls", EXPORTED, ids=lambda c: c.__name__)
def test_every_callback_hides_exactly_the_hooks_it_does_not_implement(cls: type[pl.Callback]) -> None:
    callback = _instance(cls)
    for name in PER_BATCH_HOOKS:
        inherited = getattr(cls, name) is getattr(pl.Callback, name)
        assert (getattr(callback, name) is None) == inherited, name
    assert any(getattr(callback, name) is None for name in PER_BATCH_HOOKS)  # every callback has some to hide
    copy = pickle.loads(pickle.dumps(callback))  # ddp_spawn pickles callbacks
    assert [getattr(copy, n) is None for n in PER_BATCH_HOOKS] == [
        getattr(callback, n) is None for n in PER_BATCH_HOOKS
    ]


def test_a_subclass_keeps_its_own_hooks_and_super_still_works(tmp_path: Path) -> None:
    calls: list[str] = []

    class Mine(callbacks.InputRangeCheck):
        def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any) -> None:
            super().on_before_backward(trainer, pl_module, loss)  # Callback's no-op, reached through the class
            calls.append("before_backward")

    mine = Mine(check_batches=1)
    assert mine.on_before_backward is not None and mine.on_after_backward is None
    tiny_trainer(tmp_path, mine, max_steps=3, enable_checkpointing=False, limit_val_batches=0).fit(BoringModel())
    assert calls == ["before_backward"] * 3


def test_lightning_dispatches_only_the_implemented_hooks(tmp_path: Path) -> None:
    """Lightning's profiler records every callback hook it enters: the hidden ones never appear."""
    from lightning.pytorch.profilers import SimpleProfiler

    profiler = SimpleProfiler(dirpath=tmp_path, filename="profile")  # its report goes to a file
    clipping = callbacks.GradientClipping(threshold=1.0)
    trainer = tiny_trainer(tmp_path, clipping, max_steps=2, enable_checkpointing=False, limit_val_batches=0,
                           profiler=profiler)  # fmt: skip
    trainer.fit(BoringModel())
    ours = [name for name in profiler.recorded_durations if name.startswith("[Callback]GradientClipping")]
    entered = {name.rsplit(".", 1)[1] for name in ours}
    assert "on_before_optimizer_step" in entered and "on_train_epoch_start" in entered
    assert not entered & {"on_after_backward", "on_before_backward", "on_before_zero_grad", "on_train_batch_start"}
