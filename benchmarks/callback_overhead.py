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
each fit's mean). ``--repeats`` rounds, every configuration once per round, the order rotating each round. Beside
each ratio: its noise floor, the same ratio for a do-nothing callback (``do-nothing`` row); a ratio below
``1 - noise`` is flagged ``implausible`` (and warned about), never ``ok``. Target: ``all`` <= 1.10 (mean step).

Settings: ``cpu-mlp`` (MLP 784-256-256-10, batch 128, fp32; the CPU clock is the process CPU time by default, robust
on a shared machine) and ``gpu-resnet18`` (``ResNetClassifier`` ResNet-18 layout, batch 256, ``bf16-mixed``,
``channels_last``; wall clock with ``torch.cuda.synchronize()`` at the step boundaries only), run when a GPU is there.

Usage: ``python benchmarks/callback_overhead.py [--steps 150] [--repeats 3] [--only EMA GradientClipping]``.
Prints one JSON line and a markdown table. ``monitor_overhead.py`` times the four monitors in more detail.
"""

from __future__ import annotations

import argparse
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

from lightning_tricks import callbacks
from lightning_tricks.models import Classifier, MLPClassifier, ResNetClassifier

#: Each callback of the package with the options it is timed with, in the order the README recommends for a list
#: (``all`` uses it): the L2 penalty, the gradient monitors, then clipping, so the monitors see the gradients the
#: optimizer is given before clipping and the three share one computation of the gradient norms.
CALLBACKS: dict[str, dict[str, Any]] = {
    "WeightInit": {"scheme": "kaiming_normal"},
    "WeightDecay": {"coefficient": 1e-4, "mode": "l2"},
    "GradientHealth": {},
    "WeightNormMonitor": {},
    "GradientClipping": {"mode": "norm", "threshold": 1.0},
    "LRDecay": {"mode": "exponential", "gamma": 0.999, "interval": "step"},
    "EMA": {"decay": 0.999},
    "EarlyStopping": {"monitor": "train/loss_epoch", "mode": "min"},
    "ActivationStats": {},
    "InputRangeCheck": {},
    "RNGStateCheckpoint": {},
}

#: Targets of the mean-step ratio on ``cpu-mlp`` (issue 13: all ten together <= 1.10x the no-callback step).
TARGETS = {"all": 1.10}
SETTINGS = {
    "cpu-mlp": {"model": MLPClassifier, "model_args": {"hidden_sizes": [256, 256]}, "batch_size": 128},
    "gpu-resnet18": {"model": ResNetClassifier, "model_args": {"stages": [2, 2, 2, 2]}, "batch_size": 256},
}


def make_callbacks(names: list[str]) -> list[pl.Callback]:
    """Fresh instances of the named callbacks (``CALLBACKS``' options; ``NULL``: the do-nothing callback)."""
    return [DoNothing() if name == NULL else getattr(callbacks, name)(**CALLBACKS[name]) for name in names]


class StepClock(pl.Callback):
    """Stamps every ``on_train_batch_start`` and ``on_train_end``; differences are whole-step times.

    Placed first in the callback list, so ``index`` (the batch now running) is set before any other hook of a step.
    """

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.stamps: list[float] = []

    @property
    def index(self) -> int:
        """The batch now running (-1 before the first one, ``len(step_times())`` after ``on_train_end``)."""
        return len(self.stamps) - 1

    def on_train_batch_start(self, *args: Any) -> None:
        self.stamps.append(self.now())

    def on_train_end(self, *args: Any) -> None:
        self.stamps.append(self.now())

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps[:-1], self.stamps[1:], strict=True)]


def time_fit(
    setting: str,
    extra: list[pl.Callback],
    settings: DeviceSettings,
    steps: int,
    seed: int,
    clock: StepClock,
    trainer_kwargs: dict[str, Any] | None = None,
    on_trainer: Callable[[pl.Trainer], None] | None = None,
) -> None:
    """One fit of ``steps`` steps of ``setting``'s ``Classifier`` with ``clock`` first, then the ``extra`` callbacks.

    ``trainer_kwargs`` are added to the ``Trainer``'s; ``on_trainer(trainer)`` runs before ``fit`` (to instrument it).
    """
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
            callbacks=[clock, *extra],
            **(trainer_kwargs or {}),
        )
        if on_trainer is not None:
            on_trainer(trainer)
        trainer.fit(model, train_dataloaders=Batches(batches, steps))


def measure(setting: str, configs: dict[str, list[str]], steps: int, repeats: int, warmup: int, clock: str) -> Any:
    settings = device_settings("cuda" if setting.startswith("gpu") else "cpu")
    now = make_clock(settings, clock)  # type: ignore[arg-type]

    def run(name: str, round_: int) -> list[float]:
        step_clock = StepClock(now)
        time_fit(setting, make_callbacks(configs[name]), settings, steps, round_, step_clock)
        return step_clock.step_times()[warmup:]

    ratios = step_ratios(interleave(list(configs), repeats, run))
    return [
        judge(
            {
                "setting": setting,
                "name": name,
                "callbacks": name,
                "hardware": hardware(settings),
                "precision": settings.precision,
                "clock": "wall" if settings.cuda else clock,
                "steps_timed": steps - warmup,
                "repeats": repeats,
                **ratios[name],
            },
            TARGETS.get(name) if setting == "cpu-mlp" else None,
        )
        for name in configs
        if name != "off"
    ]


def render(payload: dict[str, Any]) -> str:
    """The markdown table of a run's JSON line (``tables.py`` regenerates the README's tables with it)."""
    return ratio_table(payload, "callbacks", "callbacks on")


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
    configs: dict[str, list[str]] = {"off": [], NULL: [NULL]}
    configs.update({name: [name] for name in (args.only or CALLBACKS)})
    configs["all"] = list(CALLBACKS)
    results: list[dict[str, Any]] = []
    notes = []
    for setting in args.settings:
        if setting.startswith("gpu") and not torch.cuda.is_available():
            notes.append(f"{setting} skipped: no CUDA GPU")
            continue
        results += measure(setting, configs, args.steps, args.repeats, args.warmup, args.clock)
    payload = {"results": results, "notes": notes}
    print(json.dumps(payload))
    print()
    print(render(payload))
    return results


if __name__ == "__main__":
    main()
