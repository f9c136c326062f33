"""Tiny LightningModules for the callback tests, and a callback that records what each optimizer step did."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn
from torch.utils.data import DataLoader

from helpers.data import fixed_loader
from helpers.ranks import tensors_digest


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


class StepRecorder(Callback):
    """Ground truth for the step rule, per optimizer (by position in ``trainer.optimizers``), from torch's own
    optimizer hooks: ``lrs[i]`` the param groups' learning rates used by each real step (one with gradients) of
    optimizer ``i`` (a step pre-hook), ``steps[i]`` its parameters right after that step (a step post-hook)."""

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


def call_with_target(module: nn.Module, batch: Any) -> Any:
    """An ``lsuv_forward_fn`` for ``forward(inputs, target)``, importable as ``helpers.models.call_with_target``."""
    return module(*batch)


def ema_of(snapshots: list[list[torch.Tensor]], decay: float) -> list[torch.Tensor]:
    """The exponential moving average (the first update copies) of a sequence of parameter lists, in float64: the
    reference an EMA of the weights each step left must equal."""
    average = [t.double() for t in snapshots[0]]
    for weights in snapshots[1:]:
        average = [decay * a + (1 - decay) * w.double() for a, w in zip(average, weights, strict=True)]
    return average
