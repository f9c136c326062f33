"""Per-step overhead of the four monitoring callbacks at their default intervals, measured side by side.

Monitors: ``WeightNormMonitor``, ``GradientHealth``, ``ActivationStats``, ``InputRangeCheck`` (each one missing from
``lightning_tricks.callbacks`` is skipped with a note). Settings:

- ``cpu-mlp``: a 784-256-256-10 ReLU MLP, batch 128, fp32 on the CPU. Target: on / off <= 1.03.
- ``gpu-resnet18``: torchvision ResNet-18 adapted to 1x28x28 inputs (3x3 stem, no max-pool), batch 256,
  ``bf16-mixed``, on the GPU when one is present. Target: on / off <= 1.01.

Method: for each setting, ``--repeats`` rounds in which every configuration (monitors off, all on, and with
``--per-monitor`` each one alone) is fitted once, the order rotating per round so drift hits all; batches are
pre-built on the device (no data loading in the timing), with a TensorBoard logger and Lightning's default
``log_every_n_steps=50``. A timing callback placed FIRST starts the clock in ``on_train_batch_start`` and one placed
LAST stops it in ``on_train_batch_end``, so every monitor hook of the step is inside the window
(``torch.cuda.synchronize`` on both ends, on the GPU only). On the CPU the clock is, by default, the process CPU
time (``time.process_time``): it ignores the time this process waits for a core, which makes the ratio readable on
a shared machine (``--cpu-clock wall`` measures wall time). The first ``--warmup`` steps of each fit are dropped.
Two ratios are reported: of the median step time over all timed steps (the typical, non-logging step) and of the
mean step time (amortized: includes the logging steps and InputRangeCheck's one sync; the median over the repeats
of each fit's mean). The target applies to the mean ratio. Beside each ratio: its noise floor, the same ratio for
a do-nothing callback measured the same way (``do-nothing`` row); a ratio below ``1 - noise`` is flagged
``implausible`` (and warned about), never ``ok``. One torch thread by default (``--threads``, shared by every
benchmark here).

Usage: ``python benchmarks/monitor_overhead.py [--steps 200] [--repeats 5] [--per-monitor]
[--settings cpu-mlp gpu-resnet18]``. ``--per-monitor`` adds one row per monitor alone. Prints one JSON line and a
markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from _timing import (
    NULL,
    Batches,
    DeviceSettings,
    DoNothing,
    add_threads_option,
    apply_threads,
    device_settings,
    hardware,
    interleave,
    judge,
    make_clock,
    quiet_lightning,
    ratio_table,
    step_ratios,
)
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

MONITORS = ("WeightNormMonitor", "GradientHealth", "ActivationStats", "InputRangeCheck")
#: Mean-step ratio targets (issue 13: the four monitors <= 1.03x on the CPU MLP, <= 1.01x on a ResNet-18 GPU step).
TARGETS = {"cpu-mlp": 1.03, "gpu-resnet18": 1.01}


def available_monitors() -> tuple[list[type[pl.Callback]], list[str]]:
    """The monitor classes that exist now, and a note for each one that does not."""
    package = importlib.import_module("lightning_tricks.callbacks")
    found, notes = [], []
    for name in MONITORS:
        try:
            found.append(getattr(package, name))
        except (ImportError, AttributeError) as err:
            notes.append(f"{name} skipped: not available ({type(err).__name__}: {err})")
    return found, notes


class _Net(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float = 0.01) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        # Like any real module: the loss goes to the logger, so "off" also creates and feeds the TensorBoard writer
        # (else the monitors' first write would pay the writer's one-time start-up inside the timed steps).
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def resnet18() -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class _Window:
    """Per-step times of the window from ``start`` (first in the callback list) to ``stop`` (last)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.times: list[float] = []
        self._t0 = 0.0
        window = self

        class Start(pl.Callback):
            def on_train_batch_start(self, *args: Any) -> None:
                window._t0 = now()

        class Stop(pl.Callback):
            def on_train_batch_end(self, *args: Any) -> None:
                window.times.append(now() - window._t0)

        self.start, self.stop = Start(), Stop()


def time_fit(
    setting: str, monitors: list[type[pl.Callback]], settings: DeviceSettings, steps: int, seed: int, clock: str
) -> list[float]:
    """Per-step seconds of one fit of ``setting`` with the given monitors (default options) on."""
    pl.seed_everything(seed, verbose=False)
    if setting == "cpu-mlp":
        model, batch = mlp(), 128
    else:
        model, batch = resnet18().to(memory_format=torch.channels_last), 256
    gen = torch.Generator().manual_seed(seed)
    device = settings.device
    batches = [
        (
            (torch.rand(batch, 1, 28, 28, generator=gen) * 2 - 1).to(device),  # in [-1, 1], InputRangeCheck's default
            torch.randint(0, 10, (batch,), generator=gen).to(device),
        )
        for _ in range(8)
    ]
    window = _Window(make_clock(settings, clock))  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator=settings.accelerator,
            devices=1,
            precision=settings.precision,
            max_epochs=1,
            max_steps=steps,
            logger=TensorBoardLogger(root),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[window.start, *(cls() for cls in monitors), window.stop],
        )
        trainer.fit(_Net(model), train_dataloaders=Batches(batches, steps))
    return window.times


def measure(
    setting: str, configs: dict[str, list[type[pl.Callback]]], steps: int, repeats: int, warmup: int, clock: str
) -> list[dict[str, Any]]:
    """Time every configuration (``"off"`` = no monitor) ``repeats`` times, interleaved, rotating the order."""
    settings = device_settings("cuda" if setting.startswith("gpu") else "cpu")
    runs = interleave(list(configs), repeats, lambda name, r: time_fit(setting, configs[name], settings, steps, r,
                                                                       clock)[warmup:])  # fmt: skip
    ratios = step_ratios(runs)
    return [
        judge(
            {
                "setting": setting,
                "name": name,
                "monitors": name,
                "hardware": hardware(settings),
                "precision": settings.precision,
                "clock": clock,
                "steps_timed": steps - warmup,
                "repeats": repeats,
                **ratios[name],
            },
            TARGETS[setting] if name == "all" else None,  # the target is for the four together
        )
        for name in configs
        if name != "off"
    ]


def render(payload: dict[str, Any]) -> str:
    """The markdown table of a run's JSON line (``tables.py`` regenerates the README's tables with it)."""
    return ratio_table(payload, "monitors", "monitors on")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    add_threads_option(parser)
    parser.add_argument("--settings", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument(
        "--cpu-clock",
        choices=("process", "wall"),
        default="process",
        help="CPU settings: process CPU time (robust on a shared machine; counts every thread of this process) or wall",
    )
    parser.add_argument("--per-monitor", action="store_true", help="also time each monitor alone")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    quiet_lightning()

    monitors, notes = available_monitors()
    configs: dict[str, list[type[pl.Callback]]] = {"off": [], NULL: [DoNothing], "all": monitors}
    if args.per_monitor:
        configs.update({cls.__name__: [cls] for cls in monitors})
    results = []
    for setting in args.settings:
        if setting.startswith("gpu") and not torch.cuda.is_available():
            notes.append(f"{setting} skipped: no CUDA GPU")
            continue
        clock = "wall" if setting.startswith("gpu") else args.cpu_clock
        results += measure(setting, configs, args.steps, args.repeats, args.warmup, clock)
    payload = {"monitors": [m.__name__ for m in monitors], "notes": notes, "results": results}
    print(json.dumps(payload))
    print()
    print(render(payload))
    return results


if __name__ == "__main__":
    main()
