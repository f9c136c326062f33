"""``InceptionClassifier``: Inception-style multi-branch blocks for small images."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.inception import BasicConv2d
from typing_extensions import override

from lightning_tricks._validation import check_bool, check_float, check_int, check_int_list
from lightning_tricks.models.classifier import Classifier


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated along channels: ``4 * branch_channels`` output channels.

    Branches: 1x1; 1x1 reduce -> 3x3; 1x1 reduce -> 5x5 (or two 3x3, the same receptive field for 18/25 of the cost,
    Szegedy et al., 2016); 3x3 max-pool -> 1x1 projection. Every convolution is torchvision's ``BasicConv2d``
    (conv without bias + BatchNorm + ReLU). The reductions have ``branch_channels // 2`` channels.
    """

    def __init__(self, in_channels: int, branch_channels: int, factorize_5x5: bool = True) -> None:
        super().__init__()
        reduce = max(1, branch_channels // 2)
        self.branch1x1 = BasicConv2d(in_channels, branch_channels, kernel_size=1)
        self.branch3x3 = nn.Sequential(
            BasicConv2d(in_channels, reduce, kernel_size=1),
            BasicConv2d(reduce, branch_channels, kernel_size=3, padding=1),
        )
        if factorize_5x5:
            wide: list[nn.Module] = [
                BasicConv2d(reduce, branch_channels, kernel_size=3, padding=1),
                BasicConv2d(branch_channels, branch_channels, kernel_size=3, padding=1),
            ]
        else:
            wide = [BasicConv2d(reduce, branch_channels, kernel_size=5, padding=2)]
        self.branch5x5 = nn.Sequential(BasicConv2d(in_channels, reduce, kernel_size=1), *wide)
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            BasicConv2d(in_channels, branch_channels, kernel_size=1),
        )
        self.out_channels = 4 * branch_channels

    @override
    def forward(self, x: Tensor) -> Tensor:
        branches = (self.branch1x1, self.branch3x3, self.branch5x5, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)


def build_inception(
    in_channels: int,
    num_classes: int,
    stages: list[int],
    width: int = 16,
    stem_channels: int = 32,
    factorize_5x5: bool = True,
    dropout: float = 0.0,
    stem_pool: bool = False,
) -> nn.Sequential:
    """Build stem -> stages of ``InceptionBlock`` (3x3 stride-2 max-pool between stages) -> pool -> dropout -> linear.

    Stage ``i`` has ``stages[i]`` blocks with ``width * 2**i`` channels per branch (``4 * width * 2**i`` out).
    The stem is one 3x3 ``BasicConv2d`` at full resolution, followed with ``stem_pool`` by a 2x2 max-pool (28 -> 14:
    a quarter of the work of every later layer, what makes a small Inception net train in seconds per epoch on a CPU
    core; GoogLeNet's own stem pools twice).
    """
    layers: list[nn.Module] = [BasicConv2d(in_channels, stem_channels, kernel_size=3, padding=1)]
    if stem_pool:
        layers.append(nn.MaxPool2d(kernel_size=2))
    channels = stem_channels
    for index, blocks in enumerate(stages):
        if index > 0:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        for _ in range(blocks):
            block = InceptionBlock(channels, width * 2**index, factorize_5x5)
            layers.append(block)
            channels = block.out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


class InceptionClassifier(Classifier):
    """Inception-style network (Szegedy et al., 2015, "Going Deeper with Convolutions"; 2016, "Rethinking the
    Inception Architecture") for 28x28 images.

    The "architecture choice" trick: parallel 1x1 / 3x3 / 5x5 / pool branches let each block mix receptive fields,
    with 1x1 reductions keeping the cost down. Defaults: a 32-channel 3x3 stem, two stages of two blocks (16 and 32
    channels per branch, 64 and 128 out) at 28x28 and 14x14, global average pooling and a linear head. Training,
    metrics and logged keys are ``Classifier``'s.

    Args:
        stages: number of Inception blocks per stage; a 3x3 stride-2 max-pool comes before every stage but the first.
        width: channels per branch in the first stage (doubled at every later stage).
        stem_channels: output channels of the 3x3 stem convolution.
        factorize_5x5: build the 5x5 branch as two 3x3 convolutions (Inception-v2/v3) instead of one 5x5.
        dropout: dropout probability before the linear head, in [0, 1).
        stem_pool: halve the resolution after the stem with a 2x2 max-pool (a quarter of the work; the CPU recipe).
        **kwargs: the ``Classifier`` options (``optimizer``, ``lr``, ``momentum``, ``weight_decay``,
            ``label_smoothing``, ``lr_schedule``, ``num_classes``, ``in_channels``, ``channels_last``, ``compile``);
            LightningCLI and ``save_hyperparameters`` see them as options of this class.

    Raises:
        ValueError: an option outside its allowed values or range.

    Example::

        model = InceptionClassifier(stages=[1, 1], width=8, optimizer="adamw", weight_decay=0.05)
    """

    def __init__(
        self,
        stages: list[int] = [2, 2],  # noqa: B006 (shown as is by LightningCLI; never mutated)
        width: int = 16,
        stem_channels: int = 32,
        factorize_5x5: bool = True,
        dropout: float = 0.0,
        stem_pool: bool = False,
        **kwargs: Any,
    ) -> None:
        check_int_list("stages", stages, non_empty=True)
        check_int("width", width, 1)
        check_int("stem_channels", stem_channels, 1)
        check_float("dropout", dropout, 0.0, 1.0, high_open=True)
        check_bool("stem_pool", stem_pool)
        super().__init__(**kwargs)
        self.net = build_inception(
            self.in_channels, self.num_classes, list(stages), width, stem_channels, factorize_5x5, dropout, stem_pool
        )
