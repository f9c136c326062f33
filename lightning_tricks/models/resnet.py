"""``ResNetClassifier``: residual basic blocks with a small-image stem (ResNet-18 layout by default)."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from lightning_tricks._validation import check_bool, check_float, check_int, check_int_list
from lightning_tricks.models.classifier import Classifier


def build_resnet(
    in_channels: int,
    num_classes: int,
    stages: list[int],
    width: int = 64,
    dropout: float = 0.0,
    zero_init_residual: bool = False,
    stem_pool: bool = False,
) -> nn.Sequential:
    """Build a ResNet of ``torchvision.models.resnet.BasicBlock`` for small images.

    Stem: 3x3 convolution (stride 1, so 28x28 inputs keep their resolution) + BatchNorm + ReLU, then with
    ``stem_pool`` a 2x2 max-pool (28 -> 14: a quarter of the convolution work of every later layer, what makes a
    small ResNet train in seconds per epoch on a CPU core; ImageNet ResNets pool in their stem too). Stage
    ``i`` has ``stages[i]`` basic blocks of ``width * 2**i`` channels; every stage after the first halves the
    resolution with a stride-2 first block (1x1 projection shortcut). Head: global average pool, dropout, linear.
    Initialization follows torchvision: Kaiming-normal (fan-out) convolutions, BatchNorm weight 1 and bias 0, and with
    ``zero_init_residual`` the last BatchNorm of every block starts at 0 so each block starts as the identity
    (Goyal et al., 2017).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    if stem_pool:
        layers.append(nn.MaxPool2d(kernel_size=2))
    inplanes = width
    for index, blocks in enumerate(stages):
        planes = width * 2**index
        stride = 1 if index == 0 else 2
        for block_index in range(blocks):
            block_stride = stride if block_index == 0 else 1
            downsample = None
            if block_stride != 1 or inplanes != planes:
                downsample = nn.Sequential(conv1x1(inplanes, planes, block_stride), nn.BatchNorm2d(planes))
            layers.append(BasicBlock(inplanes, planes, stride=block_stride, downsample=downsample))
            inplanes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(inplanes, num_classes)]
    net = nn.Sequential(*layers)

    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in net.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)
    return net


class ResNetClassifier(Classifier):
    """Residual network (He et al., 2016, "Deep Residual Learning for Image Recognition") for 28x28 images.

    The "architecture choice" trick: identity shortcuts let deep convolutional stacks train. Built from torchvision's
    ``BasicBlock``; the default ``stages=[2, 2, 2, 2]``, ``width=64`` is the ResNet-18 layout (11.2 M parameters)
    with a 3x3 stem and no max-pool for small images (28 -> 28 -> 14 -> 7 -> 4). Training, metrics and logged keys are
    ``Classifier``'s; ``channels_last=True`` is worth it on GPUs with AMP.

    Args:
        stages: number of basic blocks per stage (each later stage doubles the width and halves the resolution).
        width: channels of the stem and the first stage.
        dropout: dropout probability before the linear head, in [0, 1).
        zero_init_residual: start the last BatchNorm of every residual branch at zero (Goyal et al., 2017).
        stem_pool: halve the resolution after the stem with a 2x2 max-pool (a quarter of the work; the CPU recipe).
        **kwargs: the ``Classifier`` options (``optimizer``, ``lr``, ``momentum``, ``weight_decay``,
            ``label_smoothing``, ``lr_schedule``, ``num_classes``, ``in_channels``, ``channels_last``, ``compile``);
            LightningCLI and ``save_hyperparameters`` see them as options of this class.

    Raises:
        ValueError: an option outside its allowed values or range.

    Example::

        model = ResNetClassifier(stages=[1, 1, 1], width=16, optimizer="nesterov", lr=0.1, lr_schedule="onecycle")
    """

    def __init__(
        self,
        stages: list[int] = [2, 2, 2, 2],  # noqa: B006 (shown as is by LightningCLI; never mutated)
        width: int = 64,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
        stem_pool: bool = False,
        **kwargs: Any,
    ) -> None:
        check_int_list("stages", stages, non_empty=True)
        check_int("width", width, 1)
        check_float("dropout", dropout, 0.0, 1.0, high_open=True)
        check_bool("stem_pool", stem_pool)
        super().__init__(**kwargs)
        self.net = build_resnet(
            self.in_channels, self.num_classes, list(stages), width, dropout, zero_init_residual, stem_pool
        )
