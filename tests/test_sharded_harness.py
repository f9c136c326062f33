"""The FSDP2 test harness (``helpers.sharded``): a forked two-rank ``ModelParallelStrategy`` fit shards the module,
sends the trained full weights back to the test process, and the collective probe sees what each rank dispatched."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers.ranks import read_rank_json, write_rank_json
from helpers.sharded import CollectiveCounter, ShardedMLP, forked_model_parallel, full_weights, regression_data
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader


class _Probe(Callback):
    """Each rank records its local shard shapes, a step's collectives, and its gathered final weights."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.record = folder, {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, i: int) -> None:
        if i == 1:
            self.counter = CollectiveCounter().__enter__()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        if args[-1] == 1:  # batch_idx
            self.counter.__exit__(None, None, None)
            self.record["step_counts"] = dict(self.counter.counts)
            with CollectiveCounter() as gather:
                weights = full_weights(pl_module)
            self.record["full_tensor_gathers"] = gather.parameter_gathers()
            self.record["l3_weight_at_step_1"] = weights["l3.weight"].tolist()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.record["local_shapes"] = {n: list(p.to_local().shape) for n, p in pl_module.named_parameters()}
        self.record["final"] = {n: w.tolist() for n, w in full_weights(pl_module).items()}
        write_rank_json(self.folder, trainer.global_rank, self.record)


def test_forked_model_parallel_fit_shards_and_returns_full_weights(tmp_path: Path) -> None:
    seed_everything(0)
    model = ShardedMLP()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(accelerator="cpu", devices=2, strategy=forked_model_parallel(), max_steps=3, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=[_Probe(tmp_path)])  # fmt: skip
    trainer.fit(model, DataLoader(regression_data(), batch_size=4))
    ranks = read_rank_json(tmp_path)
    # dim-0 shards: even, uneven, and an empty one on rank 1 for the 1-row layer
    assert ranks[0]["local_shapes"]["l1.weight"] == [8, 8] and ranks[1]["local_shapes"]["l1.weight"] == [8, 8]
    assert ranks[0]["local_shapes"]["l2.weight"] == [2, 16] and ranks[1]["local_shapes"]["l2.weight"] == [1, 16]
    assert ranks[0]["local_shapes"]["l3.weight"] == [1, 3] and ranks[1]["local_shapes"]["l3.weight"] == [0, 3]
    for record in ranks:  # FSDP2 gathers each layer's parameters per step; full_tensor() is one gather per tensor
        assert record["step_counts"].get("c10d._allgather_base_", 0) > 0
        assert not any("_c10d_functional" in k for k in record["step_counts"])
        assert record["full_tensor_gathers"] == 6
    assert ranks[0]["l3_weight_at_step_1"] == ranks[1]["l3_weight_at_step_1"]
    assert ranks[0]["final"] == ranks[1]["final"]
    # the test's module got the trained full weights back: plain tensors, changed, equal to what the ranks gathered
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())
    assert not torch.equal(model.l1.weight, before["l1.weight"])
    for name, p in model.named_parameters():
        assert p.tolist() == ranks[0]["final"][name], name
