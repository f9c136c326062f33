"""Tests for the EMA callback: closed-form maths, validation on averaged weights, resume, DDP, logging, CLI."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.data import fixed_loader, metrics_rows
from helpers.models import SkippingBoringModel, StepRecorder, TinyGAN, ema_of
from helpers.ranks import read_rank_texts, tensors_digest, write_rank_text
from helpers.trainers import csv_fit, gan_resume_runs, tiny_trainer
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_tricks.callbacks import EMA
from lightning_tricks.callbacks.ema import ema_decay, ema_update_

_trainer = partial(tiny_trainer, deterministic=True)


class FixedModel(BoringModel):
    """BoringModel on a fixed, unshuffled dataset (64 samples, batch 8) so that runs are exactly repeatable."""

    def train_dataloader(self) -> DataLoader:
        return fixed_loader(seed=1)

    def val_dataloader(self) -> DataLoader:
        return fixed_loader(16, seed=2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class WeightRecorder(Callback):
    """Records the raw weights after every step and the weights seen by every validation epoch."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []
        self.validated: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.steps.append({k: v.clone() for k, v in pl_module.state_dict().items()})

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated.append({k: v.clone() for k, v in pl_module.state_dict().items()})


def manual_ema(steps: list[dict[str, torch.Tensor]], decay: float, warmup: bool) -> dict[str, torch.Tensor]:
    average = {k: v.clone() for k, v in steps[0].items()}
    for t, weights in enumerate(steps[1:], start=1):
        d = min(decay, (1 + t) / (10 + t)) if warmup else decay
        average = {k: d * average[k] + (1 - d) * weights[k] for k in average}
    return average


def test_ema_maths_closed_form() -> None:
    start, target = torch.tensor([1.0, -2.0, 4.0]), torch.tensor([3.0, 0.0, -1.0])
    averaged = [start.clone(), start.clone()[:2]]
    decay, k = 0.9, 7
    for _ in range(k):
        ema_update_(averaged, [target, target[:2]], decay)
    expected = decay**k * start + (1 - decay**k) * target
    torch.testing.assert_close(averaged[0], expected)
    torch.testing.assert_close(averaged[1], expected[:2])
    # Integer buffers take the per-tensor fallback: 0.5 * 10 + 0.5 * 20 = 15.
    counter = [torch.tensor(10)]
    ema_update_(counter, [torch.tensor(20)], 0.5)
    assert counter[0].item() == 15
    # Warmup: (1 + t) / (10 + t), capped by the decay.
    assert ema_decay(0.999, 0, warmup=True) == pytest.approx(0.1)
    assert ema_decay(0.999, 1, warmup=True) == pytest.approx(2 / 11)
    assert ema_decay(0.5, 100, warmup=True) == 0.5
    assert ema_decay(0.999, 0, warmup=False) == 0.999


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_validates_on_average_and_ends_with_it(tmp_path: Path, warmup: bool) -> None:
    seed_everything(0)
    model, recorder = FixedModel(), WeightRecorder()
    ema = EMA(decay=0.8, warmup=warmup)
    trainer = _trainer(tmp_path, [ema, recorder], max_epochs=2, limit_train_batches=4, limit_val_batches=1)
    trainer.fit(model)
    assert ema._num_updates == 8
    # Validation after epoch 0 saw the EMA of the first 4 steps; the module ends with the EMA of all 8.
    for name, value in manual_ema(recorder.steps[:4], 0.8, warmup).items():
        torch.testing.assert_close(recorder.validated[0][name], value)
    for name, value in manual_ema(recorder.steps, 0.8, warmup).items():
        torch.testing.assert_close(model.state_dict()[name], value)
    # Validation swapped the weights back: training continued from the raw weights, not the average.
    assert not torch.equal(recorder.steps[-1]["layer.weight"], model.layer.weight)
    # The checkpoint's state_dict holds the averaged weights, the raw ones are kept beside them.
    checkpoint = torch.load(next((tmp_path / "checkpoints").glob("*.ckpt")), weights_only=False)
    torch.testing.assert_close(checkpoint["state_dict"]["layer.weight"], model.layer.weight.detach())
    torch.testing.assert_close(checkpoint["current_model_state"]["layer.weight"], recorder.steps[-1]["layer.weight"])


def test_test_with_ckpt_path_on_the_fit_trainer_evaluates_the_averaged_weights(tmp_path: Path) -> None:
    """Lightning's WeightAveraging loads the raw `current_model_state` when the Trainer that ran `fit` later tests a
    checkpoint (its averaged copy still exists); the docstring promises the averaged model."""
    seed_everything(0)
    model = FixedModel()
    trainer = _trainer(tmp_path, EMA(decay=0.8), max_epochs=2, limit_train_batches=4, limit_val_batches=1)
    trainer.fit(model)
    path = next((tmp_path / "checkpoints").glob("*.ckpt"))
    checkpoint = torch.load(path, weights_only=False)
    with torch.no_grad():
        model.layer.weight.zero_()  # whatever the module holds now, the checkpoint must win
    trainer.validate(model, ckpt_path=path, verbose=False)
    torch.testing.assert_close(model.layer.weight.detach(), checkpoint["state_dict"]["layer.weight"])
    assert not torch.equal(checkpoint["state_dict"]["layer.weight"], checkpoint["current_model_state"]["layer.weight"])


def test_ema_matches_lightning_ema_weight_averaging(tmp_path: Path) -> None:
    results = []
    for callback in (
        EMA(decay=0.7, update_every_n_steps=2, update_starting_at_step=1),
        EMAWeightAveraging(decay=0.7, update_every_n_steps=2, update_starting_at_step=1),
    ):
        seed_everything(0)
        model = FixedModel()
        trainer = _trainer(tmp_path, callback, limit_train_batches=8, limit_val_batches=0, enable_checkpointing=False)
        trainer.fit(model)
        results.append(model.layer.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1])


def test_ema_no_update_before_start_keeps_module(tmp_path: Path) -> None:
    seed_everything(0)
    model, recorder = FixedModel(), WeightRecorder()
    trainer = _trainer(
        tmp_path,
        [EMA(update_starting_at_step=100), recorder],
        limit_train_batches=3,
        limit_val_batches=1,
        enable_checkpointing=False,
    )
    trainer.fit(model)
    # No update yet: validation and the final module use the trained weights, not the copy made at setup.
    assert torch.equal(recorder.validated[0]["layer.weight"], recorder.steps[-1]["layer.weight"])
    assert torch.equal(model.layer.weight, recorder.steps[-1]["layer.weight"])


def _fit(tmp_path: Path, max_epochs: int, ckpt_path: str | None = None) -> tuple[FixedModel, EMA]:
    seed_everything(0)
    model, ema = FixedModel(), EMA(decay=0.75, warmup=True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer = _trainer(tmp_path, [ema, checkpoint], max_epochs=max_epochs, limit_train_batches=4, limit_val_batches=1)
    trainer.fit(model, ckpt_path=ckpt_path)
    return model, ema


def test_ema_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full_model, full_ema = _fit(tmp_path / "full", max_epochs=3)
    mid = tmp_path / "full" / "ckpt" / "epoch=0-step=4.ckpt"
    resumed_model, resumed_ema = _fit(tmp_path / "resumed", max_epochs=3, ckpt_path=str(mid))
    assert resumed_ema._num_updates == full_ema._num_updates == 12
    for name, value in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], value), name
    assert full_ema._average_model is not None and resumed_ema._average_model is not None
    for a, b in zip(full_ema._average_model.parameters(), resumed_ema._average_model.parameters(), strict=True):
        assert torch.equal(a, b)


class _DumpAverage(Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        write_rank_text(self.folder, trainer.global_rank, tensors_digest(pl_module.state_dict().values()))


def test_ema_ddp_ranks_agree(tmp_path: Path) -> None:
    seed_everything(0)
    trainer = _trainer(
        tmp_path,
        [EMA(decay=0.5), _DumpAverage(tmp_path)],
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        limit_train_batches=3,
        limit_val_batches=1,
        enable_checkpointing=False,
    )
    trainer.fit(FixedModel())
    hashes = set(read_rank_texts(tmp_path))
    assert len(hashes) == 1


def test_ema_logs_decay(tmp_path: Path) -> None:
    seed_everything(0)
    logger = CSVLogger(tmp_path, name="", version="")
    trainer = _trainer(
        tmp_path,
        [EMA(decay=0.9, warmup=True)],
        limit_train_batches=6,
        limit_val_batches=0,
        log_every_n_steps=2,
        logger=logger,
        enable_checkpointing=False,
    )
    trainer.fit(FixedModel())
    rows = metrics_rows(tmp_path, "ema/decay")
    # Logged at steps 2, 4, 6 (global_step after the update): decay of updates t = 1, 3, 5.
    assert [int(row["step"]) for row in rows] == [1, 3, 5]
    expected = [(1 + t) / (10 + t) for t in (1, 3, 5)]
    assert [float(row["ema/decay"]) for row in rows] == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- the step rule: per-optimizer steps


@pytest.mark.parametrize("every", [1, 2])
def test_gan_each_optimizer_is_averaged_after_its_own_steps(tmp_path: Path, every: int) -> None:
    """Generator and discriminator step once per batch each: each one's weights are averaged after its own steps
    0, n, 2n, ... (a check on the shared global step would never update with n=2: it is always odd there)."""
    recorder, model, ema = StepRecorder(), TinyGAN(), EMA(decay=0.5, update_every_n_steps=every)
    _, rows = csv_fit(tmp_path, [ema, recorder], model)
    assert [o.updates for o in ema._opts] == [8 // every, 8 // every]
    # a constant decay is TensorBoard text, not a flat chart per optimizer (one key per quantity)
    assert not [k for r in rows for k, v in r.items() if k.startswith("ema/decay") and v], rows[0].keys()
    for i, module in enumerate((model.generator, model.discriminator)):
        expected = ema_of(recorder.steps[i][::every], 0.5)
        for param, value in zip(module.parameters(), expected, strict=True):
            torch.testing.assert_close(param.double(), value)


def test_skipped_batches_are_not_steps(tmp_path: Path) -> None:
    recorder, model, ema = StepRecorder(), SkippingBoringModel(skip_batches=[0, 3]), EMA(decay=0.5)
    csv_fit(tmp_path, [ema, recorder], model)
    assert [o.updates for o in ema._opts] == [6] and len(recorder.steps[0]) == 6
    torch.testing.assert_close(model.layer.weight.double(), ema_of(recorder.steps[0], 0.5)[0])


def test_gan_resume_equals_uninterrupted(tmp_path: Path) -> None:
    (full, (full_ema,)), (resumed, (resumed_ema,)) = gan_resume_runs(tmp_path, lambda: [EMA(decay=0.7, warmup=True)])
    assert [o.updates for o in full_ema._opts] == [o.updates for o in resumed_ema._opts] == [8, 8]
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the averaged weights, copied in at the end
