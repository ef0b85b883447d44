"""VGG-16 and VGG-19 (Simonyan & Zisserman 2015) as torchvision builds them, without its import.

The FNE's default backbone is built here because importing torchvision costs more than the
network's twenty lines: 1.4 s on the 2-core development machine and 4.8 s on the H200 machine
of issue 19, paid by every `fne extract` process. Module names, layer order and the random
initialisation are torchvision's, so its state dicts load as they are, `--weights random` draws
the same numbers from the same seed, and its ImageNet files (declared in `fne.backbones.registry`)
are fetched from the same address into torch hub's cache (`tests/test_backbones.py` checks all
three against torchvision).
"""

from __future__ import annotations

import torch
from torch import nn


class VGG(nn.Module):
    """`features` (3x3 convolutions, each followed by an in-place ReLU, and 2x2 max pools), a 7x7
    adaptive average pool, and the classifier fc6 - ReLU - dropout - fc7 - ReLU - dropout - fc8.

    Parameters
    ----------
    cfg : list
        Output channels of each convolution, "M" for a max pool (`registry.VGG_CFG`).
    num_classes : int
        Outputs of the last layer (`classifier.6`).
    dropout : float
        Dropout probability after fc6 and fc7 (training only).
    """

    def __init__(self, cfg: list, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if self.classifier[0].weight.is_meta:
            return  # built to take loaded weights (`zoo.assigned`); drawing on meta tensors imports torch._dynamo
        for m in self.modules():  # torchvision's initialisation, module by module in the same order
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
