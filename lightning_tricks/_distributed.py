"""Process-group hygiene that Lightning leaves out for non-NCCL backends."""

from __future__ import annotations

import atexit
import sys


def destroy_process_group_if_alive() -> None:
    """Destroy the default process group if one is still alive; do nothing otherwise.

    Lightning registers ``torch.distributed.destroy_process_group`` at exit only for NCCL
    (``lightning.fabric.utilities.distributed._init_dist_connection``). A gloo group (CPU DDP, ``ddp_spawn``) left alive
    until interpreter finalization can abort the process with "terminate called without an active exception"
    (SIGABRT; pytorch/pytorch#190489): the worker has already returned its results, yet ``torch.multiprocessing``
    reports the rank as crashed and ``Trainer.fit`` raises ``ProcessExitedException``, in an occasional
    ``ddp_spawn`` run.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None:  # torch.distributed never imported: no group can exist, and importing torch at exit is noisy
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def register_exit_cleanup() -> None:
    """Run :func:`destroy_process_group_if_alive` at interpreter exit, while Python is still whole.

    Called once when :mod:`lightning_tricks` is imported, which every ``ddp_spawn`` worker does when it unpickles a
    model or callback of this package. ``atexit`` runs its handlers last-in first-out, so Lightning's own NCCL
    handler, registered later, runs first and this one finds nothing left to do.
    """
    atexit.register(destroy_process_group_if_alive)
