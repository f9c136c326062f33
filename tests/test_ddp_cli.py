"""DDP end to end: ``lightning-tricks fit --trainer.devices 2 --trainer.strategy ddp`` from the command line.

Agreement with one process. The 2-process run uses ``batch_size=32`` per rank against ``batch_size=64`` in one process:
the data module's sampler gives rank ``r`` every other sample of the same seeded permutation, so the two ranks' batch
``b`` together are exactly the single process's batch ``b``, and DDP's all-reduce averages two equal-sized half-batch
mean gradients, which is the full-batch mean gradient. An MLP without batch norm (BN would normalize each half with
its own statistics) and without dropout (each rank draws its own mask) then differs only by floating-point summation
order (two half sums plus an all-reduce instead of one sum): about 1e-7 relative per step, which momentum SGD carries
over the 16 steps. Tolerance: ``atol=1e-5, rtol=1e-4`` on the weights and ``1e-4`` on the validation metrics.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from helpers.cli import cli_command, cli_env
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.callbacks import EarlyStopping
from lightning_tricks.data import FashionMNISTDataModule

SUBSET, VAL_SIZE, GLOBAL_BATCH, EPOCHS = 256, 128, 64, 2


def _fit(root: Path, data_dir: Path, devices: int, on_device: bool) -> subprocess.CompletedProcess:
    args = cli_command(
        "fit",
        "--seed_everything=7",
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
        f"--trainer.max_epochs={EPOCHS}",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root / 'logs'}",
        "--model=MLPClassifier",
        "--model.hidden_sizes=[32]",
        "--model.optimizer=momentum",
        "--model.lr=0.05",
        "--data=FashionMNISTDataModule",
        f"--data.data_dir={data_dir}",
        f"--data.batch_size={GLOBAL_BATCH // devices}",
        f"--data.train_subset={SUBSET}",
        f"--data.val_size={VAL_SIZE}",
        f"--data.on_device={str(on_device).lower()}",
        "--trainer.callbacks+=GradientClipping",
        "--trainer.callbacks.threshold=1.0",
        "--trainer.callbacks+=EMA",
        "--trainer.callbacks.decay=0.9",
        "--trainer.callbacks+=helpers.cli.RecordFinal",
        f"--trainer.callbacks.path={root / 'final.pt'}",
        "--trainer.callbacks+=helpers.cli.RecordTrainImages",
        f"--trainer.callbacks.path={root / 'images.pt'}",
        "--test_after_fit=true",
    )
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=cli_env())
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> dict[str, Path]:
    single, ddp = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("ddp")
    _fit(single, fashion_mnist_dir, devices=1, on_device=False)
    result = _fit(ddp, fashion_mnist_dir, devices=2, on_device=True)  # GPU-resident mode (here on the CPU)
    assert result.stdout.count("test accuracy:") == 1, "the test pass prints once, from rank 0"
    return {"single": single, "ddp": ddp}


def test_ddp_cli_run_agrees_with_one_process(runs):
    single = torch.load(runs["single"] / "final.pt", weights_only=False)
    rank0 = torch.load(runs["ddp"] / "final.pt", weights_only=False)
    rank1 = torch.load(runs["ddp"] / "final.rank1.pt", weights_only=False)
    assert single["global_step"] == rank0["global_step"] == EPOCHS * SUBSET // GLOBAL_BATCH
    for key in ("last_step_weights", "ema", "weights"):
        for name, value in single[key].items():
            assert torch.equal(rank0[key][name], rank1[key][name]), f"ranks disagree on {key}[{name}]"
            torch.testing.assert_close(rank0[key][name], value, atol=1e-5, rtol=1e-4, msg=f"{key}[{name}]")
    for metric in ("val/loss", "val/acc"):
        torch.testing.assert_close(rank0["metrics"][metric], single["metrics"][metric], atol=1e-4, rtol=0)


def test_ddp_cli_only_rank_zero_writes_logs(runs):
    log_root = runs["ddp"] / "logs"
    versions = sorted(p.relative_to(log_root) for p in log_root.glob("*/version_*"))
    assert [str(v) for v in versions] == ["default/version_0"], versions
    events = list(log_root.rglob("events.out.tfevents.*"))
    # events.out.tfevents.<time>.<host>.<pid>.<n>: one writing process (fit's writer, then the test pass's)
    assert len({name.name.split(".")[-2] for name in events}) == 1, events
    assert len(events) == len(list((runs["single"] / "logs").rglob("events.out.tfevents.*"))), events
    assert (log_root / "default" / "version_0" / "config.yaml").exists()


def test_on_device_mode_gives_each_rank_a_disjoint_shard(runs, fashion_mnist_dir):
    data = FashionMNISTDataModule(data_dir=str(fashion_mnist_dir), train_subset=SUBSET, val_size=VAL_SIZE)
    data.setup()
    images, _ = data.dataset("train").__getitems__(list(range(SUBSET)))
    index_of = {row.numpy().tobytes(): i for i, row in enumerate(images.flatten(1))}
    assert len(index_of) == SUBSET, "every training image is distinct, so an image identifies its sample"

    per_rank = [torch.load(runs["ddp"] / name, weights_only=False) for name in ("images.pt", "images.rank1.pt")]
    orders = []
    for epoch in range(EPOCHS):
        seen = [[index_of[row.numpy().tobytes()] for row in ranks[epoch]] for ranks in per_rank]
        for rank, ids in enumerate(seen):
            assert len(ids) == len(set(ids)) == SUBSET // 2, f"rank {rank} saw a sample twice in epoch {epoch}"
        assert not set(seen[0]) & set(seen[1]), f"epoch {epoch}: the ranks' shards overlap"
        assert set(seen[0]) | set(seen[1]) == set(range(SUBSET)), "together the ranks cover the epoch"
        orders.append(seen[0])
    assert orders[0] != orders[1], "each epoch is shuffled anew"


class _RankMetricModule(LightningModule):
    """Logs a per-rank validation metric without ``sync_dist``: rank 0 improves every epoch, rank 1 never does."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.out_dir = out_dir

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        value = 1.0 if self.global_rank == 1 else 1.0 / (self.current_epoch + 1)
        self.log("val/metric", torch.tensor(value), on_epoch=True)  # no sync_dist: ranks see different values

    def on_train_end(self):
        Path(self.out_dir, f"rank{self.global_rank}.txt").write_text(str(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_early_stopping_on_a_per_rank_metric_stops_every_rank_together(tmp_path):
    data = TensorDataset(torch.randn(16, 4))
    model = _RankMetricModule(str(tmp_path))
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=8,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[EarlyStopping("val/metric", patience=1, restore_best_weights=True)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    stopped = {rank: int((tmp_path / f"rank{rank}.txt").read_text()) for rank in (0, 1)}
    # Rank 1's metric never improves after epoch 0: with patience 1 it asks to stop at epoch 1; rank 0 would go on.
    # Lightning reduces the decision (any rank stopping stops all), so both stop after epoch 1, i.e. with 2 epochs
    # completed (``current_epoch`` in ``on_train_end``) instead of 8 on rank 0; a rank left behind would hang.
    assert stopped == {0: 2, 1: 2}, stopped


def test_ddp_cli_hparams_name_the_trainer_settings_and_callbacks(runs):
    """TensorBoard's HPARAMS record of the DDP run says it ran on 2 devices with DDP, and with which callbacks."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(str(runs["ddp"] / "logs" / "default" / "version_0"))
    events.Reload()
    content = events.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content
    hparams = metadata.parse_session_start_info_plugin_data(content).hparams
    assert hparams["trainer/devices"].number_value == 2 and hparams["trainer/strategy"].string_value == "DDP"
    assert hparams["batch_size"].number_value == GLOBAL_BATCH // 2, "per process"
    assert hparams["callback/GradientClipping"].string_value == "GradientClipping()", "threshold=1.0 is the default"
    assert hparams["callback/EMA"].string_value == "EMA(decay=0.9)"
    assert hparams["run"].string_value == "default/version_0"
    assert "callback/SaveConfigCallback" not in hparams, "LightningCLI's bookkeeping (it holds the whole parser)"
    assert "dirpath" not in hparams["callback/ModelCheckpoint"].string_value, "a path inside the run differs per run"
