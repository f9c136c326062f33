"""WeightNormMonitor: norms before clipping, update ratios, TensorBoard extras, resume, DDP, bf16, sync count."""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.data import fixed_loader, metrics_rows
from helpers.host_sync import count_host_reads_in_hooks
from helpers.models import SkippingBoringModel, TinyGAN
from helpers.ranks import read_rank_json, write_rank_json
from helpers.trainers import TRAIN_ONLY_ON_CPU, csv_fit, tiny_trainer
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.data import DataLoader

from lightning_tricks.callbacks import WeightNormMonitor
from lightning_tricks.callbacks._grad_stats import gradient_norms, group_norms
from lightning_tricks.callbacks.weight_norm_monitor import update_ratios


class Recording(BoringModel):
    """BoringModel on a fixed dataset that records its own gradient norm (before clipping) and weights per step."""

    def __init__(self, out: str | None = None) -> None:
        super().__init__()
        self.out = out
        self.grad_norms: dict[int, float] = {}
        self.before: dict[int, torch.Tensor] = {}
        self.ratios: dict[int, float] = {}

    def train_dataloader(self) -> DataLoader:
        return fixed_loader(tensor_dataset=True)

    def training_step(self, batch: Any, batch_idx: int) -> dict:
        return {"loss": self.loss(self(batch[0]))}

    def on_before_optimizer_step(self, optimizer: Any) -> None:  # runs after callbacks' hook, before clipping
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        self.grad_norms[step] = self.layer.weight.grad.norm().item()
        self.before[step] = self.layer.weight.detach().clone()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        delta = (self.layer.weight.detach() - self.before[step]).norm()
        self.ratios[step] = (delta / self.before[step].norm()).item()

    def on_train_end(self) -> None:
        if self.out is not None:
            record = {"grad_norms": self.grad_norms, "weight": self.layer.weight.tolist()}
            write_rank_json(self.out, self.global_rank, record)


L = " Linear(32→2)"  # the label of BoringModel's `layer` in every per-parameter key (readable names)
_trainer = partial(tiny_trainer, limit_train_batches=8, limit_val_batches=0)  # every test passes its logger


def _csv(logger: CSVLogger) -> dict[str, dict[int, float]]:
    series: dict[str, dict[int, float]] = {}
    for row in metrics_rows(logger.log_dir):
        for key, value in row.items():
            if key != "step" and value != "":
                series.setdefault(key, {})[int(row["step"])] = float(value)
    return series


def test_norm_maths_on_hand_computed_tensors() -> None:
    params = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])]
    grads = [torch.tensor([0.0, 2.0]), torch.tensor([[1.0, 1.0], [1.0, 1.0]])]
    assert gradient_norms(params, half=False).tolist() == [5.0, 1.0]
    assert gradient_norms(grads, half=False).tolist() == [2.0, 2.0]
    after = [torch.tensor([3.0, 4.5]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])]
    update_norms, ratios = update_ratios(params, after)
    assert update_norms.tolist() == [0.5, 2.0]
    assert ratios.tolist() == pytest.approx([0.1, 2.0])
    assert group_norms(torch.tensor([3.0, 12.0, 4.0]), [[0, 2], [1]]).tolist() == [5.0, 12.0]


def test_logs_norms_before_clipping_ratios_histograms_and_layout(tmp_path: Path) -> None:
    seed_everything(0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    model = Recording()
    cb = WeightNormMonitor(log_every_n_steps=2, per_layer=True, histogram_every_n_epochs=1)
    _trainer(tmp_path, [cb], logger=logger, gradient_clip_val=1e-3, max_epochs=2, limit_train_batches=4).fit(model)
    acc = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    per_param = {
        f"{kind}/layer.{p}{L}" for kind in ("weight_norm", "grad_norm", "update_ratio") for p in ("weight", "bias")
    }
    per_layer = {f"{kind}/layer{L}" for kind in ("weight_norm", "grad_norm", "update_ratio")}
    assert per_param | per_layer | {"grad_norm/total"} <= set(tags["scalars"])
    logged = {e.step: e.value for e in acc.Scalars(f"grad_norm/layer.weight{L}")}
    assert sorted(logged) == [1, 3, 5, 7]
    for step, value in logged.items():
        assert value == pytest.approx(model.grad_norms[step], rel=1e-5)  # the norm BEFORE clipping
        assert value > 1e-2  # clipping to 1e-3 happened after it was read
    ratios = {e.step: e.value for e in acc.Scalars(f"update_ratio/layer.weight{L}")}
    assert all(ratios[s] == pytest.approx(model.ratios[s], rel=1e-4) for s in ratios)
    assert all(0 < r < 1e-2 for r in ratios.values())
    # two epochs -> histograms of weights and gradients written twice
    assert len(acc.Histograms(f"weight_hist/layer.weight{L}")) == 2
    assert len(acc.Histograms(f"grad_hist/layer.bias{L}")) == 2
    final = acc.Histograms(f"weight_hist/layer.weight{L}")[-1].histogram_value  # the second epoch's first step
    assert final.num == model.layer.weight.numel() and sum(final.bucket) == final.num
    assert final.min <= final.max and len(final.bucket_limit) == len(final.bucket)
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    weights = re.compile(charts["grad_norm: weights"][0])  # weights and biases apart: their norms differ by decades
    assert weights.match(f"grad_norm/layer.weight{L}") and not weights.match(f"grad_norm/layer.bias{L}")
    assert re.compile(charts["update_ratio: per layer"][0]).match(f"update_ratio/layer{L}")
    assert charts["total gradient norm (before clipping)"] == ["^grad_norm/total"]


def test_other_loggers_skip_tensorboard_extras(tmp_path: Path) -> None:
    seed_everything(0)
    logger = CSVLogger(tmp_path)
    _trainer(tmp_path, [WeightNormMonitor(log_every_n_steps=4)], logger=logger).fit(Recording())
    series = _csv(logger)
    assert set(series["grad_norm/total"]) == {3, 7}
    assert f"weight_norm/layer{L}" not in series  # per_layer is off by default
    assert not list(Path(logger.log_dir).glob("events.out.tfevents*"))


def _run(tmp_path: Path, ckpt_path: str | None) -> tuple[Recording, dict[str, dict[int, float]]]:
    seed_everything(0)
    model = Recording()
    logger = CSVLogger(tmp_path, name="csv")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    cb = WeightNormMonitor(log_every_n_steps=3, per_layer=True)
    _trainer(tmp_path, [cb, ckpt], logger=logger, max_epochs=3, limit_train_batches=4).fit(model, ckpt_path=ckpt_path)
    return model, _csv(logger)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full_model, full = _run(tmp_path / "a", None)
    mid = next((tmp_path / "a" / "ckpt").glob("epoch=0-*.ckpt"))
    resumed_model, resumed = _run(tmp_path / "b", str(mid))
    assert torch.equal(full_model.layer.weight, resumed_model.layer.weight)
    assert set(resumed["grad_norm/total"]) == {5, 8, 11}  # same logging steps after the restart
    for key, values in resumed.items():
        if "/" in key:
            assert values == {s: full[key][s] for s in values}, key


def test_ddp_logs_the_all_reduced_gradient(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, version=0)  # fixed: the spawned rank 0 writes it
    model = Recording(out=str(tmp_path))
    cb = WeightNormMonitor(log_every_n_steps=2)
    _trainer(tmp_path, [cb], logger=logger, accelerator="cpu", devices=2, strategy="ddp_spawn").fit(model)
    ranks = read_rank_json(tmp_path)
    assert ranks[0] == ranks[1]  # the gradient the monitor reads is the all-reduced one: same on both ranks
    logged = _csv(logger)[f"grad_norm/layer.weight{L}"]
    assert set(logged) == {1, 3}  # 64 samples / 2 ranks / batch 8 = 4 steps
    assert all(v == pytest.approx(ranks[0]["grad_norms"][str(s)], rel=1e-5) for s, v in logged.items())


def test_bf16_mixed(tmp_path: Path) -> None:
    seed_everything(0)
    logger = CSVLogger(tmp_path)
    model = Recording()
    _trainer(tmp_path, [WeightNormMonitor(log_every_n_steps=2)], logger=logger, precision="bf16-mixed").fit(model)
    logged = _csv(logger)[f"grad_norm/layer.weight{L}"]
    assert set(logged) == {1, 3, 5, 7}
    assert all(v == pytest.approx(model.grad_norms[s], rel=1e-5) for s, v in logged.items())


def test_syncs_only_on_logging_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Count host reads of tensors made inside the callback's hooks (a CPU stand-in for CUDA sync debug mode)."""
    cb = WeightNormMonitor(log_every_n_steps=4, histogram_every_n_epochs=None)
    state = count_host_reads_in_hooks(monkeypatch, cb, ("on_before_optimizer_step", "on_train_batch_end"))
    seed_everything(0)
    _trainer(tmp_path, [cb], logger=CSVLogger(tmp_path)).fit(BoringModel())
    assert state["reads"] == 2  # 8 steps, logging at steps 4 and 8: one transfer each


def test_histogram_stats_on_hand_computed_tensors() -> None:
    from lightning_tricks._tensorboard import histogram_stats

    values = torch.tensor([0.0, 1.0, 2.0, 3.0, float("nan"), float("inf")])  # non-finite values are left out
    constant = torch.full((4,), 2.0)
    table = histogram_stats([values, constant], bins=3)
    # min, max, count, sum, sum of squares, then 3 equal buckets over [min, max]: [0, 1), [1, 2), [2, 3]
    assert table[0].tolist() == [0.0, 3.0, 4.0, 6.0, 14.0, 1.0, 1.0, 2.0]
    assert table[1].tolist() == [2.0, 2.0, 4.0, 8.0, 16.0, 4.0, 0.0, 0.0]


# ------------------------------------------------------------------------ the step rule: several optimizers


def _norm_of(row: dict[str, str], prefix: str) -> float:
    return math.sqrt(sum(float(v) ** 2 for k, v in row.items() if k.startswith(prefix) and v))


def test_gan_total_covers_every_optimizer_once_per_batch(tmp_path: Path) -> None:
    """``grad_norm/total`` is the norm of the generator's AND the discriminator's gradients, logged once per batch
    (logged once per optimizer under one key, only the last optimizer's would survive)."""
    _, rows = csv_fit(tmp_path, WeightNormMonitor(histogram_every_n_epochs=None), TinyGAN())
    rows = [r for r in rows if r.get("grad_norm/total")]
    assert len(rows) == 8
    for row in rows:
        g, d = _norm_of(row, "grad_norm/generator."), _norm_of(row, "grad_norm/discriminator.")
        assert float(row["grad_norm/total/opt0"]) == pytest.approx(g, rel=1e-5)
        assert float(row["grad_norm/total/opt1"]) == pytest.approx(d, rel=1e-5)
        assert float(row["grad_norm/total"]) == pytest.approx(math.hypot(g, d), rel=1e-5)
        assert d > 2 * g  # both really are in the total: it is not the generator's alone


def test_skipped_batch_logs_nothing(tmp_path: Path) -> None:
    _, rows = csv_fit(tmp_path, WeightNormMonitor(histogram_every_n_epochs=None), SkippingBoringModel([1]))
    assert [int(r["step"]) for r in rows if r.get("grad_norm/total")] == [0, 2, 3, 4, 5, 6, 7]
    assert not any(k.endswith("/opt0") for k in rows[0])  # one optimizer: no per-optimizer keys


def _histogram_tags(log_dir: str) -> set[str]:
    acc = EventAccumulator(log_dir, size_guidance={"histograms": 0})
    acc.Reload()
    return set(acc.Tags()["histograms"])


def test_gan_histograms_for_every_optimizer_and_reused_instance(tmp_path: Path) -> None:
    """Histograms of both optimizers' parameters (not only the first stepping optimizer's), and again
    in a second fit with the same instance (fresh per fit: epoch 0 is not remembered as done)."""
    monitor = WeightNormMonitor(log_every_n_steps=50)
    for run in ("a", "b"):
        logger = TensorBoardLogger(tmp_path, name=run)
        tiny_trainer(tmp_path, monitor, logger=logger, **TRAIN_ONLY_ON_CPU).fit(TinyGAN())
        tags = _histogram_tags(logger.log_dir)
        wanted = {"weight_hist/generator.weight Linear(8→32)", "grad_hist/discriminator.weight Linear(32→1)"}
        assert wanted <= tags, (run, sorted(tags))
