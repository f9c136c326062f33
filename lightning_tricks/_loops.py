"""Workarounds for Lightning's loops that the package's callbacks and models share."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn


def estimated_stepping_batches(trainer: pl.Trainer) -> int | float:
    """``trainer.estimated_stepping_batches``, without losing a resumed train loader's position.

    Lightning 2.6 bug (Lightning issue #20550, open): read in ``configure_optimizers`` or ``on_fit_start`` of a fit
    resumed from a checkpoint, ``estimated_stepping_batches`` builds the train loader (``FitLoop.setup_data``) before
    the loops' state is restored (``Trainer._run``: ``strategy.setup`` and ``on_fit_start`` come before
    ``restore_training_state``). At that point the loop is not restarting, so the loaders' saved ``state_dict`` is not
    loaded; after the restore, ``FitLoop.run`` calls ``setup_data`` again, which returns at once because a loader
    exists, and the saved loader state is never loaded: a run resumed mid-epoch replays the start of the epoch.

    The workaround: when this call is the one that built the train loader, during a fit that restores a checkpoint,
    the built loader is dropped again (its fetcher torn down), so the fit loop builds it after the restore, as it
    does when nothing reads the estimate early, and loads the saved position. Cost: ``train_dataloader()`` is called
    one more time when resuming; nothing otherwise.
    """
    fit_loop = trainer.fit_loop
    built_before = fit_loop._combined_loader is not None
    total = trainer.estimated_stepping_batches
    if built_before or fit_loop._combined_loader is None:
        return total
    if trainer.state.fn == TrainerFn.FITTING and trainer.ckpt_path is not None:
        if fit_loop._data_fetcher is not None:
            fit_loop._data_fetcher.teardown()
            fit_loop._data_fetcher = None
        fit_loop._combined_loader = None
    return total
