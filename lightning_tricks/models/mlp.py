"""``MLPClassifier``: a fully connected network with a choice of activation, normalization and dropout."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm
from typing_extensions import override

from lightning_tricks._validation import check_choice, check_float, check_int, check_int_list
from lightning_tricks.models.classifier import Classifier

ActivationName = Literal["relu", "tanh", "sigmoid", "gelu", "leaky_relu", "elu", "selu", "identity"]
MLPNormName = Literal["none", "batch", "layer", "weight"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "identity": nn.Identity,
}


def build_mlp(
    input_size: int,
    hidden_sizes: list[int],
    num_classes: int,
    activation: ActivationName = "relu",
    norm: MLPNormName = "none",
    dropout: float = 0.0,
) -> nn.Sequential:
    """Build ``Flatten -> [Linear -> norm -> activation -> dropout] * len(hidden_sizes) -> Linear``.

    ``norm="weight"`` reparametrizes every ``Linear`` (the output layer too) with
    ``torch.nn.utils.parametrizations.weight_norm``; ``"batch"`` / ``"layer"`` insert ``BatchNorm1d`` / ``LayerNorm``
    after each hidden ``Linear`` (which then has no bias under batch norm). With ``activation="selu"`` dropout is
    ``AlphaDropout``, which keeps the self-normalizing mean and variance (Klambauer et al., 2017).
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_size
    for hidden in hidden_sizes:
        linear = nn.Linear(width, hidden, bias=norm != "batch")
        layers.append(weight_norm(linear) if norm == "weight" else linear)
        if norm == "batch":
            layers.append(nn.BatchNorm1d(hidden))
        elif norm == "layer":
            layers.append(nn.LayerNorm(hidden))
        layers.append(_ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.AlphaDropout(dropout) if activation == "selu" else nn.Dropout(dropout))
        width = hidden
    head = nn.Linear(width, num_classes)
    layers.append(weight_norm(head) if norm == "weight" else head)
    return nn.Sequential(*layers)


class MLPClassifier(Classifier):
    """Multilayer perceptron on flattened images: the baseline architecture of the classic tricks.

    The architecture knobs are the tricks to compare: the activation (sigmoid/tanh saturate, ReLU (Nair & Hinton,
    2010), leaky ReLU, ELU (Clevert et al., 2016), SELU (Klambauer et al., 2017), GELU (Hendrycks & Gimpel, 2016)),
    the normalization (batch norm, Ioffe & Szegedy, 2015; layer norm, Ba et al., 2016; weight norm, Salimans & Kingma,
    2016) and dropout (Srivastava et al., 2014). Training, metrics and logged keys are ``Classifier``'s.

    Args:
        hidden_sizes: widths of the hidden layers (may be empty: multinomial logistic regression).
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"gelu"``, ``"leaky_relu"``, ``"elu"``, ``"selu"`` or
            ``"identity"``.
        norm: ``"none"``, ``"batch"``, ``"layer"`` or ``"weight"``.
        dropout: dropout probability after each hidden activation, in [0, 1).
        input_size: number of input features, ``in_channels * H * W`` (784 for 28x28 grey images).
        **kwargs: the ``Classifier`` options (``optimizer``, ``lr``, ``momentum``, ``weight_decay``,
            ``label_smoothing``, ``lr_schedule``, ``num_classes``, ``in_channels``, ``channels_last``, ``compile``);
            LightningCLI and ``save_hyperparameters`` see them as options of this class.

    Raises:
        ValueError: an option outside its allowed values or range.

    Example::

        model = MLPClassifier(hidden_sizes=[512, 256], activation="selu", dropout=0.1, optimizer="nesterov", lr=0.05)
        # or: lightning-tricks fit --model MLPClassifier --model.hidden_sizes [512,256] --model.optimizer sgd
    """

    def __init__(
        self,
        hidden_sizes: list[int] = [256, 128],  # noqa: B006 (shown as is by LightningCLI; never mutated)
        activation: ActivationName = "relu",
        norm: MLPNormName = "none",
        dropout: float = 0.0,
        input_size: int = 784,
        **kwargs: Any,
    ) -> None:
        check_choice("activation", activation, ActivationName)
        check_choice("norm", norm, MLPNormName)
        check_float("dropout", dropout, 0.0, 1.0, high_open=True)
        check_int("input_size", input_size, 1)
        check_int_list("hidden_sizes", hidden_sizes)
        super().__init__(**kwargs)
        self.input_size = input_size
        self.net = build_mlp(input_size, list(hidden_sizes), self.num_classes, activation, norm, dropout)

    @override
    def _check_batch(self, x: Tensor, y: Tensor, batch_idx: int) -> None:
        super()._check_batch(x, y, batch_idx)
        features = x.shape[1:].numel()
        if features != self.input_size:
            raise ValueError(
                f"MLPClassifier(input_size={self.input_size}) got images of shape {tuple(x.shape[1:])}, which "
                f"flatten to {features} features. Set `input_size` to in_channels * H * W."
            )
