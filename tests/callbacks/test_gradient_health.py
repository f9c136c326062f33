"""GradientHealth: planted pathologies (vanishing, exploding, NaN), bitwise skip, stop, resume, DDP, logging."""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.data import fixed_loader, metrics_rows
from helpers.host_sync import count_host_reads_in_hooks
from helpers.models import ScaledLossModel, SkippingBoringModel, StepRecorder, TinyGAN
from helpers.ranks import read_rank_json, write_rank_json
from helpers.trainers import csv_fit, precision_options, tiny_trainer
from lightning.pytorch import LightningModule, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from lightning_tricks.callbacks import GradientHealth
from lightning_tricks.callbacks.gradient_health import GradientDiagnosis, diagnose_gradients

_trainer = partial(tiny_trainer, limit_train_batches=8, limit_val_batches=0)


class Planted(BoringModel):
    """BoringModel on a fixed dataset with Adam, whose loss is scaled by ``factors[global_step]`` (NaN, spikes)."""

    def __init__(self, factors: dict[int, float] | None = None, lr: float = 1e-2, nan_rank: int | None = None) -> None:
        super().__init__()
        self.factors = factors or {}
        self.lr = lr
        self.nan_rank = nan_rank
        self.snapshots: list[tuple[list[torch.Tensor], dict]] = []

    def train_dataloader(self) -> DataLoader:
        return fixed_loader(tensor_dataset=True)

    def training_step(self, batch: Any, batch_idx: int) -> dict:
        loss = self.loss(self(batch[0]))
        factor = self.factors.get(self.global_step, 1.0)
        if self.nan_rank is None or self.global_rank == self.nan_rank:
            loss = loss * factor
        return {"loss": loss}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        opt_state = copy.deepcopy(self.trainer.optimizers[0].state_dict())
        self.snapshots.append(([p.detach().clone() for p in self.parameters()], opt_state))


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _bitwise_equal(a: Any, b: Any) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta, tb, strict=True))


def test_diagnose_maths_on_hand_computed_norms() -> None:
    nan = float("nan")
    history = torch.tensor([1.0, 3.0, 2.0, nan, nan])  # median 2, three recorded
    d = diagnose_gradients(
        torch.tensor([1e-5, 3.0, 4.0]), history, explode_factor=2.0, vanish_ratio=1e-3, min_history=3
    )
    assert isinstance(d, GradientDiagnosis)
    assert d.total_norm.item() == pytest.approx(math.sqrt(1e-10 + 9 + 16))
    assert d.median_norm.item() == 2.0
    assert bool(d.exploding) and not bool(d.nonfinite)  # 5.0 > 2 x 2
    assert d.vanishing.tolist() == [True, False, False]  # 1e-5 < 1e-3 x 4
    assert d.min_layer_ratio.item() == pytest.approx(1e-5 / 4)
    calm = diagnose_gradients(torch.tensor([3.0, 4.0]), history, explode_factor=3.0, min_history=3)
    assert not bool(calm.exploding)  # 5.0 < 3 x 2
    young = diagnose_gradients(torch.tensor([300.0]), history, explode_factor=2.0, min_history=4)
    assert not bool(young.exploding)  # only 3 norms recorded: no verdict yet
    floor = diagnose_gradients(torch.tensor([0.5, 0.6]), history, vanish_ratio=0.0, vanish_floor=0.55)
    assert floor.vanishing.tolist() == [True, False]
    bad = diagnose_gradients(torch.tensor([1.0, nan]), history)
    assert bool(bad.nonfinite) and not bool(bad.exploding)


def test_batched_diagnosis_equals_step_by_step() -> None:
    """``(n, L)`` rows (how "warn" diagnoses its buffered steps) give the verdicts of n single-step diagnoses."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.rand(40, 3, generator=gen) + 0.5
    rows[[6, 19, 20, 33]] *= 1e3  # spikes, two in a row
    rows[11, 1], rows[27, 0] = float("nan"), float("inf")  # non-finite steps
    rows[15, 2] = 1e-9  # a vanishing layer
    nan = float("nan")
    for history, min_history in ((torch.tensor([nan, nan, 2.0, nan, 1.0]), 3), (torch.full((4,), nan), 2)):
        kw = dict(explode_factor=4.0, vanish_ratio=1e-3, vanish_floor=1e-7, min_history=min_history)
        batched = diagnose_gradients(rows, history, **kw)
        ring = history.clone()  # step by step, recording each total norm (NaN if non-finite) after its verdict
        for i, row in enumerate(rows):
            d = diagnose_gradients(row, ring, **kw)
            ring = torch.cat([ring[1:], torch.where(d.nonfinite, torch.nan, d.total_norm).reshape(1)])
            for field in ("total_norm", "median_norm", "nonfinite", "exploding", "vanishing", "min_layer_ratio"):
                assert torch.equal(getattr(batched, field)[i].nan_to_num(), getattr(d, field).nan_to_num()), (i, field)
        assert 0 < int(batched.exploding.sum()) < 40 and int(batched.nonfinite.sum()) == 2
        assert bool(batched.vanishing[15, 2]) and int(batched.vanishing.sum()) == 1


def test_layout_cache_follows_the_parameters_with_gradients() -> None:
    from lightning_tricks.callbacks._grad_stats import GradLayoutCache

    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    cache = GradLayoutCache()
    assert cache.get(net, opt) is None  # no gradients yet
    net(torch.randn(5, 4)).sum().backward()
    layout = cache.get(net, opt)
    assert layout is not None and layout.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert layout.layers == ["0", "2"] and layout.layer_of == [0, 0, 1, 1]
    assert cache.get(net, opt) is layout  # unchanged set: reused
    norms = torch.stack(torch._foreach_norm(layout.grads()))
    expected = [torch.cat([p.grad.flatten() for p in m.parameters()]).norm() for m in (net[0], net[2])]
    assert torch.allclose(layout.layer_norms(norms), torch.stack(expected))
    assert torch.allclose(
        layout.layer_norms(torch.stack([norms, 2 * norms])), torch.stack(expected) * torch.tensor([[1.0], [2.0]])
    )
    net[0].weight.grad = None  # the set changes: rebuilt
    assert cache.get(net, opt).names == ["0.bias", "2.weight", "2.bias"]
    net[0].weight.grad = torch.zeros(3, 4)
    net[2].requires_grad_(False)  # frozen layers leave the layout even while they still hold a gradient
    assert cache.get(net, opt).layers == ["0"]


class DeepSigmoid(LightningModule):
    """10 sigmoid layers with a tiny init: the classic vanishing-gradient network."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(10):
            layers += [nn.Linear(32, 32), nn.Sigmoid()]
        self.net = nn.Sequential(*layers, nn.Linear(32, 1))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.05)
                nn.init.zeros_(m.bias)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).square().mean()

    def train_dataloader(self) -> DataLoader:
        return fixed_loader(tensor_dataset=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_vanishing_flagged_on_early_layers(tmp_path: Path) -> None:
    seed_everything(0)
    cb = GradientHealth(log_every_n_steps=2)
    trainer = _trainer(tmp_path, [cb], limit_train_batches=4, logger=CSVLogger(tmp_path))
    with pytest.warns(UserWarning, match="vanishing gradients") as record:
        trainer.fit(DeepSigmoid())
    message = next(str(w.message) for w in record if "vanishing" in str(w.message))
    assert "net.0 Linear(32→32) (2/2 steps)" in message and "net.2 " in message  # the first layers, named by type
    assert "net.20 " not in message and "net.18 " not in message  # the last layers learn
    assert "normalization" in message and "Adam" in message
    rows = metrics_rows(tmp_path / "lightning_logs" / "version_0")
    assert float(rows[0]["grad_health/vanishing_layers"]) >= 3


def test_huge_learning_rate_flagged_as_exploding(tmp_path: Path) -> None:
    seed_everything(0)
    model = Planted(lr=1.0)
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=3.0)  # diverges geometrically
    cb = GradientHealth(min_history=3, log_every_n_steps=4)
    trainer = _trainer(tmp_path, [cb], max_epochs=3)
    with pytest.warns(UserWarning, match="exploding gradients on [1-9]"):
        trainer.fit(model)
    assert cb._opts[0].counts["exploding_steps"] > 0
    assert cb._opts[0].counts["skipped_steps"] == 0  # warn only


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("pathology", ["nan", "spike"])
def test_skip_leaves_weights_and_optimizer_state_bitwise_unchanged(
    tmp_path: Path, precision: str, pathology: str
) -> None:
    seed_everything(0)
    bad_step = 5
    model = Planted({bad_step: float("nan") if pathology == "nan" else 1e4})
    cb = GradientHealth(action="skip", min_history=3, log_every_n_steps=4)
    trainer = _trainer(tmp_path, [cb], precision=precision)
    with pytest.warns(UserWarning, match="the update was skipped"):
        trainer.fit(model)
    snaps = model.snapshots
    assert len(snaps) == 8
    assert _bitwise_equal(snaps[bad_step], snaps[bad_step - 1])  # weights AND Adam moments / step counts
    assert snaps[bad_step][1]["state"][0]["step"] == bad_step  # Adam's step count did not advance
    assert not _bitwise_equal(snaps[bad_step + 1][0], snaps[bad_step][0])  # training goes on
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert cb._opts[0].counts["skipped_steps"] == 1


def test_warn_mode_does_not_protect_weights(tmp_path: Path) -> None:
    """Control for the skip test: without skipping, the NaN step does poison the weights."""
    seed_everything(0)
    model = Planted({5: float("nan")})
    with pytest.warns(UserWarning, match="non-finite gradients on [1-9]"):
        _trainer(tmp_path, [GradientHealth(action="warn", log_every_n_steps=4)]).fit(model)
    assert not torch.isfinite(model.snapshots[5][0][0]).all()


def test_stop_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    seed_everything(0)
    model = Planted({5: float("nan")})
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, save_last=True)
    trainer = _trainer(tmp_path, [GradientHealth(action="stop"), ckpt], max_epochs=3)
    with pytest.warns(UserWarning, match="training stops, keeping the last good weights"):
        trainer.fit(model)
    assert len(model.snapshots) == 6  # stopped right after the bad step
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert len(files) >= 6
    for f in files:
        weights = torch.load(f, weights_only=False)["state_dict"]
        assert all(torch.isfinite(w).all() for w in weights.values()), f
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    good = model.snapshots[4][0]  # weights after the last good step
    assert all(torch.equal(a, b) for a, b in zip(last.values(), good, strict=True))


def test_logged_keys_in_tensorboard(tmp_path: Path) -> None:
    seed_everything(0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    cb = GradientHealth(action="skip", log_every_n_steps=2)
    trainer = _trainer(tmp_path, [cb], logger=logger)
    with pytest.warns(UserWarning, match="skipped"):
        trainer.fit(Planted({3: float("nan")}))
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    keys = {"median_norm", "min_layer_ratio", "nonfinite_steps", "skipped_steps"}
    tags = set(acc.Tags()["scalars"])
    assert {f"grad_health/{k}" for k in keys} | {"grad_norm/total"} <= tags  # alone, it owns the total norm
    # counters are drawn from their first event on, never as a chart of zeros (readable at any size)
    never_moved = {"exploding_steps", "scaler_skipped_steps", "vanishing_layers"}  # no layer vanishes here
    assert not ({f"grad_health/{k}" for k in never_moved} | {"grad_health/total_norm"}) & tags
    skipped = acc.Scalars("grad_health/skipped_steps")
    assert [e.step for e in skipped] == [3, 5, 7]  # Lightning's x-axis for log_every_n_steps=2; the event at batch 3
    assert [e.value for e in skipped] == [1.0, 1.0, 1.0]
    assert all(math.isfinite(e.value) and e.value > 0 for e in acc.Scalars("grad_health/median_norm"))


def _run(tmp_path: Path, ckpt_path: str | None, max_epochs: int) -> tuple[Planted, GradientHealth]:
    seed_everything(0)
    model = Planted({6: float("nan"), 9: 50.0})  # step 9 is caught only with the restored history (min_history=6)
    cb = GradientHealth(action="skip", explode_factor=5.0, min_history=6, log_every_n_steps=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _trainer(tmp_path, [cb, ckpt], max_epochs=max_epochs, limit_train_batches=4).fit(model, ckpt_path=ckpt_path)
    return model, cb


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="skipped"):
        full_model, full_cb = _run(tmp_path / "a", None, 3)
    mid = next((tmp_path / "a" / "ckpt").glob("epoch=0-*.ckpt"))
    with pytest.warns(UserWarning, match="skipped"):
        resumed_model, resumed_cb = _run(tmp_path / "b", str(mid), 3)
    assert (
        full_cb._opts[0].counts
        == resumed_cb._opts[0].counts
        == {"exploding_steps": 1, "nonfinite_steps": 1, "skipped_steps": 2, "scaler_skipped_steps": 0}
    )
    assert all(torch.equal(a, b) for a, b in zip(full_model.parameters(), resumed_model.parameters(), strict=True))
    assert torch.equal(full_cb._opts[0].norms.isnan(), resumed_cb._opts[0].norms.isnan())
    assert torch.equal(full_cb._opts[0].norms.nan_to_num(), resumed_cb._opts[0].norms.nan_to_num())


def test_warn_resume_mid_interval_equals_uninterrupted(tmp_path: Path) -> None:
    """The checkpoint (saved with steps still buffered, not yet diagnosed) holds their outcome."""

    def run(root: Path, ckpt_path: str | None) -> GradientHealth:
        seed_everything(0)
        model = Planted({2: 1e3, 6: 1e3, 9: 50.0})  # spikes only: Adam keeps the weights finite
        cb = GradientHealth(explode_factor=5.0, min_history=2, log_every_n_steps=6)
        ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
        with pytest.warns(UserWarning, match="exploding gradients on [1-9]"):
            _trainer(root, [cb, ckpt], max_epochs=3, limit_train_batches=4).fit(model, ckpt_path=ckpt_path)
        return cb

    full = run(tmp_path / "a", None)
    resumed = run(tmp_path / "b", str(next((tmp_path / "a" / "ckpt").glob("epoch=0-*.ckpt"))))
    assert full._opts[0].counts == resumed._opts[0].counts
    assert full._opts[0].counts["exploding_steps"] == 3 and full._opts[0].counts["nonfinite_steps"] == 0
    assert full._opts[0].recorded == resumed._opts[0].recorded == 12
    assert torch.equal(full._opts[0].norms.nan_to_num(), resumed._opts[0].norms.nan_to_num())


class FlagOnRankOne(GradientHealth):
    """Rank 1 alone reports an exploding step at step 2 (a per-rank differing decision input)."""

    def _diagnose(self, state: Any, layer_norms: torch.Tensor) -> GradientDiagnosis:
        diag = super()._diagnose(state, layer_norms)
        trainer = self._trainer
        if trainer is not None and trainer.global_rank == 1 and trainer.global_step == 2:
            diag.exploding = torch.ones((), dtype=torch.bool)
        return diag


class DDPRecorder(Planted):
    def __init__(self, out: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out = out

    def on_train_end(self) -> None:
        cb = next(c for c in self.trainer.callbacks if isinstance(c, GradientHealth))
        weights = [[p.tolist() for p in snap[0]] for snap in self.snapshots]
        record = {"weights": weights, "skipped": cb._opts[0].counts["skipped_steps"]}
        write_rank_json(self.out, self.global_rank, record)


def test_ddp_every_rank_skips_when_any_rank_flags(tmp_path: Path) -> None:
    model = DDPRecorder(str(tmp_path), factors={3: float("nan")}, nan_rank=1)  # NaN loss on rank 1 only
    trainer = _trainer(
        tmp_path, [FlagOnRankOne(action="skip")], accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1
    )
    trainer.fit(model)
    ranks = read_rank_json(tmp_path)
    for rec in ranks:
        w = rec["weights"]
        assert rec["skipped"] == 2
        assert len(w) == 4  # 64 samples / 2 ranks / batch 8
        assert w[2] == w[1]  # both ranks skipped the step only rank 1 flagged
        assert w[3] == w[2]  # and the step whose NaN loss was on rank 1 only
        assert w[1] != w[0]
    assert ranks[0]["weights"] == ranks[1]["weights"]


def test_warn_mode_syncs_only_on_logging_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Count host reads of tensors made inside the callback's hook (a CPU stand-in for CUDA sync debug mode)."""
    cb = GradientHealth(action="warn", log_every_n_steps=4)
    state = count_host_reads_in_hooks(monkeypatch, cb, ("on_before_optimizer_step", "on_train_batch_end"))
    seed_everything(0)
    _trainer(tmp_path, [cb]).fit(Planted())
    assert state["reads"] == 2  # 8 steps, logging at steps 4 and 8: one transfer each


# ------------------------------------------------------------------------ the step rule: per-optimizer state


def test_gan_histories_are_per_optimizer(tmp_path: Path) -> None:
    """The discriminator's gradients are ~16x the generator's: judged against one mixed history they look exploding
    (the old single history skipped the discriminator's updates); per optimizer nothing is flagged."""
    cb = GradientHealth(action="skip", min_history=3)
    recorder = StepRecorder()
    _, rows = csv_fit(tmp_path, [cb, recorder], TinyGAN(d_scale=16.0))
    assert [state.counts["skipped_steps"] for state in cb._opts] == [0, 0]
    assert [state.counts["exploding_steps"] for state in cb._opts] == [0, 0]
    assert [len(recorder.steps[i]) for i in (0, 1)] == [8, 8]  # every update of both optimizers happened
    assert [state.recorded for state in cb._opts] == [8, 8]
    g = [float(r["grad_norm/total/opt0"]) for r in rows if r.get("grad_norm/total/opt0")]
    d = [float(r["grad_norm/total/opt1"]) for r in rows if r.get("grad_norm/total/opt1")]
    assert len(g) == len(d) == 8 and min(d) > 5 * max(g)  # two series, one per optimizer, logged every batch
    assert not any(r.get("grad_norm/total") for r in rows)  # no key mixing the two


def test_skipped_batches_and_accumulation_are_not_steps(tmp_path: Path) -> None:
    cb = GradientHealth(action="warn", check_every_n_steps=2)
    csv_fit(tmp_path / "skip", cb, SkippingBoringModel(skip_batches=[0, 3]))
    assert cb._steps.counts == [6] and cb._opts[0].recorded == 3  # steps 0, 2, 4 of the 6 real steps are checked
    csv_fit(tmp_path / "acc", cb, SkippingBoringModel(), accumulate_grad_batches=4)
    assert cb._steps.counts == [2] and cb._opts[0].recorded == 1  # reused: fresh state; 8 batches = 2 steps


def test_scaler_overflow_is_not_a_nonfinite_gradient(tmp_path: Path) -> None:
    cb = GradientHealth(action="stop")
    trainer, rows = csv_fit(tmp_path, cb, ScaledLossModel(30.0), **precision_options("16-mixed"))
    counts = cb._opts[0].counts
    assert trainer.global_step == 8 and not trainer.should_stop  # no stop at the scaler's first overflow
    assert counts["scaler_skipped_steps"] > 0 and counts["nonfinite_steps"] == counts["skipped_steps"] == 0
    assert cb._steps.counts == [8 - counts["scaler_skipped_steps"]]  # the scaler's skips are not steps
    assert float(rows[-1]["grad_health/scaler_skipped_steps"]) == counts["scaler_skipped_steps"]


def test_scaler_skipping_every_step_warns(tmp_path: Path) -> None:
    """A NaN loss under 16-mixed: the scaler skips every step; 32 in a row are no routine overflow and are reported."""
    cb = GradientHealth(action="stop")
    with pytest.warns(UserWarning, match="GradScaler skipped the last 32 checked steps"):
        trainer, _ = csv_fit(tmp_path, cb, ScaledLossModel(float("nan")), max_epochs=4, **precision_options("16-mixed"))
    assert trainer.global_step == 32 and cb._opts[0].counts["scaler_skipped_steps"] == 32
