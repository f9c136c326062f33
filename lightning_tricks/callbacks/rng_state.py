"""Random-number-generator state in every checkpoint, per rank, so a resumed run draws the same dropout masks.

Lightning's Trainer writes no RNG state into its checkpoints (Lightning issue #17543, "Resuming training gives
different model result / weights", closed as won't fix): a run resumed with ``ckpt_path`` draws its dropout masks,
stochastic depth, noise and global-RNG augmentation from the freshly seeded generators of the new process, not from
where the interrupted run stood. ``lightning.fabric`` has the pieces (the private ``_collect_rng_states`` /
``_set_rng_states`` of ``lightning/fabric/utilities/seed.py``, which Fabric's ``save`` / ``load`` use); this callback
puts them into the Trainer's checkpoints, for every rank.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.utilities.seed import _collect_rng_states
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_tricks.callbacks._base import TrickCallback


def collect_rng_state() -> dict[str, Any]:
    """This process's global RNG state: torch CPU, every visible CUDA device, NumPy and Python ``random``.

    Lightning's ``_collect_rng_states`` holds NumPy's and Python's states as tuples with an ``ndarray`` and a
    string, which ``torch.load(weights_only=True)`` refuses; here every part is a tensor, a number or ``None``.
    """
    states = _collect_rng_states(include_cuda=torch.cuda.is_available())
    _, np_key, np_pos, np_has_gauss, np_gauss = states["numpy"]
    version, py_state, py_gauss = states["python"]
    return {
        "torch": states["torch"],
        "torch.cuda": list(states.get("torch.cuda", [])),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_key, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> list[str]:
    """Put back a :func:`collect_rng_state` result in this process; return what could not be restored.

    CUDA states are set device by device (``torch.cuda.set_rng_state_all`` would fail on a different device count);
    devices beyond the saved ones keep their state and are named in the result.
    """
    missing: list[str] = []
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("torch.cuda", [])
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index in range(min(devices, len(cuda_states))):
        torch.cuda.set_rng_state(cuda_states[index], index)
    if devices > len(cuda_states):
        missing.append(f"CUDA devices {list(range(len(cuda_states), devices))}")
    numpy_state = state["numpy"]
    key = numpy_state["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"].tolist()), python_state["gauss"]))
    return missing


def _all_gather(state: dict[str, Any], trainer: pl.Trainer) -> list[dict[str, Any]]:
    """Every rank's ``state``, in rank order (a collective: every rank calls it when a checkpoint is saved)."""
    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [state]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered


class RNGStateCheckpoint(TrickCallback):
    """Save every rank's global RNG state in the checkpoint and put it back on resume, before the next batch.

    With it, a run killed at any step and resumed from its last checkpoint draws the same random numbers as the run
    that was never interrupted: dropout masks, stochastic depth, noise injection, augmentation on the global RNG. On
    the CPU, with ``Trainer(deterministic=True)`` and a resumable train loader (the data modules of this package, or
    any loader with ``state_dict`` / ``load_state_dict``), the resumed run's weights are bit-identical. Lightning
    saves no RNG state (Lightning issue #17543); this callback adds it, with the state format of Fabric's private
    ``_collect_rng_states`` (torch CPU, ``torch.cuda`` all devices, NumPy, Python ``random``) in tensors and numbers
    only, so ``torch.load(weights_only=True)`` reads it.

    When: captured in ``state_dict``, which Lightning calls while it writes the checkpoint (``ModelCheckpoint``,
    ``trainer.save_checkpoint``, ``SigtermCheckpoint``): the state at that moment. Restored in ``on_train_start``,
    after the checkpoint, the sanity check and the loaders are set up and before the first batch, so nothing the
    Trainer draws while starting up shifts it. When the checkpoint was taken at the end of an epoch, the training
    loader's iterator is re-created after the restore (as the uninterrupted run created it after that moment), so a
    plain ``DataLoader(shuffle=True)`` draws the next epoch's order from the restored state too.

    DDP: every rank's state is gathered (``all_gather_object``, one collective per checkpoint save) into the
    checkpoint that rank 0 writes; on resume each rank takes its own back. On another world size, ranks present in
    the checkpoint get theirs, the others keep their seeded state, and one warning says so; likewise for a different
    number of CUDA devices.

    Cost: nothing per batch; per checkpoint ~10 KB per rank and, under DDP, one gather.

    Logs nothing. Not for ``save_weights_only`` checkpoints (Lightning saves no callback state in those).

    Example::

        from lightning.pytorch import Trainer, seed_everything
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning_tricks.callbacks import RNGStateCheckpoint

        seed_everything(0)
        trainer = Trainer(callbacks=[ModelCheckpoint(save_last=True), RNGStateCheckpoint()], deterministic=True)
        trainer.fit(model, ckpt_path="last")  # resumes with the RNG state the checkpoint was saved with
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._pending: dict[str, Any] | None = None  # a loaded checkpoint's state, put back in on_train_start

    @override
    def reset_fit_state(self) -> None:
        self._pending = None  # a fit without a checkpoint starts from the seeded state

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer

    @override
    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None:  # not attached to a fit: only this process
            return {"ranks": [collect_rng_state()], "epoch_end": False}
        progress = trainer.fit_loop.epoch_loop.batch_progress
        return {"ranks": _all_gather(collect_rng_state(), trainer), "epoch_end": bool(progress.is_last_batch)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if not pending or not pending.get("ranks"):
            return
        ranks = pending["ranks"]
        rank = trainer.global_rank
        problems = []
        if len(ranks) != trainer.world_size:
            problems.append(
                f"the checkpoint holds the RNG state of {len(ranks)} rank(s), this run has {trainer.world_size}"
            )
        if trainer.world_size > len(ranks):
            problems.append(f"ranks {list(range(len(ranks), trainer.world_size))} keep their seeded state")
        missing = set_rng_state(ranks[rank]) if rank < len(ranks) else []
        if missing:
            problems.append(f"rank {rank}: no saved state for {', '.join(missing)}")
        if problems:
            rank_zero_warn(
                f"RNGStateCheckpoint: restored only part of the random state ({'; '.join(problems)}), so random draws"
                " (dropout, noise, augmentation) after resuming differ from an uninterrupted run."
            )
        if pending.get("epoch_end"):
            self._recreate_train_iterator(trainer)

    @staticmethod
    def _recreate_train_iterator(trainer: pl.Trainer) -> None:
        """Create the train loader's iterator again, now from the restored state.

        The fit loop created it in ``setup_data`` before ``on_train_start`` (``loops/fit_loop.py``) and, when
        resuming, does not create it again at the epoch start (``TrainingEpochLoop.on_run_start``). A
        ``DataLoader`` draws from the global RNG when its iterator is created (``_BaseDataLoaderIter.__init__``)
        and a ``RandomSampler`` when it starts; the uninterrupted run did both after the checkpoint's moment.
        """
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is not None and getattr(fetcher, "_combined_loader", None) is not None:
            iter(fetcher)
