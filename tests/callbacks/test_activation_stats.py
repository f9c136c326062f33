"""Tests for ActivationStats: maths, hooks only on logging steps, depth/init behaviour, resume, DDP, bf16, CLI."""

from __future__ import annotations

import math
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

from lightning_tricks.callbacks import ActivationStats
from lightning_tricks.callbacks import activation_stats as module_under_test
from lightning_tricks.callbacks.activation_stats import _merge, _moments, activation_statistics


class TinyNet(pl.LightningModule):
    """Linear → ReLU → Linear → Tanh → Linear → Sigmoid on a fixed, non-shuffled dataset."""

    def __init__(self, n: int = 32, batch_size: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1), nn.Sigmoid()
        )  # fmt: skip
        gen = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(n, 8, generator=gen), torch.rand(n, 1, generator=gen))
        self.batch_size, self.lr = batch_size, lr
        self.hooks_seen: list[int] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.hooks_seen.append(sum(len(m._forward_hooks) for m in self.net.modules()))
        x, y = batch
        return nn.functional.binary_cross_entropy(self.net(x).float(), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=False)


def test_statistics_on_hand_computed_tensors() -> None:
    relu_out = torch.tensor([[0.0, 0.0, 2.0], [0.0, 3.0, 1.0]])
    mean, std, dead, sat = activation_statistics(relu_out, "rectifier").tolist()
    assert mean == pytest.approx(1.0)
    assert std == pytest.approx(math.sqrt((1 + 1 + 1 + 1 + 4 + 0) / 5))  # deviations -1,-1,1,-1,2,0; Bessel
    assert dead == pytest.approx(0.5)  # three exact zeros out of six
    assert math.isnan(sat)

    tanh_out = torch.tensor([0.0, 0.995, -0.999, 0.5])
    assert activation_statistics(tanh_out, "tanh", 0.99)[3].item() == pytest.approx(0.5)
    sigmoid_out = torch.tensor([0.005, 0.5, 0.995, 0.999, 0.2])
    assert activation_statistics(sigmoid_out, "sigmoid", 0.99)[3].item() == pytest.approx(0.6)
    assert activation_statistics(sigmoid_out, "sigmoid", 0.9)[3].item() == pytest.approx(0.6)
    assert math.isnan(activation_statistics(sigmoid_out, "other")[2].item())

    # Merging the moments of two calls equals the moments of the concatenation.
    a, b = torch.randn(7) * 3 + 1, torch.relu(torch.randn(13))
    merged = _merge(_moments(a, "rectifier", 0.99), 7, _moments(b, "rectifier", 0.99), 13)
    torch.testing.assert_close(merged, _moments(torch.cat([a, b]), "rectifier", 0.99), equal_nan=True)


def test_hooks_only_on_logging_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_moments = module_under_test._moments

    def counting_moments(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real_moments(*args, **kwargs)

    monkeypatch.setattr(module_under_test, "_moments", counting_moments)
    model, cb = TinyNet(), ActivationStats(log_every_n_steps=3)
    tiny_trainer(tmp_path, limit_train_batches=7, callbacks=[cb]).fit(model)
    # Logging steps are batches 3 and 6 (1-based): hooks exist only there, one per watched module (6 modules).
    assert model.hooks_seen == [0, 0, 6, 0, 0, 6, 0]
    assert len(calls) == 2 * 6
    assert all(len(m._forward_hooks) == 0 for m in model.net)
    assert set(cb.last_stats) >= {
        "activation/net.0 Linear(8→16)/mean",
        "activation/net.1 ReLU/dead_fraction",
        "activation/net.3 Tanh/saturation",
    }


def test_accumulation_merges_micro_batches(tmp_path: Path) -> None:
    model, cb = TinyNet(lr=0.0), ActivationStats(log_every_n_steps=1, layer_types=["Linear"], include=["net.0"])
    tiny_trainer(tmp_path, limit_train_batches=2, accumulate_grad_batches=2, callbacks=[cb]).fit(model)
    assert model.hooks_seen == [1, 1]  # the hooks stay on for both micro-batches of the step
    x = model.data.tensors[0][:8]
    expected = activation_statistics(model.net[0](x))
    assert cb.last_stats["activation/net.0 Linear(8→16)/mean"] == pytest.approx(expected[0].item(), rel=1e-5)
    assert cb.last_stats["activation/net.0 Linear(8→16)/std"] == pytest.approx(expected[1].item(), rel=1e-5)
    assert set(cb.last_stats) == {"activation/net.0 Linear(8→16)/mean", "activation/net.0 Linear(8→16)/std"}


def _deep_mlp(init: str, depth: int = 6, width: int = 64) -> TinyNet:
    model = TinyNet(n=64, batch_size=64, lr=0.0)
    layers: list[nn.Module] = [nn.Linear(8, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers += [nn.Linear(width, 1), nn.Sigmoid()]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.zeros_(layer.bias)
            if init == "standard_normal":
                nn.init.normal_(layer.weight, 0.0, 1.0)
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    model.net = nn.Sequential(*layers)
    return model


def test_std_grows_with_depth_under_standard_normal_but_not_kaiming(tmp_path: Path) -> None:
    ratios = {}
    for init in ("standard_normal", "kaiming_normal"):
        torch.manual_seed(0)
        cb = ActivationStats(log_every_n_steps=1, layer_types=["ReLU"])
        tiny_trainer(tmp_path, limit_train_batches=1, callbacks=[cb]).fit(_deep_mlp(init))
        stds = [cb.last_stats[f"activation/net.{i} ReLU/std"] for i in range(1, 12, 2)]
        ratios[init] = stds[-1] / stds[0]
    # N(0, 1) weights multiply the scale by about sqrt(fan_in / 2) = 5.7 per layer; Kaiming keeps it.
    assert ratios["standard_normal"] > 300
    assert 0.2 < ratios["kaiming_normal"] < 5


def test_relu_with_large_negative_bias_is_dead(tmp_path: Path) -> None:
    model = TinyNet(lr=0.0)
    nn.init.constant_(model.net[0].bias, -100.0)
    cb = ActivationStats(log_every_n_steps=1)
    tiny_trainer(tmp_path, limit_train_batches=1, callbacks=[cb]).fit(model)
    assert cb.last_stats["activation/net.1 ReLU/dead_fraction"] == 1.0
    assert cb.last_stats["activation/net.1 ReLU/mean"] == 0.0


def test_logged_keys_csv(tmp_path: Path) -> None:
    cb = ActivationStats(exclude=["net.4", "net.5"])
    trainer = tiny_trainer(
        tmp_path, limit_train_batches=4, log_every_n_steps=2, callbacks=[cb], logger=CSVLogger(tmp_path)
    )
    trainer.fit(TinyNet())
    rows = metrics_rows(trainer.logger.log_dir)
    keys = {k for row in rows for k, v in row.items() if v and k.startswith("activation/")}
    assert keys == {
        "activation/net.0 Linear(8→16)/mean", "activation/net.0 Linear(8→16)/std",
        "activation/net.1 ReLU/mean", "activation/net.1 ReLU/std", "activation/net.1 ReLU/dead_fraction",
        "activation/net.2 Linear(16→16)/mean", "activation/net.2 Linear(16→16)/std",
        "activation/net.3 Tanh/mean", "activation/net.3 Tanh/std", "activation/net.3 Tanh/saturation",
    }  # fmt: skip
    assert sorted(int(r["step"]) for r in rows if r.get("activation/net.0 Linear(8→16)/mean")) == [1, 3]


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    def run(root: Path, epochs: int, ckpt_path: str | None = None) -> tuple[ActivationStats, list[int]]:
        pl.seed_everything(0)
        cb = ActivationStats(log_every_n_steps=3)
        ckpt = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
        logger = CSVLogger(root)
        trainer = tiny_trainer(root, max_epochs=epochs, limit_train_batches=4, callbacks=[cb, ckpt], logger=logger)
        trainer.fit(TinyNet(), ckpt_path=ckpt_path)
        return cb, [int(r["step"]) for r in metrics_rows(logger.log_dir, "activation/net.0 Linear(8→16)/mean")]

    full, full_steps = run(tmp_path / "full", 3)
    run(tmp_path / "first", 1)
    resumed, resumed_steps = run(tmp_path / "resumed", 3, str(tmp_path / "first" / "epoch=0-step=4.ckpt"))
    assert resumed.last_stats == full.last_stats
    assert full_steps == [2, 5, 8, 11]
    assert resumed_steps == [5, 8, 11]


class _RankRecorder(ActivationStats):
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {"stats": self.last_stats, "hooks": pl_module.hooks_seen}
        write_rank_json(trainer.default_root_dir, trainer.global_rank, record)


def test_ddp_two_processes(tmp_path: Path) -> None:
    trainer = tiny_trainer(
        tmp_path,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        limit_train_batches=4,
        log_every_n_steps=2,
        callbacks=[_RankRecorder(layer_types=["Linear", "ReLU"])],
        logger=CSVLogger(tmp_path),
    )
    trainer.fit(TinyNet())
    ranks = read_rank_json(tmp_path)
    for rank in ranks:
        assert rank["hooks"] == [0, 4, 0, 4]  # same logging steps on both ranks, hooks only there
        assert set(rank["stats"]) == {
            "activation/net.0 Linear(8→16)/mean", "activation/net.0 Linear(8→16)/std",
            "activation/net.1 ReLU/mean", "activation/net.1 ReLU/std", "activation/net.1 ReLU/dead_fraction",
            "activation/net.2 Linear(16→16)/mean", "activation/net.2 Linear(16→16)/std",
            "activation/net.4 Linear(16→1)/mean", "activation/net.4 Linear(16→1)/std",
        }  # fmt: skip
    assert ranks[0]["stats"] != ranks[1]["stats"]  # each rank saw its own shard
    key = "activation/net.0 Linear(8→16)/mean"
    logged = metrics_rows(tmp_path / "lightning_logs" / "version_0", key)
    assert [int(r["step"]) for r in logged] == [1, 3]
    assert float(logged[-1][key]) == pytest.approx(ranks[0]["stats"][key])


def test_bf16_mixed(tmp_path: Path) -> None:
    cb = ActivationStats(log_every_n_steps=1)
    tiny_trainer(tmp_path, limit_train_batches=2, precision="bf16-mixed", callbacks=[cb]).fit(TinyNet())
    assert cb.last_stats and all(math.isfinite(v) for v in cb.last_stats.values())
    assert cb.last_stats["activation/net.0 Linear(8→16)/std"] > 0


class LogAtStep(pl.Callback):
    """Copies ``ActivationStats.last_stats`` after each batch (place it after the ActivationStats)."""

    def __init__(self, stats: ActivationStats) -> None:
        self.stats, self.seen = stats, []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        self.seen.append(dict(self.stats.last_stats))


@pytest.mark.parametrize("how", ["child", "in_place", "lightning_module"])
def test_compiled_network_logs_the_same_statistics(tmp_path: Path, how: str) -> None:
    def run(compile_how: str | None) -> list[dict[str, float]]:
        pl.seed_everything(0)
        model = TinyNet()
        model.net(torch.randn(2, 8))  # a forward before fit: hooks registered later never fire in compiled code
        if compile_how == "child":
            model.net = torch.compile(model.net, backend="aot_eager")  # type: ignore[assignment]
        elif compile_how == "in_place":
            model.net.compile(backend="aot_eager")
        stats = ActivationStats(log_every_n_steps=2)
        copy = LogAtStep(stats)
        fitted = torch.compile(model, backend="aot_eager") if compile_how == "lightning_module" else model
        tiny_trainer(tmp_path, limit_train_batches=4, callbacks=[stats, copy]).fit(fitted)  # type: ignore[arg-type]
        if compile_how == "child":  # compiled again after each logging step
            assert type(model.net).__name__ == "OptimizedModule"
        elif compile_how == "in_place":
            assert model.net._compiled_call_impl is not None
        elif compile_how == "lightning_module":
            assert model.training_step is not model._compiler_ctx["original_training_step"]  # type: ignore[index]
        return copy.seen

    eager, compiled = run(None), run(how)
    assert [set(s) for s in compiled] == [set(s) for s in eager] and "activation/net.1 ReLU/dead_fraction" in eager[1]
    assert eager[0] == {} and eager[1] == eager[2] != eager[3]  # logged after batches 1 and 3 (steps 2 and 4)
    for a, b in zip(eager, compiled, strict=True):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)


class CompiledFunction(TinyNet):
    """Runs its network through ``torch.compile`` of a function, which ActivationStats cannot undo."""

    def __init__(self) -> None:
        super().__init__()
        self.run_net = torch.compile(lambda x: self.net(x), backend="aot_eager")

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.binary_cross_entropy(self.run_net(x).float(), y)


def test_compiled_function_warns_instead_of_logging_nothing(tmp_path: Path) -> None:
    stats = ActivationStats(log_every_n_steps=2)
    with pytest.warns(UserWarning, match="none of the 6 watched modules ran.*compile the module instead"):
        tiny_trainer(tmp_path, limit_train_batches=4, callbacks=[stats]).fit(CompiledFunction())
    assert stats.last_stats == {}


def test_boring_model(tmp_path: Path) -> None:
    cb = ActivationStats(log_every_n_steps=1)
    tiny_trainer(tmp_path, limit_train_batches=2, callbacks=[cb]).fit(BoringModel())
    assert set(cb.last_stats) == {"activation/layer Linear(32→2)/mean", "activation/layer Linear(32→2)/std"}


def test_no_matching_layer_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="no module"):
        tiny_trainer(tmp_path, limit_train_batches=1, callbacks=[ActivationStats(include=["nothing*"])]).fit(TinyNet())
