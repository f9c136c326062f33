"""Third-party LightningModules for the compatibility matrix, each made tiny and offline.

Lightning's ``BoringModel`` and ``LightningTransformer`` and torchvision's ``resnet18`` are used as their authors
wrote them; the subclasses here only swap in random offline data (no WikiText-2 download) and add
``self.log("train_loss", ...)`` so that ``EarlyStopping`` has something to monitor and the tests know at which
steps Lightning's own ``self.log`` reaches the logger. The GAN (manual optimization, two optimizers), the
compiled network and the module whose parameters get no gradient on some steps are the kinds of module real
projects have that those three are not.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.demos.transformer import LightningTransformer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

BATCHES = 4
"""Training batches per epoch of every module here."""


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class Boring(BoringModel):
    """Lightning's ``BoringModel`` (one ``Linear(32, 2)``, SGD lr 0.1), logging its loss."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        self.log("train_loss", out["loss"])
        return out

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_randn(2 * BATCHES, 32), batch_size=2)


class Plain(Boring):
    """``BoringModel`` with its SGD optimizer only (its own ``StepLR`` would make ``LRDecay`` refuse to run)."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Validated(Plain):
    """``Plain`` that logs ``val_loss`` (for ``EarlyStopping``) on its validation batches."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss(self(batch)))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_randn(4, 32, seed=1), batch_size=2)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class BoringBatchNorm(Plain):
    """``BoringModel`` with a BatchNorm layer: its buffers differ across DDP ranks unless something syncs them."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(32, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))  # type: ignore[assignment]


class CompiledMLP(Plain):
    """``BoringModel`` whose network is ``torch.compile``d (``aot_eager``: inductor takes ~26 s to compile here)."""

    def __init__(self) -> None:
        super().__init__()
        net = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))
        self.layer = torch.compile(net, backend="aot_eager")  # type: ignore[assignment]


class PartlyUnused(Plain):
    """An auxiliary head used on even batches only: its parameters have no gradient on the other steps."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(32, 2)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = self.layer(batch) + (self.aux(batch) if batch_idx % 2 == 0 else 0)
        loss = out.sum()
        self.log("train_loss", loss)
        return loss


class TinyTransformer(LightningTransformer):
    """Lightning's ``LightningTransformer`` (``forward(inputs, target)``) on a 16-token vocabulary, random tokens."""

    def __init__(self) -> None:
        super().__init__(vocab_size=16)

    def prepare_data(self) -> None:  # the demo downloads WikiText-2; this one stays offline
        pass

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)
        return loss

    def train_dataloader(self) -> DataLoader:
        tokens = torch.randint(0, 16, (2 * BATCHES, 9), generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=2)


def transformer_forward(module: nn.Module, batch: Any) -> Any:
    """LSUV's forward call for ``LightningTransformer``: ``forward(inputs, target)`` takes the whole batch."""
    return module(*batch)


class ResNet18(LightningModule):
    """torchvision's ``resnet18`` (4 classes) on random 3x32x32 images; ``frozen=True`` trains only the head."""

    def __init__(self, frozen: bool = False) -> None:
        super().__init__()
        import torchvision  # here: the ddp_spawn workers, which unpickle this module, need no torchvision

        self.net = torchvision.models.resnet18(num_classes=4)
        if frozen:  # a "pretrained" backbone being fine-tuned
            for name, param in self.net.named_parameters():
                param.requires_grad_(name.startswith("fc."))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.01)

    def train_dataloader(self) -> DataLoader:
        images, labels = _randn(2 * BATCHES, 3, 32, 32), torch.arange(2 * BATCHES) % 4
        return DataLoader(TensorDataset(images, labels), batch_size=2)


class GAN(LightningModule):
    """A small GAN with manual optimization: generator and discriminator steps, two SGD optimizers per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 32), nn.Tanh())
        self.discriminator = nn.Sequential(nn.Linear(32, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def noise(self, n: int) -> Tensor:
        return torch.randn(n, 8, device=self.device, dtype=next(self.parameters()).dtype)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        (real,) = batch
        opt_g, opt_d = self.optimizers()  # type: ignore[misc]
        bce = nn.functional.binary_cross_entropy_with_logits
        fake = self(self.noise(len(real)))
        loss_d = bce(self.discriminator(real), torch.ones_like(real[:, :1])) + bce(
            self.discriminator(fake.detach()), torch.zeros_like(real[:, :1])
        )
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        loss_g = bce(self.discriminator(fake), torch.ones_like(real[:, :1]))
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.log("train_loss", loss_d + loss_g)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.SGD(self.generator.parameters(), lr=0.02),
            torch.optim.SGD(self.discriminator.parameters(), lr=0.01),
        ]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(_randn(2 * BATCHES, 32).tanh()), batch_size=2)


def gan_forward(module: nn.Module, batch: Any) -> Any:
    """LSUV's forward call for the GAN: the generator on fixed noise, then the discriminator on fake and real data."""
    (real,) = batch
    noise = torch.randn(len(real), 8, generator=torch.Generator().manual_seed(0)).to(real)
    return module.discriminator(torch.cat([module(noise), real]))  # type: ignore[operator]
