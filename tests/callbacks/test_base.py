"""``TrickCallback``: the strategy policy, fresh per fit, the per-optimizer container; every trick subclasses it."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers.trainers import tiny_trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_tricks import callbacks
from lightning_tricks.callbacks import _base
from lightning_tricks.callbacks._base import PerOptimizer, StrategyRefusal, TrickCallback


class Recorder(TrickCallback):
    """Counts its resets and restores; refuses the strategies of ``refused`` (class names)."""

    def __init__(self, refused: tuple[str, ...] | None = None) -> None:
        self.refused = refused
        self.events: list[str] = []

    def strategy_refusal(self, stage: str) -> StrategyRefusal | None:
        return None if self.refused is None else StrategyRefusal("it would be wrong", "Use X.", self.refused)

    def reset_fit_state(self) -> None:
        self.events.append("reset")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.events.append("epoch")

    def state_dict(self) -> dict[str, Any]:
        return {"saved": True}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events.append("restore")


def test_every_trick_is_a_trick_callback_and_keeps_its_lightning_base() -> None:
    for name in callbacks.__all__:
        assert issubclass(getattr(callbacks, name), TrickCallback), name
    assert issubclass(callbacks.EMA, WeightAveraging) and issubclass(callbacks.EarlyStopping, LightningEarlyStopping)
    assert isinstance(callbacks.EMA(), pl.Callback)


def test_a_subclass_hides_its_unused_hooks_without_asking(tmp_path: Path) -> None:
    recorder = Recorder()
    assert recorder.on_train_batch_end is None and recorder.on_before_optimizer_step is None
    assert recorder.on_train_epoch_start is not None and Recorder.on_train_batch_end is pl.Callback.on_train_batch_end
    copy = pickle.loads(pickle.dumps(recorder))
    assert copy.on_train_batch_end is None and copy.events == []


def test_the_policy_refuses_at_setup_with_why_and_the_alternative(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"^Recorder does not support the SingleDeviceStrategy strategy:"
                       r" it would be wrong\. Use X\.$"):  # fmt: skip
        tiny_trainer(tmp_path, Recorder(refused=("SingleDeviceStrategy",)), max_steps=1).fit(BoringModel())
    tiny_trainer(tmp_path, Recorder(refused=("DDPStrategy",)), max_steps=1).fit(BoringModel())  # another strategy


def test_the_default_policy_is_the_sharded_strategies(monkeypatch: pytest.MonkeyPatch) -> None:
    refusal = StrategyRefusal("why", "alternative")
    assert not refusal.refuses(pl.strategies.SingleDeviceStrategy())
    monkeypatch.setattr(_base, "SHARDED_STRATEGIES", ("SingleDeviceStrategy",))
    assert refusal.refuses(pl.strategies.SingleDeviceStrategy())
    early = callbacks.EarlyStopping("x", restore_best_weights=False)
    assert early.strategy_refusal("fit") is None  # refuses only with restore_best_weights=True
    assert callbacks.EarlyStopping("x", restore_best_weights=True).strategy_refusal("fit") is not None
    assert callbacks.WeightInit("lsuv").strategy_refusal("validate") is None  # LSUV only runs in fit
    assert callbacks.ActivationStats().strategy_refusal("fit") is None  # works under every strategy


def test_fresh_per_fit_and_a_restore_comes_after_the_reset(tmp_path: Path) -> None:
    recorder = Recorder()
    trainer = tiny_trainer(tmp_path, recorder, max_epochs=1, limit_train_batches=2, enable_checkpointing=False)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    trainer.validate(BoringModel(), verbose=False)  # another stage: no reset
    assert recorder.events == ["reset", "epoch"]
    recorder.events.clear()
    tiny_trainer(tmp_path, recorder, max_epochs=2, limit_train_batches=2).fit(
        BoringModel(), ckpt_path=tmp_path / "one.ckpt"
    )
    assert recorder.events == ["reset", "restore", "epoch"]


def test_per_optimizer_grows_resizes_and_restores_exactly() -> None:
    counts = PerOptimizer(list)
    counts[2].append(5)
    assert len(counts) == 3 and list(counts) == [[], [], [5]]
    counts[0] = [1]
    counts.resize(2)
    assert list(counts) == [[1], []]
    counts.resize(4)
    assert list(counts) == [[1], [], [], []]
    saved = counts.state_dict(tuple)
    restored = PerOptimizer(list)
    restored.load_state_dict(saved, list)
    assert list(restored) == [[1], [], [], []] and saved == [(1,), (), (), ()]
    restored.clear()
    assert len(restored) == 0
    tensors = PerOptimizer(lambda: torch.zeros(1))
    tensors[1] += 1
    assert [t.item() for t in tensors] == [0.0, 1.0]
