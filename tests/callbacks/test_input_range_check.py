"""Tests for InputRangeCheck: maths, warn / raise messages, one sync after N batches, resume, DDP, CLI."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.data import metrics_rows
from helpers.ranks import read_rank_json, write_rank_json
from helpers.trainers import tiny_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.callbacks import InputRangeCheck
from lightning_tricks.callbacks import input_range_check as module_under_test
from lightning_tricks.callbacks.input_range_check import (
    find_input,
    merge_range_stats,
    range_problem,
    update_range_stats,
)


class PixelNet(pl.LightningModule):
    """Linear(8, 1) on a fixed dataset; ``scale=255`` gives raw-pixel-like inputs, ``odd_scale`` only odd samples."""

    def __init__(self, n: int = 32, scale: float = 1.0, odd_scale: float = 1.0) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 1)
        x = torch.rand(n, 8, generator=torch.Generator().manual_seed(0)) * scale
        x[1::2] *= odd_scale
        self.data = TensorDataset(x, torch.rand(n, 1))
        self.done_seen: list[bool] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.done_seen.append(any(isinstance(c, InputRangeCheck) and c.done for c in self.trainer.callbacks))
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=4, shuffle=False)


def test_statistics_on_hand_computed_tensors() -> None:
    a, b = torch.tensor([[0.0, 2.0], [4.0, 6.0]]), torch.tensor([-1.0, 9.0])
    acc = update_range_stats(None, 0, a)
    torch.testing.assert_close(acc, torch.tensor([0.0, 6.0, 3.0, 20.0]))  # m2 = 9 + 1 + 1 + 9
    acc = update_range_stats(acc, 4, b)
    everything = torch.tensor([0.0, 2.0, 4.0, 6.0, -1.0, 9.0])
    torch.testing.assert_close(acc, torch.tensor([-1.0, 9.0, everything.mean(), everything.var() * 5]))

    stats = merge_range_stats([[4.0, 0.0, 6.0, 3.0, 20.0], [2.0, -1.0, 9.0, 4.0, 50.0]])
    assert stats == pytest.approx({"min": -1.0, "max": 9.0, "mean": 10 / 3, "std": everything.std().item()}, rel=1e-6)


def test_problem_messages() -> None:
    pixels = {"min": 0.0, "max": 255.0, "mean": 72.9, "std": 89.1}
    message = range_problem(pixels, (-1.0, 1.0), 1e-3)
    assert message is not None
    assert "inputs span [0, 255]" in message and "divide by 255" in message and "[-1, 1]" in message
    assert "expected=(0, 255)" in message
    assert range_problem({"min": -0.4, "max": 2.8, "mean": 0.0, "std": 1.0}, (0.0, 1.0), 1e-3) is not None
    assert range_problem({"min": -1.0005, "max": 1.0, "mean": 0.0, "std": 0.5}, (-1.0, 1.0), 1e-3) is None
    assert range_problem({"min": 0.0, "max": 1.0, "mean": 0.4, "std": 0.3}, (0.0, 1.0), 0.0) is None
    assert "NaN" in str(range_problem({"min": math.nan, "max": 1.0, "mean": 0.0, "std": 0.1}, (0.0, 1.0), 0.0))
    assert "same" in str(range_problem({"min": 0.5, "max": 0.5, "mean": 0.5, "std": 0.0}, (0.0, 1.0), 0.0))


def test_find_input() -> None:
    x = torch.zeros(2, 3)
    assert find_input(x) is x
    assert find_input((x, torch.ones(2, dtype=torch.long))) is x
    assert find_input({"label": torch.ones(2), "image": x}) is x
    assert find_input({"a": torch.ones(2), "b": x}, batch_key="b") is x
    with pytest.raises(ValueError, match="batch_key"):
        find_input((torch.ones(2, dtype=torch.long), x))


def test_raw_pixels_warn_with_observed_values(tmp_path: Path) -> None:
    with pytest.warns(
        UserWarning, match=r"first 3 training batches\): inputs span \[0\.\d+, 25\d\.\d+\].*divide by 255"
    ):
        tiny_trainer(tmp_path, limit_train_batches=5, callbacks=[InputRangeCheck(check_batches=3)]).fit(
            PixelNet(scale=255)
        )


def test_raw_pixels_raise_before_the_nth_step(tmp_path: Path) -> None:
    model, cb = PixelNet(scale=255), InputRangeCheck(expected=(0.0, 1.0), check_batches=3, action="raise")
    with pytest.raises(ValueError, match=r"inputs span \[0\.\d+, 25\d\.\d+\].*outside the expected \[0, 1\]"):
        tiny_trainer(tmp_path, limit_train_batches=5, callbacks=[cb]).fit(model)
    assert len(model.done_seen) == 2  # raised in on_train_batch_start of batch 3, before its training step


def test_in_range_passes_silently_and_syncs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    merges = []
    real_merge = module_under_test.merge_range_stats
    monkeypatch.setattr(module_under_test, "merge_range_stats", lambda rows: merges.append(rows) or real_merge(rows))
    model, cb = PixelNet(), InputRangeCheck(expected=(0.0, 1.0), check_batches=3, action="raise")
    trainer = tiny_trainer(tmp_path, limit_train_batches=6, callbacks=[cb], logger=CSVLogger(tmp_path))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*InputRangeCheck.*")
        trainer.fit(model)
    assert len(merges) == 1  # one host copy, after batch 3
    assert model.done_seen == [False, False, True, True, True, True]
    assert cb.checked == 3 and cb.count == 3 * 4 * 8
    seen = model.data.tensors[0][:12]
    assert cb.stats == pytest.approx(
        {"min": seen.min().item(), "max": seen.max().item(), "mean": seen.mean().item(), "std": seen.std().item()},
        rel=1e-5,
    )
    rows = metrics_rows(trainer.logger.log_dir, "input/min")
    assert len(rows) == 1 and int(rows[0]["step"]) == 2
    assert {k for k, v in rows[0].items() if v} == {"step", "input/min", "input/max", "input/mean", "input/std"}
    assert float(rows[0]["input/max"]) == pytest.approx(seen.max().item())


def test_short_run_finishes_at_train_end(tmp_path: Path) -> None:
    cb = InputRangeCheck(expected=(0.0, 1.0), check_batches=10)
    tiny_trainer(tmp_path, limit_train_batches=2, callbacks=[cb]).fit(BoringModel())  # N(0, 1) data: out of [0, 1]
    assert cb.done and cb.checked == 2 and cb.stats is not None and cb.stats["min"] < 0


def test_state_dict_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    def run(root: Path, epochs: int, ckpt_path: str | None = None) -> InputRangeCheck:
        pl.seed_everything(0)
        cb = InputRangeCheck(expected=(0.0, 1.0), check_batches=6)
        ckpt = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
        tiny_trainer(root, max_epochs=epochs, limit_train_batches=4, callbacks=[cb, ckpt]).fit(
            PixelNet(), ckpt_path=ckpt_path
        )
        return cb

    full = run(tmp_path / "full", 2)
    run(tmp_path / "first", 1)
    saved = torch.load(tmp_path / "first" / "epoch=0-step=4.ckpt", weights_only=False)["callbacks"]
    (state,) = [v for k, v in saved.items() if k.startswith("InputRangeCheck")]
    assert state["checked"] == 4 and state["count"] == 4 * 4 * 8 and state["stats"] is None and len(state["acc"]) == 4
    resumed = run(tmp_path / "resumed", 2, str(tmp_path / "first" / "epoch=0-step=4.ckpt"))
    assert resumed.checked == full.checked == 6
    assert resumed.stats == pytest.approx(full.stats, rel=1e-6)

    fresh = InputRangeCheck()
    fresh.load_state_dict({})  # older / empty checkpoints load
    assert fresh.checked == 0 and not fresh.done


class _RankRecorder(InputRangeCheck):
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        problem = range_problem(self.stats or {}, self.expected, self.tolerance)
        write_rank_json(trainer.default_root_dir, trainer.global_rank, {"stats": self.stats, "problem": problem})


def test_ddp_ranks_agree(tmp_path: Path) -> None:
    # DistributedSampler (no shuffle) gives rank 1 the odd samples: only rank 1 sees values up to 255.
    cb = _RankRecorder(expected=(0.0, 1.0), check_batches=2)
    trainer = tiny_trainer(
        tmp_path, accelerator="cpu", devices=2, strategy="ddp_spawn", limit_train_batches=3, callbacks=[cb]
    )
    trainer.fit(PixelNet(odd_scale=255))
    ranks = read_rank_json(tmp_path)
    assert ranks[0] == ranks[1]  # the same global statistics, hence the same verdict, on every rank
    assert ranks[0]["stats"]["max"] > 200 and "outside the expected [0, 1]" in ranks[0]["problem"]
