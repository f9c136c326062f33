"""RNGStateCheckpoint: the global RNG state travels in checkpoints, per rank, and resumed runs draw what an
uninterrupted run draws."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.callbacks import RNGStateCheckpoint
from lightning_tricks.callbacks.rng_state import collect_rng_state, set_rng_state


def _draws() -> list[float]:
    return [torch.rand(1).item(), float(np.random.rand()), random.random()]


def test_collect_and_set_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    seed_everything(3)
    _draws()
    torch.save(collect_rng_state(), tmp_path / "rng.pt")
    expected = _draws()
    seed_everything(4)
    assert set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)) == []
    assert _draws() == expected


class DropoutModel(LightningModule):
    """A tiny classifier with dropout, trained on a plain shuffled DataLoader (the global RNG drives both)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(48, 8, generator=generator), torch.randint(0, 2, (48,), generator=generator))
        return DataLoader(data, batch_size=8, shuffle=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Killed(Exception):
    pass


class _StopAt(Callback):
    """Stand-in for a kill: the run dies when epoch ``epoch`` starts (its last checkpoint is the previous epoch's)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise _Killed


def _fit(root: Path, with_callback: bool, extra: list[Callback], ckpt_path: str | None = None) -> nn.Module:
    seed_everything(7)  # as a new process does: the same seed, a fresh global RNG
    model = DropoutModel()
    callbacks = [ModelCheckpoint(dirpath=root / "ckpts", save_last=True), *extra]
    if with_callback:
        callbacks.append(RNGStateCheckpoint())
    trainer = Trainer(default_root_dir=root, max_epochs=4, callbacks=callbacks, logger=False, accelerator="cpu",
                      enable_progress_bar=False, enable_model_summary=False, deterministic=True)  # fmt: skip
    trainer.fit(model, ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("with_callback", [True, False], ids=["with", "without"])
def test_resume_at_an_epoch_end_with_a_plain_shuffled_loader_equals_uninterrupted(
    tmp_path: Path, with_callback: bool
) -> None:
    """The next epoch's order (``RandomSampler``) and the dropout masks come from the restored state; without the
    callback they come from the fresh seed and the weights differ (the control that shows the test can fail)."""
    reference = _fit(tmp_path / "a", with_callback, [])
    with pytest.raises(_Killed):
        _fit(tmp_path / "b", with_callback, [_StopAt(epoch=2)])
    resumed = _fit(tmp_path / "b", with_callback, [], ckpt_path=str(tmp_path / "b" / "ckpts" / "last.ckpt"))
    same = [torch.equal(p, q) for p, q in zip(resumed.parameters(), reference.parameters(), strict=True)]
    assert all(same) if with_callback else not all(same)


def test_another_world_size_restores_what_it_can_with_one_warning(tmp_path: Path) -> None:
    seed_everything(1)
    rank0 = collect_rng_state()
    expected = _draws()
    seed_everything(2)
    callback = RNGStateCheckpoint()
    callback.load_state_dict({"ranks": [rank0, collect_rng_state()], "epoch_end": False})
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip

    class Record(Callback):
        def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
            self.draws = _draws()

    record = Record()
    trainer.callbacks[:0] = [callback, record]  # restore first, then record
    callback.setup = lambda *args, **kwargs: None  # keep the state loaded by hand (no checkpoint here)
    with pytest.warns(UserWarning, match=r"RNG state of 2 rank\(s\), this run has 1") as warnings:
        trainer.fit(BoringModel())
    assert sum("RNGStateCheckpoint" in str(w.message) for w in warnings) == 1
    assert record.draws == expected, "rank 0 got its own state back"
