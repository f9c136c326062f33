"""Kill and resume through the CLI: a ``lightning-tricks fit`` run killed mid-epoch (SIGKILL, or SIGTERM which saves a
checkpoint) and resumed with ``--ckpt_path last`` ends exactly like an uninterrupted run.

Every stateful callback is on (EarlyStopping with restore_best_weights, LRDecay step-wise cosine with its default
length, GradientClipping mode=auto, EMA, WeightNormMonitor, GradientHealth, and the RNGStateCheckpoint that ``fit``
adds), the model has dropout, and ModelCheckpoint saves every 4 steps. Settings are deterministic on the CPU
(``--trainer.deterministic true``, ``seed_everything``, ``num_workers=0``, one thread), so the comparison is exact:
``torch.equal`` on the final weights, the raw weights after the last step, the EMA weights and the final logged metrics
(tolerance 0). The shipped ``examples/configs/mlp.yaml`` (dropout, one-cycle schedule, augmentation) is killed at a
random step and compared the same way, and its TensorBoard run is read back: one folder, every scalar at exactly the
steps of the uninterrupted run. DDP: ``ddp_spawn`` and ``torchrun`` with ``--trainer.strategy ddp``, 2 processes.

One known gap, Lightning's: checkpoints hold no partial epoch aggregates (Lightning 2.x saves no ``_results`` of the
training epoch loop, and torchmetrics states are not in the module's ``state_dict``), so after a mid-epoch resume the
epoch-level *training* metrics of the interrupted epoch (``train/loss_epoch``, ``train/acc_epoch``) average only the
batches run after resuming. Step metrics, validation metrics, weights and every callback's state are exact.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers.cli import REPO, cli_command, cli_env

BATCHES_PER_EPOCH = 10  # train_subset 320 / batch_size 32
MAX_EPOCHS = 3
EVERY_N_STEPS = 4  # checkpoint period: 4, 8, 12, ... (12, 16, 24, 28 are mid-epoch)


def _config(root: Path, data_dir: Path) -> Path:
    callbacks = [
        {"class_path": "lightning_tricks.callbacks.GradientHealth", "init_args": {"action": "warn"}},
        {"class_path": "lightning_tricks.callbacks.GradientClipping", "init_args": {"mode": "auto", "percentile": 50}},
        # step-wise, default `total`: reads trainer.estimated_stepping_batches at fit start (Lightning #20550)
        {"class_path": "lightning_tricks.callbacks.LRDecay", "init_args": {"mode": "cosine", "interval": "step"}},
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
            "init_args": {"hidden_sizes": [16], "dropout": 0.2, "optimizer": "momentum", "lr": 0.05},
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
        "--trainer.callbacks+=helpers.cli.RecordFinal",
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
        "--trainer.callbacks+=helpers.cli.KillAtStep",
        f"--trainer.callbacks.step={step}",
    )
    _run(killed, expect_rc=-signal.SIGKILL)
    assert not record.exists(), "the killed run never finished"
    last = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == saved, f"killed before step {step}: the last checkpoint is step {saved}"
    assert last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] % BATCHES_PER_EPOCH

    _run(_args(config, record, on_device, "--ckpt_path", "last"))
    _assert_same_end(torch.load(record, weights_only=False), reference, saved // BATCHES_PER_EPOCH)
    _assert_one_version(tmp_path)


def _assert_one_version(root: Path) -> None:
    """The resumed run logged into the killed run's TensorBoard folder, although its checkpoints are kept elsewhere
    (``ckpts/``): the version is read from the checkpoint."""
    assert sorted(p.name for p in (root / "logs" / "resume").iterdir() if p.is_dir()) == ["version_0"]


def test_sigterm_saves_a_checkpoint_and_exits_then_resume_equals_uninterrupted(tmp_path, fashion_mnist_dir, reference):
    config = _config(tmp_path, fashion_mnist_dir)
    record = tmp_path / "final.pt"
    marker = tmp_path / "reached"
    step = 14  # no ModelCheckpoint save at steps 13..15: the SIGTERM checkpoint is the only one holding them
    args = _args(config, record, False, "--trainer.callbacks+=helpers.cli.WaitForSigtermAtStep",
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
    _assert_one_version(tmp_path)


# ------------------------------------------------------------------ the shipped main-job config, with dropout on
MLP_BATCHES = 7  # train_subset 224 / batch_size 32
MLP_EPOCHS = 3
MLP_EVERY = 3  # a periodic last.ckpt at steps 3, 6, 9, ... (all mid-epoch); the shipped one at the epoch ends 7, 14


def _mlp_config(root: Path, data_dir: Path, devices: int = 1, strategy: str = "auto") -> Path:
    """``examples/configs/mlp.yaml`` as shipped (dropout 0.1, batch norm, AdamW, one-cycle schedule, augmentation,
    its two ModelCheckpoints and LearningRateMonitor), shrunk to run in seconds: a smaller net and data subset,
    3 epochs, the CPU, deterministic kernels, a third ``ModelCheckpoint`` with a ``last.ckpt`` every 3 steps, logs
    under ``root``."""
    config = yaml.safe_load((REPO / "examples" / "configs" / "mlp.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(max_epochs=MLP_EPOCHS, accelerator="cpu", devices=devices, strategy=strategy, deterministic=True,
                   log_every_n_steps=2, limit_test_batches=4, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=str(root))  # fmt: skip
    trainer["logger"]["init_args"]["save_dir"] = str(root / "logs")
    # A checkpoint of the last batch of an epoch, written in its on_train_batch_end, is avoided: resumed from it,
    # Lightning 2.6 skips the next epoch's on_train_epoch_start (LearningRateMonitor misses one point; see README).
    periodic = {"every_n_train_steps": MLP_EVERY, "save_last": True, "filename": "periodic-{step}"}
    trainer["callbacks"].append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": periodic})
    assert config["model"]["init_args"]["dropout"] > 0, "the shipped config trains with dropout"
    config["model"]["init_args"]["hidden_sizes"] = [32, 32]
    config["data"]["init_args"].update(data_dir=str(data_dir), batch_size=32, train_subset=224, val_size=64)
    path = root / "mlp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _random_kill_step(low: int, high: int) -> int:
    """A random step in ``[low, high)``, or ``$RESUME_KILL_STEP`` (to reproduce a failure, whose message names it)."""
    return int(os.environ.get("RESUME_KILL_STEP") or random.randrange(low, high))


def _mlp_args(config: Path, record: Path, *extra: str) -> list[str]:
    return cli_command("fit", "--config", str(config), "--trainer.callbacks+=helpers.cli.RecordFinal",
                       f"--trainer.callbacks.path={record}", *extra)  # fmt: skip


def _assert_same_weights(resumed: dict, reference: dict, context: str) -> None:
    assert resumed["global_step"] == reference["global_step"], context
    for key in ("weights", "last_step_weights"):
        for name, tensor in reference[key].items():
            assert torch.equal(resumed[key][name], tensor), f"{context}: {key}[{name}] differs after resuming"
    for name in ("val/acc", "val/loss", "test/acc"):
        if name in reference["metrics"]:
            assert torch.equal(resumed["metrics"][name], reference["metrics"][name]), f"{context}: logged {name}"


@pytest.fixture(scope="module")
def mlp_reference(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> dict:
    root = tmp_path_factory.mktemp("mlp_uninterrupted")
    record = root / "final.pt"
    _run(_mlp_args(_mlp_config(root, fashion_mnist_dir), record))
    return {"final": torch.load(record, weights_only=False), "logs": root / "logs"}


def test_shipped_mlp_config_with_dropout_killed_at_a_random_step_resumes_exactly(
    tmp_path, fashion_mnist_dir, mlp_reference
):
    step = _random_kill_step(MLP_EVERY, MLP_EPOCHS * MLP_BATCHES)
    context = f"killed at step {step} (reproduce with step = {step})"
    config = _mlp_config(tmp_path, fashion_mnist_dir)
    record = tmp_path / "final.pt"
    _run(_mlp_args(config, record, "--trainer.callbacks+=helpers.cli.KillAtStep",
                   f"--trainer.callbacks.step={step}"), expect_rc=-signal.SIGKILL)  # fmt: skip
    resumed = _run(_mlp_args(config, record, "--ckpt_path", "last"))
    assert "logging into the checkpoint's TensorBoard run" in resumed.stderr + resumed.stdout, context
    _assert_same_weights(torch.load(record, weights_only=False), mlp_reference["final"], context)
    _assert_one_continuous_run(tmp_path / "logs", mlp_reference["logs"], context)


def _scalar_steps(logs: Path) -> dict[str, dict[str, list[int]]]:
    """``{version folder: {tag: [steps]}}`` of every TensorBoard run with scalars under ``logs`` (read as TensorBoard
    does; the HPARAMS summary run beside the versions has none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {}
    for folder in sorted({p.parent for p in logs.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        if not accumulator.Tags()["scalars"]:
            continue
        runs[str(folder.relative_to(logs))] = {t: [e.step for e in accumulator.Scalars(t)] for t in
                                               accumulator.Tags()["scalars"]}  # fmt: skip
    return runs


def _assert_one_continuous_run(
    logs: Path, reference_logs: Path, context: str, test_steps: tuple[int, int] | None = None
) -> None:
    """One version folder (training, resume and test after fit), each scalar at exactly the reference's steps.

    ``test_steps``: ``(reference's, this run's)`` step of the test after fit, where they differ: ``ddp`` under
    torchrun logs it at the last step, ``ddp_spawn`` at step 0 (it brings no loop state back to the launching process).
    """
    runs, reference = _scalar_steps(logs), _scalar_steps(reference_logs)
    assert len(runs) == 1 and len(reference) == 1, f"{context}: TensorBoard runs {sorted(runs)}"
    (steps,), (expected,) = runs.values(), reference.values()
    if test_steps is not None:
        for tag in [t for t in expected if t.startswith("test/")] + ["epoch"]:
            assert expected[tag][-1] == test_steps[0], f"the reference's test pass logged {tag} at {expected[tag]}"
            expected[tag][-1] = test_steps[1]
    assert steps.keys() == expected.keys(), f"{context}: tags {sorted(steps.keys() ^ expected.keys())}"
    for tag, tag_steps in expected.items():
        assert steps[tag] == tag_steps, f"{context}: {tag} logged at steps {steps[tag]}, expected {tag_steps}"


# ------------------------------------------------------------------------------- DDP: 2 processes on the CPU
DDP_BATCHES = 4  # 224 samples / 2 ranks = 112 per rank, batches of 32
DDP_STEPS = MLP_EPOCHS * DDP_BATCHES  # periodic last.ckpt at 3, 6, 9 (mid-epoch); the shipped one at 4, 8
#: The ranks' RNG states differ (as with any per-rank randomness), so each rank must get its own state back.
RANK_DRAWS = ("--trainer.callbacks+=helpers.cli.RankDependentDraws",)


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
            "lightning_tricks.cli", *args]  # fmt: skip


def _run_killed(args: list[str], context: str) -> None:
    """A DDP run whose ranks SIGKILL themselves: the launcher reports the dead ranks and exits non-zero."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=240, env=cli_env())
    assert result.returncode != 0, f"{context}: the killed run exited with 0\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> dict:
    """One uninterrupted 2-process run under torchrun (``ddp``; cheaper than ``ddp_spawn``, which imports everything
    again in each worker and again for the test after fit, and computes exactly the same)."""
    root = tmp_path_factory.mktemp("ddp_uninterrupted")
    record = root / "final.pt"
    config = _mlp_config(root, fashion_mnist_dir, devices=2, strategy="ddp")
    _run(_torchrun(*_mlp_args(config, record, *RANK_DRAWS)[3:]))
    return {
        "final": [torch.load(record, weights_only=False), torch.load(root / "final.rank1.pt", weights_only=False)],
        "logs": root / "logs",
    }


@pytest.mark.parametrize("launcher", ["ddp_spawn", "torchrun"])
def test_ddp_two_processes_killed_mid_epoch_resume_exactly(tmp_path, fashion_mnist_dir, ddp_reference, launcher):
    step = _random_kill_step(MLP_EVERY, DDP_STEPS)
    context = f"{launcher}: killed at step {step} (reproduce with RESUME_KILL_STEP={step})"
    strategy = "ddp_spawn" if launcher == "ddp_spawn" else "ddp"
    config = _mlp_config(tmp_path, fashion_mnist_dir, devices=2, strategy=strategy)
    record = tmp_path / "final.pt"
    kill = ("--trainer.callbacks+=helpers.cli.KillAtStep", f"--trainer.callbacks.step={step}")
    # torchrun resumes from the checkpoint's path in the run's folder, ddp_spawn from `last`: both continue that run
    last = tmp_path / "logs" / "mlp" / "version_0" / "checkpoints" / "last.ckpt" if launcher == "torchrun" else "last"
    killed = _mlp_args(config, record, *RANK_DRAWS, *kill)
    resumed = _mlp_args(config, record, *RANK_DRAWS, "--ckpt_path", str(last))
    if launcher == "torchrun":
        killed, resumed = _torchrun(*killed[3:]), _torchrun(*resumed[3:])  # drop `python -m lightning_tricks.cli`
    _run_killed(killed, context)
    assert not record.exists(), context
    saved = torch.load(tmp_path / "logs" / "mlp" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(saved["callbacks"]["RNGStateCheckpoint"]["ranks"]) == 2, f"{context}: both ranks' RNG states"
    _run(resumed)
    for rank, reference in enumerate(ddp_reference["final"]):
        path = record if rank == 0 else tmp_path / "final.rank1.pt"
        _assert_same_weights(torch.load(path, weights_only=False), reference, f"{context}, rank {rank}")
    test_steps = (DDP_STEPS, 0) if launcher == "ddp_spawn" else None
    _assert_one_continuous_run(tmp_path / "logs", ddp_reference["logs"], context, test_steps)
