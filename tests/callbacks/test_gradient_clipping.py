"""Tests for ``GradientClipping``: maths, Trainer behaviour, logging, resume, DDP, mixed precision, CLI."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.data import fixed_loader, metrics_rows
from helpers.host_sync import DEVICES, no_host_sync
from helpers.models import TinyGAN
from helpers.trainers import TRAIN_ONLY_ON_CPU, csv_fit, tiny_trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader

from lightning_tricks.callbacks import GradientClipping, gradient_clipping
from lightning_tricks.callbacks.gradient_clipping import (
    adaptive_clip_grad_,
    autoclip_threshold,
    clip_to_max_norm_,
)


class GradRecorder(BoringModel):
    """BoringModel on a fixed dataset (no shuffle) that records the gradients the optimizer is about to use.

    The module's ``on_before_optimizer_step`` runs after the callbacks', so it sees the clipped gradients.
    """

    def __init__(self, out_dir: str | None = None, lr: float = 0.1) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.lr = lr
        self.post_clip: list[torch.Tensor] = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        return fixed_loader(scale=10)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.post_clip.append(torch.cat([p.grad.detach().flatten().clone() for p in self.parameters()]))

    def on_train_end(self) -> None:
        if self.out_dir is not None:  # under ddp_spawn, each rank reports what it saw
            clip = next(c for c in self.trainer.callbacks if isinstance(c, GradientClipping))
            torch.save(
                {
                    "weights": self.layer.weight.detach().clone(),
                    "history": clip.state_dict()["optimizers"][0]["history"],
                },
                Path(self.out_dir) / f"rank{self.global_rank}.pt",
            )


_trainer = partial(tiny_trainer, **TRAIN_ONLY_ON_CPU, limit_train_batches=4)


def test_maths_on_hand_computed_tensors() -> None:
    grads = [torch.tensor([3.0]), torch.tensor([4.0])]  # total norm 5
    coef = clip_to_max_norm_(grads, 1.0, torch.tensor(5.0))
    torch.testing.assert_close(torch.cat(grads), torch.tensor([0.6, 0.8]), rtol=1e-5, atol=0)
    assert coef is not None and coef.item() == pytest.approx(0.2, rel=1e-5)
    grads = [torch.tensor([0.3, 0.4])]
    assert clip_to_max_norm_(grads, torch.tensor(1.0), torch.tensor(0.5)) is None
    torch.testing.assert_close(grads[0], torch.tensor([0.3, 0.4]))

    # On the CPU a norm within the threshold writes nothing (factor exactly 1); a clipped or non-finite one does.
    grads = [torch.tensor([0.3, 0.4]), torch.tensor([0.0])]
    versions = [g._version for g in grads]
    assert clip_to_max_norm_(grads, 1.0, torch.tensor(0.5)) is None  # left untouched
    assert clip_to_max_norm_(grads, torch.tensor(1.0), torch.tensor(0.5)) is None  # a tensor threshold
    assert [g._version for g in grads] == versions
    clip_to_max_norm_(grads, 0.25, torch.tensor(0.5))
    assert all(g._version > v for g, v in zip(grads, versions, strict=True))
    torch.testing.assert_close(grads[0], torch.tensor([0.15, 0.2]), rtol=1e-5, atol=0)
    clip_to_max_norm_(grads, 1.0, torch.tensor(math.nan))
    assert grads[0].isnan().all()  # as clip_grad_norm_ (error_if_nonfinite=False): NaN gradients

    # Around the threshold, skipped or not, the gradients are bitwise torch's clip_grads_with_norm_
    for total in [0.5 * (1 + k * 2.0**-24) for k in range(-64, 65, 4)] + [
        0.5 - 1e-6,
        0.5 + 1e-6,
        0.499999,
        0.49999,
        0.4999,
        0.49,
    ]:
        ours = [nn.Parameter(torch.zeros(3)) for _ in range(2)]
        theirs = [nn.Parameter(torch.zeros(3)) for _ in range(2)]
        for a, b, seed in zip(ours, theirs, (1, 2), strict=True):
            a.grad = torch.randn(3, generator=torch.Generator().manual_seed(seed))
            b.grad = a.grad.clone()
        clip_to_max_norm_([q.grad for q in ours], 0.5, torch.tensor(total))
        torch.nn.utils.clip_grads_with_norm_(theirs, 0.5, torch.tensor(total), foreach=True)
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs, strict=True)), total

    # AGC: row 0 has ‖W‖=5, ‖G‖=1 -> max 0.5 -> scaled by 0.5; row 1 has ‖W‖=0 -> eps floor 1e-3 * 0.1 = 1e-4
    # -> G=(0, 2) becomes (0, 1e-4); row 2 has ‖W‖=10, ‖G‖=0.5 < 1 -> kept.
    w = nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]]))
    w.grad = torch.tensor([[0.6, 0.8], [0.0, 2.0], [0.3, 0.4]])
    fraction = adaptive_clip_grad_([w], clip_factor=0.1, eps=1e-3)
    torch.testing.assert_close(w.grad, torch.tensor([[0.3, 0.4], [0.0, 1e-4], [0.3, 0.4]]))
    assert fraction.item() == pytest.approx(2 / 3)

    history = torch.full((8,), math.nan)
    history[:5] = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])
    assert autoclip_threshold(history, 10.0).item() == pytest.approx(np.percentile([1, 2, 3, 4, 5], 10))
    assert autoclip_threshold(history, 50.0).item() == pytest.approx(3.0)
    assert autoclip_threshold(torch.full((4,), math.nan), 10.0).item() == math.inf


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("norm", lambda g: g.norm() == pytest.approx(1e-2, rel=1e-4)),
        ("value", lambda g: g.abs().max() <= 1e-2 and (g.abs() == 1e-2).any()),
    ],
)
def test_trainer_clips_gradients(tmp_path: Path, mode: str, check) -> None:
    model = GradRecorder()
    _trainer(tmp_path, GradientClipping(mode=mode, threshold=1e-2)).fit(model)
    assert len(model.post_clip) == 4
    for g in model.post_clip:
        assert check(g), g


class TwoLayers(GradRecorder):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 2))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.seen.extend((p.detach().clone(), p.grad.detach().clone()) for p in self.parameters())


def test_trainer_agc_skips_last_layer(tmp_path: Path) -> None:
    lam = 1e-3
    model = TwoLayers()
    _trainer(tmp_path, GradientClipping(mode="agc", threshold=lam), max_steps=1).fit(model)
    (w0, g0), (b0, gb0), (w1, g1), _ = model.seen
    bound = w0.norm(dim=1).clamp(min=1e-3) * lam
    assert (g0.norm(dim=1) <= bound * (1 + 1e-4)).all()
    assert torch.allclose(g0.norm(dim=1), bound, rtol=1e-4)  # every row was too big, so every row is at the bound
    assert gb0.norm() == pytest.approx(max(b0.norm().item(), 1e-3) * lam, rel=1e-4)  # a 1-D tensor is one unit
    assert (g1.norm(dim=1) > w1.norm(dim=1) * lam * 10).all()  # the last layer is left unclipped


def test_agc_skip_last_layer_warns_when_nothing_left(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="agc_skip_last_layer"):
        _trainer(tmp_path, GradientClipping(mode="agc"), max_steps=1).fit(GradRecorder())


def test_auto_mode_uses_percentile_of_history(tmp_path: Path) -> None:
    clip = GradientClipping(mode="auto", percentile=50, history_size=3)
    model = GradRecorder()
    _trainer(tmp_path, clip).fit(model)
    history = clip.state_dict()["optimizers"][0]["history"]
    assert torch.isfinite(history).all()  # 4 steps filled the 3-slot ring
    assert clip.state_dict()["optimizers"][0]["num_steps"] == 4
    # the last step was clipped to the median of the last three pre-clip norms, or kept if below it
    last_norm = model.post_clip[-1].norm().item()
    assert last_norm <= history.median().item() * (1 + 1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["norm", "value", "agc", "auto"])
def test_no_host_sync_on_steps_that_do_not_log(device: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)).to(device)
    x = torch.randn(4, 8, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleNamespace(
        loggers=[object()], _logger_connector=SimpleNamespace(should_update_logs=False), optimizers=[optimizer]
    )
    clip = GradientClipping(mode=mode, threshold=1e-3, percentile=50, history_size=8)
    clip.setup(SimpleNamespace(gradient_clip_val=None, strategy=object()), model, "fit")
    # The CPU stand-in checks the accelerators' code path: on the CPU itself a read is free and "norm" reads the
    # clip factor to skip multiplying by exactly 1 (test_maths_on_hand_computed_tensors).
    monkeypatch.setattr(gradient_clipping, "reads_are_free", lambda device: False)
    with no_host_sync(torch.device(device), monkeypatch):
        for i in range(3):
            optimizer.zero_grad()
            (model(x).square().sum() * 10**i).backward()  # growing norms: AutoClip clips steps 2 and 3
            clip.on_before_optimizer_step(trainer, model, optimizer)
    state = clip.state_dict()["optimizers"][0]
    assert (state["num_steps"], state["steps_since_log"]) == (3, 3)
    # θ = 1e-3 clips every step (AGC: every unit of the first layer, the last one is skipped)
    assert state["clipped_sum"].item() == (2.0 if mode == "auto" else 3.0)


def test_auto_mode_ignores_non_finite_norms() -> None:
    """A step with inf gradients (which a 16-mixed GradScaler skips) must not enter AutoClip's history."""
    w = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([w], lr=0.1)
    trainer = SimpleNamespace(loggers=[], _logger_connector=SimpleNamespace(should_update_logs=False), optimizers=[])
    clip = GradientClipping(mode="auto", percentile=100, history_size=4)
    module = nn.Module()
    module.register_parameter("w", w)
    for grad in ([3.0, 4.0], [math.inf, 0.0], [6.0, 8.0]):
        w.grad = torch.tensor(grad)
        clip.on_before_optimizer_step(trainer, module, optimizer)
    history = clip.state_dict()["optimizers"][0]["history"]
    assert history[0].item() == 5.0 and history[1].isnan() and history[2].item() == 10.0
    torch.testing.assert_close(w.grad, torch.tensor([6.0, 8.0]))  # 10 <= max(5, 10): kept


def test_manual_optimization(tmp_path: Path) -> None:
    class Manual(GradRecorder):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.step(batch))
            opt.step()

    model = Manual()
    _trainer(tmp_path, GradientClipping(threshold=1e-2)).fit(model)
    assert len(model.post_clip) == 4
    assert all(g.norm().item() == pytest.approx(1e-2, rel=1e-4) for g in model.post_clip)


def test_logged_keys(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    _trainer(tmp_path, GradientClipping(threshold=1e-2), logger=logger, log_every_n_steps=2).fit(GradRecorder())
    rows = metrics_rows(logger.log_dir)
    keys = {k for row in rows for k, v in row.items() if v}
    # alone, it owns the total norm; a constant threshold is TensorBoard text, not a flat chart (one key per quantity)
    assert {"grad_norm/total", "grad_clip/clipped_fraction"} <= keys
    assert not {"grad_clip/threshold", "grad_clip/total_norm"} & keys
    logged = [row for row in rows if row.get("grad_norm/total")]
    assert [int(row["step"]) for row in logged] == [1, 3]  # logging steps only
    for row in logged:
        assert float(row["grad_clip/clipped_fraction"]) == 1.0
        assert float(row["grad_norm/total"]) > 1e-2  # the pre-clip norm


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    def run(root: Path, max_epochs: int, ckpt_path: str | None = None) -> tuple[GradRecorder, GradientClipping]:
        seed_everything(0)
        model, clip = GradRecorder(), GradientClipping(mode="auto", percentile=25, history_size=5)
        ckpt = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1)
        _trainer(root, [clip, ckpt], max_epochs=max_epochs, enable_checkpointing=True).fit(model, ckpt_path=ckpt_path)
        return model, clip

    full_model, full_clip = run(tmp_path / "full", 3)
    run(tmp_path / "part", 1)
    resumed_model, resumed_clip = run(tmp_path / "resumed", 3, ckpt_path=str(tmp_path / "part" / "epoch=0-step=4.ckpt"))
    assert torch.equal(full_model.layer.weight, resumed_model.layer.weight)
    full, resumed = full_clip.state_dict()["optimizers"][0], resumed_clip.state_dict()["optimizers"][0]
    assert full["num_steps"] == resumed["num_steps"] == 12
    assert torch.equal(full["history"], resumed["history"])


def test_ddp_ranks_agree(tmp_path: Path) -> None:
    clip = GradientClipping(mode="auto", percentile=50, history_size=16)
    trainer = _trainer(tmp_path, clip, devices=2, strategy="ddp_spawn")
    trainer.fit(GradRecorder(out_dir=str(tmp_path)))
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0["weights"], r1["weights"])
    assert torch.equal(r0["history"].isnan(), r1["history"].isnan())
    assert torch.equal(r0["history"].nan_to_num(), r1["history"].nan_to_num())
    assert (~r0["history"].isnan()).sum() == 4  # 4 optimizer steps on each rank


def test_bf16_mixed(tmp_path: Path) -> None:
    model = GradRecorder()
    _trainer(tmp_path, GradientClipping(threshold=1e-2), precision="bf16-mixed").fit(model)
    for g in model.post_clip:
        assert g.dtype == torch.float32
        assert g.norm().item() == pytest.approx(1e-2, rel=1e-3)


def test_16_mixed_with_scaler_clips_unscaled_gradients(tmp_path: Path) -> None:
    """With a GradScaler (CPU scaler here; CUDA works the same), clipping sees unscaled gradients: the SGD update
    (lr=1) then has norm exactly θ; clipping the scaled gradients would give θ / scale."""
    model = GradRecorder(lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    _trainer(tmp_path, GradientClipping(threshold=1e-2), plugins=[plugin], max_steps=1).fit(model)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (before - after).norm().item() == pytest.approx(1e-2, rel=1e-3)


def test_conflicts_with_trainer_gradient_clip_val(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, GradientClipping(), gradient_clip_val=1.0)
    with pytest.raises(MisconfigurationException, match="gradient_clip_val"):
        trainer.fit(GradRecorder())


# ----------------------------------------------------------------------------- the step rule: per-optimizer state


def test_gan_autoclip_history_per_optimizer(tmp_path: Path) -> None:
    """AutoClip's threshold for each optimizer is the percentile of ITS OWN norm history (one shared history would mix
    the generator's and the discriminator's norms, and one key would log both)."""
    _, rows = csv_fit(tmp_path, GradientClipping(mode="auto", percentile=50), TinyGAN())
    for i in (0, 1):
        norms = [float(r[f"grad_norm/total/opt{i}"]) for r in rows if r.get(f"grad_norm/total/opt{i}")]
        thresholds = [float(r[f"grad_clip/threshold/opt{i}"]) for r in rows if r.get(f"grad_clip/threshold/opt{i}")]
        assert len(norms) == len(thresholds) == 8
        expected = [np.quantile(norms[: k + 1], 0.5) for k in range(8)]
        assert thresholds == pytest.approx(expected, rel=1e-5)
    assert not any(r.get("grad_clip/threshold") for r in rows)


def test_norm_mode_alone_clips_like_torch_and_counts_every_clipped_step() -> None:
    """Alone (no monitor to share the statistics with), "norm" mode computes the norm itself and counts the clipped
    steps from the norms it keeps (counted every 256 steps when nothing logs): torch's gradients, the exact count."""
    torch.manual_seed(0)
    model, reference = nn.Linear(4, 3), nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    clip = GradientClipping(mode="norm", threshold=1.0)
    trainer = SimpleNamespace(
        loggers=[],
        is_global_zero=True,
        _logger_connector=SimpleNamespace(should_update_logs=False),
        optimizers=[optimizer],
        callbacks=[clip],
    )
    clip.setup(SimpleNamespace(gradient_clip_val=None, strategy=object()), model, "fit")
    clip.on_fit_start(trainer, model)
    x = torch.randn(300, 8, 4)
    expected = 0
    for i in range(300):
        scale = 10.0 if i % 3 == 0 else 0.01  # every third step is clipped
        for module in (model, reference):
            module.zero_grad()
            (module(x[i]).sum() * scale).backward()
        expected += int(torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0, foreach=True) > 1.0)
        clip.on_before_optimizer_step(trainer, model, optimizer)
        for ours, torchs in zip(model.parameters(), reference.parameters(), strict=True):
            assert torch.equal(ours.grad, torchs.grad)
    state = clip.state_dict()["optimizers"][0]
    assert state["steps_since_log"] == 300
    assert state["clipped_sum"].item() == expected == 100
