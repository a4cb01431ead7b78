"""A light FPN-style segmentation decoder: 1x1 projections, top-down upsample-and-sum, a 3x3 conv, logits.

It takes a backbone's multi-scale feature maps (fine to coarse). Each map is projected to ``channels`` by a 1x1
conv and, when ``scales`` asks for it, resampled (bilinear) to build a pyramid from a plain ViT's single-stride
maps; then, from the coarsest, each level is upsampled to the next finer one and added to it. A 3x3 conv with
ReLU smooths the sum, a 1x1 conv gives one logit per class, and the logits are upsampled (bilinear) to the
input's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FPNDecoder"]


class FPNDecoder(nn.Module):
    """Feature maps ``[B, C_i, H_i, W_i]`` (fine to coarse) to logits ``[B, num_classes, H, W]``.

    Args:
        in_channels: Channels of each feature map.
        scales: Resampling factor of each projected map (1.0: as it is; 4.0: four times larger). A plain ViT's
            maps all have the patch stride; factors such as ``(4, 2, 1, 0.5)`` make them a pyramid.
        num_classes: Logits per pixel.
        channels: Width of the decoder.

    Examples:
        >>> decoder = FPNDecoder([8, 16], [1.0, 1.0], num_classes=3, channels=8)
        >>> decoder([torch.zeros(1, 8, 8, 8), torch.zeros(1, 16, 4, 4)], (32, 32)).shape
        torch.Size([1, 3, 32, 32])
    """

    def __init__(self, in_channels: Sequence[int], scales: Sequence[float], num_classes: int,
                 channels: int = 64) -> None:
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        levels = []
        for feature, lateral, scale in zip(features, self.lateral, self.scales):
            x = lateral(feature)
            if scale != 1.0:
                h, w = (max(1, round(d * scale)) for d in x.shape[-2:])
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            levels.append(x)
        x = levels[-1]
        for finer in reversed(levels[:-1]):
            x = finer + F.interpolate(x, size=finer.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.smooth(x))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
