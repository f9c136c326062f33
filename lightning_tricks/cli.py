"""The ``lightning-tricks`` command: Lightning's ``LightningCLI`` with this package's models, data and callbacks.

Subcommands are LightningCLI's: ``fit``, ``validate``, ``test`` and ``predict``, plus ``report`` (draw logged runs as
PNG curves and a markdown table, see :mod:`lightning_tricks.report`). Models and data modules are chosen
by class name; any Lightning callback and any callback of :mod:`lightning_tricks.callbacks` can be added by class
name on the command line or in YAML::

    lightning-tricks fit --config examples/configs/small_resnet.yaml
    lightning-tricks fit --model MLPClassifier --model.hidden_sizes "[512, 256]" --data FashionMNISTDataModule \\
        --trainer.callbacks+=GradientClipping --trainer.callbacks.mode=auto --trainer.max_epochs 5
    lightning-tricks fit --config examples/configs/resnet.yaml --trainer.devices 2 --trainer.strategy ddp  # GPUs

What this adds to LightningCLI:

- the default logger is ``TensorBoardLogger(save_dir="logs", default_hp_metric=False)`` (the models write their own
  HPARAMS record with the real metrics, so no ``hp_metric`` placeholder), and the resolved config is saved beside
  each run (``logs/<name>/version_<n>/config.yaml``) so every TensorBoard run says how it was made;
- ``fit --test_after_fit true`` (the default) evaluates the best checkpoint (or the final weights when there is no
  checkpoint) on the test set after training, prints the test accuracy and the command that opens TensorBoard;
- ``fit`` saves a checkpoint when the job receives SIGTERM (what cluster schedulers send before killing a job, see
  :class:`SigtermCheckpoint`) and exits with status 143; ``--ckpt_path last`` resumes from it;
- options typed ``int | float`` (``--trainer.limit_val_batches``, ``--trainer.val_check_interval``,
  ``--trainer.overfit_batches``, ...) keep an integer an integer: ``1`` means one batch and ``1.0`` the whole set, as
  in Python (plain LightningCLI 2.6 reads ``1`` as ``1.0``, see :func:`prefer_int_over_float`);
- ``fit`` resumes exactly: it adds :class:`~lightning_tricks.callbacks.RNGStateCheckpoint` (every rank's RNG state in
  each checkpoint) and :class:`ContinueTensorBoardRun`, and a resumed run logs into the checkpoint's TensorBoard
  version as one continuous run (:func:`pin_logger_version`; the test after ``fit`` lands there too);
- ``--ckpt_path last`` finds the newest ``last*.ckpt`` of earlier runs, also when checkpoints go to the logger's
  per-version folders (see :func:`last_checkpoint_places`); ``validate``/``test``/``predict`` with ``--ckpt_path last``
  and no checkpoint fail with a clear error instead of evaluating untrained weights;
- the package's callbacks, models and data modules are imported up front, so their short class names resolve;
- ``--threads N`` sets torch's CPU threads; without it the policy of :mod:`lightning_tricks._threads` applies (one
  thread on a machine with 2 cores or fewer unless ``OMP_NUM_THREADS`` says otherwise), printed once;
- a config meant for a GPU names its CPU recipe (``cpu_alternative``), and the CLI stops at once with a message
  naming both when the run would use the CPU (see :func:`refuse_gpu_config_on_cpu`);
- quiet output (:mod:`lightning_tricks._quiet`): two known-harmless Lightning messages are dropped, the progress bar
  is off where standard error is no terminal (one line per epoch instead), a first ``--ckpt_path last`` says it
  starts fresh instead of Lightning's hint, and the TensorBoard command is printed with its ``.venv/bin`` path.
"""

from __future__ import annotations

import functools
import operator
import os
import signal
import sys
import tempfile
import time
import types
import typing
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lightning_tricks import _cuda_check, _quiet, _threads
from lightning_tricks import callbacks as _callbacks
from lightning_tricks import data as _data
from lightning_tricks import models as _models
from lightning_tricks.models import Classifier

DEFAULT_LOG_DIR = "logs"


def _import_public_names() -> None:
    """Import every public class so LightningCLI can resolve short class names (it looks among loaded subclasses)."""
    for package in (_callbacks, _models, _data):
        for name in package.__all__:
            getattr(package, name)


def prefer_int_over_float(parser: LightningArgumentParser) -> list[str]:
    """Make every option typed as a union of ``int`` and ``float`` try ``int`` first; return their names.

    jsonargparse tries a union's members in order, and after ``import lightning`` the Trainer's
    ``Optional[Union[int, float]]`` reads ``Union[float, int, None]``: ``typing`` caches unions by equality, and an
    equal union written float-first earlier is the one returned (Lightning issue #21259). So
    ``--trainer.limit_val_batches 1`` became ``1.0``, which Lightning reads as 100% of the batches, and
    ``--trainer.val_check_interval 1`` meant once an epoch. Each such option gets the same members with ``int``
    first, written as a ``types.UnionType`` (``int | float | None``), which ``typing`` does not cache. Unions with
    members that are not plain classes are left alone.
    """
    changed = []
    for action in parser._actions:
        hint = getattr(action, "_typehint", None)  # jsonargparse's ActionTypeHint
        if typing.get_origin(hint) not in (typing.Union, types.UnionType):
            continue
        members = typing.get_args(hint)
        if int not in members or float not in members or members.index(int) < members.index(float):
            continue
        if not all(isinstance(member, type) for member in members):
            continue
        ordered = [int] + [member for member in members if member is not int]
        action._typehint = functools.reduce(operator.or_, ordered)
        changed.append(action.dest)
    return changed


def check_writable_dirs(trainer: Trainer) -> None:
    """Fail at start, not after an hour of training, when a log or checkpoint folder cannot be written.

    Checks the Trainer's ``default_root_dir``, each logger's ``save_dir`` and each ``ModelCheckpoint``'s ``dirpath``
    (local paths only) by creating the folder and a probe file in it.

    Raises:
        OSError: naming the folder, what it is for, the option that sets it, and the underlying error.
    """
    places: list[tuple[str, str, str]] = [
        ("the Trainer's root", str(trainer.default_root_dir), "--trainer.default_root_dir")
    ]
    for logger in trainer.loggers:
        if logger.save_dir is not None:
            places.append(
                (f"the {type(logger).__name__} log", str(logger.save_dir), "--trainer.logger.init_args.save_dir")
            )
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath is not None:
            places.append(("the checkpoint", str(dirpath), "ModelCheckpoint's dirpath"))
    for purpose, path, option in places:
        if "://" in path and not path.startswith("file://"):
            continue  # remote filesystems are checked by their own clients
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
                pass
        except OSError as err:
            raise OSError(
                f"Cannot write to {purpose} directory {path!r} ({err.strerror or err}). "
                f"Point {option} at a writable folder, or fix the folder's permissions."
            ) from err


def last_checkpoint_places(trainer: Trainer) -> list[tuple[str, str]]:
    """Where ``--ckpt_path last`` should look: ``(folder, glob pattern)`` pairs.

    Lightning looks for ``last`` in the checkpoint folder of the run being started. A ``ModelCheckpoint`` without
    ``dirpath`` writes to ``<save_dir>/<name>/<version>/checkpoints`` of the first logger, and each run gets a new
    version, so Lightning looks in an empty folder and never finds the previous run (it warns, then trains from scratch
    or evaluates untrained weights). These places are every version folder of that logger name instead, plus the
    folders of the ``ModelCheckpoint`` callbacks that have their own ``dirpath`` and the file of an
    ``OnExceptionCheckpoint`` (both of which Lightning's own ``"last"`` considers). Folders stay strings, so that a
    remote one (``s3://...``) can be told apart.
    """
    checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    places = [(str(c.dirpath), "last*.ckpt") for c in checkpoints if c.dirpath is not None]
    if any(c.dirpath is None for c in checkpoints):
        if trainer.loggers:
            logger = trainer.loggers[0]
            root = os.path.join(str(logger.save_dir or trainer.default_root_dir), str(logger.name or ""))
            places.append((root, "*/checkpoints/last*.ckpt"))
        else:
            places.append((os.path.join(str(trainer.default_root_dir), "checkpoints"), "last*.ckpt"))
    for callback in trainer.callbacks:
        if isinstance(callback, OnExceptionCheckpoint):
            places.append((os.path.dirname(callback.ckpt_path), os.path.basename(callback.ckpt_path)))
    return places


class SigtermCheckpoint(Callback):
    """Save a checkpoint when training is stopped by SIGTERM, so that ``--ckpt_path last`` resumes from that step.

    Lightning 2.6 (``trainer/connectors/signal_connector.py``) only records a SIGTERM (and, under DDP, broadcasts it
    from rank 0 and forwards it to the launched ranks); the fit loop then raises ``SIGTERMException`` at the end of
    the current batch (or validation batch) on every rank, and nothing is saved. This callback saves the full training
    state in ``on_exception`` when the exception is a ``SIGTERMException``: the weights, the optimizer, every
    callback's state and the data loaders' positions, exactly as a ``ModelCheckpoint`` would mid-epoch.

    The file is ``last.ckpt`` in the folder of the first ``ModelCheckpoint`` (so ``--ckpt_path last`` picks it as
    the newest "last" checkpoint; a ``save_last="link"`` symlink is replaced, never written through), or
    ``<default_root_dir>/last.ckpt`` without one. Cost: nothing until the signal arrives; then one checkpoint write
    (collective under DDP, every rank calls it). Logs nothing; prints where the checkpoint went.

    Example::

        trainer = Trainer(callbacks=[ModelCheckpoint(dirpath="ckpts", save_last=True), SigtermCheckpoint()])
        # kill -TERM <pid>  ->  ckpts/last.ckpt;  then: trainer.fit(model, ckpt_path="last")
    """

    @staticmethod
    def checkpoint_path(trainer: Trainer) -> str:
        """Where the checkpoint goes (see the class docstring)."""
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                return os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
        return os.path.join(str(trainer.default_root_dir), "last.ckpt")

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self.checkpoint_path(trainer)
        if trainer.is_global_zero and os.path.islink(path):
            os.unlink(path)  # a `save_last="link"` symlink: writing through it would overwrite a top-k checkpoint
        trainer.save_checkpoint(path, weights_only=False)  # the full state; unset, Lightning logs that it chose so
        rank_zero_info(
            f"Received SIGTERM: saved a checkpoint of step {trainer.global_step} to {path}. "
            f"Resume with `--ckpt_path last` (or `--ckpt_path {path}`)."
        )


def tensorboard_version_of(checkpoint_path: str, logger: TensorBoardLogger) -> int | str | None:
    """The version (folder) of ``logger`` that wrote ``checkpoint_path``, or ``None`` when it cannot be told.

    A checkpoint at ``<save_dir>/<name>/<version folder>/checkpoints/*.ckpt`` (where a ``ModelCheckpoint`` without
    ``dirpath`` writes) belongs to that folder; any other checkpoint is read (memory-mapped) for the version that
    :class:`ContinueTensorBoardRun` recorded in it.
    """
    path = Path(checkpoint_path)
    if path.parent.name == "checkpoints" and Path(os.path.abspath(path.parent.parent.parent)) == Path(
        os.path.abspath(logger.root_dir)
    ):
        folder = path.parent.parent.name
        number = folder.removeprefix("version_")
        return int(number) if folder.startswith("version_") and number.isdigit() else folder
    if "://" in checkpoint_path or not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # not ours to judge here: Lightning reports an unreadable checkpoint when it loads it
        return None
    state = checkpoint.get("callbacks", {}).get(ContinueTensorBoardRun.__qualname__, {})
    return state.get("version")


class ContinueTensorBoardRun(Callback):
    """Make a resumed ``fit`` one continuous TensorBoard run with the run it resumes.

    ``lightning-tricks fit`` gives the logger the checkpoint's version (:func:`tensorboard_version_of`), so the
    resumed run writes into the same folder. This callback (added by ``fit``) then: records the logger's version in
    every checkpoint (for checkpoints kept outside the version folder); flushes the event file when a checkpoint is
    saved, so that the steps before it survive a SIGKILL; and, when a run resumes, writes a ``SessionLog.START``
    event at the first step it will log. TensorBoard's event reader drops every earlier event of that folder at or
    after a ``START`` step (``EventAccumulator._CheckForRestartAndMaybePurge``, TensorFlow's own convention for
    restarts): the steps the interrupted run logged after its checkpoint, which the resumed run logs again. The
    curves join with no step twice and none missing. Cost: one flush per checkpoint, one event per resume.
    """

    def __init__(self) -> None:
        self._trainer: Trainer | None = None

    @staticmethod
    def _logger(trainer: Trainer) -> TensorBoardLogger | None:
        return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def state_dict(self) -> dict[str, Any]:
        logger = self._logger(self._trainer) if self._trainer is not None else None
        if logger is None:
            return {}
        if self._trainer is not None and self._trainer.is_global_zero and logger._experiment is not None:
            logger.experiment.flush()  # what was logged up to this checkpoint is on disk before a kill
        return {"version": logger.version}

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = self._logger(trainer)
        if trainer.ckpt_path is None or logger is None or not trainer.is_global_zero:
            return  # `ckpt_path` is this fit's restored checkpoint (or None)
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        # Written before the resumed run logs anything, at the first step it will log.
        event = Event(
            step=first_logged_step(trainer), wall_time=time.time(), session_log=SessionLog(status=SessionLog.START)
        )
        logger.experiment._get_file_writer().add_event(event)


def first_logged_step(trainer: Trainer) -> int:
    """The step at which a fit resumed from a checkpoint logs its first metrics.

    Lightning logs at ``fit_loop.epoch_loop._batches_that_stepped``, which it saves one short when the checkpoint is
    written during a batch and adds the missing one in ``TrainingEpochLoop.reset`` (after ``on_train_start``); this
    mirrors that condition (``lightning/pytorch/loops/training_epoch_loop.py``, Lightning 2.6).
    """
    loop = trainer.fit_loop.epoch_loop
    step = loop._batches_that_stepped
    if (
        loop.restarting
        and not loop._should_accumulate()
        and (loop.restarted_on_train_batch_end or not loop.restarted_on_last)
    ):
        step += 1
    return step


def add_resume_callbacks(trainer: Trainer, fit: bool = True) -> None:
    """Add what makes a resumed ``fit`` continue exactly (unless the config has them): :class:`SigtermCheckpoint`,
    :class:`~lightning_tricks.callbacks.RNGStateCheckpoint` and :class:`ContinueTensorBoardRun`.

    With ``fit=False`` (validate / test / predict) only the two whose state is in every checkpoint: they do nothing
    outside ``fit``, and without them Lightning warns that the checkpoint's callbacks were not provided.
    """
    from lightning_tricks.callbacks import RNGStateCheckpoint

    kinds = (RNGStateCheckpoint, ContinueTensorBoardRun)
    for kind in (SigtermCheckpoint, *kinds) if fit else kinds:
        if not any(isinstance(c, kind) for c in trainer.callbacks):
            trainer.callbacks.append(kind())


def pin_logger_version(trainer: Trainer, ckpt_path: str | None) -> None:
    """Fix the TensorBoard version before ``fit`` starts: the checkpoint's when resuming, else the next free one.

    Resolved here, in the launching process, so that every later use agrees: ``ddp_spawn`` pickles the Trainer into
    its workers for ``fit`` and again for the test after ``fit``, and a version still unresolved would be worked out
    in each, the second time as a new folder. A version set by the user is kept.
    """
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger) or logger._version is not None:
            continue
        version = tensorboard_version_of(ckpt_path, logger) if ckpt_path else None
        if version is not None:
            logger._version = version
            rank_zero_info(f"Resuming: logging into the checkpoint's TensorBoard run {logger.log_dir}.")
        else:
            logger.version  # noqa: B018  (resolves and caches the next free version)


def add_threads_argument(parser: LightningArgumentParser) -> None:
    """Add ``--threads N``: torch's CPU threads for this run (see :mod:`lightning_tricks._threads`)."""
    parser.add_argument(
        "--threads",
        type=int | None,
        default=None,
        help="torch CPU threads (0: torch's default). Default: OMP_NUM_THREADS / MKL_NUM_THREADS when set, else 1 on "
        "a machine with 2 cores or fewer (faster there for these models, see benchmarks/RESULTS.md), else torch's.",
    )


def apply_thread_policy(config: Any) -> None:
    """Set torch's CPU threads from ``--threads`` or the policy of :mod:`lightning_tricks._threads`; say so once.

    Also skips Lightning's NVML-based CUDA check where NVML cannot be loaded (:mod:`lightning_tricks._cuda_check`).
    """
    _cuda_check.skip_failing_nvml_check()
    try:
        _threads.apply_threads(config.get("threads"), announce=rank_zero_info)
    except ValueError as err:
        raise ValueError(f"--threads: {err}") from None


def tensorboard_command(log_root: str | os.PathLike[str]) -> str:
    """The command that opens TensorBoard on ``log_root``, with the ``tensorboard`` of this Python's environment.

    A venv's programs are not on ``PATH`` unless it is activated, so a bare ``tensorboard`` is "command not found"
    after ``make setup``; the path beside ``sys.executable`` (relative to the working folder when inside it) works as
    printed. A bare ``tensorboard`` is printed only when there is none beside it.
    """
    program = Path(sys.executable).parent / "tensorboard"
    if not program.exists():
        return f"tensorboard --logdir {log_root}"
    try:
        shown = str(program.relative_to(Path.cwd()))
    except ValueError:
        shown = str(program)
    return f"{shown} --logdir {log_root}"


def add_cpu_alternative_argument(parser: LightningArgumentParser) -> None:
    """Add ``--cpu_alternative CONFIG``: what a config meant for a GPU offers a machine without one."""
    parser.add_argument(
        "--cpu_alternative",
        type=str | None,
        default=None,
        help="Set by a config meant for a GPU: the config to run instead on a machine without one. When set and the "
        "run would use the CPU, the CLI stops at once and names it; --cpu_alternative null runs on the CPU anyway.",
    )


def refuse_gpu_config_on_cpu(trainer: Trainer, config: Any) -> None:
    """Stop at once when a config meant for a GPU (it sets ``cpu_alternative``) would run on the CPU.

    A GPU recipe (ResNet-18 at batch 512 in bf16-mixed, say) takes minutes per step on a CPU: one bf16 step of
    ``examples/configs/resnet.yaml`` did not finish in 400 s on a 2-core VM. Stopping before any data is loaded, with
    the CPU recipe named, beats a job that looks hung.

    Raises:
        RuntimeError: naming the config, the settings that need a GPU, the CPU alternative and how to go on anyway.
    """
    alternative = config.get("cpu_alternative")
    if alternative is None or not isinstance(trainer.accelerator, CPUAccelerator):
        return
    sources = ", ".join(str(path) for path in config.get("config") or []) or "this configuration"
    raise RuntimeError(
        f"{sources} is meant for a GPU (precision {trainer.precision}, batch size and model sized for one), and this "
        f"run would train on the CPU, where one step takes minutes. Run the CPU recipe instead: "
        f"`.venv/bin/lightning-tricks fit --config {alternative}`; or pass `--cpu_alternative null` to run this "
        "config on the CPU anyway (best with `--trainer.precision 32-true` and a smaller `--data.batch_size`)."
    )


def progress_bar_off_without_terminal(config: Any) -> bool:
    """Turn the progress bar off when standard error is no terminal and nobody asked for one; return whether it did.

    A log file or CI output would get one line per refresh (about 77 KB per two epochs of the MLP config). An
    explicit ``--trainer.enable_progress_bar`` or a progress-bar callback in the config is left as it is.
    """
    trainer = config.get("trainer") or {}
    if trainer.get("enable_progress_bar") is not None or _quiet.is_terminal():
        return False
    callbacks = trainer.get("callbacks") or []
    if any("ProgressBar" in str(getattr(c, "class_path", c)) for c in callbacks):
        return False
    trainer["enable_progress_bar"] = False
    return True


def test_after_fit_checkpoint(trainer: Trainer) -> str | None:
    """What the test pass after ``fit`` evaluates: ``"best"`` for a monitored ``ModelCheckpoint``, else ``None``.

    ``None`` tests the module as ``fit`` left it. Without a monitor the "best" checkpoint is the latest epoch's, the
    weights the module already holds, and reloading it inside the fit's ``Trainer`` would be wrong with weight
    averaging: Lightning's ``WeightAveraging.on_load_checkpoint`` (``EMA``'s base) then puts the raw weights of
    ``current_model_state`` back into the module, so the test would score the raw weights while a later
    ``lightning-tricks test --ckpt_path ...`` (a fresh ``Trainer``) scores the averaged ones.
    """
    checkpoint = trainer.checkpoint_callback
    if isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor is not None and checkpoint.best_model_path:
        return "best"
    return None


class TricksCLI(LightningCLI):
    """LightningCLI with TensorBoard by default and a test pass after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        prefer_int_over_float(parser)
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, evaluate the best checkpoint on the test set and print its accuracy (fit only).",
        )
        add_threads_argument(parser)
        add_cpu_alternative_argument(parser)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        apply_thread_policy(config)
        self._epoch_summary = progress_bar_off_without_terminal(config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured Trainer, plus the callbacks of :func:`add_resume_callbacks`."""
        trainer = super().instantiate_trainer(**kwargs)
        refuse_gpu_config_on_cpu(trainer, self.config[self.subcommand] if self.subcommand else self.config)
        add_resume_callbacks(trainer, fit=self.subcommand == "fit")
        if self.subcommand == "fit" and getattr(self, "_epoch_summary", False):
            trainer.callbacks.append(_quiet.EpochSummary())
        return trainer

    def _resolve_last_checkpoint(self) -> None:
        """Replace ``--ckpt_path last`` by the newest file in :func:`last_checkpoint_places` (local folders only)."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last":
            return
        places = last_checkpoint_places(self.trainer)
        if any("://" in folder for folder, _ in places):
            return  # a remote folder: Lightning's own lookup reads it through fsspec
        found = [path for folder, pattern in places for path in Path(folder).glob(pattern) if path.is_file()]
        searched = ", ".join(os.path.join(folder, pattern) for folder, pattern in places)
        if found:
            config["ckpt_path"] = path = str(max(found, key=lambda path: path.stat().st_mtime))
            rank_zero_info(f"--ckpt_path last: using {path}, the newest of {searched}.")
        elif self.subcommand != "fit":
            raise FileNotFoundError(
                f"--ckpt_path last: no checkpoint matches {searched or 'anything (no checkpoint callback is set)'}, "
                f"so `{self.subcommand}` would run untrained weights. Pass a checkpoint file (--ckpt_path "
                "path/to/file.ckpt), or train first with a ModelCheckpoint(save_last=True) (the configs in "
                "examples/configs have one)."
            )
        else:
            # fit with nothing found starts fresh, which is what a first run wants; saying so here instead of passing
            # "last" on spares the user Lightning's "HINT: Set `ModelCheckpoint(..., save_last=True)`" (the configs do).
            config["ckpt_path"] = None
            rank_zero_info(f"--ckpt_path last: no checkpoint yet ({searched}); training from the start.")

    def before_fit(self) -> None:
        check_writable_dirs(self.trainer)
        self._resolve_last_checkpoint()
        pin_logger_version(self.trainer, self.config_init[self.subcommand].get("ckpt_path"))

    def before_validate(self) -> None:
        self._resolve_last_checkpoint()

    def before_test(self) -> None:
        self._resolve_last_checkpoint()

    def before_predict(self) -> None:
        self._resolve_last_checkpoint()

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True):
            return
        if self.trainer.interrupted:
            rank_zero_info("Training was interrupted; skipping the test pass.")
            return
        results = self.trainer.test(
            self.model, datamodule=self.datamodule, ckpt_path=test_after_fit_checkpoint(self.trainer)
        )
        if self.trainer.is_global_zero:
            metrics = results[0] if results else {}
            accuracy = metrics.get("test/acc")
            log_root = self.trainer.logger.save_dir if self.trainer.logger is not None else None
            summary = f"test accuracy: {accuracy:.4f}" if accuracy is not None else "test metrics: " + str(metrics)
            print(summary, flush=True)
            if log_root is not None:
                print(f"View the runs: {tensorboard_command(log_root)}  (then open http://localhost:6006)", flush=True)


def cli_main(args: ArgsType = None, run: bool = True) -> TricksCLI:
    """Build (and by default run) the CLI; ``args`` as for LightningCLI (a list of strings or a config dict)."""
    _import_public_names()
    _quiet.silence_known_noise()
    trainer_defaults: dict[str, Any] = {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": DEFAULT_LOG_DIR, "name": "default", "default_hp_metric": False},
        },
    }
    return TricksCLI(
        Classifier,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=trainer_defaults,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def run_report_subcommand(argv: list[str]) -> bool:
    """Run ``lightning-tricks report ...`` when ``argv`` starts with ``report``; return whether it did.

    ``report`` reads finished runs and trains nothing, so it is dispatched before LightningCLI builds its parser (whose
    subcommands all instantiate a Trainer, a model and a data module).
    """
    if not argv or argv[0] != "report":
        return False
    from lightning_tricks.report import main as report_main

    report_main(argv[1:], prog="lightning-tricks report")
    return True


def main() -> None:
    """Entry point of the ``lightning-tricks`` console script; exits with status 143 (128 + SIGTERM) after a SIGTERM."""
    if run_report_subcommand(sys.argv[1:]):
        return
    try:
        cli_main()  # LightningCLI reads sys.argv itself (given both, it warns)
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":  # pragma: no cover
    main()
