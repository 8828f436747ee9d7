"""The soft-edge (HED) network of the ControlNet annotators, as `ControlNetHED.pth` holds it.

Written from the architecture to load lllyasviel/Annotators' `ControlNetHED.pth` unchanged
(the file the A1111 ControlNet extension and controlnet_aux use): the attribute names and the
order of the layers are what give the file's keys (`norm`, `block{1..5}.convs.{i}.weight`,
`block{1..5}.projection.weight`), so they must stay as they are.

The network is VGG-like: five stages of 3x3 convolutions with ReLU (a 2x2 max-pool before every
stage but the first), and a 1x1 projection of each stage to one edge-logit channel. It takes RGB
in 0..255 (not BGR, not scaled); `norm` is the mean it subtracts.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# (input channels, output channels, convolutions) of the five stages
STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


class HedStage(nn.Module):
    def __init__(self, cin: int, cout: int, n_convs: int):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1) for i in range(n_convs)])
        self.projection = nn.Conv2d(cout, 1, 1)

    def forward(self, x: torch.Tensor, pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if pool:
            x = F.max_pool2d(x, 2, 2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        for i, (cin, cout, n) in enumerate(STAGES, start=1):
            self.add_module(f"block{i}", HedStage(cin, cout, n))

    def forward(self, rgb255: torch.Tensor) -> list[torch.Tensor]:
        """(1, 3, H, W) RGB in 0..255 -> five (1, 1, h_i, w_i) edge logits, h_i = H / 2**i."""
        x = rgb255 - self.norm
        sides = []
        for i in range(1, len(STAGES) + 1):
            x, side = getattr(self, f"block{i}")(x, pool=i > 1)
            sides.append(side)
        return sides
