"""FSDP2 on two CPU processes: Lightning's ``ModelParallelStrategy`` launched inside a test, a sharded test module,
and a probe that counts collectives.

``ModelParallelStrategy`` always launches its other ranks with ``_SubprocessScriptLauncher``, which re-runs
``sys.argv``: inside pytest that is pytest itself, so the child would run the whole suite again.
:class:`ForkedModelParallel` launches the ranks the way ``ddp_fork`` does (Lightning's ``_MultiProcessingLauncher``):
the workers are forks of the test process, so a fit takes seconds instead of a fresh interpreter per rank. Rank 0
sends the gathered full weights back (the stock launcher pickles the DTensors of ``state_dict()``, which the parent
cannot load), so after ``fit`` the test's module holds the trained full weights, as after ``ddp_spawn``.

The process group gets a short timeout: a rank that fails would otherwise leave the other waiting for Lightning's
default of 30 minutes.

Example::

    trainer = Trainer(accelerator="cpu", devices=2, strategy=forked_model_parallel(), ...)
    trainer.fit(ShardedMLP(), loader)  # the module now holds the full trained weights
"""

from __future__ import annotations

import collections
import os
import tempfile
from datetime import timedelta
from typing import Any

import torch
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher, _WorkerOutput
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


class _FullWeightsLauncher(_MultiProcessingLauncher):
    """``_MultiProcessingLauncher`` whose rank 0 sends back the gathered full weights (every rank takes part)."""

    def _collect_rank_zero_results(self, trainer: Any, results: Any) -> _WorkerOutput | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        callback = trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", None) if callback else None
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(trainer.lightning_module, options=options)  # a collective: every rank calls it
        if self._strategy.local_rank != 0:
            return None
        weights_path = None
        if trainer.state.fn == TrainerFn.FITTING:
            weights_path = os.path.join(tempfile.mkdtemp(), ".temp.ckpt")
            torch.save(full, weights_path)
        return _WorkerOutput(best, weights_path, trainer.state, results, self.get_extra_results(trainer))


class ForkedModelParallel(ModelParallelStrategy):
    """``ModelParallelStrategy`` whose ranks are forks of the calling process (see the module docstring)."""

    def __init__(self, *args: Any, start_method: str = "fork", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start_method = start_method

    def _configure_launcher(self) -> None:
        self._launcher = _FullWeightsLauncher(self, start_method=self._start_method)


def forked_model_parallel(data_parallel_size: int = 2, tensor_parallel_size: int = 1, **kwargs: Any) -> Any:
    """A :class:`ForkedModelParallel` on a free port with a 120 s process-group timeout."""
    os.environ["MASTER_PORT"] = str(find_free_network_port())
    kwargs.setdefault("timeout", timedelta(seconds=120))
    return ForkedModelParallel(
        data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size, **kwargs
    )


class ShardedMLP(LightningModule):
    """A small regression MLP whose ``configure_model`` applies FSDP2's ``fully_shard`` per layer and to the root.

    With two ranks its parameters cover every kind of shard: ``l1`` splits evenly, ``l2`` (3 rows) unevenly, and
    ``l3`` (1 row) leaves rank 1 an empty shard. ``shard=False`` gives the unsharded reference (same layers, same
    initialization for the same seed).
    """

    def __init__(self, shard: bool = True, lr: float = 0.05, optimizer: str = "sgd") -> None:
        super().__init__()
        self.shard, self.lr, self.optimizer = shard, lr, optimizer
        self.l1 = nn.Linear(8, 16)
        self.l2 = nn.Linear(16, 3)
        self.l3 = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))

    def configure_model(self) -> None:
        if not self.shard or getattr(self, "_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in (self.l1, self.l2, self.l3):
            fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)
        self._sharded = True

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def regression_data(n: int = 64, seed: int = 0) -> torch.utils.data.TensorDataset:
    """``n`` fixed samples of a noisy linear target for :class:`ShardedMLP`."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    y = x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(n, 1, generator=generator)
    return torch.utils.data.TensorDataset(x, y)


def full_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters as plain full tensors (``full_tensor()`` of DTensors: a collective on every rank)."""
    from torch.distributed.tensor import DTensor

    return {
        name: (p.detach().full_tensor() if isinstance(p, DTensor) else p.detach()).clone()
        for name, p in module.named_parameters()
    }


class CollectiveCounter(TorchDispatchMode):
    """Counts the collectives dispatched while it is active, by op (``"c10d._allgather_base_"``, ...).

    FSDP2's own parameter gathers are ``c10d._allgather_base_``; a DTensor ``full_tensor()`` or redistribute is
    ``_c10d_functional.all_gather_into_tensor``; an explicit ``torch.distributed.all_reduce`` is ``c10d.allreduce_``.
    Dispatch modes are thread-local: on the CPU the backward runs on the calling thread, so its collectives count.
    """

    NAMESPACES = ("c10d", "_c10d_functional", "c10d_functional")

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.namespace in self.NAMESPACES:
            self.counts[f"{func.namespace}.{func._overloadpacket.__name__}"] += 1
        return func(*args, **(kwargs or {}))

    def parameter_gathers(self) -> int:
        """Gathers of full tensors that DTensor code made (FSDP2's own per-layer gathers are not counted)."""
        return sum(v for k, v in self.counts.items() if k.startswith(("_c10d_functional.", "c10d_functional.")) and
                   "gather" in k)  # fmt: skip
