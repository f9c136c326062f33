"""Kill and resume through the CLI: a ``lightning-tricks fit`` run killed mid-epoch (SIGKILL, or SIGTERM which saves a
checkpoint) and resumed with ``--ckpt_path last`` ends exactly like an uninterrupted run.

Every stateful callback is on (EarlyStopping with restore_best_weights, LRDecay, GradientClipping mode=auto, EMA,
WeightNormMonitor, GradientHealth) and ModelCheckpoint saves every 4 steps. Settings are deterministic on the CPU
(``--trainer.deterministic true``, ``seed_everything``, no dropout, ``num_workers=0``, one thread), so the comparison is
exact: ``torch.equal`` on the final weights, the raw weights after the last step, the EMA weights and the final
logged metrics (tolerance 0).

One known gap, Lightning's: checkpoints hold no partial epoch aggregates (Lightning 2.x saves no ``_results`` of the
training epoch loop, and torchmetrics states are not in the module's ``state_dict``), so after a mid-epoch resume the
epoch-level *training* metrics of the interrupted epoch (``train/loss_epoch``, ``train/acc_epoch``) average only the
batches run after resuming. Step metrics, validation metrics, weights and every callback's state are exact.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from _hardening_helpers import cli_command, cli_env

BATCHES_PER_EPOCH = 10  # train_subset 320 / batch_size 32
MAX_EPOCHS = 3
EVERY_N_STEPS = 4  # checkpoint period: 4, 8, 12, ... (12, 16, 24, 28 are mid-epoch)


def _config(root: Path, data_dir: Path) -> Path:
    callbacks = [
        {"class_path": "lightning_tricks.callbacks.GradientHealth", "init_args": {"action": "warn"}},
        {"class_path": "lightning_tricks.callbacks.GradientClipping", "init_args": {"mode": "auto", "percentile": 50}},
        {"class_path": "lightning_tricks.callbacks.LRDecay", "init_args": {"mode": "exponential", "gamma": 0.5}},
        {"class_path": "lightning_tricks.callbacks.EMA", "init_args": {"decay": 0.9}},
        {"class_path": "lightning_tricks.callbacks.WeightNormMonitor", "init_args": {"per_layer": True}},
        {
            "class_path": "lightning_tricks.callbacks.EarlyStopping",
            "init_args": {"monitor": "val/loss", "patience": 10, "restore_best_weights": True},
        },
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(root / "ckpts"), "every_n_train_steps": EVERY_N_STEPS, "save_last": True},
        },
    ]
    config = {
        "seed_everything": 42,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "deterministic": True,
            "max_epochs": MAX_EPOCHS,
            "log_every_n_steps": 3,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root / "logs"), "name": "resume"},
            },
            "callbacks": callbacks,
        },
        "model": {
            "class_path": "lightning_tricks.models.MLPClassifier",
            "init_args": {"hidden_sizes": [16], "optimizer": "momentum", "lr": 0.05},
        },
        "data": {
            "class_path": "lightning_tricks.data.FashionMNISTDataModule",
            "init_args": {"data_dir": str(data_dir), "batch_size": 32, "train_subset": 320, "val_size": 128},
        },
        "test_after_fit": False,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _args(config: Path, record: Path, on_device: bool, *extra: str) -> list[str]:
    return cli_command(
        "fit",
        "--config",
        str(config),
        "--data.on_device",
        str(on_device).lower(),
        "--trainer.callbacks+=_hardening_helpers.RecordFinal",
        f"--trainer.callbacks.path={record}",
        *extra,
    )


def _run(args: list[str], expect_rc: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=240, env=cli_env())
    assert result.returncode == expect_rc, f"exit status {result.returncode}\n{result.stderr[-4000:]}"
    return result


#: Epoch aggregates of training that cover only the batches after a mid-epoch resume (see the module docstring).
PARTIAL_AFTER_MID_EPOCH_RESUME = {"train/loss", "train/loss_epoch", "train/acc", "train/acc_epoch"}


def _assert_same_end(resumed: dict, reference: dict, resumed_epoch: int) -> None:
    assert resumed["global_step"] == reference["global_step"] == MAX_EPOCHS * BATCHES_PER_EPOCH
    for key in ("weights", "last_step_weights", "ema"):
        assert reference[key], key
        assert resumed[key].keys() == reference[key].keys()
        for name, tensor in reference[key].items():
            assert torch.equal(resumed[key][name], tensor), f"{key}[{name}] differs after resuming"
    assert resumed["metrics"].keys() == reference["metrics"].keys()
    for name, value in reference["metrics"].items():
        if resumed_epoch == MAX_EPOCHS - 1 and name in PARTIAL_AFTER_MID_EPOCH_RESUME:
            assert torch.isfinite(resumed["metrics"][name])
            continue
        assert torch.equal(resumed["metrics"][name], value), f"logged {name}: {resumed['metrics'][name]} != {value}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> dict:
    """One uninterrupted run (normal loaders; on the CPU the on-device loaders give exactly the same batches)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    record = root / "final.pt"
    _run(_args(_config(root, fashion_mnist_dir), record, on_device=False))
    return torch.load(record, weights_only=False)


def _kill_step() -> int:
    """A reproducible 'random' step: its last checkpoint is mid-epoch, after the first validation, and the steps
    between that checkpoint and the kill are lost (redone after resuming)."""
    total = MAX_EPOCHS * BATCHES_PER_EPOCH
    candidates = [
        step
        for step in range(BATCHES_PER_EPOCH + 1, total)
        if step % EVERY_N_STEPS and (step // EVERY_N_STEPS * EVERY_N_STEPS) % BATCHES_PER_EPOCH
    ]
    return random.Random(20240607).choice(candidates)


@pytest.mark.parametrize("on_device", [False, True], ids=["loader", "on_device"])
def test_sigkill_mid_epoch_then_resume_from_last_equals_uninterrupted(
    tmp_path, fashion_mnist_dir, reference, on_device
):
    config = _config(tmp_path, fashion_mnist_dir)
    record = tmp_path / "final.pt"
    step = _kill_step()
    saved = step // EVERY_N_STEPS * EVERY_N_STEPS
    assert saved % BATCHES_PER_EPOCH, "the resumed checkpoint is mid-epoch"

    killed = _args(
        config,
        record,
        on_device,
        "--trainer.callbacks+=_hardening_helpers.KillAtStep",
        f"--trainer.callbacks.step={step}",
    )
    _run(killed, expect_rc=-signal.SIGKILL)
    assert not record.exists(), "the killed run never finished"
    last = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == saved, f"killed before step {step}: the last checkpoint is step {saved}"
    assert last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] % BATCHES_PER_EPOCH

    _run(_args(config, record, on_device, "--ckpt_path", "last"))
    _assert_same_end(torch.load(record, weights_only=False), reference, saved // BATCHES_PER_EPOCH)


def test_sigterm_saves_a_checkpoint_and_exits_then_resume_equals_uninterrupted(tmp_path, fashion_mnist_dir, reference):
    config = _config(tmp_path, fashion_mnist_dir)
    record = tmp_path / "final.pt"
    marker = tmp_path / "reached"
    step = 14  # no ModelCheckpoint save at steps 13..15: the SIGTERM checkpoint is the only one holding them
    args = _args(config, record, False, "--trainer.callbacks+=_hardening_helpers.WaitForSigtermAtStep",
                 f"--trainer.callbacks.step={step}", f"--trainer.callbacks.marker={marker}")  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the run never reached step {step}: {process.communicate()[1][-3000:]}"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Received SIGTERM: saved a checkpoint of step" in stderr
    assert not record.exists(), "training stopped at the SIGTERM"
    last = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == step + 1, "the batch running when SIGTERM arrived finishes, then it saves and exits"

    _run(_args(config, record, False, "--ckpt_path", "last"))
    _assert_same_end(torch.load(record, weights_only=False), reference, (step + 1) // BATCHES_PER_EPOCH)
