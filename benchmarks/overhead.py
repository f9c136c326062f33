"""What the package's callbacks add to a training step, beside no callback and beside their peers.

Suites (``--suite``; ``all`` measures the union of their variants once, interleaved, and writes one result per suite):

- ``callbacks``: each callback of ``lightning_tricks.callbacks`` alone, all of them together in the recommended order
  (target on ``cpu-mlp``: <= 1.10x the no-callback step), and a callback whose hooks do nothing (what a callback
  costs by being in the list: Lightning's hook dispatch);
- ``monitors``: the four monitors, each alone and together (targets: <= 1.03x on ``cpu-mlp``, <= 1.01x on
  ``gpu-resnet18``);
- ``ema``: ``EMA`` beside Lightning's ``EMAWeightAveraging`` and timm's ``ModelEmaV3`` updated after every step in a
  callback, as timm's ``train.py`` does (left out with a note when timm is missing: ``pip install -e ".[bench]"``);
- ``peers``: ``GradientClipping`` beside ``Trainer(gradient_clip_val=...)`` at a threshold no step reaches and at one
  every step exceeds; ``WeightNormMonitor`` beside Lightning's ``grad_norm`` recipe (``log_dict(grad_norm(...))`` in
  ``on_before_optimizer_step``, every step, as in Lightning's docs); ``EarlyStopping`` with and without
  ``restore_best_weights`` beside Lightning's. Target: ours at or below each peer.

What is timed is the whole training step. A variant is one ``Trainer.fit`` of ``--steps`` steps of the setting's
``Classifier`` on pre-built batches (epochs of ``--epoch-steps`` batches, a ``TensorBoardLogger``,
``log_every_n_steps=50``) with a clock callback first in the list, stamping every ``on_train_batch_start`` and
``on_train_end``: a step runs from one stamp to the next, so the forward and backward passes, every hook, the
optimizer step and its step hooks (where EMA's update runs), the logging and the per-epoch hooks (in the step that ends
an epoch) are inside it. The first ``--warmup`` steps of a fit are dropped; a fit's figure is its mean step
(amortized: logging steps and per-epoch work included) and, beside it, the median step (the typical one).

Ratios are taken per round, a variant's mean step over the no-callback one's (``vs_off``) and over each peer's of
its group (``vs_peers``), and reported as the median over ``--rounds`` rounds with the rounds' range.

Usage: ``python benchmarks/overhead.py --suite all --save`` (then ``python benchmarks/tables.py``); ``--settings
cpu-mlp cpu-resnet`` adds the small ResNet, whose step does more compute per weight.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import _timing
import lightning.pytorch as pl
import tables
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm

from lightning_tricks import callbacks
from lightning_tricks.models import Classifier, MLPClassifier, ResNetClassifier

SUITES = ("callbacks", "monitors", "ema", "peers")
OFF = "no callback"
ES = {"monitor": "train/loss_epoch"}
#: The package's callbacks in the order recommended for a list (the L2 term, the gradient monitors, then clipping:
#: the monitors see the gradients the optimizer is given before clipping, and the three share one computation of the
#: gradient norms), with the options they are timed with (per-step choices where they exist, e.g.
#: ``LRDecay(interval="step")``), their comparison group and the suites besides ``callbacks`` they are in.
CALLBACKS: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    ("WeightInit", {"scheme": "kaiming_normal"}, "-", ()),
    ("WeightDecay", {"coefficient": 1e-4, "mode": "l2"}, "-", ()),
    ("GradientHealth", {}, "-", ("monitors",)),
    ("WeightNormMonitor", {}, "grad-norm monitor", ("monitors", "peers")),
    ("GradientClipping", {"mode": "norm", "threshold": 1.0}, "clipping", ("peers",)),
    ("LRDecay", {"mode": "exponential", "gamma": 0.999, "interval": "step"}, "-", ()),
    ("EMA", {"decay": 0.999}, "ema", ("ema",)),
    ("EarlyStopping", ES, "early stopping", ("peers",)),
    ("ActivationStats", {}, "-", ("monitors",)),
    ("InputRangeCheck", {}, "-", ("monitors",)),
    ("RNGStateCheckpoint", {}, "-", ()),
]
MONITORS = ("WeightNormMonitor", "GradientHealth", "ActivationStats", "InputRangeCheck")
ALL = f"all {len(CALLBACKS)} callbacks together"
FOUR = "the four monitors together"
TARGETS = {("cpu-mlp", ALL): 1.10, ("cpu-mlp", FOUR): 1.03, ("gpu-resnet18", FOUR): 1.01}


def label(name: str, options: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{key}={value!r}' for key, value in options.items())})"


def ours(*specs: tuple[str, dict[str, Any]]) -> Callable[[], list[pl.Callback]]:
    """A factory of fresh instances of the package's callbacks ``(class name, options)``."""
    return lambda: [getattr(callbacks, name)(**options) for name, options in specs]


class DoNothing(pl.Callback):
    """Per-step hooks that do nothing: what a callback costs by being in the list."""

    def on_train_batch_start(self, *args: Any) -> None:
        pass

    def on_before_backward(self, *args: Any) -> None:
        pass

    def on_before_optimizer_step(self, *args: Any) -> None:
        pass

    def on_train_batch_end(self, *args: Any) -> None:
        pass


class GradNormRecipe(pl.Callback):
    """Lightning's documented recipe for gradient norms: ``log_dict(grad_norm(module, norm_type=2))`` every step."""

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        pl_module.log_dict(grad_norm(pl_module, norm_type=2))


class TimmEMA(pl.Callback):
    """timm's ``ModelEmaV3``, built at fit start and updated after every optimizer step (as timm's ``train.py``)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(pl_module, decay=self.decay)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.ema.update(pl_module, step=trainer.global_step)


@dataclass(frozen=True)
class Variant:
    """One configuration: the suites it is in, its comparison group, whose it is, its callbacks, Trainer options."""

    suites: tuple[str, ...]
    group: str
    side: str  # "base", "ours" or "peer"
    build: Callable[[], list[pl.Callback]]
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    needs: str | None = None  # an optional package


VARIANTS: dict[str, Variant] = {
    OFF: Variant(SUITES, "-", "base", list),
    "do-nothing callback": Variant(("callbacks",), "-", "base", lambda: [DoNothing()]),
    **{label(name, options): Variant(("callbacks", *more), group, "ours", ours((name, options)))
       for name, options, group, more in CALLBACKS},
    ALL: Variant(("callbacks",), "-", "ours", ours(*((name, options) for name, options, _, _ in CALLBACKS))),
    FOUR: Variant(("monitors",), "-", "ours", ours(*((name, {}) for name in MONITORS))),
    "Lightning EMAWeightAveraging(decay=0.999)": Variant(("ema",), "ema", "peer",
                                                         lambda: [EMAWeightAveraging(decay=0.999)]),
    "timm ModelEmaV3(decay=0.999)": Variant(("ema",), "ema", "peer", lambda: [TimmEMA(0.999)], needs="timm"),
    "GradientClipping(mode='norm', threshold=0.001)": Variant(
        ("peers",), "clipping every step", "ours", ours(("GradientClipping", {"mode": "norm", "threshold": 1e-3}))),
    "Trainer(gradient_clip_val=1.0)": Variant(("peers",), "clipping", "peer", list, {"gradient_clip_val": 1.0}),
    "Trainer(gradient_clip_val=0.001)": Variant(("peers",), "clipping every step", "peer", list,
                                                {"gradient_clip_val": 1e-3}),
    "Lightning grad_norm recipe": Variant(("peers",), "grad-norm monitor", "peer", lambda: [GradNormRecipe()]),
    label("EarlyStopping", {**ES, "restore_best_weights": True}): Variant(
        ("peers",), "early stopping", "ours", ours(("EarlyStopping", {**ES, "restore_best_weights": True}))),
    label("Lightning EarlyStopping", ES): Variant(("peers",), "early stopping", "peer",
                                                  lambda: [LightningEarlyStopping(**ES)]),
}  # fmt: skip


@dataclass(frozen=True)
class Setting:
    model: type[Classifier]
    options: dict[str, Any]
    batch_size: int
    device: str


SETTINGS = {
    "cpu-mlp": Setting(MLPClassifier, {"hidden_sizes": [256, 256]}, 128, "cpu"),
    "cpu-resnet": Setting(ResNetClassifier, {"stages": [1, 1], "width": 16}, 128, "cpu"),
    "gpu-resnet18": Setting(ResNetClassifier, {"stages": [2, 2, 2, 2], "width": 64}, 256, "cuda"),
}


class StepClock(pl.Callback):
    """Stamps every ``on_train_batch_start`` and ``on_train_end``: the differences are whole steps (first in the
    list, so its stamp comes before any other callback's hook of the step)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now, self.stamps = now, []

    def on_train_batch_start(self, *args: Any) -> None:
        self.stamps.append(self.now())

    def on_train_end(self, *args: Any) -> None:
        self.stamps.append(self.now())

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps[:-1], self.stamps[1:], strict=True)]


def fit(setting: str, variant: Variant, args: argparse.Namespace, seed: int) -> list[float]:
    """Seconds of every step of one fit of ``setting`` with ``variant`` on (warm-up steps included)."""
    spec = SETTINGS[setting]
    device = _timing.device_settings(spec.device)
    pl.seed_everything(seed, verbose=False)
    model = spec.model(**spec.options, channels_last=device.channels_last)
    generator = torch.Generator().manual_seed(seed)
    batches = [
        ((torch.rand(spec.batch_size, 1, 28, 28, generator=generator) * 2 - 1).to(device.device),  # inside [-1, 1]
         torch.randint(0, 10, (spec.batch_size,), generator=generator).to(device.device))
        for _ in range(8)
    ]  # fmt: skip
    step_clock = StepClock(_timing.clock(device))
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator=device.accelerator, devices=1, precision=device.precision, max_epochs=-1,
            max_steps=args.steps, logger=TensorBoardLogger(root, name="bench"), log_every_n_steps=50,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            default_root_dir=root, callbacks=[step_clock, *variant.build()], **variant.trainer_kwargs,
        )  # fmt: skip
        trainer.fit(model, train_dataloaders=_timing.Batches(batches, args.epoch_steps))
    return step_clock.steps()


def row(setting: str, name: str, suite: str, runs: dict[str, list[list[float]]]) -> dict[str, Any]:
    """One variant's figures in one suite: ms per step, ratios to no callback and to the suite's peers, targets."""
    variant, means = VARIANTS[name], {key: [statistics.fmean(run) for run in runs[key]] for key in runs}
    peers = [p for p in runs if VARIANTS[p].side == "peer" and VARIANTS[p].group == variant.group and suite in
             VARIANTS[p].suites] if variant.side == "ours" else []  # fmt: skip
    vs_peers = {peer: _timing.ratios(means[name], means[peer]) for peer in peers}
    target = TARGETS.get((setting, name))
    vs_off = _timing.ratios(means[name], means[OFF])
    return {
        "name": name,
        "group": variant.group,
        "side": variant.side,
        "step_ms_mean": 1e3 * statistics.median(means[name]),
        "step_ms_median": 1e3 * statistics.median(t for run in runs[name] for t in run),
        "vs_off": vs_off,
        "vs_peers": vs_peers,
        "target": target,
        "met": None if target is None else vs_off["median"] <= target,
        "met_vs_peers": all(r["median"] <= 1.0 for r in vs_peers.values()) if vs_peers else None,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="all")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=None,
                        help="default: gpu-resnet18 on a GPU, cpu-mlp otherwise")  # fmt: skip
    parser.add_argument("--steps", type=int, default=150, help="steps per fit")
    parser.add_argument("--warmup", type=int, default=5, help="first steps of each fit left out")
    parser.add_argument("--epoch-steps", type=int, default=50, help="steps per epoch")
    parser.add_argument("--rounds", type=int, default=5, help="every variant once per round, the order rotating")
    _timing.add_common_options(parser)
    args = parser.parse_args(argv)
    if args.steps < args.warmup + 2 or min(args.warmup, args.epoch_steps - 1, args.rounds - 1) < 0:
        parser.error(f"need --steps >= --warmup + 2, --warmup >= 0, --epoch-steps >= 1, --rounds >= 1; got {args}")
    settings = args.settings or (["gpu-resnet18"] if torch.cuda.is_available() else ["cpu-mlp"])
    if not torch.cuda.is_available() and (gpu := [s for s in settings if SETTINGS[s].device == "cuda"]):
        parser.error(f"--settings {' '.join(gpu)} needs a CUDA GPU; torch.cuda.is_available() is False")
    started = _timing.begin(args.threads)
    suites = SUITES if args.suite == "all" else (args.suite,)
    names = [name for name, v in VARIANTS.items() if set(v.suites) & set(suites)]
    missing = [name for name in names if VARIANTS[name].needs and not importlib.util.find_spec(VARIANTS[name].needs)]
    names = [name for name in names if name not in missing]
    measured = {}
    for setting in settings:
        runs = _timing.interleave(names, args.rounds, lambda name, r, s=setting: fit(s, VARIANTS[name], args, r))
        measured[setting] = {name: [run[args.warmup :] for run in rounds] for name, rounds in runs.items()}
    payloads = {}
    for suite in suites:
        payload = {
            "suite": suite,
            "steps": args.steps,
            "warmup": args.warmup,
            "epoch_steps": args.epoch_steps,
            "rounds": args.rounds,
            "settings": [
                {"setting": setting, "model": label(SETTINGS[setting].model.__name__, SETTINGS[setting].options),
                 "batch_size": SETTINGS[setting].batch_size,
                 "precision": _timing.device_settings(SETTINGS[setting].device).precision,
                 "clock": _timing.clock_name(_timing.device_settings(SETTINGS[setting].device)),
                 "rows": [row(setting, name, suite, runs) for name in names if suite in VARIANTS[name].suites]}
                for setting, runs in measured.items()
            ],
            "notes": [f"{name} left out: {VARIANTS[name].needs} is missing (pip install -e '.[bench]')"
                      for name in missing if suite in VARIANTS[name].suites],
        }  # fmt: skip
        payloads[suite] = _timing.finish(f"overhead-{suite}", ["overhead.py", *argv], payload, started, args.save)
        print(tables.render(payloads[suite]), end="\n\n")
    return payloads


if __name__ == "__main__":
    main()
