"""Faults: a NaN loss mid-run under each ``GradientHealth`` policy, and unwritable output folders at start."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.callbacks import GradientHealth
from lightning_tricks.cli import cli_main
from lightning_tricks.models import MLPClassifier

NAN_STEP = 5


class _NaNAtStep(MLPClassifier):
    """A tiny MLP whose loss becomes NaN at optimizer step ``NAN_STEP`` (a bad batch, an overflow, ...)."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == NAN_STEP else loss


def _fit_with_nan(tmp_path: Path, action: str) -> tuple[Trainer, _NaNAtStep, list[Path]]:
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(64, 1, 4, 4) * 2 - 1, torch.randint(0, 3, (64,)))
    model = _NaNAtStep(hidden_sizes=[8], input_size=16, num_classes=3, optimizer="adam", lr=0.01)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=1, save_top_k=-1)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=10,
        callbacks=[GradientHealth(action=action), checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DataLoader(data, batch_size=8))
    return trainer, model, sorted((tmp_path / "ckpts").glob("*.ckpt"))


def _all_finite(checkpoint: dict) -> bool:
    tensors = list(checkpoint["state_dict"].values())
    for optimizer in checkpoint["optimizer_states"]:
        for state in optimizer["state"].values():
            tensors += [v for v in state.values() if torch.is_tensor(v) and v.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("action", ["skip", "stop"])
def test_nan_mid_run_never_reaches_a_checkpoint(tmp_path, action):
    with pytest.warns(UserWarning, match="non-finite gradients at step 5"):
        trainer, model, paths = _fit_with_nan(tmp_path, action)
    assert paths
    loaded = {p.name: torch.load(p, weights_only=False) for p in paths}
    assert all(_all_finite(c) for c in loaded.values()), "a checkpoint holds non-finite weights or optimizer state"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    by_step = {c["global_step"]: c for c in loaded.values()}
    before, after = by_step[NAN_STEP], by_step[NAN_STEP + 1]  # weights before and after the NaN step
    for name, value in before["state_dict"].items():
        assert torch.equal(after["state_dict"][name], value), f"the NaN step changed {name}"
    if action == "stop":
        assert trainer.global_step == NAN_STEP + 1, "training stops right after the bad step"
        assert max(by_step) == NAN_STEP + 1
    else:
        assert trainer.global_step == 10, "training goes on after the skipped step"
        assert not torch.equal(by_step[10]["state_dict"]["net.1.weight"], after["state_dict"]["net.1.weight"])


def test_nan_mid_run_with_warn_reports_it_and_does_not_protect_the_weights(tmp_path):
    with pytest.warns(UserWarning, match=r"non-finite gradients on [1-9]\d* of the last"):
        _, model, _ = _fit_with_nan(tmp_path, "warn")
    # "warn" only reports: the NaN update goes through (documented); use "skip" or "stop" to keep weights finite.
    assert not all(torch.isfinite(p).all() for p in model.parameters())


@pytest.fixture
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-tricks"])


def _cli_args(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--model=MLPClassifier",
        "--model.hidden_sizes=[8]",
        "--data=FashionMNISTDataModule",
        f"--data.data_dir={data_dir}",
        "--data.train_subset=64",
        *extra,
    ]


@pytest.mark.usefixtures("_plain_argv")
def test_unwritable_checkpoint_dir_fails_at_start(tmp_path, fashion_mnist_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("root can write anywhere, but not under a regular file")
    extra = ("--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={blocker / 'ckpts'}")
    with pytest.raises(OSError, match=r"checkpoint directory '.*a-file/ckpts'.*ModelCheckpoint's dirpath"):
        cli_main(_cli_args(tmp_path, fashion_mnist_dir, *extra))
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("events.out.*")), "nothing ran"


@pytest.mark.usefixtures("_plain_argv")
def test_unwritable_root_dir_fails_at_start(tmp_path, fashion_mnist_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = _cli_args(tmp_path, fashion_mnist_dir, f"--trainer.default_root_dir={blocker / 'root'}")
    with pytest.raises(OSError, match=r"Trainer's root directory .*a-file/root.*--trainer.default_root_dir"):
        cli_main(args)
