"""Helpers shared by the callback tests: a quiet tiny Trainer, fixed random data, ``metrics.csv`` readers, per-rank
result files for ``ddp_spawn`` runs, a LightningCLI round trip and host-sync guards.

Test modules import it as ``from _callback_helpers import ...``: pytest's default ``prepend`` import mode puts
``tests/callbacks`` (a folder without ``__init__.py``) on ``sys.path`` before it imports a test module from there. The
module name is unique under ``tests/`` so that it cannot be shadowed by another folder's helper module.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

CallbackT = TypeVar("CallbackT", bound=Callback)

# --------------------------------------------------------------------------------------------------------- Trainer

TRAIN_ONLY_ON_CPU: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "limit_val_batches": 0,
    "enable_checkpointing": False,
}
"""Trainer options for a single-process CPU run without validation and without the default checkpoint callback."""

WITH_VALIDATION: dict[str, Any] = {
    "limit_train_batches": 2,
    "limit_val_batches": 1,
    "num_sanity_val_steps": 0,
    "deterministic": True,
}
"""Trainer options for two training batches and one validation batch per epoch, no sanity check, deterministic."""


def tiny_trainer(root: str | Path, callbacks: Callback | list[Callback] | None = None, **kwargs: Any) -> Trainer:
    """A quiet Trainer for one epoch under ``root``: no logger, no progress bar, no model summary.

    ``kwargs`` add Trainer options or override these. A test module binds its own defaults once with
    ``functools.partial(tiny_trainer, ...)``; keywords given at the call still win over the bound ones.
    """
    options: dict[str, Any] = {
        "default_root_dir": root,
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    if callbacks is not None:
        options["callbacks"] = [callbacks] if isinstance(callbacks, Callback) else callbacks
    options.update(kwargs)
    return Trainer(**options)


# ------------------------------------------------------------------------------------------------------------ data


def fixed_inputs(n: int = 64, seed: int = 0, scale: float = 1.0, features: int = 32) -> torch.Tensor:
    """``n`` rows of ``features`` N(0, 1) values times ``scale``, from their own generator: the same on every call."""
    x = torch.randn(n, features, generator=torch.Generator().manual_seed(seed))
    return x if scale == 1.0 else x * scale


def fixed_loader(
    n: int = 64, batch_size: int = 8, seed: int = 0, scale: float = 1.0, tensor_dataset: bool = False
) -> DataLoader:
    """An unshuffled loader over :func:`fixed_inputs` (BoringModel's input size, 32 features).

    Batches are plain tensors, or one-element lists ``[x]`` with ``tensor_dataset=True``.
    """
    data = fixed_inputs(n, seed, scale)
    return DataLoader(TensorDataset(data) if tensor_dataset else data, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------- metrics.csv


def metrics_rows(log_dir: str | Path, key: str | None = None) -> list[dict[str, str]]:
    """The rows of ``log_dir/metrics.csv`` (a CSVLogger's file); with ``key``, only the rows where it has a value.
    No file (nothing was logged) reads as no rows."""
    if not (Path(log_dir) / "metrics.csv").exists():
        return []
    with open(Path(log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows if key is None else [row for row in rows if row.get(key)]


# ------------------------------------------------------------------------------------- per-rank files (ddp_spawn)
# Under ddp_spawn the objects in the test process are not updated by the workers: each rank writes what it saw.


def write_rank_json(folder: str | Path, rank: int, record: Any) -> None:
    """Write ``record`` as JSON to ``folder/rank<rank>.json``."""
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(record))


def read_rank_json(folder: str | Path, world_size: int = 2) -> list[Any]:
    """The records that ranks ``0 .. world_size - 1`` wrote with :func:`write_rank_json`, in rank order."""
    return [json.loads((Path(folder) / f"rank{r}.json").read_text()) for r in range(world_size)]


def write_rank_text(folder: str | Path, rank: int, text: str, prefix: str = "rank") -> None:
    """Write ``text`` to ``folder/<prefix><rank>.txt``."""
    (Path(folder) / f"{prefix}{rank}.txt").write_text(text)


def read_rank_texts(folder: str | Path, prefix: str = "rank", world_size: int = 2) -> list[str]:
    """The texts that ranks ``0 .. world_size - 1`` wrote with :func:`write_rank_text`, in rank order."""
    return [(Path(folder) / f"{prefix}{r}.txt").read_text() for r in range(world_size)]


def tensors_digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in order: equal digests mean bitwise-equal tensors."""
    raw = (t.detach().cpu().reshape(-1).contiguous().view(torch.uint8) for t in tensors)  # bf16 has no numpy dtype
    return hashlib.sha256(b"".join(r.numpy().tobytes() for r in raw)).hexdigest()


# ---------------------------------------------------------------------------------------------------- LightningCLI


def callback_from_cli(cls: type[CallbackT], args: list[str]) -> CallbackT:
    """Parse ``args`` with ``LightningCLI(BoringModel, run=False)`` and return the one ``cls`` callback it built."""
    cli = LightningCLI(BoringModel, run=False, args=args)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, cls)]
    return callback


# -------------------------------------------------------------------------------------------------- host syncs

HOST_SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
"""Tensor methods that copy a value to the host: on a GPU each one is a device-to-host synchronization."""

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))]


def intercept_host_reads(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[str], None], names: Sequence[str] = HOST_SYNC_METHODS
) -> None:
    """Patch each ``torch.Tensor`` method in ``names`` to call ``before(name)`` first, then the original method.

    ``before`` may raise to refuse the read. ``monkeypatch`` undoes the patches.
    """

    def intercepted(name: str) -> Callable[..., Any]:
        original = getattr(torch.Tensor, name)

        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            before(name)
            return original(self, *args, **kwargs)

        return method

    for name in names:
        monkeypatch.setattr(torch.Tensor, name, intercepted(name))


@contextmanager
def no_host_sync(device: torch.device, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail on any device-to-host copy: CUDA's sync debug mode on a GPU; on CPU, the Tensor methods that copy a value
    to Python (:data:`HOST_SYNC_METHODS`) raise."""
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return

    def refuse(name: str) -> None:
        raise AssertionError("host sync on a step that does not log")

    with monkeypatch.context() as m:
        intercept_host_reads(m, refuse)
        yield


def count_host_reads_in_hooks(
    monkeypatch: pytest.MonkeyPatch, callback: Callback, hook_names: Sequence[str]
) -> dict[str, int]:
    """Count the host reads of tensors made while one of ``callback``'s hooks ``hook_names`` runs (a CPU stand-in for
    CUDA's sync debug mode). Returns a dict whose ``"reads"`` entry grows as the Trainer calls the hooks."""
    state = {"inside": False, "reads": 0}

    def count(name: str) -> None:
        state["reads"] += state["inside"]

    intercept_host_reads(monkeypatch, count)
    for hook_name in hook_names:
        hook = getattr(callback, hook_name)

        def wrapped(*args: Any, _hook: Any = hook) -> None:
            state["inside"] = True
            try:
                _hook(*args)
            finally:
                state["inside"] = False

        setattr(callback, hook_name, wrapped)
    return state


# ------------------------------------------------------------------------------- third-party-style modules (rule 7)

PRECISIONS = ["32-true", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]
"""Every precision Lightning offers that runs on the CPU (``16-mixed`` uses ``torch.amp.GradScaler("cpu")``)."""


class TinyGAN(LightningModule):
    """A small GAN as users write it: manual optimization, two optimizers (generator first, discriminator second).

    The discriminator's loss is multiplied by ``d_scale``, so its gradients are steadily about ``d_scale`` times
    larger than the generator's. ``d_steps`` discriminator steps per batch (a WGAN critic takes several). The noise
    comes from a generator seeded by the batch index, so runs are exactly repeatable. ``skip_batches``: batch
    indices on which ``training_step`` returns without stepping.
    """

    def __init__(self, d_scale: float = 16.0, d_steps: int = 1, lr: float = 0.05, skip_batches: Sequence[int] = ()):
        super().__init__()
        self.automatic_optimization = False
        self.generator = torch.nn.Linear(8, 32)
        self.discriminator = torch.nn.Linear(32, 1)
        self.d_scale, self.d_steps, self.lr, self.skip_batches = d_scale, d_steps, lr, tuple(skip_batches)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        if batch_idx in self.skip_batches:
            return None
        g_opt, d_opt = self.optimizers()  # type: ignore[misc]
        noise = torch.randn(batch.shape[0], 8, generator=torch.Generator().manual_seed(batch_idx)).to(batch)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        for _ in range(self.d_steps):
            fake = self.generator(noise).detach()
            real_logits, fake_logits = self.discriminator(batch), self.discriminator(fake)
            d_loss = bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
            d_opt.zero_grad()
            self.manual_backward(self.d_scale * d_loss)
            d_opt.step()
        fake_logits = self.discriminator(self.generator(noise))
        g_opt.zero_grad()
        self.manual_backward(bce(fake_logits, torch.ones_like(fake_logits)))
        g_opt.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.SGD(self.generator.parameters(), lr=self.lr),
            torch.optim.SGD(self.discriminator.parameters(), lr=self.lr),
        ]

    def train_dataloader(self) -> DataLoader:
        return fixed_loader(seed=3)


class SkippingBoringModel(BoringModel):
    """Lightning's ``BoringModel`` (automatic optimization) on fixed data whose ``training_step`` returns ``None`` on
    the batch indices ``skip_batches`` (Lightning then calls ``optimizer.step()`` with no gradient)."""

    def __init__(self, skip_batches: Sequence[int] = (), lr: float = 0.1) -> None:
        super().__init__()
        self.skip_batches, self.lr = tuple(skip_batches), lr

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return None if batch_idx in self.skip_batches else super().training_step(batch, batch_idx)

    def train_dataloader(self) -> DataLoader:
        return fixed_loader(seed=1)

    def val_dataloader(self) -> DataLoader:
        return fixed_loader(16, seed=2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class ScaledLossModel(SkippingBoringModel):
    """``SkippingBoringModel`` whose loss is multiplied by ``loss_scale``: ``0`` leaves zero gradients (an optimizer
    step then changes nothing by itself); ``30`` overflows fp16 at a GradScaler's initial scale ``2**16``, so the
    scaler skips the first few steps."""

    def __init__(self, loss_scale: float, skip_batches: Sequence[int] = (), lr: float = 0.1) -> None:
        super().__init__(skip_batches, lr)
        self.loss_scale = loss_scale

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        return None if out is None else {"loss": out["loss"] * self.loss_scale}


class StepRecorder(Callback):
    """Ground truth for rule 7, per optimizer (by position in ``trainer.optimizers``), from torch's own optimizer
    hooks: ``lrs[i]`` the param groups' learning rates used by each real step (one with gradients) of optimizer ``i``
    (a step pre-hook), ``steps[i]`` its parameters right after that step (a step post-hook)."""

    def __init__(self) -> None:
        self.lrs: dict[int, list[list[float]]] = {}
        self.steps: dict[int, list[list[torch.Tensor]]] = {}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for i, opt in enumerate(trainer.optimizers):
            pending: list[list[float]] = []

            # Under automatic optimization the closure (forward, backward) runs inside `step()`, after the pre-hook:
            # the lrs are read before the step and kept only if the step had gradients.
            def pre(o: torch.optim.Optimizer, *_: Any, _pending: list = pending) -> None:
                _pending[:] = [[float(g["lr"]) for g in o.param_groups]]

            def post(o: torch.optim.Optimizer, *_: Any, _i: int = i, _pending: list = pending) -> None:
                params = [p for g in o.param_groups for p in g["params"]]
                if any(p.grad is not None for p in params):
                    self.lrs.setdefault(_i, []).append(_pending[0])
                    self.steps.setdefault(_i, []).append([p.detach().clone() for p in params])

            opt.register_step_pre_hook(pre)
            opt.register_step_post_hook(post)


def precision_options(precision: str) -> dict[str, Any]:
    """Trainer options for ``precision`` on the CPU. ``Trainer(precision="16-mixed")`` turns into ``bf16-mixed`` there,
    so ``16-mixed`` gets Lightning's ``MixedPrecision`` plugin with its ``torch.amp.GradScaler("cpu")``."""
    if precision == "16-mixed":
        return {"plugins": [MixedPrecision("16-mixed", "cpu")]}
    return {"precision": precision}


def csv_fit(
    root: str | Path, callbacks: Callback | list[Callback], model: LightningModule, **kwargs: Any
) -> tuple[Trainer, list[dict[str, str]]]:
    """Fit ``model`` for one epoch with a ``CSVLogger`` logging every step; returns the trainer and the
    ``metrics.csv`` rows. ``kwargs`` add Trainer options (e.g. :func:`precision_options`)."""
    from lightning.pytorch.loggers import CSVLogger

    options = {**TRAIN_ONLY_ON_CPU, "log_every_n_steps": 1, **kwargs}
    trainer = tiny_trainer(root, callbacks, logger=CSVLogger(root, name="", version=""), **options)
    trainer.fit(model)
    return trainer, metrics_rows(root)


class ScriptedMetricModel(SkippingBoringModel):
    """``SkippingBoringModel`` that logs ``val_metric = metrics[current_epoch]`` at each validation (a scripted
    metric, so the best epoch is known) and records the weights each validation / test evaluated: ``validated``
    (``{epoch: state_dict copy}``, during fit) and ``evaluated`` (digests of the weights of every validation / test
    step, in order, tagged ``"validate"`` / ``"test"``)."""

    def __init__(self, metrics: Sequence[float], lr: float = 0.1) -> None:
        super().__init__(lr=lr)
        self.metrics = list(metrics)
        self.validated: dict[int, dict[str, torch.Tensor]] = {}
        self.evaluated: list[tuple[str, str]] = []

    def on_validation_epoch_start(self) -> None:  # runs after every callback's hook: sees EMA's swapped-in weights
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.validated[self.current_epoch] = {k: v.detach().clone() for k, v in self.state_dict().items()}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluated.append(("validate", tensors_digest(self.state_dict().values())))
        self.log("val_metric", self.metrics[min(self.current_epoch, len(self.metrics) - 1)])

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluated.append(("test", tensors_digest(self.state_dict().values())))

    def test_dataloader(self) -> DataLoader:
        return fixed_loader(8, seed=4)


def gan_resume_runs(
    root: Path, make_callbacks: Callable[[], list[Callback]]
) -> tuple[tuple[TinyGAN, list[Callback]], tuple[TinyGAN, list[Callback]]]:
    """Train :class:`TinyGAN` for 2 epochs of 4 batches uninterrupted, and for 1 epoch then resumed from its
    checkpoint for the second; returns ``(model, callbacks)`` of the uninterrupted and of the resumed run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(folder: str, epochs: int, ckpt_path: str | None = None) -> tuple[TinyGAN, list[Callback]]:
        torch.manual_seed(0)  # the same initial weights in every run
        model, callbacks = TinyGAN(), make_callbacks()
        ckpt = ModelCheckpoint(dirpath=root / folder, save_top_k=-1, every_n_epochs=1)
        options = {**TRAIN_ONLY_ON_CPU, "enable_checkpointing": True, "limit_train_batches": 4}
        tiny_trainer(root / folder, [*callbacks, ckpt], max_epochs=epochs, **options).fit(model, ckpt_path=ckpt_path)
        return model, callbacks

    full = run("full", 2)
    run("part", 1)
    return full, run("resumed", 2, ckpt_path=str(root / "part" / "epoch=0-step=8.ckpt"))
