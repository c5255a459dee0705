"""A tiny Action Genome detector (ResNet widths of a few channels) with random weights."""

from __future__ import annotations

import pytest
import torch

from m3sgg.detection.faster_rcnn import ActionGenomeDetector, DetectorConfig
from m3sgg.detection.resnet import ResNetConfig

TINY = DetectorConfig(
    resnet=ResNetConfig(stem=4, planes=(2, 4, 4, 8), blocks=(1, 2, 1, 1)),
    rpn_channels=6,
    pre_nms_top_n=200,
    post_nms_top_n=12,
)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter and batch-norm statistic drawn at random (positive variances)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)
    return model


@pytest.fixture
def tiny_detector() -> ActionGenomeDetector:
    return randomize(ActionGenomeDetector(TINY)).eval()
