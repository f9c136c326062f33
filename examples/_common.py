"""Shared loop of the example experiments: run each variant, read its logged metrics back, print one table.

Every experiment script builds a list of :class:`Variant` (a name, a model factory, callbacks, its settings) and
calls :func:`run_experiment`. Each variant is trained with a real Lightning ``Trainer`` on Fashion-MNIST
(:class:`~lightning_tricks.data.FashionMNISTDataModule`), logged to TensorBoard under
``<log-dir>/<experiment>/<variant>`` (``/seed<k>`` appended when several seeds run), tested on the 10k test set, and
summarized from the values it actually logged (:class:`RecordingTensorBoardLogger` keeps a copy of every scalar it
writes): final training loss / accuracy (the last epoch's running means, dropout active), best validation accuracy and
its epoch, test accuracy, epochs run and fit wall time. The variant's settings go to ``variant.json`` in the run folder
and to the run's TensorBoard TEXT tab; the model's and data module's hyperparameters are saved by Lightning
(``hparams.yaml`` and the HPARAMS tab).

At the end, :func:`report` saves the table as ``<log-dir>/<experiment>/results.md`` and draws the logged curves with
``lightning-tricks report`` (:mod:`lightning_tricks.report`): one PNG and table per :class:`Figure` in
``--figure-dir`` (default ``<log-dir>/figures``), titled with the size of the runs.

Scale flags shared by every script (CPU-friendly defaults are set by each script): ``--epochs``, ``--train-subset``,
``--seeds``, ``--batch-size``, ``--val-size``, ``--accelerator``, ``--threads``, ``--data-dir``, ``--log-dir``,
``--figure-dir`` and ``--smoke`` (2 batches per stage, 1 epoch, the tests' mode).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from lightning_tricks._threads import apply_threads
from lightning_tricks.data import FashionMNISTDataModule
from lightning_tricks.models import Classifier
from lightning_tricks.report import report as draw_curves

#: Columns of the default results table: (header, key in :meth:`Result.row`, format).
DEFAULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("final train loss", "train_loss", "{:.3f}"),
    ("final train acc", "train_acc", "{:.3f}"),
    ("best val acc (epoch)", "best_val_acc", "{:.3f}"),
    ("test acc", "test_acc", "{:.3f}"),
    ("epochs", "epochs", "{:.0f}"),
    ("wall time (s)", "wall_s", "{:.0f}"),
)

# Small runs on small subsets trigger Lightning's advice about workers and logging intervals; it is noise here.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*log_every_n_steps.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")
warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" / tips lines per run


class RecordingTensorBoardLogger(TensorBoardLogger):
    """A ``TensorBoardLogger`` that also keeps every scalar it writes: ``history[key] = [(step, value), ...]``.

    The experiments read their results back from here, so the table shows exactly what TensorBoard shows.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history: dict[str, list[tuple[int, float]]] = {}

    @override
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            if isinstance(value, (int, float)):
                self.history.setdefault(key, []).append((-1 if step is None else int(step), float(value)))

    def values(self, key: str) -> list[float]:
        """Every value logged under ``key``, in order (empty if none)."""
        return [value for _, value in self.history.get(key, [])]


@dataclass
class Variant:
    """One configuration of an experiment.

    Args:
        name: short name, used as the TensorBoard run name (``version``) and in the table.
        model: builds the model; called after ``seed_everything(seed)``, so each seed gets its own weights.
        callbacks: builds the variant's callbacks (fresh objects per run).
        settings: what distinguishes the variant, written to ``variant.json`` and the TensorBoard TEXT tab.
        data: ``FashionMNISTDataModule`` arguments that override the experiment's.
        trainer: ``Trainer`` arguments that override the experiment's.
    """

    name: str
    model: Callable[[], Classifier]
    callbacks: Callable[[], list[Callback]] = list
    settings: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """What one run of one variant gave, read back from its logged metrics."""

    variant: str
    seed: int
    train_loss: float
    train_acc: float
    best_val_acc: float
    best_val_epoch: int
    test_acc: float
    test_loss: float
    epochs: int
    wall_s: float
    log_dir: str
    history: dict[str, list[tuple[int, float]]] = field(repr=False)
    model: Classifier | None = field(default=None, repr=False)
    extra: dict[str, float] = field(default_factory=dict)

    def curve(self, key: str) -> list[float]:
        """Every value logged under ``key`` (e.g. ``"val/acc"``: one per epoch)."""
        return [value for _, value in self.history.get(key, [])]

    def row(self) -> dict[str, float]:
        """The numbers of the table, ``extra`` included."""
        return {
            "train_loss": self.train_loss,
            "train_acc": self.train_acc,
            "best_val_acc": self.best_val_acc,
            "best_val_epoch": float(self.best_val_epoch),
            "test_acc": self.test_acc,
            "test_loss": self.test_loss,
            "epochs": float(self.epochs),
            "wall_s": self.wall_s,
            **self.extra,
        }


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    *,
    epochs: int,
    train_subset: int | None,
    batch_size: int = 128,
    val_size: int = 5000,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse the shared scale flags (with the script's defaults) plus the script's own ones (``add_arguments``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=epochs, help="training epochs per run (max_epochs)")
    parser.add_argument(
        "--train-subset", type=int, default=train_subset, help="training samples used (the full set is 55000)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed; the table shows mean±std")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--val-size", type=int, default=val_size, help="training-file samples held out for validation")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: cpu, gpu, auto, ...")
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (default: search)")
    parser.add_argument("--log-dir", default="logs", help="TensorBoard root: runs go to <log-dir>/<experiment>/...")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (0: torch's default). Default: OMP_NUM_THREADS when set, else 1 on a machine with 2 "
        "cores or fewer (faster there for these small models, see benchmarks/RESULTS.md), else torch's default",
    )
    parser.add_argument("--smoke", action="store_true", help="2 batches per stage, 1 epoch: checks the script runs")
    parser.add_argument(
        "--figure-dir",
        default=None,
        help="where `lightning-tricks report` writes <figure>.png and .md at the end (default: <log-dir>/figures)",
    )
    if add_arguments is not None:
        add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.smoke:
        args.epochs = 1
    try:
        apply_threads(args.threads, announce=print)
    except ValueError as err:
        parser.error(str(err))
    for option in ("epochs", "batch_size"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    return args


def _fresh_run(
    experiment: str, name: str, args: argparse.Namespace, seed: int, data: Mapping[str, Any]
) -> tuple[dict[str, Any], FashionMNISTDataModule, RecordingTensorBoardLogger]:
    """The data-module options, data module and logger of run ``<experiment>/<name>[/seed<k>]``.

    An existing run folder of the same name is removed first, so its TensorBoard curves are those of this run only.
    """
    version = name if len(args.seeds) == 1 else f"{name}/seed{seed}"
    run_dir = Path(args.log_dir, experiment, version)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    data_kwargs: dict[str, Any] = {
        "data_dir": args.data_dir,
        "batch_size": args.batch_size,
        "val_size": args.val_size,
        "train_subset": args.train_subset,
        "seed": seed,
        **data,
    }
    logger = RecordingTensorBoardLogger(args.log_dir, name=experiment, version=version, default_hp_metric=False)
    return data_kwargs, FashionMNISTDataModule(**data_kwargs), logger


def run_variant(
    experiment: str,
    variant: Variant,
    args: argparse.Namespace,
    seed: int,
    *,
    data: Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
    keep_model: bool = False,
) -> Result:
    """Train ``variant`` with ``seed``, test it, and read its results back from the logged values.

    An existing run folder of the same name is replaced, so the TensorBoard curves are those of this run only.
    """
    data_kwargs, datamodule, logger = _fresh_run(experiment, variant.name, args, seed, {**(data or {}), **variant.data})
    seed_everything(seed, workers=True, verbose=False)
    model = variant.model()
    trainer_kwargs: dict[str, Any] = {
        "max_epochs": args.epochs,
        "accelerator": args.accelerator,
        "devices": 1,
        "logger": logger,
        "log_every_n_steps": 10,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **(trainer or {}),
        **variant.trainer,
    }
    if args.smoke:
        trainer_kwargs.update(
            limit_train_batches=2, limit_val_batches=2, limit_test_batches=2, max_epochs=1, log_every_n_steps=1
        )
    trainer_kwargs["callbacks"] = [*variant.callbacks(), *trainer_kwargs.get("callbacks", [])]
    pl_trainer = Trainer(**trainer_kwargs)
    _write_settings(logger, experiment, variant, args, seed, data_kwargs, trainer_kwargs)

    start = time.perf_counter()
    pl_trainer.fit(model, datamodule=datamodule)
    wall_s = time.perf_counter() - start
    pl_trainer.test(model, datamodule=datamodule, verbose=False)
    logger.finalize("success")
    return summarize(variant.name, seed, logger, pl_trainer, wall_s, model if keep_model else None)


def summarize(
    name: str, seed: int, logger: RecordingTensorBoardLogger, trainer: Trainer, wall_s: float, model: Classifier | None
) -> Result:
    """Build a :class:`Result` from the values ``logger`` wrote (NaN where a key was never logged)."""

    def last(key: str) -> float:
        values = logger.values(key)
        return values[-1] if values else math.nan

    val_acc = logger.values("val/acc")
    finite = [v for v in val_acc if math.isfinite(v)]
    best = max(finite) if finite else math.nan
    return Result(
        variant=name,
        seed=seed,
        train_loss=last("train/loss_epoch"),
        train_acc=last("train/acc_epoch"),
        best_val_acc=best,
        best_val_epoch=val_acc.index(best) + 1 if finite else 0,
        test_acc=last("test/acc"),
        test_loss=last("test/loss"),
        epochs=trainer.current_epoch,
        wall_s=wall_s,
        log_dir=logger.log_dir,
        history=dict(logger.history),
        model=model,
    )


def _write_settings(
    logger: TensorBoardLogger,
    experiment: str,
    variant: Variant,
    args: argparse.Namespace,
    seed: int,
    data_kwargs: Mapping[str, Any],
    trainer_kwargs: Mapping[str, Any],
) -> None:
    """Save what defines the run next to its event files (``variant.json``) and in the TensorBoard TEXT tab."""
    settings = {
        "experiment": experiment,
        "variant": variant.name,
        "seed": seed,
        "settings": variant.settings,
        "callbacks": [repr(c) if _default_repr(c) else _describe(c) for c in trainer_kwargs["callbacks"]],
        "data": dict(data_kwargs),
        "trainer": {k: v for k, v in trainer_kwargs.items() if k not in ("logger", "callbacks")},
        "command": " ".join(["python", f"examples/{experiment}.py", *args.argv]),
        "args": {k: v for k, v in vars(args).items() if k != "argv"},
    }
    os.makedirs(logger.log_dir, exist_ok=True)
    text = json.dumps(settings, indent=2, default=str)
    Path(logger.log_dir, "variant.json").write_text(text + "\n")
    logger.experiment.add_text("variant", "```\n" + text + "\n```", 0)


def _default_repr(obj: object) -> bool:
    return type(obj).__repr__ is not object.__repr__


def _describe(obj: object) -> str:
    """``Name(option=value, ...)`` from an object's public, simple attributes (callbacks have no useful repr)."""
    simple = (bool, int, float, str, type(None), tuple, list)
    options = {k: v for k, v in vars(obj).items() if not k.startswith("_") and isinstance(v, simple)}
    return f"{type(obj).__name__}({', '.join(f'{k}={v!r}' for k, v in options.items())})"


def run_experiment(
    experiment: str,
    variants: Iterable[Variant],
    args: argparse.Namespace,
    *,
    data: Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
    keep_model: bool = False,
    after_run: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run every variant with every seed (``args.seeds``); return the results in run order.

    ``after_run`` may add numbers to ``result.extra`` (they become table columns) from ``result.history``.
    """
    results = []
    for variant in variants:
        for seed in args.seeds:
            print(f"[{experiment}] {variant.name} (seed {seed}) ...", flush=True)
            result = run_variant(experiment, variant, args, seed, data=data, trainer=trainer, keep_model=keep_model)
            if after_run is not None:
                after_run(result)
            print(
                f"[{experiment}] {variant.name} (seed {seed}): test acc {result.test_acc:.4f}, "
                f"{result.epochs} epochs, {result.wall_s:.0f} s",
                flush=True,
            )
            results.append(result)
    return results


def _mean_std(values: list[float], fmt: str) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return "nan" if not finite else f"{fmt.format(statistics.fmean(finite))} ({len(values) - len(finite)} nan)"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


def results_table(
    results: Sequence[Result],
    columns: Sequence[tuple[str, str, str]] = DEFAULT_COLUMNS,
    rows: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """A markdown table, one line per variant (mean ± std over seeds), in first-run order.

    ``columns`` are ``(header, key, format)`` with keys of :meth:`Result.row`. ``rows`` are extra, already computed
    lines (``{"variant": ..., key: value}``), e.g. an ensemble's, appended at the end.
    """
    by_variant: dict[str, list[Result]] = {}
    for result in results:
        by_variant.setdefault(result.variant, []).append(result)
    header = "| variant | " + " | ".join(h for h, _, _ in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for name, runs in by_variant.items():
        cells = []
        for _, key, fmt in columns:
            cell = _mean_std([r.row().get(key, math.nan) for r in runs], fmt)
            if key == "best_val_acc":
                cell += " (" + _mean_std([float(r.best_val_epoch) for r in runs], "{:.0f}") + ")"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for row in rows or []:
        cells = []
        for _, key, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None else fmt.format(value) if isinstance(value, (int, float)) else str(value))
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(
    experiment: str,
    table: str,
    args: argparse.Namespace,
    started: float,
    notes: str = "",
    figures: Sequence[Figure] = (),
) -> str:
    """Print the table with the command and total runtime, save it as ``<log-dir>/<experiment>/results.md``, and draw
    the runs' curves with ``lightning-tricks report`` (one PNG per :class:`Figure`, default: one of the whole
    experiment) into ``--figure-dir``."""
    command = " ".join(["python", f"examples/{experiment}.py", *args.argv])
    text = f"## {experiment}\n\n`{command}`\n\n"
    text += f"{table}\n\nTotal runtime: {time.perf_counter() - started:.0f} s.\n"
    if notes:
        text += f"\n{notes}\n"
    print("\n" + text, flush=True)
    out = Path(args.log_dir, experiment)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    figure_dir = Path(args.figure_dir or Path(args.log_dir, "figures"))
    for figure in figures or (Figure(experiment),):
        paths = draw_curves(
            [Path(args.log_dir, experiment)],
            figure_dir,
            tags=figure.tags,
            variants=figure.variants,
            name=figure.name,
            profile=figure.profile,
            note=size_note(args),
        )
        print("Figure:", paths[0], flush=True)
    return text


@dataclass
class Figure:
    """One PNG of ``lightning-tricks report``: its file stem, the tags drawn (None: the defaults), which variants
    (a regular expression), and a by-layer panel of the tags matching ``profile`` (see ``report --profile``)."""

    name: str
    tags: Sequence[str] | None = None
    variants: str | None = None
    profile: str | None = None


def size_note(args: argparse.Namespace) -> str:
    """The size of the runs in one line, printed under the figure's title."""
    subset = "all 55000" if args.train_subset is None else str(args.train_subset)
    seeds = ", ".join(str(seed) for seed in args.seeds)
    smoke = " (SMOKE TEST: 2 batches per stage, numbers meaningless)" if args.smoke else ""
    images = f"{subset} training / {args.val_size} validation images"
    return f"{args.epochs} epochs, {images}, batch {args.batch_size}, seed {seeds}{smoke}"


def epochs_to_reach(curve: Sequence[float], target: float) -> float:
    """The first (1-based) epoch whose value is ``>= target``; NaN if never reached."""
    for epoch, value in enumerate(curve, start=1):
        if value >= target:
            return float(epoch)
    return math.nan


def curves_table(results: Sequence[Result], key: str, every: int = 1, fmt: str = "{:.3f}") -> str:
    """A markdown table of the per-epoch values logged under ``key``: one line per variant (mean over seeds)."""
    by_variant: dict[str, list[list[float]]] = {}
    for result in results:
        by_variant.setdefault(result.variant, []).append(result.curve(key))
    length = max((len(c) for curves in by_variant.values() for c in curves), default=0)
    epochs = [e for e in range(1, length + 1) if e % every == 0 or e in (1, length)]
    lines = [f"| {key} by epoch | " + " | ".join(str(e) for e in epochs) + " |", "|" + "---|" * (len(epochs) + 1)]
    for name, curves in by_variant.items():
        cells = []
        for epoch in epochs:
            values = [c[epoch - 1] for c in curves if len(c) >= epoch]
            cells.append(fmt.format(statistics.fmean(values)) if values else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_and_curves(results: Sequence[Result], *curve_keys: str) -> str:
    """The default results table followed by one :func:`curves_table` per key, as markdown."""
    return "\n\n".join([results_table(results, DEFAULT_COLUMNS), *(curves_table(results, key) for key in curve_keys)])


def evaluate(
    experiment: str,
    name: str,
    model: Classifier,
    args: argparse.Namespace,
    seed: int,
    settings: Mapping[str, Any],
    *,
    data: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Validate and test an already trained ``model`` (e.g. an ensemble) as run ``<experiment>/<name>``.

    Returns ``val_acc``, ``val_loss``, ``test_acc`` and ``test_loss`` as logged.
    """
    data_kwargs, datamodule, logger = _fresh_run(experiment, name, args, seed, data or {})
    limits = {"limit_val_batches": 2, "limit_test_batches": 2} if args.smoke else {}
    trainer_kwargs: dict[str, Any] = {"accelerator": args.accelerator, "devices": 1, "callbacks": [], **limits}
    trainer = Trainer(logger=logger, enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs)
    _write_settings(logger, experiment, Variant(name, lambda: model, settings=dict(settings)), args, seed, data_kwargs,
                    trainer_kwargs)  # fmt: skip
    trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.test(model, datamodule=datamodule, verbose=False)
    logger.finalize("success")
    return {key.replace("/", "_"): logger.values(key)[-1] for key in ("val/acc", "val/loss", "test/acc", "test/loss")}
