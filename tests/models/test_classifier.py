"""Tests of the ``Classifier`` base: optimizers, schedules, validation, input checks, logging, hparams, DDP."""

from __future__ import annotations

import itertools
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers.trainers import ON_CPU, tiny_trainer
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.models import Classifier, MLPClassifier
from lightning_tricks.models.classifier import CLASS_PATH_KEY, HPARAMS_METRICS

_trainer = partial(tiny_trainer, **ON_CPU)  # quiet, CPU, no checkpoints, Lightning's default length


def tiny_mlp(**kwargs) -> MLPClassifier:
    """A 4x4-image MLP: 16 -> 8 -> 10."""
    return MLPClassifier(hidden_sizes=[8], input_size=16, **kwargs)


def loader(n: int = 32, channels: int = 1, batch_size: int = 8, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, 4, 4, generator=generator) * 2 - 1
    y = torch.randint(0, 10, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize(
    ("name", "cls", "defaults"),
    [
        ("sgd", torch.optim.SGD, {"momentum": 0.0, "nesterov": False}),
        ("momentum", torch.optim.SGD, {"momentum": 0.8, "nesterov": False}),
        ("nesterov", torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
        ("adagrad", torch.optim.Adagrad, {}),
        ("rmsprop", torch.optim.RMSprop, {"momentum": 0.8}),
        ("adam", torch.optim.Adam, {"decoupled_weight_decay": False}),
        ("adamw", torch.optim.AdamW, {}),
    ],
)
def test_optimizer_names_build_the_right_torch_optimizer(name: str, cls: type, defaults: dict) -> None:
    model = tiny_mlp(optimizer=name, lr=0.05, momentum=0.8, weight_decay=1e-3)
    optimizer = model.configure_optimizers()
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.05
    assert group["weight_decay"] == 1e-3
    for key, value in defaults.items():
        assert group[key] == value, key
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimizer": "lbfgs"}, r"`optimizer`.*\('sgd', 'momentum', 'nesterov'.*'lbfgs'"),
        ({"lr_schedule": "step"}, r"`lr_schedule`.*\('none', 'onecycle', 'cosine'\).*'step'"),
        ({"lr": 0.0}, r"`lr`.*> 0.*0\.0"),
        ({"lr": -1.0}, r"`lr`.*-1\.0"),
        ({"momentum": 1.0}, r"`momentum`.*\[0\.0, 1\.0\).*1\.0"),
        ({"optimizer": "nesterov", "momentum": 0.0}, r"`momentum`.*nesterov"),
        ({"weight_decay": -0.1}, r"`weight_decay`.*-0\.1"),
        ({"label_smoothing": 1.0}, r"`label_smoothing`.*\[0\.0, 1\.0\).*1\.0"),
        ({"label_smoothing": -0.1}, r"`label_smoothing`"),
        ({"num_classes": 1}, r"`num_classes`.*1"),
        ({"in_channels": 0}, r"`in_channels`.*0"),
    ],
)
def test_invalid_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_mlp(**kwargs)


def test_batch_with_wrong_channel_count_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\].*in_channels=1.*\(8, 3, 4, 4\)"):
        _trainer(tmp_path, fast_dev_run=1).fit(tiny_mlp(), loader(channels=3))


def test_labels_out_of_range_and_wrong_dtype_give_clear_errors() -> None:
    model = tiny_mlp()
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"labels in \[0, 10\).*from 3 to 10"):
        model.training_step((x, torch.tensor([3, 10])), 0)
    with pytest.raises(ValueError, match=r"int64 class labels.*float32"):
        model.training_step((x, torch.tensor([3.0, 1.0])), 0)
    with pytest.raises(ValueError, match=r"labels of shape \[B\] = \[2\]"):
        model.training_step((x, torch.tensor([3])), 0)


class LRRecorder(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_onecycle_schedule_steps_every_batch(tmp_path: Path) -> None:
    recorder = LRRecorder()
    model = tiny_mlp(optimizer="momentum", lr=0.1, lr_schedule="onecycle")
    _trainer(tmp_path, max_epochs=2, limit_train_batches=4, callbacks=[recorder]).fit(model, loader())
    scheduler = model.lr_schedulers()
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert scheduler.total_steps == 8  # trainer.estimated_stepping_batches
    lrs = recorder.lrs
    assert len(lrs) == 8 and len(set(lrs)) == 8  # a new rate on every batch, not every epoch
    assert lrs[0] == pytest.approx(0.1 / 25)  # OneCycleLR's initial rate: max_lr / div_factor
    peak = max(range(8), key=lrs.__getitem__)
    assert 0 < peak < 7 and lrs[peak] <= 0.1
    assert all(a < b for a, b in itertools.pairwise(lrs[: peak + 1])), "warm-up must rise step by step"
    assert all(a > b for a, b in itertools.pairwise(lrs[peak:])), "annealing must fall step by step"
    # SGD momentum is cycled inversely to the learning rate.
    assert trainer_optimizer_momentum(model) != 0.9


def trainer_optimizer_momentum(model: Classifier) -> float:
    return model.trainer.optimizers[0].param_groups[0]["momentum"]


def test_cosine_schedule_anneals_to_zero_per_step(tmp_path: Path) -> None:
    recorder = LRRecorder()
    model = tiny_mlp(optimizer="adam", lr=0.01, lr_schedule="cosine")
    _trainer(tmp_path, max_steps=6, callbacks=[recorder]).fit(model, loader())
    expected = [0.005 * (1 + math.cos(math.pi * step / 6)) for step in range(6)]
    assert recorder.lrs == pytest.approx(expected)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_resuming_a_schedule_with_a_longer_run_is_refused_with_the_reason(tmp_path: Path, schedule: str) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    first = _trainer(tmp_path, max_epochs=1, limit_train_batches=4, enable_checkpointing=True,
                    callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])  # fmt: skip
    first.fit(tiny_mlp(optimizer="momentum", lr=0.1, lr_schedule=schedule), loader())
    last = str(tmp_path / "last.ckpt")

    same = _trainer(tmp_path, max_epochs=1, limit_train_batches=4)
    same.fit(tiny_mlp(optimizer="momentum", lr=0.1, lr_schedule=schedule), loader(), ckpt_path=last)  # nothing left
    longer = _trainer(tmp_path, max_epochs=2, limit_train_batches=4)
    with pytest.raises(ValueError, match=rf"{schedule} schedule spans 4 optimizer steps, but this run will take 8"):
        longer.fit(tiny_mlp(optimizer="momentum", lr=0.1, lr_schedule=schedule), loader(), ckpt_path=last)
    assert (tmp_path / "last.ckpt").exists(), "the refused run leaves the checkpoint it was given"


def test_schedule_needs_finite_steps(tmp_path: Path) -> None:
    model = tiny_mlp(lr_schedule="onecycle")
    with pytest.raises(ValueError, match="finite number of training steps"):
        _trainer(tmp_path, max_epochs=-1).fit(model, loader())


def test_label_smoothing_only_on_training_loss() -> None:
    model = tiny_mlp(label_smoothing=0.2)
    batch = (torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 3]))
    logits = model(batch[0])
    smoothed = nn.functional.cross_entropy(logits, batch[1], label_smoothing=0.2)
    plain = nn.functional.cross_entropy(logits, batch[1])
    assert model.training_step(batch, 0).item() == pytest.approx(smoothed.item())
    assert model.validation_step(batch, 0).item() == pytest.approx(plain.item())
    assert smoothed.item() != pytest.approx(plain.item())


def test_logged_keys_and_metrics_match_a_hand_computation(tmp_path: Path) -> None:
    model = tiny_mlp()
    val = loader(n=24, seed=1)
    fit_trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2)
    fit_trainer.fit(model, loader(), val)
    keys = set(fit_trainer.callback_metrics)
    assert {"train/loss_step", "train/loss_epoch", "train/acc_step", "train/acc_epoch", "val/loss", "val/acc"} <= keys
    results = fit_trainer.test(model, val, verbose=False)[0]
    x, y = val.dataset.tensors
    with torch.no_grad():
        logits = model(x)
    assert results["test/acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert results["test/loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    probabilities = fit_trainer.predict(model, val)
    assert torch.allclose(torch.cat(probabilities), logits.softmax(-1), atol=1e-6)


def test_hparams_saved_in_checkpoint_with_class_path(tmp_path: Path) -> None:
    model = tiny_mlp(optimizer="nesterov", lr=0.02, label_smoothing=0.1)
    assert model.hparams.optimizer == "nesterov" and model.hparams.hidden_sizes == [8]
    fit_trainer = _trainer(tmp_path, max_steps=1)
    fit_trainer.fit(model, loader())
    path = tmp_path / "model.ckpt"
    fit_trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint[CLASS_PATH_KEY] == "lightning_tricks.models.mlp.MLPClassifier"
    assert checkpoint["hyper_parameters"]["lr"] == 0.02
    restored = MLPClassifier.load_from_checkpoint(path)
    assert restored.hparams == model.hparams
    assert torch.equal(restored.net[1].weight, model.net[1].weight)


@pytest.mark.parametrize("default_hp_metric", [True, False])
def test_tensorboard_hparams_tab_lists_val_and_test_metrics(tmp_path: Path, default_hp_metric: bool) -> None:
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=default_hp_metric)
    fit_trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2, logger=logger)
    model = tiny_mlp(optimizer="rmsprop")
    fit_trainer.fit(model, loader(), loader(n=16))
    fit_trainer.test(model, loader(n=16), verbose=False)
    logger.experiment.flush()

    events = EventAccumulator(logger.log_dir)
    events.Reload()
    # TensorBoard keeps the first hparams record of a run: it must be ours, with the metrics listed.
    experiment_record = events.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content
    experiment = metadata.parse_experiment_plugin_data(experiment_record)
    assert {info.name.tag for info in experiment.metric_infos} == set(HPARAMS_METRICS)
    start = metadata.parse_session_start_info_plugin_data(
        events.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content
    )
    assert start.hparams["optimizer"].string_value == "rmsprop"
    assert start.hparams["hidden_sizes"].string_value == "[8]"
    scalars = set(events.Tags()["tensors"])  # this accumulator stores scalars as tensors
    assert {"val/acc", "test/acc", "test/loss", "train/loss_epoch"} <= scalars
    assert len(events.Tensors("val/acc")) == 1  # no placeholder point before the real value
    assert ("hp_metric" in scalars) == default_hp_metric  # Lightning's own placeholder, ignored by the tab


def test_channels_last_and_compile_applied_once_in_setup() -> None:
    from lightning_tricks.models import ResNetClassifier

    model = ResNetClassifier(stages=[1], width=4, channels_last=True, compile=True)
    model.setup("fit")
    model.setup("test")  # idempotent
    conv = next(m for m in model.net.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)  # CUDA only (oneDNN #6035 on the CPU)
    assert model.net._compiled_call_impl is not None  # nn.Module.compile: compiled lazily on first call
    assert all(not key.startswith("_orig_mod") for key in model.state_dict())  # checkpoints stay loadable


class _ConstantNet(nn.Module):
    """Predicts class 0 for every input, with log-probability log(0.7) for class 0 and log(0.3 / 9) for the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # something to optimize in `fit`; its gradient is always 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], 10), math.log(0.3 / 9), device=x.device)
        logits[:, 0] = math.log(0.7)
        return logits + 0 * x.flatten(1).sum(1, keepdim=True) + 0 * self.unused


class _ConstantClassifier(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.net = _ConstantNet()


def test_ddp_training_and_validation_metrics_are_reduced_over_ranks(tmp_path: Path) -> None:
    # DistributedSampler(shuffle=False) gives rank r the samples r, r+2, ...: rank 0 sees only class-0 labels (all
    # right, loss -log 0.7), rank 1 only class-1 labels (all wrong, loss -log(0.3/9)). Only reduced values give 0.5.
    y = torch.tensor([0, 1] * 8)
    data = DataLoader(TensorDataset(torch.zeros(16, 1, 4, 4), y), batch_size=4)
    ddp_trainer = _trainer(tmp_path, devices=2, strategy="ddp_spawn", max_epochs=1, log_every_n_steps=1)
    ddp_trainer.fit(_ConstantClassifier(), data, data)
    metrics = ddp_trainer.callback_metrics
    mean_loss = (-math.log(0.7) - math.log(0.3 / 9)) / 2
    for key in ("val/acc", "train/acc_epoch"):
        assert metrics[key].item() == pytest.approx(0.5), key
    for key in ("val/loss", "train/loss_epoch", "train/loss_step"):  # the step loss too is averaged over ranks
        assert metrics[key].item() == pytest.approx(mean_loss, rel=1e-5), key


class _RecordBatches(Callback):
    """Records every training batch's loss and accuracy (recomputed) and the logged step values."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.correct: list[float] = []
        self.sizes: list[int] = []
        self.step_values: list[tuple[int, float, float]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        x, y = batch
        self.losses.append(outputs["loss"].item())
        self.sizes.append(len(y))
        logits = pl_module(x)  # the weights after the step: the accuracy is recomputed in `on_train_batch_start`
        del logits
        if trainer._logger_connector.should_update_logs:
            metrics = trainer.callback_metrics
            self.step_values.append((batch_idx, metrics["train/loss_step"].item(), metrics["train/acc_step"].item()))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx) -> None:
        x, y = batch
        with torch.no_grad():
            self.correct.append((pl_module(x).argmax(1) == y).float().sum().item())


def test_training_epoch_values_are_exact_means_over_all_batches_and_step_values_the_logged_batch(
    tmp_path: Path,
) -> None:
    # 7 batches of 8, 8, ..., 4 (a short last one), logged every 3 steps: the step values reach Lightning only on
    # steps 3 and 6 (and the first), the epoch values must still weigh every batch by its size.
    record = _RecordBatches()
    trainer = _trainer(tmp_path, max_epochs=1, log_every_n_steps=3, callbacks=[record])
    trainer.fit(tiny_mlp(lr=0.05), loader(n=52, batch_size=8))
    sizes = torch.tensor(record.sizes, dtype=torch.float64)
    assert sizes.tolist() == [8.0] * 6 + [4.0]
    expected_loss = (torch.tensor(record.losses, dtype=torch.float64) * sizes).sum() / sizes.sum()
    expected_acc = sum(record.correct) / sizes.sum().item()
    metrics = trainer.callback_metrics
    assert metrics["train/loss_epoch"].item() == pytest.approx(expected_loss.item(), rel=1e-6)
    assert metrics["train/acc_epoch"].item() == pytest.approx(expected_acc, abs=1e-7)
    assert [index for index, _, _ in record.step_values] == [2, 5]
    for index, loss, acc in record.step_values:
        assert loss == pytest.approx(record.losses[index], rel=1e-6)
        assert acc == pytest.approx(record.correct[index] / 8, abs=1e-7)


def test_ema_on_a_classifier_gives_no_configure_model_warning(tmp_path: Path) -> None:
    """Lightning's WeightAveraging warns about models that override ``configure_model``; Classifier must not."""
    import warnings

    from lightning_tricks.callbacks import EMA

    data = DataLoader(TensorDataset(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))), batch_size=8)
    trainer = _trainer(tmp_path, max_steps=2, callbacks=[EMA(decay=0.5)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(MLPClassifier(hidden_sizes=[8]), data)
    assert not [w for w in caught if "configure_model" in str(w.message)]


def test_training_accuracy_matches_torchmetrics_multiclass_accuracy() -> None:
    """The lean update keeps torchmetrics' states: same tp/fp/tn/fn, batch values and epoch value."""
    from torchmetrics.classification import MulticlassAccuracy

    from lightning_tricks.models.classifier import TrainingAccuracy

    generator = torch.Generator().manual_seed(0)
    ours, reference = TrainingAccuracy(7), MulticlassAccuracy(7, average="micro", validate_args=False)
    for i in range(20):
        n = 5 + 3 * i
        logits, y = torch.randn(n, 7, generator=generator), torch.randint(0, 7, (n,), generator=generator)
        if i % 4 == 0:  # forward: the batch value plus the update, as on logging steps
            assert torch.equal(ours(logits, y), reference(logits, y))
        else:
            ours.update(logits, y)
            reference.update(logits, y)
    for state in ("tp", "fp", "tn", "fn"):
        assert torch.equal(getattr(ours, state), getattr(reference, state)), state
    assert torch.equal(ours.compute(), reference.compute())
    ours.update(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3]))  # labels instead of logits
    reference.update(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3]))
    assert torch.equal(ours.compute(), reference.compute())
