"""The ``Classifier`` base LightningModule: optimizer choice, loss, accuracy, logging and hyperparameters.

Subclasses only build ``self.net`` (an ``nn.Module`` mapping ``x`` to logits). Everything that makes a training run
comparable with another one lives here: the optimizer ("optimizers" in the classic list of tricks: plain SGD,
momentum (Polyak, 1964), Nesterov momentum (Sutskever et al., 2013), Adagrad (Duchi et al., 2011), RMSprop
(Hinton, 2012), Adam (Kingma & Ba, 2015), AdamW (Loshchilov & Hutter, 2019)), label smoothing (Szegedy et al., 2016),
a built-in per-step learning-rate schedule (one-cycle, Smith & Topin, 2019; cosine, Loshchilov & Hutter, 2017),
torchmetrics accuracy per stage and the TensorBoard HPARAMS record that links the configuration to the final metrics.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_tricks._cuda_check import skip_failing_nvml_check
from lightning_tricks._loops import estimated_stepping_batches
from lightning_tricks._validation import check_choice, check_float, check_int, invalid

OptimizerName = Literal["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]
LRScheduleName = Literal["none", "onecycle", "cosine"]

#: Checkpoint entry holding ``module.Class`` of the ``Classifier`` that wrote it (read by ``EnsembleClassifier``).
CLASS_PATH_KEY = "lightning_tricks_class_path"

#: Metric keys shown in TensorBoard's HPARAMS tab next to the configuration of each run.
HPARAMS_METRICS: tuple[str, ...] = (
    "val/acc",
    "val/loss",
    "test/acc",
    "test/loss",
    "train/acc_epoch",
    "train/loss_epoch",
)


class WeightedMean(Metric):
    """The mean of scalars weighted by their batch sizes, exact over an epoch and summed over DDP ranks.

    torchmetrics' ``MeanMetric`` either checks every value for NaN (a host-device synchronization per update) or,
    with ``nan_strategy="disable"``, drops the weights (a short last batch would count as a full one). This keeps
    both: ``update`` launches two device additions and never synchronizes. The states are summed over ranks by
    torchmetrics' own sync in ``compute``. ``forward`` updates and returns the batch value Lightning logs on the step,
    optionally one already reduced over ranks (not ``dist_sync_on_step``: torchmetrics' ``forward`` would keep the
    synced batch state in the epoch state, counting the other ranks' batches twice).
    """

    full_state_update = False
    total: Tensor
    weight: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    @override
    def update(self, value: Tensor, weight: int) -> None:
        """Add ``value`` (a 0-dim tensor) counted ``weight`` times (in place: no module attribute assignment)."""
        self.total.add_(value.detach(), alpha=weight)
        self.weight.add_(weight)

    @override
    def forward(self, value: Tensor, weight: int, step_value: Tensor | None = None) -> Tensor:
        """``update(value, weight)``; return (and keep for Lightning's step logging) ``step_value``, else ``value``."""
        self.update(value, weight)
        self._forward_cache = (value if step_value is None else step_value).detach()
        return self._forward_cache

    @override
    def compute(self) -> Tensor:
        """The weighted mean of the values since the last reset."""
        return self.total / self.weight


class TrainingAccuracy(MulticlassAccuracy):
    """torchmetrics' ``MulticlassAccuracy(average="micro")`` (top-1, no ``ignore_index``) with a leaner ``update``.

    The states (``tp``, ``fp``, ``tn``, ``fn``), ``compute``, ``forward``, ``reset`` and the DDP sync are
    torchmetrics' own; ``update`` adds the same counts as torchmetrics' micro-average update (argmax, one comparison,
    one sum) in place, without its per-call formatting and state reassignments, which cost more than the counting
    itself on a small CPU step, where it runs on every step.
    """

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(num_classes, average="micro", validate_args=False, **kwargs)

    @override
    def update(self, preds: Tensor, target: Tensor) -> None:
        """Count the batch's correct top-1 predictions (``preds``: logits ``[B, C]`` or labels ``[B]``)."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=1)
        correct = (preds == target).sum()
        wrong = target.numel() - correct
        self.tp.add_(correct)
        self.fp.add_(wrong)
        self.fn.add_(wrong)
        self.tn.add_(correct + (self.num_classes - 2) * target.numel())  # C * n - (tp + fp + fn), as torchmetrics


class Classifier(LightningModule):
    """Base image classifier: cross-entropy training with a chosen optimizer, accuracy metrics and logging.

    A subclass sets ``self.net`` (``x`` of shape ``[B, in_channels, H, W]`` to logits ``[B, num_classes]``) after
    calling ``super().__init__(...)``. Batches are ``(x, y)`` with float ``x`` and int64 class labels ``y``.

    Optimizers (``optimizer``): ``"sgd"`` plain SGD; ``"momentum"`` SGD with heavy-ball momentum (Polyak, 1964);
    ``"nesterov"`` SGD with Nesterov momentum (Sutskever et al., 2013); ``"adagrad"`` (Duchi et al., 2011);
    ``"rmsprop"`` (Hinton, 2012, with ``momentum``); ``"adam"`` (Kingma & Ba, 2015); ``"adamw"`` Adam with decoupled
    weight decay (Loshchilov & Hutter, 2019). ``weight_decay`` is the optimizer's own: coupled (an L2 term added to the
    gradient) for every optimizer except ``"adamw"``, and applied to every parameter; use the ``WeightDecay``
    callback to exclude biases and normalization layers.

    ``lr_schedule`` is a per-step schedule over ``trainer.estimated_stepping_batches``: ``"onecycle"`` (Smith & Topin,
    2019: warm up to ``lr`` for 30% of the steps, anneal to ~0; momentum/beta1 cycles for momentum, nesterov, adam and
    adamw) or ``"cosine"`` (Loshchilov & Hutter, 2017, without restarts, down to 0). Use ``"none"`` with the
    ``LRDecay`` callback for the classic per-epoch decays.

    Hooks: the loss and metrics run in ``training_step`` / ``validation_step`` / ``test_step``; ``channels_last`` and
    ``compile`` are applied once in ``setup`` (before DDP wraps the model); the HPARAMS record is written in
    ``setup``. Cost: no host-device synchronization on the hot path; everything stays a tensor until Lightning logs it.
    Training metrics are accumulated on the device every step (the loss in a :class:`WeightedMean`, the accuracy in
    torchmetrics' state) and handed to ``self.log`` only on the steps whose values reach the loggers (Lightning's
    ``log_every_n_steps`` rule, plus the first training step of each epoch so the epoch values always exist):
    ``self.log`` costs more than a small CPU step's forward pass, and Lightning writes only the last step value of
    each logging interval anyway.

    Input checks: the shapes and dtypes of ``x`` and ``y`` are checked on every batch (free: shapes live on the host).
    The label range (``0 <= y < num_classes``) needs the values: it is checked on the first batch of each epoch (one
    deliberate sync per epoch per stage on an accelerator); a bad label in a later batch still stops the run, with
    torch's own error (``cross_entropy``'s "Target 12 is out of bounds" on the CPU, a device-side assert on CUDA).

    Logged keys: ``train/loss``, ``train/acc`` (``_step`` and ``_epoch`` variants), ``val/loss``, ``val/acc``,
    ``test/loss``, ``test/acc`` (per epoch, reduced over DDP ranks: losses with ``sync_dist=True`` or, in training,
    :class:`WeightedMean`'s summed states; accuracy through torchmetrics' own state sync). ``train/*_epoch`` is the
    exact batch-size-weighted mean over all of the epoch's batches; ``train/loss_step`` (the batch's loss, averaged
    over DDP ranks) and ``train/acc_step`` (torchmetrics' batch value) are the values of the logging step's batch,
    and ``trainer.callback_metrics["train/loss_step"]`` changes only on those steps. Label smoothing applies to the
    training loss only.

    TensorBoard HPARAMS: the TensorBoard ``hparams`` record is written in ``setup`` (before Lightning's own automatic
    call) with the metrics ``val/acc``, ``val/loss``, ``test/acc``, ``test/loss``, ``train/acc_epoch`` and
    ``train/loss_epoch``, next to the configuration: the model's and data module's arguments, the run's folder, the
    callbacks with their non-default options and the key trainer settings (precision, devices, strategy, max_epochs,
    batch size); the columns that differ between the runs of the log folder come first, and the CUSTOM SCALARS tab
    opens on the metrics (see :mod:`lightning_tricks._tensorboard`). TensorBoard keeps the first ``hparams`` record of a
    run, so this holds whether or not the ``TensorBoardLogger`` was created with ``default_hp_metric=False``; no
    placeholder scalars are logged.

    Args:
        optimizer: one of ``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"adagrad"``, ``"rmsprop"``, ``"adam"``,
            ``"adamw"``.
        lr: learning rate (the peak rate for ``lr_schedule="onecycle"``), > 0.
        momentum: momentum for ``"momentum"``, ``"nesterov"`` and ``"rmsprop"``, in [0, 1).
        weight_decay: the optimizer's own weight decay, >= 0.
        label_smoothing: label smoothing of the training loss, in [0, 1).
        lr_schedule: ``"none"``, ``"onecycle"`` or ``"cosine"`` (stepped every optimizer step).
        num_classes: number of classes, >= 2.
        in_channels: number of input channels, >= 1.
        channels_last: convert the network and its inputs to the channels-last memory format (faster convolutions
            with AMP on tensor-core GPUs). Applied on CUDA only: on the CPU it is left off (with one info message),
            because torch 2.14's oneDNN hangs or crashes in the backward of a channels-last 1x1 stride-2 convolution
            with fewer than 8 input channels on AVX2 CPUs (oneDNN issue #6035), and it brings no speed-up there.
        compile: ``torch.compile`` the network in place (``nn.Module.compile``, state-dict keys unchanged) in
            ``setup``.

    Raises:
        ValueError: an option outside its allowed values or range.

    Example::

        class TinyNet(Classifier):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

        trainer = Trainer(max_epochs=3)
        trainer.fit(TinyNet(optimizer="nesterov", lr=0.05), datamodule=FashionMNISTDataModule())
    """

    #: Constructor arguments left out of ``self.hparams`` (objects that cannot go in a checkpoint's hparams).
    _hparams_ignore: tuple[str, ...] = ()

    def __init__(
        self,
        optimizer: OptimizerName = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        lr_schedule: LRScheduleName = "none",
        num_classes: int = 10,
        in_channels: int = 1,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_choice("optimizer", optimizer, OptimizerName)
        check_choice("lr_schedule", lr_schedule, LRScheduleName)
        check_float("lr", lr, 0, low_open=True)
        check_float("momentum", momentum, 0.0, 1.0, high_open=True)
        if optimizer in ("momentum", "nesterov") and momentum == 0.0:
            raise invalid("momentum", f"> 0 for optimizer={optimizer!r}", momentum)
        check_float("weight_decay", weight_decay, 0.0)
        check_float("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
        check_int("num_classes", num_classes, 2)
        check_int("in_channels", in_channels, 1)
        self.save_hyperparameters(ignore=list(self._hparams_ignore))

        self.optimizer_name = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.lr_schedule = lr_schedule
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.channels_last = channels_last
        self.compile_net = compile
        self._net_prepared = False
        self._channels_last_active = False  # set by `prepare_net`: only on CUDA

        self.net: nn.Module = nn.Identity()
        # One metric object per stage so their states never mix (validation runs inside the training epoch).
        # validate_args=False: torchmetrics' value checks would sync with the host on every batch; see _check_batch.
        self.train_acc = TrainingAccuracy(num_classes)  # updated on every training step: the lean update
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.train_loss = WeightedMean()
        self._train_logged_this_epoch = False

    @override
    def forward(self, x: Tensor) -> Tensor:
        """Return the logits ``[B, num_classes]`` for images ``x`` ``[B, in_channels, H, W]``."""
        if self._channels_last_active and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    # ----------------------------------------------------------------------------------------------------- set-up
    def prepare_net(self, device: torch.device | None = None) -> None:
        """Apply ``channels_last`` and ``compile`` to ``self.net``, once (later calls do nothing).

        ``device`` is where the network will run (default: the trainer's root device, else the parameters' device);
        ``channels_last`` is applied only when it is CUDA.

        Called from ``setup``, which runs before the strategy wraps the model. Not in ``configure_model``: Lightning
        reserves that hook for sharded layer creation, and its ``WeightAveraging`` (hence ``EMA``) warns about any
        model that overrides it.
        """
        if self._net_prepared:
            return
        self._net_prepared = True
        device = device or self._target_device()
        if self.channels_last:
            if device.type == "cuda":
                self.net.to(memory_format=torch.channels_last)
                self._channels_last_active = True
            else:
                rank_zero_info(
                    f"{type(self).__name__}(channels_last=True): left off on {device.type!r}; it is"
                    " applied on CUDA only (on the CPU, oneDNN #6035 hangs or crashes the backward of channels-last"
                    " 1x1 stride-2 convolutions with < 8 input channels, and it brings no speed-up there)."
                )
        if self.compile_net:
            self.net.compile()

    def _target_device(self) -> torch.device:
        """Where the network will run: the trainer's root device when attached, else where the parameters are."""
        trainer = self._trainer
        if trainer is not None:
            return trainer.strategy.root_device
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @override
    def setup(self, stage: str) -> None:
        """Prepare the network (``prepare_net``) and write the TensorBoard HPARAMS record (see the class docstring).

        Also skips Lightning's NVML-based CUDA check on a machine where NVML cannot be loaded
        (:mod:`lightning_tricks._cuda_check`: a cost on every optimizer step, same answers).
        """
        skip_failing_nvml_check()
        self.prepare_net()
        self._log_hparams_for_tensorboard()

    def _log_hparams_for_tensorboard(self) -> None:
        """Record the run for TensorBoard's HPARAMS tab and the metrics' custom-scalar layout (rank zero).

        The record holds the model's and data module's arguments plus the callbacks and trainer settings
        (:func:`lightning_tricks._tensorboard.run_hparams`); the folder opened in TensorBoard gets the columns that
        differ between runs first and the metrics family's layout (see :mod:`lightning_tricks._tensorboard`).
        """
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero:
            return
        if not any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
            return
        from lightning_tricks._tensorboard import log_run_record, run_hparams

        # The metric values are not written here (no placeholder points in the curves): TensorBoard reads the last
        # scalar of each listed key from the run when the HPARAMS tab is opened.
        log_run_record(trainer, self, HPARAMS_METRICS, run_hparams(trainer, self))

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the class path so ``EnsembleClassifier(checkpoints=...)`` can rebuild the right subclass."""
        checkpoint[CLASS_PATH_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer | OptimizerLRSchedulerConfig:
        """Build the optimizer named by ``optimizer`` and, if asked, the per-step ``lr_schedule``."""
        optimizer = build_optimizer(
            self.optimizer_name, self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        if self.lr_schedule == "none":
            return optimizer
        # not the property itself: read here it loses a resumed loader's position (Lightning #20550, see the helper)
        total_steps = estimated_stepping_batches(self.trainer)
        if not math.isfinite(total_steps) or total_steps < 1:
            raise ValueError(
                f"`lr_schedule={self.lr_schedule!r}` needs a finite number of training steps, but the trainer "
                f"estimates {total_steps}. Set `max_epochs` or `max_steps` on the Trainer, or use `lr_schedule='none'`."
            )
        total_steps = int(total_steps)
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if self.lr_schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=self.lr,
                total_steps=total_steps,
                cycle_momentum=self.optimizer_name in ("momentum", "nesterov", "adam", "adamw"),
            )
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    @override
    def on_train_start(self) -> None:
        """Refuse to resume a schedule whose length no longer matches the run (checked after the restore)."""
        if self.lr_schedule == "none":
            return
        scheduler = self.lr_schedulers()
        planned = getattr(scheduler, "total_steps", None) or getattr(scheduler, "T_max", None)
        expected = int(self.trainer.estimated_stepping_batches)
        if planned is not None and planned != expected:
            raise ValueError(
                f"The checkpoint's {self.lr_schedule} schedule spans {planned} optimizer steps, but this run will take "
                f"{expected}: max_epochs, max_steps, limit_train_batches, the batch size or the number of devices "
                f"changed since it was saved. A resumed run must keep them (the schedule cannot be stretched: "
                f"one-cycle would fail at step {planned + 1}, cosine would climb back up). To train on from these "
                f"weights, start a new run from them, e.g. `{type(self).__name__}.load_from_checkpoint(path)` "
                f"passed to `trainer.fit` without `ckpt_path`."
            )

    # ------------------------------------------------------------------------------------------------------ steps
    def _check_batch(self, x: Tensor, y: Tensor, batch_idx: int) -> None:
        """Check shapes and dtypes (host-side metadata, free) and, when cheap, the label range.

        Raises:
            ValueError: wrong number of dimensions or channels, non-integer labels, mismatched batch sizes, or labels
                outside ``[0, num_classes)``.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects images of shape [B, {self.in_channels}, H, W] "
                f"(in_channels={self.in_channels}), but got a batch of shape {tuple(x.shape)}. "
                f"Set `in_channels` to the data's channel count or fix the data module's transforms."
            )
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{type(self).__name__} expects labels of shape [B] = [{x.shape[0]}], but got {tuple(y.shape)}."
            )
        if y.dtype != torch.long:
            raise ValueError(f"{type(self).__name__} expects int64 class labels, but got dtype {y.dtype}.")
        # Deliberate sync on accelerators, once per epoch per stage (batch 0): reading the label values. Later
        # batches: on the CPU, cross_entropy itself raises "Target 12 is out of bounds"; on CUDA a device assert.
        if batch_idx == 0 and bool(((y < 0) | (y >= self.num_classes)).any()):
            raise ValueError(
                f"{type(self).__name__} expects labels in [0, {self.num_classes}) (num_classes={self.num_classes}),"
                f" but got labels from {int(y.min())} to {int(y.max())}."
            )

    def _shared_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, stage: str) -> Tensor:
        x, y = batch
        self._check_batch(x, y, batch_idx)
        logits = self(x)
        smoothing = self.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        metric: MulticlassAccuracy = getattr(self, f"{stage}_acc")
        batch_size = x.shape[0]
        if stage == "train":
            self._log_training_metrics(loss, logits.detach(), y)
        else:
            metric.update(logits, y)
            self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)
            self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    def _log_training_metrics(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        """Accumulate the training loss and accuracy; call ``self.log`` only when the step values are written.

        ``forward`` (the batch value plus the update) runs on those steps, ``update`` alone on the others; the epoch
        values come from the metrics' full states, whichever steps logged them.
        """
        trainer = self._trainer
        # Lightning's own rule (no public equivalent): the step values it writes are the last ones logged by then.
        # Applied with or without a logger, so `callback_metrics` holds the same step values either way.
        log_now = (
            trainer is None
            or not self._train_logged_this_epoch
            or trainer._logger_connector.should_update_logs
            or bool(trainer.fast_dev_run)
        )
        if not log_now:
            self.train_loss.update(loss, y.shape[0])
            self.train_acc.update(logits, y)
            return
        self._train_logged_this_epoch = True
        # the step loss averaged over ranks, as `self.log(..., sync_dist=True)` would (no-op on one device)
        step_loss = loss.detach() if trainer is None else trainer.strategy.reduce(loss.detach(), reduce_op="mean")
        self.train_loss(loss, y.shape[0], step_loss)
        self.train_acc(logits, y)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True)

    @override
    def on_train_epoch_start(self) -> None:
        """Log the first training step of each epoch, so the epoch values exist however long the log interval."""
        self._train_logged_this_epoch = False

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy (with ``label_smoothing``) on one batch; logs ``train/loss`` and ``train/acc``."""
        return self._shared_step(batch, batch_idx, "train")

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on one batch; logs ``val/loss`` and ``val/acc`` per epoch."""
        return self._shared_step(batch, batch_idx, "val")

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on one batch; logs ``test/loss`` and ``test/acc`` per epoch."""
        return self._shared_step(batch, batch_idx, "test")

    @override
    def predict_step(self, batch: Tensor | tuple[Tensor, ...] | list[Tensor], batch_idx: int) -> Tensor:
        """Return class probabilities ``[B, num_classes]`` for ``x`` or an ``(x, y)`` batch."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self(x), dim=-1)


def build_optimizer(
    name: OptimizerName,
    params: Any,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Build the torch optimizer for one of ``Classifier``'s optimizer names.

    Args:
        name: ``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"adagrad"``, ``"rmsprop"``, ``"adam"`` or ``"adamw"``.
        params: parameters or parameter groups.
        lr: learning rate.
        momentum: momentum of ``"momentum"``, ``"nesterov"`` and ``"rmsprop"`` (ignored by the others).
        weight_decay: the optimizer's weight decay (decoupled only for ``"adamw"``).

    Raises:
        ValueError: an unknown ``name``.
    """
    check_choice("optimizer", name, OptimizerName)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
