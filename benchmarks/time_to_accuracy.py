"""Time to accuracy on Fashion-MNIST for the three models of ``lightning_tricks.models``, over several seeds.

For each model and seed: one ``Trainer.fit`` of ``--epochs`` epochs (validation on the 5k held-out images after every
epoch), then ``Trainer.test`` on the 10k test images. Reported per run: the wall time of ``trainer.fit`` (setup
included), the seconds per epoch, the first epoch (and the wall time from the start of ``fit``) at which ``val/acc``
reached ``--target``, the best ``val/acc`` and the final test accuracy; per model: mean +- std over the seeds and
whether the mean test accuracy reaches the target.

Settings: on a CUDA GPU ``bf16-mixed``, ``channels_last`` and on-device data (the data module's ``on_device=True``:
batches and augmentation made on the GPU), as in ``examples/configs/{resnet,inception}.yaml``; on the CPU fp32 and
the normal in-memory loader. Each model's recipe is ``examples/configs/<model>.yaml`` (what ``lightning-tricks fit``
trains), changeable with ``--set key=value`` (model or data options, e.g. ``--set lr=0.002
mlp.hidden_sizes=[2048,2048] batch_size=512``; a ``model.`` prefix limits the override to that model).

Targets (test accuracy, mean of >= 3 seeds): MLP >= 91.0%, ResNet >= 95.0% (in <= 30 s of ``fit`` on one H100),
Inception >= 94.0%.

Usage::

    python benchmarks/time_to_accuracy.py --models mlp --seeds 0 1 2              # CPU: the MLP at full data
    python benchmarks/time_to_accuracy.py --models resnet inception --seeds 0 1 2  # on a GPU
    python benchmarks/time_to_accuracy.py --models resnet --epochs 10 --set lr=0.2 --target 0.95

Prints a JSON line per run and a markdown table; ``--save`` writes ``benchmarks/results/time_to_accuracy.json`` for
``tables.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _timing
import lightning.pytorch as pl
import tables
import torch
import yaml
from _timing import DeviceSettings
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_tricks.data import FashionMNISTDataModule
from lightning_tricks.models import InceptionClassifier, MLPClassifier, ResNetClassifier

MODELS: dict[str, type[pl.LightningModule]] = {
    "mlp": MLPClassifier,
    "resnet": ResNetClassifier,
    "inception": InceptionClassifier,
}
TARGETS = {"mlp": 0.91, "resnet": 0.95, "inception": 0.94}
DATA_KEYS = ("batch_size", "augment", "crop_padding", "hflip", "value_range", "train_subset", "val_size")

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
#: Options the device settings decide (on a GPU: channels_last and on-device data; on the CPU: neither).
DEVICE_KEYS = ("channels_last", "on_device")


def load_recipe(model_name: str) -> dict[str, Any]:
    """``examples/configs/<model>.yaml`` as a recipe: ``epochs`` (its ``trainer.max_epochs``) and its model and data
    options less ``DEVICE_KEYS``, so this benchmark trains what ``lightning-tricks fit --config`` trains."""
    config = yaml.safe_load((CONFIGS / f"{model_name}.yaml").read_text())
    options = {**config["model"]["init_args"], **config["data"]["init_args"]}
    return {"epochs": config["trainer"]["max_epochs"], **{k: v for k, v in options.items() if k not in DEVICE_KEYS}}


class EpochRecorder(pl.Callback):
    """Record, after each training epoch (validation included), the wall time since ``t0`` and ``val/acc``."""

    def __init__(self, settings: DeviceSettings) -> None:
        self.settings = settings
        self.t0 = 0.0
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.settings.cuda:
            torch.cuda.synchronize()  # timing boundary, once per epoch
        elapsed = time.perf_counter() - self.t0
        val_acc = trainer.callback_metrics.get("val/acc")
        self.epochs.append({"seconds": elapsed, "val_acc": float(val_acc) if val_acc is not None else math.nan})
        print(f"epoch {trainer.current_epoch}: {elapsed:.1f} s, val/acc {self.epochs[-1]['val_acc']:.4f}",
              file=sys.stderr, flush=True)  # fmt: skip


def split_recipe(recipe: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """``(epochs, model options, data options)`` of a recipe."""
    options = dict(recipe)
    epochs = int(options.pop("epochs"))
    data = {key: options.pop(key) for key in DATA_KEYS if key in options}
    return epochs, options, data


def run_once(
    model_name: str,
    recipe: dict[str, Any],
    seed: int,
    target: float,
    settings: DeviceSettings,
    limit_batches: int | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """One seeded ``fit`` + ``test``; returns the timings and accuracies."""
    epochs, model_options, data_options = split_recipe(recipe)
    pl.seed_everything(seed, verbose=False)
    model_options = {"channels_last": settings.channels_last, "compile": compile, **model_options}
    model = MODELS[model_name](**model_options)
    data = FashionMNISTDataModule(seed=seed, on_device=settings.on_device, **data_options)
    recorder = EpochRecorder(settings)
    limits = {} if limit_batches is None else {"limit_train_batches": limit_batches, "limit_val_batches": limit_batches,
                                                "limit_test_batches": limit_batches}  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator=settings.accelerator,
            devices=1,
            precision=settings.precision,
            max_epochs=epochs,
            logger=TensorBoardLogger(root, name="time_to_accuracy"),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[recorder],
            default_root_dir=root,
            **limits,
        )
        recorder.t0 = time.perf_counter()
        trainer.fit(model, datamodule=data)
        if settings.cuda:
            torch.cuda.synchronize()  # timing boundary: end of fit
        fit_seconds = time.perf_counter() - recorder.t0
        test_acc = float(trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"])
    reached = next((i for i, e in enumerate(recorder.epochs) if e["val_acc"] >= target), None)
    val_accs = [e["val_acc"] for e in recorder.epochs]
    return {
        "seed": seed,
        "epochs": len(recorder.epochs),
        "fit_seconds": fit_seconds,
        "seconds_per_epoch": fit_seconds / max(1, len(recorder.epochs)),
        "val_target_epoch": None if reached is None else reached + 1,
        "val_target_seconds": None if reached is None else recorder.epochs[reached]["seconds"],
        "best_val_acc": max(val_accs) if val_accs else math.nan,
        "final_val_acc": val_accs[-1] if val_accs else math.nan,
        "test_acc": test_acc,
        "val_acc_per_epoch": val_accs,
    }


def summarize(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    def mean_std(key: str) -> tuple[float, float]:
        values = [r[key] for r in runs]
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    test_mean, test_std = mean_std("test_acc")
    fit_mean, fit_std = mean_std("fit_seconds")
    reached = [r["val_target_seconds"] for r in runs if r["val_target_seconds"] is not None]
    return {
        "seeds": len(runs),
        "test_acc_mean": test_mean,
        "test_acc_std": test_std,
        "fit_seconds_mean": fit_mean,
        "fit_seconds_std": fit_std,
        "seconds_per_epoch_mean": statistics.fmean(r["seconds_per_epoch"] for r in runs),
        "val_target_reached": f"{len(reached)}/{len(runs)}",
        "val_target_seconds_median": statistics.median(reached) if reached else None,
        "target": target,
        "test_target_met": test_mean >= target,
    }


def parse_value(text: str) -> Any:
    """A ``--set`` value in YAML syntax (numbers, booleans, lists); strings as they are."""
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["mlp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--target", type=float, default=None, help="accuracy target (default: per model, TARGETS)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default=None, help="default: bf16 on GPU")
    parser.add_argument("--no-channels-last", action="store_true", help="GPU: keep the NCHW memory format")
    parser.add_argument("--no-on-device", action="store_true", help="GPU: use the host loader, not on-device data")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides (YAML values)")
    parser.add_argument("--limit-batches", type=int, default=None, help="smoke tests: batches per epoch and stage")
    _timing.add_common_options(parser)
    args = parser.parse_args(argv)
    started = _timing.begin(args.threads)
    settings = _timing.device_settings(args.device, args.precision)
    if settings.cuda:
        settings = DeviceSettings(
            settings.device, settings.precision, not args.no_channels_last, on_device=not args.no_on_device
        )
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = parse_value(value)

    results: dict[str, Any] = {
        "precision": settings.precision,
        "channels_last": settings.channels_last,
        "on_device": settings.on_device,
        "models": {},
    }
    for name in args.models:
        recipe = load_recipe(name)
        for key, value in overrides.items():  # "key" applies to every model, "model.key" to that model only
            scope, dot, option = key.rpartition(".")
            if not dot or scope == name:
                recipe[option] = value
        if args.epochs is not None:
            recipe["epochs"] = args.epochs
        target = args.target if args.target is not None else TARGETS[name]
        runs = []
        for seed in args.seeds:
            runs.append(run_once(name, recipe, seed, target, settings, args.limit_batches, args.compile))
            print(json.dumps({"model": name, **runs[-1]}), flush=True)  # progress: one line per run
        results["models"][name] = {"recipe": recipe, "summary": summarize(runs, target), "runs": runs}
    record = _timing.finish("time_to_accuracy", ["time_to_accuracy.py", *argv], results, started, args.save)
    print(tables.render(record))
    return record


if __name__ == "__main__":
    main()
