"""Tests for ``LRDecay``: closed-form maths, Trainer behaviour, logging, resume, DDP, scheduler conflict, CLI."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers.data import fixed_loader, metrics_rows
from helpers.models import SkippingBoringModel, StepRecorder, TinyGAN
from helpers.ranks import read_rank_json, write_rank_json
from helpers.trainers import (
    TRAIN_ONLY_ON_CPU,
    csv_fit,
    gan_resume_runs,
    tiny_trainer,
)
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_tricks.callbacks import LRDecay
from lightning_tricks.callbacks.lr_decay import lr_factor, scheduled_lr


class LRRecorder(BoringModel):
    """BoringModel with two param groups (lr 0.1 and 0.01), a fixed dataset, recording the lrs used by each step."""

    def __init__(self, out_dir: str | None = None) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.seen: list[list[float]] = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            [{"params": [self.layer.weight], "lr": 0.1}, {"params": [self.layer.bias], "lr": 0.01}], momentum=0.9
        )

    def train_dataloader(self) -> DataLoader:
        return fixed_loader()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        self.seen.append([g["lr"] for g in self.optimizers().param_groups])
        return super().training_step(batch, batch_idx)

    def on_train_end(self) -> None:
        if self.out_dir is not None:  # under ddp_spawn, each rank reports what it saw
            write_rank_json(self.out_dir, self.global_rank, self.seen)


def _flat(nested: list[list[float]]) -> list[float]:
    return [x for row in nested for x in row]


_trainer = partial(tiny_trainer, **TRAIN_ONLY_ON_CPU, max_epochs=3, limit_train_batches=2)


def test_maths_on_hand_computed_values() -> None:
    assert lr_factor("exponential", 0) == 1.0
    assert lr_factor("exponential", 2) == pytest.approx(0.98**2)
    assert [lr_factor("step", t, gamma=0.1, step_size=2) for t in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert [lr_factor("cosine", t, total=4) for t in range(6)] == pytest.approx(
        [1, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0, 0]
    )
    assert [lr_factor("linear", t, total=4) for t in range(5)] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    # warmup 2: 1/3, 2/3, then the decay starts from 1 at t = warmup
    assert [lr_factor("linear", t, total=6, warmup=2) for t in range(7)] == pytest.approx(
        [1 / 3, 2 / 3, 1, 0.75, 0.5, 0.25, 0]
    )
    assert scheduled_lr("exponential", 100, 0.1, gamma=0.5, min_lr=1e-3) == 1e-3  # floor
    assert scheduled_lr("cosine", 2, 0.1, total=4, min_lr=0.02) == pytest.approx(0.06)  # anneals to min_lr
    assert scheduled_lr("cosine", 0, 0.1, total=4, warmup=1, min_lr=0.02) == pytest.approx(0.05)  # warmup: no floor


@pytest.mark.parametrize(
    ("mode", "torch_scheduler"), [("exponential", "ExponentialLR"), ("cosine", "CosineAnnealingLR")]
)
def test_matches_torch_schedulers(mode: str, torch_scheduler: str) -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    kwargs = {"gamma": 0.9} if mode == "exponential" else {"T_max": 10, "eta_min": 0.01}
    sched = getattr(torch.optim.lr_scheduler, torch_scheduler)(opt, **kwargs)
    for t in range(11):  # torch's recursive cosine goes back up after T_max
        expected = opt.param_groups[0]["lr"]
        assert scheduled_lr(mode, t, 0.1, gamma=0.9, total=10, min_lr=0.01 if mode == "cosine" else 0.0) == (
            pytest.approx(expected)
        )
        opt.step()
        sched.step()


def test_epoch_interval_default_is_classic_rule(tmp_path: Path) -> None:
    model = LRRecorder()
    _trainer(tmp_path, LRDecay()).fit(model)
    expected = [[0.1 * 0.98**e, 0.01 * 0.98**e] for e in range(3) for _ in range(2)]
    assert _flat(model.seen) == pytest.approx(_flat(expected))


def test_step_interval_cosine_with_warmup(tmp_path: Path) -> None:
    model = LRRecorder()
    _trainer(tmp_path, LRDecay(mode="cosine", interval="step", warmup=2, min_lr=1e-3)).fit(model)
    # total defaults to trainer.estimated_stepping_batches = 3 epochs x 2 batches
    expected = [
        [scheduled_lr("cosine", t, lr0, total=6, warmup=2, min_lr=1e-3) for lr0 in (0.1, 0.01)] for t in range(6)
    ]
    assert _flat(model.seen) == pytest.approx(_flat(expected))
    assert model.seen[0] == pytest.approx([0.1 / 3, 0.01 / 3])
    assert model.seen[2] == pytest.approx([0.1, 0.01])


def test_logged_keys(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    _trainer(tmp_path, LRDecay(gamma=0.5), logger=logger, log_every_n_steps=1).fit(LRRecorder())
    rows = metrics_rows(logger.log_dir, "lr/opt0_group0")
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert [float(r["lr/opt0_group0"]) for r in rows] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert [float(r["lr/opt0_group1"]) for r in rows] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    def run(root: Path, max_epochs: int, ckpt_path: str | None = None) -> tuple[LRRecorder, LRDecay]:
        seed_everything(0)
        model, decay = LRRecorder(), LRDecay(mode="linear", interval="step", warmup=1, total=8)
        ckpt = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1)
        trainer = _trainer(root, [decay, ckpt], max_epochs=max_epochs, enable_checkpointing=True)
        trainer.fit(model, ckpt_path=ckpt_path)
        return model, decay

    full_model, full_decay = run(tmp_path / "full", 3)
    run(tmp_path / "part", 1)
    ckpt = tmp_path / "part" / "epoch=0-step=2.ckpt"
    assert torch.load(ckpt, weights_only=False)["callbacks"]["LRDecay"]["initial_lrs"] == [[0.1, 0.01]]
    resumed_model, resumed_decay = run(tmp_path / "resumed", 3, ckpt_path=str(ckpt))
    assert resumed_model.seen == full_model.seen[2:]  # exact floats
    assert torch.equal(full_model.layer.weight, resumed_model.layer.weight)
    assert resumed_decay.state_dict() == full_decay.state_dict()


def test_load_state_dict_wins_over_current_lr() -> None:
    decay = LRDecay()
    decay.load_state_dict({"initial_lrs": [[0.5]], "optimizer_steps": [3]})
    assert decay.initial_lrs == [[0.5]] and decay._steps.counts == [3]


def test_ddp_ranks_agree(tmp_path: Path) -> None:
    trainer = _trainer(
        tmp_path, LRDecay(mode="step", gamma=0.5, step_size=2, interval="step"), devices=2, strategy="ddp_spawn"
    )
    trainer.fit(LRRecorder(out_dir=str(tmp_path)))
    r0, r1 = read_rank_json(tmp_path)
    assert r0 == r1
    assert [lrs[0] for lrs in r0] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_refuses_module_scheduler(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="StepLR"):
        _trainer(tmp_path, LRDecay()).fit(BoringModel())  # BoringModel returns a StepLR


def test_total_cannot_be_inferred(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="total"):
        _trainer(tmp_path, LRDecay(mode="cosine"), max_epochs=-1, max_steps=3).fit(LRRecorder())


# ----------------------------------------------------------------------------- the step rule: per-optimizer steps


def test_gan_each_optimizer_follows_its_own_schedule(tmp_path: Path) -> None:
    """Two optimizers step once per batch each: the default length (estimated_stepping_batches = 8) is 8 steps of
    EACH; counting global_step (2 per batch) would reach min_lr halfway."""
    recorder = StepRecorder()
    csv_fit(tmp_path, [LRDecay(mode="cosine", interval="step", min_lr=0.0), recorder], TinyGAN(lr=0.05))
    expected = [0.05 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    for i in (0, 1):
        assert [lrs[0] for lrs in recorder.lrs[i]] == pytest.approx(expected)


def test_wgan_critic_stepping_more_often_warns(tmp_path: Path) -> None:
    recorder = StepRecorder()
    with pytest.warns(UserWarning, match="optimizer 1 made more steps"):
        csv_fit(tmp_path, [LRDecay(mode="linear", interval="step"), recorder], TinyGAN(d_steps=2, lr=0.05))
    assert [lrs[0] for lrs in recorder.lrs[1]][:4] == pytest.approx([0.05 * (1 - k / 8) for k in range(4)])


def test_skipped_batches_and_accumulation_are_not_steps(tmp_path: Path) -> None:
    recorder = StepRecorder()
    csv_fit(tmp_path / "a", [LRDecay(gamma=0.5, interval="step"), recorder], SkippingBoringModel(skip_batches=[1]))
    assert [lrs[0] for lrs in recorder.lrs[0]] == pytest.approx([0.1 * 0.5**k for k in range(7)])  # 7 real steps
    recorder = StepRecorder()
    csv_fit(
        tmp_path / "b",
        [LRDecay(gamma=0.5, interval="step"), recorder],
        SkippingBoringModel(),
        accumulate_grad_batches=2,
    )
    assert [lrs[0] for lrs in recorder.lrs[0]] == pytest.approx([0.1 * 0.5**k for k in range(4)])


def test_gan_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """Each optimizer's step count is saved: the resumed run uses the same lrs (a position derived from the
    global step would count both optimizers)."""
    (full, (_, full_rec)), (resumed, (_, resumed_rec)) = gan_resume_runs(
        tmp_path,
        lambda: [LRDecay(mode="linear", interval="step", total=8), StepRecorder()],  # (the 1-epoch run too)
    )
    for i in (0, 1):
        assert [lrs[0] for lrs in full_rec.lrs[i]][4:] == [lrs[0] for lrs in resumed_rec.lrs[i]]
        assert [lrs[0] for lrs in full_rec.lrs[i]] == pytest.approx([0.05 * (1 - k / 8) for k in range(8)])
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
