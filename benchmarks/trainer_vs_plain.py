"""Epoch time of our Lightning setup vs a hand-written PyTorch loop: same network, same data, same optimizer.

Variants, measured side by side in one process (``--rounds`` rounds, every variant once per round, the order
rotating; ``_timing``):

- ``plain``: a hand-written loop. The data set lives in memory as ``uint8`` tensors (on the GPU when there is one);
  every epoch: a seeded permutation, batches sliced from it, normalized to ``[-1, 1]``, randomly cropped and flipped
  (the data module's own ``random_crop_flip``), forward (with label smoothing), backward, optimizer and one-cycle
  scheduler steps, the training accuracy counted on the device; then a validation pass. One host copy per epoch.
- ``lightning_minimal``: ``Trainer(logger=False, enable_checkpointing=False)``, no progress bar; the package's
  ``Classifier`` (which accumulates the training loss and accuracy on the device every step and calls ``self.log``
  only on Lightning's logging steps) and ``FashionMNISTDataModule``.
- ``lightning_ours``: what ``lightning-tricks fit --config examples/configs/*.yaml`` builds: a ``TensorBoardLogger``,
  ``log_every_n_steps=50``, the configs' ``ModelCheckpoint(save_last="link")`` (one file per epoch, ``last.ckpt`` a
  link to it) and ``LearningRateMonitor(logging_interval="epoch")``, and the callbacks ``fit`` adds to every run
  (``SigtermCheckpoint``, ``RNGStateCheckpoint``, ``ContinueTensorBoardRun``); no progress bar (a terminal concern,
  not training; without a terminal the CLI prints one summary line per epoch instead, left out here).

The epoch time runs from one ``on_train_epoch_start`` to the next (training, validation, logging and checkpoint
writing included); the first epoch of every run is a warm-up and is dropped. A run's figure is its median epoch;
the ratios are taken per round and reported as their median and range. On a GPU: ``bf16-mixed`` (autocast in the
plain loop), ``channels_last`` and on-device data (``on_device=True``), with ``torch.cuda.synchronize()`` only at the
epoch boundaries.

Settings (``--settings``): ``cpu-mlp`` (MLP 512-256, batch norm, dropout, 8192 training images), ``cpu-mlp-full``
(the same on the whole training split, 58,976 images: a ~3 s epoch, over which the per-epoch validation and
checkpoint are amortized as in a real run), ``cpu-mlp-256``
(MLP 256-256, batch 128, 8192 images: the network of ``overhead.py``'s ``cpu-mlp``), ``cpu-resnet``
(ResNet with two stages of one block, width 16, 2048 images), ``gpu-mlp`` (``examples/configs/mlp.yaml``'s MLP, full
data), ``gpu-resnet18`` (``examples/configs/resnet.yaml``: ResNet-18 layout, batch 512, full data). GPU target:
``lightning_ours / plain <= 1.03``.

Usage: ``python benchmarks/trainer_vs_plain.py [--settings cpu-mlp cpu-resnet] [--epochs 4] [--rounds 3] [--save]``.
Prints a markdown table; ``--save`` writes ``benchmarks/results/trainer_vs_plain.json`` for ``tables.py``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import _timing
import lightning.pytorch as pl
import tables
import torch
import torch.nn.functional as F
from _timing import DeviceSettings
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_tricks.cli import add_resume_callbacks
from lightning_tricks.data import FashionMNISTDataModule
from lightning_tricks.data._loaders import random_crop_flip
from lightning_tricks.models import Classifier, MLPClassifier, ResNetClassifier

VARIANTS = ("plain", "lightning_minimal", "lightning_ours")
TARGET_GPU = 1.03

#: model class, model options, data options (the training subset keeps CPU epochs at a few seconds).
SETTINGS: dict[str, dict[str, Any]] = {
    "cpu-mlp": {
        "model": MLPClassifier,
        "model_args": {"hidden_sizes": [512, 256], "norm": "batch", "dropout": 0.2},
        "data_args": {"batch_size": 256, "train_subset": 8192, "val_size": 1024},
    },
    "cpu-mlp-full": {  # cpu-mlp on the whole training split: per-epoch costs (validation, checkpoint) amortized
        "model": MLPClassifier,
        "model_args": {"hidden_sizes": [512, 256], "norm": "batch", "dropout": 0.2},
        "data_args": {"batch_size": 256, "val_size": 1024},
    },
    "cpu-mlp-256": {  # overhead.py's cpu-mlp network: MLP 784-256-256-10 at batch 128
        "model": MLPClassifier,
        "model_args": {"hidden_sizes": [256, 256]},
        "data_args": {"batch_size": 128, "train_subset": 8192, "val_size": 1024},
    },
    "cpu-resnet": {
        "model": ResNetClassifier,
        "model_args": {"stages": [1, 1], "width": 16},
        "data_args": {"batch_size": 128, "train_subset": 2048, "val_size": 512},
    },
    "gpu-mlp": {
        "model": MLPClassifier,
        "model_args": {"hidden_sizes": [1024, 512], "norm": "batch", "dropout": 0.2},
        "data_args": {"batch_size": 256},
    },
    "gpu-resnet18": {
        "model": ResNetClassifier,
        "model_args": {"stages": [2, 2, 2, 2], "width": 64},
        "data_args": {"batch_size": 512},
    },
}
COMMON_MODEL_ARGS = {"optimizer": "adam", "lr": 1e-3, "label_smoothing": 0.1, "lr_schedule": "onecycle"}
COMMON_DATA_ARGS = {"augment": True, "crop_padding": 2, "value_range": "minus_one_to_one"}


class EpochClock(pl.Callback):
    """Timestamps at every ``on_train_epoch_start`` and at ``on_train_end``: the differences are epoch times."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.stamps: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stamps.append(self.now())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stamps.append(self.now())

    def epoch_times(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.stamps)]


def build(
    setting: str, settings: DeviceSettings, seed: int, compile: bool
) -> tuple[Classifier, FashionMNISTDataModule]:
    spec = SETTINGS[setting]
    pl.seed_everything(seed, verbose=False)
    model = spec["model"](
        **COMMON_MODEL_ARGS, **spec["model_args"], channels_last=settings.channels_last, compile=compile
    )
    data = FashionMNISTDataModule(**COMMON_DATA_ARGS, **spec["data_args"], on_device=settings.on_device, seed=seed)
    return model, data


def run_lightning(
    setting: str,
    variant: str,
    settings: DeviceSettings,
    epochs: int,
    seed: int,
    now: Callable[[], float],
    compile: bool,
) -> list[float]:
    """Epoch times of one ``Trainer.fit`` (``lightning_minimal`` or ``lightning_ours``)."""
    model, data = build(setting, settings, seed, compile)
    clock = EpochClock(now)
    with tempfile.TemporaryDirectory() as root:
        ours = variant == "lightning_ours"
        callbacks: list[pl.Callback] = [clock]
        if ours:  # the configs' callbacks (examples/configs/*.yaml)
            callbacks += [
                ModelCheckpoint(dirpath=f"{root}/checkpoints", save_last="link"),
                LearningRateMonitor(logging_interval="epoch"),
            ]
        trainer = pl.Trainer(
            accelerator=settings.accelerator,
            devices=1,
            precision=settings.precision,
            max_epochs=epochs,
            logger=TensorBoardLogger(root, name="bench") if ours else False,
            log_every_n_steps=50,
            enable_checkpointing=ours,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=root,
            callbacks=callbacks,
        )
        if ours:  # and what `lightning-tricks fit` adds to every run
            add_resume_callbacks(trainer)
        trainer.fit(model, datamodule=data)
    return clock.epoch_times()


def run_plain(
    setting: str, settings: DeviceSettings, epochs: int, seed: int, now: Callable[[], float], compile: bool
) -> list[float]:
    """Epoch times of the hand-written loop on the same network, data split, optimizer and schedule."""
    model, data = build(setting, settings, seed, compile)
    data.setup("fit")
    device = settings.device
    train, val = data.dataset("train"), data.dataset("val")
    train_x, train_y = train.images.to(device), train.labels.to(device)
    val_x, val_y = val.images.to(device), val.labels.to(device)
    batch_size, padding = data.batch_size, data.crop_padding
    net = model.net.to(device)
    if settings.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile:
        net.compile()
    steps_per_epoch = len(train_y) // batch_size + (len(train_y) % batch_size > 0)
    optimizer = torch.optim.Adam(net.parameters(), lr=model.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=model.lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator(device=device).manual_seed(seed)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(127.5).sub_(1.0).contiguous(memory_format=memory_format)

    stamps = []
    for _ in range(epochs):
        stamps.append(now())
        net.train()
        correct = torch.zeros((), dtype=torch.long, device=device)
        order = torch.randperm(len(train_y), device=device, generator=generator)
        for start in range(0, len(train_y), batch_size):
            index = order[start : start + batch_size]
            x = random_crop_flip(prepare(train_x[index]), padding, True, -1.0, generator)
            y = train_y[index]
            with settings.autocast():
                logits = net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=model.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += (logits.argmax(1) == y).sum()
        net.eval()
        val_correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad(), settings.autocast():
            for start in range(0, len(val_y), batch_size):
                x, y = prepare(val_x[start : start + batch_size]), val_y[start : start + batch_size]
                val_correct += (net(x).argmax(1) == y).sum()
        _ = (correct.item() / len(train_y), val_correct.item() / len(val_y))  # the one host copy per epoch
    stamps.append(now())
    return [b - a for a, b in itertools.pairwise(stamps)]


def measure(setting: str, settings: DeviceSettings, epochs: int, rounds: int, compile: bool) -> dict[str, Any]:
    now = _timing.clock(settings)

    def run(variant: str, round_: int) -> float:
        if variant == "plain":
            times = run_plain(setting, settings, epochs, round_, now, compile)
        else:
            times = run_lightning(setting, variant, settings, epochs, round_, now, compile)
        return statistics.median(times[1:])  # the first epoch is a warm-up

    epochs_of = _timing.interleave(VARIANTS, rounds, run)
    spec = SETTINGS[setting]
    return {
        "setting": setting,
        "model": f"{spec['model'].__name__}({', '.join(f'{k}={v!r}' for k, v in spec['model_args'].items())})",
        "batch_size": spec["data_args"]["batch_size"],
        "train_images": spec["data_args"].get("train_subset") or "all",
        "precision": settings.precision,
        "clock": _timing.clock_name(settings),
        "epoch_seconds": {variant: statistics.median(times) for variant, times in epochs_of.items()},
        "minimal_over_plain": _timing.ratios(epochs_of["lightning_minimal"], epochs_of["plain"]),
        "ours_over_plain": _timing.ratios(epochs_of["lightning_ours"], epochs_of["plain"]),
        "target": TARGET_GPU if settings.cuda else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=None,
                        help="default: the gpu-* settings on a GPU, the cpu-* ones otherwise")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is dropped)")
    parser.add_argument("--rounds", type=int, default=3, help="every variant once per round, the order rotating")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network in every variant")
    parser.add_argument("--train-subset", type=int, default=None, help="override the settings' training subset")
    _timing.add_common_options(parser)
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.rounds < 1:
        parser.error(f"--epochs must be >= 2 (the first epoch is dropped) and --rounds >= 1; got {args}")
    names = args.settings or (["gpu-mlp", "gpu-resnet18"] if torch.cuda.is_available() else ["cpu-mlp", "cpu-resnet"])
    if not torch.cuda.is_available() and (gpu := [name for name in names if name.startswith("gpu")]):
        parser.error(f"--settings {' '.join(gpu)} needs a CUDA GPU; torch.cuda.is_available() is False")
    started = _timing.begin(args.threads)
    if args.train_subset is not None:
        for name in names:
            SETTINGS[name]["data_args"] = {**SETTINGS[name]["data_args"], "train_subset": args.train_subset}
    results = []
    for name in names:
        device = _timing.device_settings("cuda" if name.startswith("gpu") else "cpu")
        results.append(measure(name, device, args.epochs, args.rounds, args.compile))
    payload = {"epochs": args.epochs, "rounds": args.rounds, "results": results}
    record = _timing.finish("trainer_vs_plain", ["trainer_vs_plain.py", *argv], payload, started, args.save)
    print(tables.render(record))
    return record


if __name__ == "__main__":
    main()
