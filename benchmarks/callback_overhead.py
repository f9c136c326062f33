"""Per-step overhead of every callback of ``lightning_tricks.callbacks``, each alone and all together, on vs off.

Configurations: ``off`` (no callback of this package), each of the package's callbacks alone (``CALLBACKS`` below: the
options are the defaults except where a per-step choice makes the cost visible, e.g. ``LRDecay(interval="step")``),
and ``all`` of them at once. Each is one ``Trainer.fit`` of ``--steps`` steps of the package's ``Classifier`` with a
``TensorBoardLogger`` and Lightning's default ``log_every_n_steps=50``; batches are pre-built on the device (no data
loading in the timing). A timing callback placed first in the list stamps every ``on_train_batch_start``: a step is
the time from one batch start to the next, so every hook of the step, the logging after ``on_train_batch_end`` and
the optimizer step are inside it. The first ``--warmup`` steps are dropped.

Two ratios per configuration (on / off): of the median step time (the typical step, not a logging one) and of the
mean step time (amortized: logging steps, per-epoch hooks and one-off syncs included; the median over the repeats of
each fit's mean). ``--repeats`` rounds, every configuration once per round, the order rotating each round.

Settings: ``cpu-mlp`` (MLP 784-256-256-10, batch 128, fp32; the CPU clock is the process CPU time by default, robust
on a shared machine) and ``gpu-resnet18`` (``ResNetClassifier`` ResNet-18 layout, batch 256, ``bf16-mixed``,
``channels_last``; wall clock with ``torch.cuda.synchronize()`` at the step boundaries only), run when a GPU is there.

Usage: ``python benchmarks/callback_overhead.py [--steps 150] [--repeats 3] [--only EMA GradientClipping]``.
Prints one JSON line and a markdown table. ``monitor_overhead.py`` times the four monitors in more detail.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from _timing import (
    Batches,
    DeviceSettings,
    add_threads_option,
    apply_threads,
    device_settings,
    hardware,
    interleave,
    make_clock,
    markdown_table,
    quiet_lightning,
)
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_tricks import callbacks
from lightning_tricks.models import Classifier, MLPClassifier, ResNetClassifier

#: Each callback of the package with the options it is timed with.
CALLBACKS: dict[str, dict[str, Any]] = {
    "GradientClipping": {"mode": "norm", "threshold": 1.0},
    "LRDecay": {"mode": "exponential", "gamma": 0.999, "interval": "step"},
    "EarlyStopping": {"monitor": "train/loss_epoch", "mode": "min"},
    "WeightInit": {"scheme": "kaiming_normal"},
    "WeightDecay": {"coefficient": 1e-4, "mode": "l2"},
    "EMA": {"decay": 0.999},
    "WeightNormMonitor": {},
    "GradientHealth": {},
    "ActivationStats": {},
    "InputRangeCheck": {},
    "RNGStateCheckpoint": {},
}
SETTINGS = {
    "cpu-mlp": {"model": MLPClassifier, "model_args": {"hidden_sizes": [256, 256]}, "batch_size": 128},
    "gpu-resnet18": {"model": ResNetClassifier, "model_args": {"stages": [2, 2, 2, 2]}, "batch_size": 256},
}


def make_callbacks(names: list[str]) -> list[pl.Callback]:
    return [getattr(callbacks, name)(**CALLBACKS[name]) for name in names]


class StepClock(pl.Callback):
    """Stamps every ``on_train_batch_start`` and ``on_train_end``; differences are whole-step times."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.stamps.append(self.now())

    def on_train_end(self, *args: Any) -> None:
        self.stamps.append(self.now())

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps[:-1], self.stamps[1:], strict=True)]


def time_fit(
    setting: str, names: list[str], settings: DeviceSettings, steps: int, seed: int, clock: str
) -> list[float]:
    """Per-step seconds of one fit with the callbacks ``names`` on."""
    spec = SETTINGS[setting]
    pl.seed_everything(seed, verbose=False)
    model: Classifier = spec["model"](**spec["model_args"], channels_last=settings.channels_last)
    generator = torch.Generator().manual_seed(seed)
    batch = spec["batch_size"]
    batches = [
        (
            (torch.rand(batch, 1, 28, 28, generator=generator) * 2 - 1).to(settings.device),  # inside [-1, 1]
            torch.randint(0, 10, (batch,), generator=generator).to(settings.device),
        )
        for _ in range(8)
    ]
    clock_callback = StepClock(make_clock(settings, clock))  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator=settings.accelerator,
            devices=1,
            precision=settings.precision,
            max_epochs=1,
            max_steps=steps,
            logger=TensorBoardLogger(root, name="bench"),
            log_every_n_steps=50,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            default_root_dir=root,
            callbacks=[clock_callback, *make_callbacks(names)],
        )
        trainer.fit(model, train_dataloaders=Batches(batches, steps))
    return clock_callback.step_times()


def measure(setting: str, configs: dict[str, list[str]], steps: int, repeats: int, warmup: int, clock: str) -> Any:
    settings = device_settings("cuda" if setting.startswith("gpu") else "cpu")
    runs = interleave(list(configs), repeats, lambda name, r: time_fit(setting, configs[name], settings, steps, r,
                                                                       clock)[warmup:])  # fmt: skip
    typical = {name: statistics.median(t for run in runs[name] for t in run) for name in configs}
    mean = {name: statistics.median(statistics.fmean(run) for run in runs[name]) for name in configs}
    return [
        {
            "setting": setting,
            "callbacks": name,
            "hardware": hardware(settings),
            "precision": settings.precision,
            "clock": "wall" if settings.cuda else clock,
            "steps_timed": steps - warmup,
            "repeats": repeats,
            "off_median_ms": 1e3 * typical["off"],
            "on_median_ms": 1e3 * typical[name],
            "off_mean_ms": 1e3 * mean["off"],
            "on_mean_ms": 1e3 * mean[name],
            "ratio_median": typical[name] / typical["off"],
            "ratio_mean": mean[name] / mean["off"],
        }
        for name in configs
        if name != "off"
    ]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=sorted(SETTINGS))
    parser.add_argument("--only", nargs="+", choices=sorted(CALLBACKS), default=None, help="time only these alone")
    parser.add_argument("--clock", choices=("process", "wall"), default="process", help="CPU clock")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup + 1")
    apply_threads(args.threads)
    quiet_lightning()
    configs: dict[str, list[str]] = {"off": []}
    configs.update({name: [name] for name in (args.only or CALLBACKS)})
    configs["all"] = list(CALLBACKS)
    results: list[dict[str, Any]] = []
    notes = []
    for setting in args.settings:
        if setting.startswith("gpu") and not torch.cuda.is_available():
            notes.append(f"{setting} skipped: no CUDA GPU")
            continue
        results += measure(setting, configs, args.steps, args.repeats, args.warmup, args.clock)
    print(json.dumps({"results": results, "notes": notes}))
    print()
    header = ["setting", "callbacks on", "hardware, precision, clock", "off ms/step (median / mean)",
              "on ms/step (median / mean)", "on/off median", "on/off mean"]  # fmt: skip
    rows = [
        [r["setting"], r["callbacks"], f"{r['hardware']}, {r['precision']}, {r['clock']}",
         f"{r['off_median_ms']:.3f} / {r['off_mean_ms']:.3f}", f"{r['on_median_ms']:.3f} / {r['on_mean_ms']:.3f}",
         f"{r['ratio_median']:.3f}", f"{r['ratio_mean']:.3f}"]
        for r in results
    ]  # fmt: skip
    print(markdown_table(header, rows))
    for note in notes:
        print(f"Note: {note}")
    return results


if __name__ == "__main__":
    main()
