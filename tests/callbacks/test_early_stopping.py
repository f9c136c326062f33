"""Tests for EarlyStopping: best-weight restoration, start_from_epoch, resume, DDP agreement, options, CLI."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.data import fixed_loader
from helpers.models import ScriptedMetricModel
from helpers.ranks import read_rank_texts, tensors_digest, write_rank_text
from helpers.trainers import WITH_VALIDATION, tiny_trainer
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from lightning_tricks.callbacks import EMA, EarlyStopping
from lightning_tricks.callbacks.early_stopping import cpu_state_copy, is_improvement


class ScheduledMetric(BoringModel):
    """Logs ``score = schedule[epoch]`` (per rank when ``per_rank`` is given) and remembers each epoch's weights."""

    def __init__(self, schedule: list[float], per_rank: dict[int, list[float]] | None = None) -> None:
        super().__init__()
        self.schedule, self.per_rank = schedule, per_rank
        self.weights_at_epoch: dict[int, torch.Tensor] = {}

    def train_dataloader(self) -> DataLoader:
        return fixed_loader(16, batch_size=4, seed=1)

    def val_dataloader(self) -> DataLoader:
        return fixed_loader(4, batch_size=4, seed=2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_validation_epoch_end(self) -> None:
        schedule = self.per_rank[self.global_rank] if self.per_rank else self.schedule
        self.log("score", schedule[self.current_epoch])
        if not self.trainer.sanity_checking:
            self.weights_at_epoch[self.current_epoch] = self.layer.weight.detach().clone()


_trainer = partial(tiny_trainer, **WITH_VALIDATION)


def test_improvement_rule_and_cpu_copy() -> None:
    best = torch.tensor(1.0)
    assert is_improvement(torch.tensor(0.8), best, 0.1, "min")
    assert not is_improvement(torch.tensor(0.9), best, 0.1, "min")  # not better by more than min_delta
    assert is_improvement(torch.tensor(1.2), best, 0.1, "max")
    assert not is_improvement(torch.tensor(float("nan")), best, 0.0, "min")
    assert is_improvement(torch.tensor(5.0), torch.tensor(float("inf")), 0.0, "min")
    layer = torch.nn.BatchNorm1d(3)
    copy = cpu_state_copy(layer)
    layer.weight.data.fill_(7.0)
    assert set(copy) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert torch.equal(copy["weight"], torch.ones(3))  # a real copy, not a view


def test_restores_best_when_patience_runs_out(tmp_path: Path) -> None:
    seed_everything(0)
    model = ScheduledMetric([3.0, 1.0, 2.0, 2.5, 2.7, 2.9])
    stop = EarlyStopping("score", patience=2, restore_best_weights=True)
    _trainer(tmp_path, [stop], max_epochs=6).fit(model)
    assert stop.stopped_epoch == 3 and stop.best_epoch == 1
    assert torch.equal(model.layer.weight, model.weights_at_epoch[1])
    assert not torch.equal(model.weights_at_epoch[3], model.weights_at_epoch[1])


def test_restores_best_at_max_epochs_and_not_without_option(tmp_path: Path) -> None:
    for restore in (True, False):
        seed_everything(0)
        model = ScheduledMetric([3.0, 1.0, 2.0])
        stop = EarlyStopping("score", patience=5, restore_best_weights=restore)
        _trainer(tmp_path, [stop], max_epochs=3).fit(model)
        assert stop.stopped_epoch == 0  # ended by max_epochs
        assert torch.equal(model.layer.weight, model.weights_at_epoch[1 if restore else 2])


def test_start_from_epoch_ignores_early_checks(tmp_path: Path) -> None:
    seed_everything(0)
    # The best score is at epoch 0, but epochs 0 and 1 are ignored: no stop at epoch 2, best is epoch 2.
    model = ScheduledMetric([0.0, 5.0, 3.0, 4.0, 4.0, 4.0])
    stop = EarlyStopping("score", patience=2, restore_best_weights=True, start_from_epoch=2)
    _trainer(tmp_path, [stop], max_epochs=6).fit(model)
    assert stop.best_epoch == 2 and stop.best_score.item() == 3.0
    assert stop.stopped_epoch == 4
    assert torch.equal(model.layer.weight, model.weights_at_epoch[2])
    # Without start_from_epoch the same schedule stops at epoch 2 and keeps epoch 0.
    seed_everything(0)
    model = ScheduledMetric([0.0, 5.0, 3.0, 4.0, 4.0, 4.0])
    stop = EarlyStopping("score", patience=2, restore_best_weights=True)
    _trainer(tmp_path, [stop], max_epochs=6).fit(model)
    assert stop.stopped_epoch == 2 and stop.best_epoch == 0


def _fit(tmp_path: Path, max_epochs: int, ckpt_path: str | None = None) -> tuple[ScheduledMetric, EarlyStopping]:
    seed_everything(0)
    model = ScheduledMetric([3.0, 1.0, 2.0, 2.5, 2.7, 2.9])
    stop = EarlyStopping("score", patience=3, restore_best_weights=True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _trainer(tmp_path, [stop, checkpoint], max_epochs=max_epochs).fit(model, ckpt_path=ckpt_path)
    return model, stop


def test_resume_restores_true_best(tmp_path: Path) -> None:
    full_model, full_stop = _fit(tmp_path / "full", max_epochs=6)
    # Resume after epoch 2: the best (epoch 1) happened before the checkpoint and must come back from it.
    resumed_model, resumed_stop = _fit(tmp_path / "resumed", 6, str(tmp_path / "full/ckpt/epoch=2-step=6.ckpt"))
    assert full_stop.stopped_epoch == resumed_stop.stopped_epoch == 4
    assert resumed_stop.best_epoch == 1 and 1 not in resumed_model.weights_at_epoch
    assert torch.equal(resumed_model.layer.weight, full_model.layer.weight)
    assert torch.equal(full_model.layer.weight, full_model.weights_at_epoch[1])


class ScheduledMetricBN(ScheduledMetric):
    """``ScheduledMetric`` with a ``BatchNorm1d`` in front: under DDP each rank's running statistics differ."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bn = torch.nn.BatchNorm1d(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.bn(x))


class _DumpingEarlyStopping(EarlyStopping):
    """Writes each rank's final weights hash (parameters and BatchNorm buffers), best epoch and its live BatchNorm
    running mean before the restore to ``folder`` (ddp_spawn does not send them back)."""

    def __init__(self, folder: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder = folder

    def on_train_end(self, trainer: Trainer, pl_module: BoringModel) -> None:
        live = tensors_digest([pl_module.bn.running_mean])  # type: ignore[list-item]
        super().on_train_end(trainer, pl_module)
        digest = tensors_digest(pl_module.state_dict().values())
        write_rank_text(self.folder, trainer.global_rank, f"{digest} {self.best_epoch} {live}")


def test_ddp_ranks_restore_the_same_weights(tmp_path: Path) -> None:
    """Both ranks restore the same parameters AND BatchNorm buffers, although each rank's live running statistics
    differ (each rank sees its own half of the data; ``broadcast_buffers=False``, as BatchNorm users often set, keeps
    DDP from copying rank 0's) and the unsynced metrics disagree between ranks."""
    seed_everything(0)
    # Unsynced metrics that disagree between ranks: rank 0's best is epoch 1, rank 1's would be epoch 2.
    model = ScheduledMetricBN([], per_rank={0: [3.0, 1.0, 2.0, 2.0], 1: [3.0, 2.0, 1.0, 2.0]})
    stop = _DumpingEarlyStopping(tmp_path, "score", patience=5, restore_best_weights=True)
    strategy = DDPStrategy(start_method="spawn", broadcast_buffers=False)
    trainer = _trainer(tmp_path, [stop], max_epochs=4, accelerator="cpu", devices=2, strategy=strategy)
    trainer.fit(model)
    lines = [line.split() for line in read_rank_texts(tmp_path)]
    assert lines[0][2] != lines[1][2]  # the ranks' own BatchNorm statistics differ ...
    assert lines[0][:2] == lines[1][:2] and lines[0][1] == "1"  # ... yet both restore rank 0's best, buffers included


# ------------------------------------------------------------------------------------------------------- with EMA


def _assert_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key].to(value.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("ema_first", [True, False], ids=["ema-first", "stop-first"])
def test_with_ema_in_any_order(tmp_path: Path, ema_first: bool) -> None:
    """The metric was measured on EMA's averaged weights: those of the best check are kept and end up in the module,
    whatever the list order; validate() and test() afterwards evaluate exactly them."""
    ema, stop = EMA(decay=0.5), EarlyStopping("val_metric", patience=5, restore_best_weights=True)
    model = ScriptedMetricModel([3.0, 1.0, 2.0, 4.0])
    trainer = _trainer(tmp_path, [ema, stop] if ema_first else [stop, ema], max_epochs=4, enable_checkpointing=False)
    trainer.fit(model)
    assert stop.best_epoch == 1
    _assert_weights(model, model.validated[1])  # validated = EMA's weights swapped in for that validation
    model.evaluated.clear()
    trainer.validate(model, verbose=False)
    trainer.test(model, verbose=False)
    assert {kind for kind, _ in model.evaluated} == {"validate", "test"}
    assert {digest for _, digest in model.evaluated} == {tensors_digest(model.validated[1].values())}
