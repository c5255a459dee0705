"""The ResNet of the Action Genome detector: a stride-16 base (conv1..layer3) and a layer4 head.

The detector is jwyang's faster-rcnn.pytorch ResNet-101 (He et al., 2016) in its Caffe-style
variant: the stride of each downsampling bottleneck sits on its first 1x1 convolution, and the
stem's max-pool has no padding and rounds its output size up (``ceil_mode``). The base ends with
``layer3`` (output stride 16) and feeds the RPN and RoIAlign; the head is ``layer4`` (stride 2
inside the 7x7 RoI grid) followed by a spatial mean, one ``4 * planes[3]`` vector per box.

Widths and depths are parameters (:class:`ResNetConfig`) so tests run on tiny networks; the
default is ResNet-101 (2048-d box features, 1024-channel base map). Batch norm always uses its
running statistics here (the detector is frozen; ``train()`` does not change that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Bottleneck", "ResNetBase", "ResNetConfig", "ResNetHead"]


@dataclass(frozen=True)
class ResNetConfig:
    """Widths and depths of the bottleneck ResNet.

    Attributes:
        stem: output channels of ``conv1`` (64 in ResNet-101).
        planes: inner width of the bottlenecks of layer1..layer4 (output is 4x).
        blocks: bottlenecks per layer (ResNet-101: 3, 4, 23, 3).
    """

    stem: int = 64
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)
    blocks: tuple[int, int, int, int] = (3, 4, 23, 3)

    @property
    def base_channels(self) -> int:
        """Channels of the stride-16 base map (1024 in ResNet-101)."""
        return 4 * self.planes[2]

    @property
    def head_channels(self) -> int:
        """Width of a box feature after the head (2048 in ResNet-101)."""
        return 4 * self.planes[3]


class _FrozenBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics (the detector is frozen)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class Bottleneck(nn.Module):
    """1x1 (stride here) -> 3x3 -> 1x1 (4x wider), each with batch norm; identity or projection."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = _FrozenBatchNorm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _FrozenBatchNorm(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = _FrozenBatchNorm(4 * planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != 4 * planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, 4 * planes, 1, stride=stride, bias=False),
                _FrozenBatchNorm(4 * planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + residual)


def _layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(inplanes, planes, stride)]
    layers += [Bottleneck(4 * planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetBase(nn.Module):
    """conv1 (7x7, stride 2) + bn + ReLU + max-pool (3x3, stride 2, ceil) + layer1..layer3.

    ``[B, 3, H, W]`` -> ``[B, base_channels, ~H/16, ~W/16]``.
    """

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, config.stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = _FrozenBatchNorm(config.stem)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        p, b = config.planes, config.blocks
        self.layer1 = _layer(config.stem, p[0], b[0], 1)
        self.layer2 = _layer(4 * p[0], p[1], b[1], 2)
        self.layer3 = _layer(4 * p[1], p[2], b[2], 2)

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(images))))
        return self.layer3(self.layer2(self.layer1(x)))


class ResNetHead(nn.Module):
    """layer4 then the spatial mean: pooled RoIs ``[K, base, 7, 7]`` -> ``[K, head_channels]``."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.layer4 = _layer(4 * config.planes[2], config.planes[3], config.blocks[3], 2)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.layer4(pooled).mean(3).mean(2)
