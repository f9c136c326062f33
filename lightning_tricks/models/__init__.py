"""LightningModules: the ``Classifier`` base and the MLP / ResNet / Inception / Ensemble classifiers.

Names are imported on first use (PEP 562): ``import lightning_tricks.models`` stays cheap.
"""

from typing import TYPE_CHECKING

from lightning_tricks._lazy import lazy_exports

if TYPE_CHECKING:
    from lightning_tricks.models.classifier import Classifier
    from lightning_tricks.models.ensemble import EnsembleClassifier
    from lightning_tricks.models.inception import InceptionClassifier
    from lightning_tricks.models.mlp import MLPClassifier
    from lightning_tricks.models.resnet import ResNetClassifier

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Classifier": "classifier",
        "MLPClassifier": "mlp",
        "ResNetClassifier": "resnet",
        "InceptionClassifier": "inception",
        "EnsembleClassifier": "ensemble",
    },
)
