"""Tests for WeightInit: each scheme's statistics, activation scale, LSUV, checkpoint precedence, resume, DDP, CLI."""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.data import fixed_inputs, fixed_loader
from helpers.models import call_with_target
from helpers.ranks import read_rank_texts, tensors_digest, write_rank_text
from helpers.trainers import WITH_VALIDATION, tiny_trainer
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn
from torch.utils.data import DataLoader

from lightning_tricks.callbacks import WeightInit
from lightning_tricks.callbacks.weight_init import apply_scales_, lsuv_, target_layers


class Net(BoringModel):
    """Linear -> BatchNorm -> ReLU -> Linear on a fixed, unshuffled dataset."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 2))

    def train_dataloader(self) -> DataLoader:
        return fixed_loader(seed=1, scale=3)

    def val_dataloader(self) -> DataLoader:
        return fixed_loader(16, seed=2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class StartWeights(Callback):
    """Keeps the weights seen at ``on_train_start`` (place it after WeightInit)."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


_trainer = partial(tiny_trainer, **WITH_VALIDATION)


N_IN, N_OUT = 800, 400
EXPECTED_STD = {
    "uniform": 1 / math.sqrt(3 * N_IN),
    "gaussian": 1 / math.sqrt(N_IN),
    "lecun_normal": 1 / math.sqrt(N_IN),
    "xavier_uniform": math.sqrt(2 / (N_IN + N_OUT)),
    "xavier_normal": math.sqrt(2 / (N_IN + N_OUT)),
    "kaiming_uniform": math.sqrt(2 / N_IN),
    "kaiming_normal": math.sqrt(2 / N_IN),
    "orthogonal": 1 / math.sqrt(N_IN),  # N_OUT orthonormal rows of length N_IN
    "standard_normal": 1.0,
}


@pytest.mark.parametrize("scheme", sorted(EXPECTED_STD))
def test_scheme_statistics(scheme: str) -> None:
    layer = nn.Linear(N_IN, N_OUT)
    WeightInit(scheme, bias=0.25, seed=0).init_module_(layer)  # type: ignore[arg-type]
    assert layer.weight.std().item() == pytest.approx(EXPECTED_STD[scheme], rel=0.02)
    assert layer.weight.mean().abs().item() < 0.05 * EXPECTED_STD[scheme]
    assert torch.equal(layer.bias, torch.full((N_OUT,), 0.25))
    if scheme == "uniform":
        assert layer.weight.abs().max().item() <= 1 / math.sqrt(N_IN)
    if scheme == "lecun_normal":
        assert layer.weight.abs().max().item() <= 2 / math.sqrt(N_IN) / 0.8796 + 1e-6
    if scheme == "orthogonal":
        torch.testing.assert_close(layer.weight @ layer.weight.T, torch.eye(N_OUT), atol=1e-4, rtol=0)


def test_conv_fan_in_selection_and_norm_layers() -> None:
    model = nn.Sequential(nn.Conv2d(16, 64, 3), nn.BatchNorm2d(64), nn.Conv2d(64, 64, 3), nn.Linear(64, 8))
    bn_before = copy.deepcopy(model[1].state_dict())
    head_before = model[3].weight.detach().clone()
    WeightInit("kaiming_normal", include=["0", "2", "3"], exclude=["3"], seed=1).init_module_(model)
    assert model[2].weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert model[0].weight.std().item() == pytest.approx(math.sqrt(2 / (16 * 9)), rel=0.03)
    assert all(torch.equal(v, bn_before[k]) for k, v in model[1].state_dict().items())  # normalization untouched
    assert torch.equal(model[3].weight, head_before)  # excluded
    assert [name for name, _ in target_layers(model, exclude=["[02]"])] == ["3"]


def _deep_mlp(scheme: str, depth: int = 12, width: int = 512) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers)
    WeightInit(scheme, seed=0).init_module_(model)  # type: ignore[arg-type]
    return model


@torch.no_grad()
def test_standard_normal_blows_up_kaiming_and_xavier_do_not() -> None:
    x = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    scale = {
        scheme: _deep_mlp(scheme)(x).std().item() for scheme in ("standard_normal", "kaiming_normal", "xavier_normal")
    }
    assert scale["standard_normal"] > 1e12  # grows like sqrt(width / 2) per layer
    assert 0.2 < scale["kaiming_normal"] < 5.0  # variance preserved through ReLU
    assert 1e-3 < scale["xavier_normal"] < 1.0  # halves the variance per ReLU layer, no explosion


@torch.no_grad()
def test_lsuv_unit_variance_per_layer_and_reproducible_scales() -> None:
    model = nn.Sequential(nn.Linear(32, 128), nn.Tanh(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    WeightInit("lsuv", seed=0).init_module_(model)  # orthogonal start
    replica = copy.deepcopy(model)
    x = 5 * torch.randn(256, 32, generator=torch.Generator().manual_seed(0))
    layers = target_layers(model)
    scales = lsuv_(model, x, layers, tolerance=0.05, max_iters=20)
    assert set(scales) == {"0", "2", "4"} and any(abs(s - 1) > 0.1 for s in scales.values())
    outputs: dict[nn.Module, torch.Tensor] = {}
    handles = [layer.register_forward_hook(lambda m, a, out: outputs.setdefault(m, out)) for _, layer in layers]
    model(x)
    for handle in handles:
        handle.remove()
    for _, layer in layers:
        assert abs(outputs[layer].var().item() - 1.0) <= 0.05
    apply_scales_(target_layers(replica), scales)
    for a, b in zip(model.parameters(), replica.parameters(), strict=True):
        assert torch.equal(a, b)  # other ranks reproduce rank 0's weights bit for bit


def test_trainer_setup_init_seeded_and_lsuv_on_first_batch(tmp_path: Path) -> None:
    starts = []
    for seed in (3, 3, 4):
        seed_everything(0)
        model, probe = Net(), StartWeights()
        _trainer(tmp_path, [WeightInit("kaiming_uniform", bias=0.1, seed=seed), probe]).fit(model)
        starts.append(probe.weights)
        assert torch.equal(probe.weights["layer.1.weight"], torch.ones(64))  # BatchNorm untouched
        assert torch.equal(probe.weights["layer.0.bias"], torch.full((64,), 0.1))
    assert torch.equal(starts[0]["layer.0.weight"], starts[1]["layer.0.weight"])
    assert not torch.equal(starts[0]["layer.0.weight"], starts[2]["layer.0.weight"])

    seed_everything(0)
    model, probe = Net(), StartWeights()
    _trainer(tmp_path, [WeightInit("lsuv", seed=0, lsuv_tolerance=0.05), probe]).fit(model)
    net = Net()
    net.load_state_dict(probe.weights)
    net.eval()
    first_batch = next(iter(net.train_dataloader()))
    with torch.no_grad():
        assert abs(net.layer[0](first_batch).var().item() - 1) <= 0.05
        hidden = net.layer[2](net.layer[1](net.layer[0](first_batch)))
        assert abs(net.layer[3](hidden).var().item() - 1) <= 0.05


def test_checkpoint_weights_win_on_resume_and_fine_tune(tmp_path: Path) -> None:
    seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _trainer(tmp_path, [WeightInit("xavier_uniform", seed=0), checkpoint]).fit(Net())
    ckpt_path = str(tmp_path / "ckpt" / "epoch=0-step=2.ckpt")
    saved = torch.load(ckpt_path, weights_only=False)["state_dict"]
    for scheme, max_epochs in (("xavier_uniform", 2), ("standard_normal", 3), ("lsuv", 3)):
        probe = StartWeights()  # resume with the same callback, then "fine-tune" with other schemes and epochs
        _trainer(tmp_path, [WeightInit(scheme, seed=5), probe], max_epochs=max_epochs).fit(Net(), ckpt_path=ckpt_path)  # type: ignore[arg-type]
        for name, value in saved.items():
            assert torch.equal(probe.weights[name], value), (scheme, name)


def _fit(tmp_path: Path, ckpt_path: str | None = None) -> Net:
    seed_everything(0)
    model = Net()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _trainer(tmp_path, [WeightInit("orthogonal", seed=2), checkpoint], max_epochs=3).fit(model, ckpt_path=ckpt_path)
    return model


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = _fit(tmp_path / "full")
    resumed = _fit(tmp_path / "resumed", str(tmp_path / "full" / "ckpt" / "epoch=0-step=2.ckpt"))
    for name, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


class _RankProbe(Callback):
    """Seeds each rank differently before WeightInit and hashes the weights after setup and at train start."""

    def __init__(self, folder: Path, stage: str) -> None:
        self.folder, self.stage = folder, stage

    def _dump(self, trainer: Trainer, pl_module: LightningModule, when: str) -> None:
        write_rank_text(self.folder, trainer.global_rank, tensors_digest(pl_module.state_dict().values()), prefix=when)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.stage == "before":
            torch.manual_seed(100 + trainer.global_rank)
        else:
            self._dump(trainer, pl_module, "setup")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "after":
            self._dump(trainer, pl_module, "start")


def test_ddp_lsuv_leaves_identical_weights(tmp_path: Path) -> None:
    callbacks = [_RankProbe(tmp_path, "before"), WeightInit("lsuv"), _RankProbe(tmp_path, "after")]
    trainer = _trainer(tmp_path, callbacks, accelerator="cpu", devices=2, strategy="ddp_spawn")
    trainer.fit(Net())
    assert len(set(read_rank_texts(tmp_path, "setup"))) == 2  # each rank drew its own init (and saw its own shard) ...
    assert len(set(read_rank_texts(tmp_path, "start"))) == 1  # ... yet DDP's + LSUV's broadcasts make them identical


class TwoInputNet(Net):
    """``forward(inputs, target)`` like Lightning's ``LightningTransformer``; batches are ``(inputs, target)``."""

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.layer(x) + 0 * target[:, None]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(*batch).sum()

    def train_dataloader(self) -> DataLoader:
        x = fixed_inputs(32, seed=1, scale=3)
        return DataLoader(list(zip(x, torch.zeros(32), strict=True)), batch_size=8)


class FirstLayerVariance(Callback):
    """At ``on_train_start`` (place it after WeightInit): variance of ``layer[0]``'s output on the first batch."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        layer = pl_module.layer._orig_mod[0] if hasattr(pl_module.layer, "_orig_mod") else pl_module.layer[0]
        x = next(iter(pl_module.train_dataloader()))
        x = x[0] if isinstance(x, list) else x
        with torch.no_grad():
            self.variance = layer(x.to(layer.weight.dtype)).float().var().item()


def _lsuv_variance(tmp_path: Path, model: Any, init: WeightInit, **trainer_options: Any) -> float:
    probe = FirstLayerVariance()
    _trainer(tmp_path, [init, probe], max_steps=1, **trainer_options).fit(model)
    return probe.variance


@pytest.mark.parametrize("forward_fn", [call_with_target, "helpers.models.call_with_target"])
def test_lsuv_forward_fn_callable_or_import_path(tmp_path: Path, forward_fn: Any) -> None:
    with pytest.raises(RuntimeError, match=r"WeightInit\(scheme='lsuv'\).*TypeError.*`lsuv_forward_fn`"):
        _trainer(tmp_path, WeightInit("lsuv", seed=0)).fit(TwoInputNet())  # default call: model(inputs) only
    init = WeightInit("lsuv", seed=0, lsuv_tolerance=0.05, lsuv_forward_fn=forward_fn)
    assert abs(_lsuv_variance(tmp_path, TwoInputNet(), init) - 1) <= 0.05


def test_lsuv_bf16_true_casts_the_batch(tmp_path: Path) -> None:
    model = Net()
    variance = _lsuv_variance(tmp_path, model, WeightInit("lsuv", seed=0), precision="bf16-true")
    assert model.layer[0].weight.dtype == torch.bfloat16
    assert abs(variance - 1) <= 0.15  # bf16 rounding of the rescaled weights


@pytest.mark.parametrize("how", ["child", "in_place", "lightning_module"])
def test_lsuv_on_compiled_network(tmp_path: Path, how: str) -> None:
    model = Net()
    if how == "child":
        model.layer = torch.compile(model.layer, backend="aot_eager")  # type: ignore[assignment]
    elif how == "in_place":
        model.layer.compile(backend="aot_eager")
    fitted = torch.compile(model, backend="aot_eager") if how == "lightning_module" else model
    # The sanity check runs the compiled code before LSUV: hooks registered after that never fire in it.
    variance = _lsuv_variance(tmp_path, fitted, WeightInit("lsuv", seed=0, lsuv_tolerance=0.05), num_sanity_val_steps=1)
    assert abs(variance - 1) <= 0.05  # scaled, not just reported
    if how == "child":
        assert type(model.layer).__name__ == "OptimizedModule"  # compiled again after the probe
    elif how == "in_place":
        assert model.layer._compiled_call_impl is not None


def test_lsuv_raises_when_no_selected_layer_runs() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(RuntimeError, match="none of the 1 selected layers ran"):
        lsuv_(model, torch.randn(8, 4), [("1", model[1])], forward_fn=lambda m, x: m[0](x))


def test_frozen_layers_left_alone_unless_included(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for include_frozen in (False, True):
        model = Net()
        model.layer[0].requires_grad_(False)  # a "pretrained" first layer
        before = {k: v.clone() for k, v in model.state_dict().items()}
        init = WeightInit("standard_normal", bias=0.5, seed=0, include_frozen=include_frozen)
        with caplog.at_level("INFO"):
            _trainer(tmp_path, init, max_steps=0).fit(model)
        frozen_same = torch.equal(model.layer[0].weight, before["layer.0.weight"])
        assert frozen_same is not include_frozen
        assert torch.equal(model.layer[0].bias, before["layer.0.bias"]) is not include_frozen
        assert not torch.equal(model.layer[3].weight, before["layer.3.weight"])
        assert torch.equal(model.layer[3].bias, torch.full((2,), 0.5))
        said = "left 1 frozen layers (requires_grad=False) alone: layer.0" in caplog.text
        assert said is not include_frozen
        caplog.clear()
