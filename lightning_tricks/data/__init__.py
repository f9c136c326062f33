"""Fashion-MNIST and MNIST LightningDataModules.

Names are imported on first use (PEP 562): ``import lightning_tricks.data`` stays cheap.
"""

from typing import TYPE_CHECKING

from lightning_tricks._lazy import lazy_exports

if TYPE_CHECKING:
    from lightning_tricks.data.mnist import FashionMNISTDataModule, MNISTDataModule

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "FashionMNISTDataModule": "mnist",
        "MNISTDataModule": "mnist",
    },
)
