"""Quiet, tidy CLI runs: drop the few messages known to be harmless, and keep progress bars out of log files.

Each filter matches one message at the narrowest place (its logger, or its warning category and the module it is
attributed to); everything else still shows. Installed by the CLI only, never on ``import lightning_tricks``.

- Lightning 2.6's "Tip: ... try installing litlogger" (``LoggerConnector.configure_logger``, an INFO record on every
  ``Trainer`` without a ``LitLogger``): an advertisement, not about the run.
- torch's ``FutureWarning`` "`isinstance(treespec, LeafSpec)` is deprecated", attributed to
  ``lightning/pytorch/utilities/_pytree.py``: Lightning 2.6's own code builds a ``LeafSpec``; nothing the user can
  change, and harmless until a torch release removes the class (then Lightning must change anyway).

Progress: where standard error is not a terminal (a log file, CI), Lightning's progress bar would write a line per
refresh (tens of KB per epoch); the CLI turns it off there unless ``--trainer.enable_progress_bar`` is given, and
:class:`EpochSummary` prints one line per epoch instead.

The other messages a ``fit`` used to print are fixed where they come from, not filtered: the shipped configs have one
``ModelCheckpoint`` (``save_last="link"``), so ``test(ckpt_path="best")`` is not ambiguous and no epoch is saved twice;
a first ``--ckpt_path last`` with nothing to resume says so and starts fresh (``TricksCLI._resolve_last_checkpoint``)
instead of Lightning's "HINT: set save_last=True"; the SIGTERM checkpoint asks for the full state explicitly
(``weights_only=False``), so Lightning does not log that it defaulted to it.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import IO

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

_LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropMessage(logging.Filter):
    """Drop the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_known_noise() -> None:
    """Install the filters listed in the module docstring (once; calling again adds nothing)."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.prefix == _LITLOGGER_TIP for f in logger.filters):
            logger.addFilter(_DropMessage(_LITLOGGER_TIP))
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: ``sys.stderr``, where Lightning's progress bar writes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class EpochSummary(Callback):
    """One line per epoch on standard output, in place of a progress bar where there is no terminal.

    Prints, on global rank zero after each training epoch: the epoch, the epoch's wall time, and the ``val/*`` and
    ``train/*`` epoch metrics Lightning has collected (``trainer.callback_metrics``), e.g.
    ``epoch 3/8 (31 s): train/loss 0.412, val/acc 0.9080, val/loss 0.3911``. Hook: ``on_train_epoch_end`` (after
    the epoch's validation when it runs at epoch end); cost: one host copy of each epoch metric, once per epoch.
    """

    def __init__(self) -> None:
        self._started = 0.0

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = {
            key: float(value)
            for key, value in sorted(trainer.callback_metrics.items())
            if key.startswith(("train/", "val/")) and not key.endswith(("_step", "_epoch")) and value.numel() == 1
        }
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        shown = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())
        seconds = time.perf_counter() - self._started
        print(f"epoch {trainer.current_epoch + 1}{total} ({seconds:.0f} s): {shown}", flush=True)
