"""The weights' normalisation of uint8 pixels, applied on the device where the network runs."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """uint8 pixels to the weights' normalisation, on whatever device the batch is on."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std
