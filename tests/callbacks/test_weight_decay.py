"""Tests for ``WeightDecay``: maths, equality with torch's SGD / AdamW decay, logging, resume, DDP, bf16, CLI."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers.data import fixed_inputs, metrics_rows
from helpers.host_sync import DEVICES, no_host_sync
from helpers.models import ScaledLossModel, StepRecorder, TinyGAN
from helpers.trainers import TRAIN_ONLY_ON_CPU, csv_fit, precision_options, tiny_trainer
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from lightning_tricks.callbacks import WeightDecay
from lightning_tricks.callbacks.weight_decay import add_l2_gradient_, decay_parameters, decoupled_decay_, l2_penalty


class Net(BoringModel):
    """BoringModel on a fixed dataset with a chosen optimizer; records ``λ/2·‖W‖²`` seen by each optimizer step."""

    def __init__(self, optimizer: str = "sgd", weight_decay: float = 0.0, batch_size: int = 8, out: str = "") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(32, 2)
        self.optimizer, self.weight_decay, self.batch_size, self.out = optimizer, weight_decay, batch_size, out
        self.sq_norms: list[float] = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=self.weight_decay)
        if self.optimizer == "sgd_weight_only":
            groups = [{"params": [self.layer.weight], "weight_decay": self.weight_decay}, {"params": [self.layer.bias]}]
            return torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        cls = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        return cls(self.parameters(), lr=0.05, weight_decay=self.weight_decay)

    def train_dataloader(self) -> DataLoader:
        data = fixed_inputs(64)
        # under DDP (with use_distributed_sampler=False) rank r takes samples r, r + W, ... in order, so that
        # 2 ranks x batch 8 see the same samples per step as 1 process x batch 16
        data = data[self.global_rank :: self.trainer.world_size]
        return DataLoader(data, batch_size=self.batch_size)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.sq_norms.append(self.layer.weight.detach().square().sum().item())

    def on_train_end(self) -> None:
        if self.out:  # under ddp_spawn, each rank reports its final weights
            torch.save(self.layer.state_dict(), Path(self.out) / f"rank{self.global_rank}.pt")


_trainer = partial(tiny_trainer, **TRAIN_ONLY_ON_CPU, max_epochs=2, limit_train_batches=3)


def _fit(tmp_path: Path, model: Net, callbacks: list, **kwargs) -> Net:
    _trainer(tmp_path, callbacks, **kwargs).fit(model)
    return model


def test_maths_on_hand_computed_tensors() -> None:
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LayerNorm(2), nn.Linear(2, 2))
    assert decay_parameters(module) == [module[0].weight, module[4].weight]
    assert len(decay_parameters(module, exclude_bias_and_norm=False)) == 8

    w = nn.Parameter(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
    w.grad = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    no_grad = nn.Parameter(torch.ones(2, 2))
    add_l2_gradient_([w, no_grad], coefficient=0.1)
    torch.testing.assert_close(w.grad, torch.tensor([[0.6, 0.3], [0.8, 0.5]]))
    assert no_grad.grad is None
    assert l2_penalty([w], 0.1).item() == pytest.approx(0.05 * 14)  # λ/2·(1 + 4 + 9)
    decoupled_decay_([w], lr=0.5, coefficient=0.1)
    torch.testing.assert_close(w.detach(), torch.tensor([[0.95, -1.9], [2.85, 0.0]]))
    decoupled_decay_([w], lr=torch.tensor(1.0), coefficient=0.5)  # a tensor lr works too
    torch.testing.assert_close(w.detach(), torch.tensor([[0.475, -0.95], [1.425, 0.0]]))


def test_l2_equals_sgd_weight_decay(tmp_path: Path) -> None:
    ours = _fit(tmp_path, Net("sgd"), [WeightDecay(1e-2, exclude_bias_and_norm=False)])
    torchs = _fit(tmp_path, Net("sgd", weight_decay=1e-2), [])
    plain = _fit(tmp_path, Net("sgd"), [])
    torch.testing.assert_close(ours.layer.weight, torchs.layer.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.layer.bias, torchs.layer.bias, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(ours.layer.weight, plain.layer.weight, rtol=1e-4, atol=0)


def test_default_excludes_bias(tmp_path: Path) -> None:
    ours = _fit(tmp_path, Net("sgd"), [WeightDecay(1e-2)])
    torchs = _fit(tmp_path, Net("sgd_weight_only", weight_decay=1e-2), [])
    torch.testing.assert_close(ours.layer.weight, torchs.layer.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.layer.bias, torchs.layer.bias, rtol=1e-6, atol=1e-7)


def test_decoupled_with_adam_equals_adamw(tmp_path: Path) -> None:
    ours = _fit(tmp_path, Net("adam"), [WeightDecay(0.5, mode="decoupled", exclude_bias_and_norm=False)])
    torchs = _fit(tmp_path, Net("adamw", weight_decay=0.5), [])
    plain = _fit(tmp_path, Net("adam"), [])
    torch.testing.assert_close(ours.layer.weight, torchs.layer.weight, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(ours.layer.weight, plain.layer.weight, rtol=1e-3, atol=0)


def test_warns_if_optimizer_already_decays(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="already has weight_decay=0.01"):
        _fit(tmp_path, Net("sgd", weight_decay=1e-2), [WeightDecay()], max_steps=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_no_host_sync_on_steps_that_do_not_log(device: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2)).to(device)
    model(torch.randn(4, 8, device=device)).square().sum().backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    weights = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    grads = [model[0].weight.grad.clone(), model[2].weight.grad.clone()]
    bias = model[0].bias.detach().clone()
    trainer = SimpleNamespace(
        loggers=[object()],
        _logger_connector=SimpleNamespace(should_update_logs=False),
        optimizers=[optimizer],
        precision_plugin=SimpleNamespace(scaler=None),
    )
    decay = WeightDecay(0.1, mode=mode)
    decay.on_fit_start(trainer, model)
    with no_host_sync(torch.device(device), monkeypatch):
        decay.on_before_optimizer_step(trainer, model, optimizer)
    for layer, w, g in zip((model[0], model[2]), weights, grads, strict=True):
        if mode == "l2":
            torch.testing.assert_close(layer.weight.grad, g + 0.1 * w)
        else:
            torch.testing.assert_close(layer.weight.detach(), w * (1 - 0.5 * 0.1))
    torch.testing.assert_close(model[0].bias.detach(), bias)  # biases excluded


def test_logged_keys(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    model = _fit(tmp_path, Net("sgd"), [WeightDecay(0.1)], logger=logger, log_every_n_steps=2)
    rows = metrics_rows(logger.log_dir, "weight_decay/penalty")
    assert [int(r["step"]) for r in rows] == [1, 3, 5]  # logging steps only
    for r in rows:  # l2 mode leaves the weights alone, so the module's hook saw the same weights
        assert float(r["weight_decay/penalty"]) == pytest.approx(0.05 * model.sq_norms[int(r["step"])], rel=1e-5)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    def run(root: Path, max_epochs: int, ckpt_path: str | None = None) -> Net:
        seed_everything(0)
        model = Net("adam")
        callbacks = [WeightDecay(0.1, mode="decoupled"), ModelCheckpoint(dirpath=root, save_top_k=-1)]
        _trainer(root, callbacks, max_epochs=max_epochs, enable_checkpointing=True).fit(model, ckpt_path=ckpt_path)
        return model

    full = run(tmp_path / "full", 3)
    run(tmp_path / "part", 1)
    resumed = run(tmp_path / "resumed", 3, ckpt_path=str(tmp_path / "part" / "epoch=0-step=3.ckpt"))
    assert torch.equal(full.layer.weight, resumed.layer.weight)
    assert torch.equal(full.layer.bias, resumed.layer.bias)


def test_ddp_matches_single_process(tmp_path: Path) -> None:
    """2 ranks x batch 8 with decoupled decay + Adam == one process with batch 16 and AdamW on the same samples."""
    callback = WeightDecay(0.5, mode="decoupled", exclude_bias_and_norm=False)
    _fit(
        tmp_path,
        Net("adam", out=str(tmp_path)),
        [callback],
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        use_distributed_sampler=False,
    )
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0["weight"], r1["weight"])
    reference = _fit(tmp_path, Net("adamw", weight_decay=0.5, batch_size=16), [], max_epochs=1)
    torch.testing.assert_close(r0["weight"], reference.layer.weight.detach(), rtol=1e-5, atol=1e-6)


def test_bf16_mixed_l2_equals_sgd_weight_decay(tmp_path: Path) -> None:
    ours = _fit(tmp_path, Net("sgd"), [WeightDecay(1e-2, exclude_bias_and_norm=False)], precision="bf16-mixed")
    torchs = _fit(tmp_path, Net("sgd", weight_decay=1e-2), [], precision="bf16-mixed")
    assert ours.layer.weight.dtype == torch.float32
    torch.testing.assert_close(ours.layer.weight, torchs.layer.weight, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------ the step rule: several optimizers


def test_gan_each_optimizer_decayed_at_its_own_steps_and_logged_once(tmp_path: Path) -> None:
    """With zero gradients (SGD then changes nothing) each step of an optimizer shrinks ITS weights by (1 - lr·λ)."""
    model = TinyGAN(lr=0.1, d_steps=2)
    model.d_scale = 0.0  # the discriminator's gradients are zero; the generator's are not: it decays only by steps
    start = model.discriminator.weight.detach().clone()
    _, rows = csv_fit(tmp_path, WeightDecay(0.5, mode="decoupled"), model)
    torch.testing.assert_close(model.discriminator.weight.detach(), start * 0.95**16)  # 2 critic steps per batch
    assert [int(r["step"]) for r in rows if r.get("weight_decay/penalty")] == list(range(8))  # once per batch


class _BatchEnds(Callback):
    """At each batch end: the weights, and how many real steps the ``StepRecorder`` listed before it has seen."""

    def __init__(self, recorder: StepRecorder) -> None:
        self.recorder, self.seen = recorder, []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.seen.append((len(self.recorder.steps.get(0, [])), pl_module.layer.weight.detach().clone()))


def test_decoupled_skips_the_steps_a_grad_scaler_skips(tmp_path: Path) -> None:
    """Under 16-mixed the first steps overflow and the GradScaler skips them: the weights must not shrink there (a
    skipped step is not a step)."""
    recorder = StepRecorder()
    ends = _BatchEnds(recorder)
    callbacks = [WeightDecay(0.5, mode="decoupled"), recorder, ends]
    csv_fit(tmp_path, callbacks, ScaledLossModel(30.0), **precision_options("16-mixed"))
    skipped = [i for i in range(1, 8) if ends.seen[i][0] == ends.seen[i - 1][0]]
    assert ends.seen[0][0] == 0 and skipped  # the scaler skipped batch 0 and at least one more
    for i in skipped:
        torch.testing.assert_close(ends.seen[i][1], ends.seen[i - 1][1], rtol=0, atol=0)
