"""``EnsembleClassifier``: averages the predicted probabilities of several trained classifiers."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_tricks.models.classifier import CLASS_PATH_KEY, Classifier

_BASE_ARGUMENTS = (
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "label_smoothing",
    "lr_schedule",
    "num_classes",
    "in_channels",
    "channels_last",
    "compile",
)


def load_classifier(checkpoint_path: str | Path, map_location: Any = "cpu") -> Classifier:
    """Load any ``Classifier`` subclass from a Lightning checkpoint, finding its class in the checkpoint.

    The class path is the one ``Classifier.on_save_checkpoint`` stores under ``"lightning_tricks_class_path"``, or
    LightningCLI's ``_class_path`` hyperparameter for checkpoints written by other ``LightningModule`` code.

    Raises:
        ValueError: the checkpoint names no class, or a class that is not a ``Classifier``.
    """
    # weights_only=True: only the class path is read here; the class's own load_from_checkpoint reads the rest.
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    class_path = checkpoint.get(CLASS_PATH_KEY) or checkpoint.get("hyper_parameters", {}).get("_class_path")
    if not class_path:
        raise ValueError(
            f"Checkpoint {str(checkpoint_path)!r} does not say which Classifier class wrote it (no "
            f"{CLASS_PATH_KEY!r} entry nor `_class_path` hyperparameter). Load it with "
            f"`YourClass.load_from_checkpoint(path)` and pass it in `members` instead."
        )
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Classifier)):
        raise ValueError(f"Checkpoint {str(checkpoint_path)!r} names {class_path!r}, which is not a Classifier class.")
    return cls.load_from_checkpoint(checkpoint_path, map_location=map_location)


def average_probabilities(logits: list[Tensor]) -> Tensor:
    """Return ``log(mean_m softmax(logits[m]))`` computed stably in log space (``logsumexp``), shape ``[B, C]``.

    The result acts as logits: ``softmax`` of it gives the averaged probabilities back (they already sum to one), and
    ``cross_entropy`` of it is the negative log-likelihood of the averaged probabilities.
    """
    log_probs = torch.stack([F.log_softmax(member_logits.float(), dim=-1) for member_logits in logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))


class EnsembleClassifier(Classifier):
    """Model averaging: the mean of the softmax outputs of several independently trained classifiers.

    The "model averaging" trick in its ensemble form (Hansen & Salamon, 1990; Lakshminarayanan et al., 2017): members
    that make different errors average into a better-calibrated and usually more accurate predictor. The members are
    given directly or loaded from Lightning checkpoints of any ``Classifier`` subclass (the class is found in the
    checkpoint). The ensemble validates, tests and predicts like any ``Classifier`` with the same logged keys;
    ``val/loss`` / ``test/loss`` are the negative log-likelihood of the averaged probabilities and ``predict_step``
    returns the averaged probabilities. Cost: one forward pass per member.

    It has no trainable parameters of its own, so ``trainer.fit`` is refused in ``setup``: train the members, then
    ensemble them. The members are frozen (``requires_grad=False``) and their ``prepare_net`` (``channels_last``,
    ``compile``) runs in the ensemble's ``setup``. A checkpoint of the ensemble reloads when it was built from
    ``checkpoints`` (the member files are read again); one built from ``members`` needs them again:
    ``EnsembleClassifier.load_from_checkpoint(path, members=[...])``.

    Args:
        members: trained classifiers.
        checkpoints: paths of checkpoints of trained classifiers, loaded after ``members``.
        map_location: where to load the checkpoints' tensors (the Trainer moves the model to its device anyway).

    Raises:
        ValueError: no members at all, members that disagree on ``num_classes`` or ``in_channels``, or a checkpoint
            that does not name its ``Classifier`` class.

    Example::

        ensemble = EnsembleClassifier(checkpoints=["run1/last.ckpt", "run2/last.ckpt", "run3/last.ckpt"])
        Trainer().test(ensemble, datamodule=FashionMNISTDataModule())  # test/acc, test/loss of the average
    """

    _hparams_ignore = ("members", "map_location", *_BASE_ARGUMENTS)

    def __init__(
        self,
        members: list[Classifier] | None = None,
        checkpoints: list[str] | None = None,
        map_location: str = "cpu",
    ) -> None:
        loaded = list(members or [])
        for member in loaded:
            if not isinstance(member, Classifier):
                raise ValueError(f"Expected argument `members` to hold Classifier instances, but got {type(member)}.")
        loaded += [load_classifier(path, map_location) for path in checkpoints or []]
        if not loaded:
            raise ValueError("EnsembleClassifier needs at least one member: pass `members` and/or `checkpoints`.")
        num_classes = {member.num_classes for member in loaded}
        in_channels = {member.in_channels for member in loaded}
        if len(num_classes) != 1 or len(in_channels) != 1:
            raise ValueError(
                "EnsembleClassifier members must agree on `num_classes` and `in_channels`, but got num_classes "
                f"{[m.num_classes for m in loaded]} and in_channels {[m.in_channels for m in loaded]}."
            )
        super().__init__(num_classes=num_classes.pop(), in_channels=in_channels.pop())
        for member in loaded:
            member.eval()
            member.requires_grad_(False)
        self.members = nn.ModuleList(loaded)

    @override
    def forward(self, x: Tensor) -> Tensor:
        """Return ``log`` of the averaged member probabilities ``[B, num_classes]`` (usable as logits)."""
        return average_probabilities([member(x) for member in self.members])

    @override
    def prepare_net(self, device: torch.device | None = None) -> None:
        """Let every member apply its own ``channels_last`` / ``compile`` settings, for this module's device."""
        device = device or self._target_device()
        for member in self.members:
            member.prepare_net(device)

    @override
    def setup(self, stage: str) -> None:
        """Refuse ``fit``; otherwise write the TensorBoard HPARAMS record like ``Classifier``."""
        if stage == "fit":
            raise RuntimeError(
                "EnsembleClassifier has no trainable parameters of its own and cannot be fitted: train each member "
                "(e.g. `trainer.fit(member)`), then use `trainer.validate/test/predict(EnsembleClassifier(...))`."
            )
        super().setup(stage)

    @override
    def configure_optimizers(self) -> Any:
        """Not available: see ``setup``."""
        raise RuntimeError("EnsembleClassifier cannot be fitted: it has no trainable parameters of its own.")
