"""lightning_tricks: the classic deep-learning training tricks as a PyTorch Lightning add-on.

Subpackages:
    :mod:`lightning_tricks.callbacks` -- one trick per callback (clipping, LR decay, early stopping, ...).
    :mod:`lightning_tricks.models` -- ``Classifier`` and the MLP / ResNet / Inception / Ensemble modules.
    :mod:`lightning_tricks.data` -- Fashion-MNIST and MNIST ``LightningDataModule``\\ s.
    :mod:`lightning_tricks.cli` -- the ``lightning-tricks`` LightningCLI entry point.
"""

from lightning_tricks._distributed import register_exit_cleanup

__version__ = "0.1.0"

register_exit_cleanup()

__all__ = ["__version__"]
